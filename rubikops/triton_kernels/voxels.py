"""The Triton building blocks of the ``extract_cubes`` kernels
(rubikops.triton_kernels.extract_cubes): where a program's voxels lie in
their cube and source (the copy's box geometry, the affine read's
interpolation within a read box), and the value stage every kernel ends with
(scale, shift, the cube's intensity stage, clamp, the keep mask, the cast)."""
import triton
import triton.language as tl

from .._schema import CUBE_INTENSITY_WIDTH, NOISE_CENTRE, NOISE_UNIT

_NOISE_CENTRE = tl.constexpr(NOISE_CENTRE)
_NOISE_UNIT = tl.constexpr(NOISE_UNIT)
_INTENSITY_WIDTH = tl.constexpr(CUBE_INTENSITY_WIDTH)

@triton.jit
def _size_of(axis, CD: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr):
    return tl.where(axis == 0, CD, tl.where(axis == 1, CH, CW))


@triton.jit
def _as_index(x, WIDE: tl.constexpr):
    """Offsets in 32 bits where the launcher proved that every source and
    output offset fits (one instruction per product instead of a 64-bit
    multiply sequence); 64 bits otherwise."""
    # tl.cast, not .to: Triton (3.6) passes an integer argument equal to 1
    # (a unit stride, C = 1) as a plain Python int.
    if WIDE:
        return tl.cast(x, tl.int64)
    else:
        return tl.cast(x, tl.int32)


@triton.jit
def _volume(index_ptr, b, N, HAS_INDEX: tl.constexpr, WIDE: tl.constexpr):
    """The volume sample b reads: index[b] clamped into [0, N - 1] (validate=False stays in the source)."""
    if HAS_INDEX:
        n = tl.load(index_ptr + b).to(tl.int64)
        n = _as_index(tl.minimum(tl.maximum(n, 0), N - 1), WIDE)
    else:
        n = b
    return n


@triton.jit
def _code_axes(rot_ptr, bm, CD: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr):
    """Which box axis each output axis reads (a0, a1, a2) and whether it runs
    backwards (f0, f1, f2), for code rotations[bm] as csrc/extract_cubes.h
    kernel_code reads any integer: mod 48, and the identity order where the
    code's order would change a non-cubic cube's shape."""
    # mod 48 in 64 bits, as the C++ kernels: a code >= 2**31 truncated to
    # int32 first would name another rotation.
    code = tl.load(rot_ptr + bm).to(tl.int64) % 48
    code = tl.where(code < 0, code + 48, code).to(tl.int32)
    # axis_order(p, a) = (0x061209211824 >> (8p + 2a)) & 3 (see csrc/extract_cubes.h)
    p = code // 8
    a0 = ((0x061209211824 >> (8 * p).to(tl.int64)) & 3).to(tl.int32)
    a1 = ((0x061209211824 >> (8 * p + 2).to(tl.int64)) & 3).to(tl.int32)
    a2 = ((0x061209211824 >> (8 * p + 4).to(tl.int64)) & 3).to(tl.int32)
    keeps_shape = (_size_of(a0, CD, CH, CW) == CD) & (_size_of(a1, CD, CH, CW) == CH) & (_size_of(a2, CD, CH, CW) == CW)
    a0 = tl.where(keeps_shape, a0, 0)
    a1 = tl.where(keeps_shape, a1, 1)
    a2 = tl.where(keeps_shape, a2, 2)
    return a0, a1, a2, (code & 1) != 0, (code & 2) != 0, (code & 4) != 0


@triton.jit
def _cube_geometry(origins_ptr, index_ptr, rot_ptr, bm, b, c, N, D, H, W, s_n, s_c, s_d, s_h, s_w,
                   CD: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
                   HAS_INDEX: tl.constexpr, HAS_ROT: tl.constexpr, WIDE: tl.constexpr):
    """Source offset of output voxel (0, 0, 0), the signed source strides along
    the three output axes, and which output axis reads along source W.

    Index, origins and codes are clamped so that no input (validate=False) can
    take a load out of the source."""
    n = _volume(index_ptr, b, N, HAS_INDEX, WIDE)
    oz = _as_index(tl.minimum(tl.maximum(tl.load(origins_ptr + bm * 3 + 0).to(tl.int64), 0), D - CD), WIDE)
    oy = _as_index(tl.minimum(tl.maximum(tl.load(origins_ptr + bm * 3 + 1).to(tl.int64), 0), H - CH), WIDE)
    ox = _as_index(tl.minimum(tl.maximum(tl.load(origins_ptr + bm * 3 + 2).to(tl.int64), 0), W - CW), WIDE)
    s_d = _as_index(s_d, WIDE)
    s_h = _as_index(s_h, WIDE)
    s_w = _as_index(s_w, WIDE)
    start = n * _as_index(s_n, WIDE) + c * _as_index(s_c, WIDE) + oz * s_d + oy * s_h + ox * s_w
    if HAS_ROT:
        a0, a1, a2, f0, f1, f2 = _code_axes(rot_ptr, bm, CD, CH, CW)
        st0 = tl.where(a0 == 0, s_d, tl.where(a0 == 1, s_h, s_w))
        st1 = tl.where(a1 == 0, s_d, tl.where(a1 == 1, s_h, s_w))
        st2 = tl.where(a2 == 0, s_d, tl.where(a2 == 1, s_h, s_w))
        start += tl.where(f0, st0 * (CD - 1), 0) + tl.where(f1, st1 * (CH - 1), 0) + tl.where(f2, st2 * (CW - 1), 0)
        st0 = tl.where(f0, -st0, st0)
        st1 = tl.where(f1, -st1, st1)
        st2 = tl.where(f2, -st2, st2)
        w_axis = tl.where(a2 == 2, 2, tl.where(a1 == 2, 1, 0))
    else:
        st0 = s_d
        st1 = s_h
        st2 = s_w
        w_axis = tl.full([], 2, tl.int32)
    return start, st0, st1, st2, w_axis


@triton.jit
def _flat_voxels(C, M, CD: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr, BLOCK: tl.constexpr,
                 WIDE: tl.constexpr):
    """The BLOCK consecutive output voxels of one (b, m, c) cube that this
    program handles: cube = (b * M + m) * C + c, c, b * M + m, b, their
    offsets in the cube, which are inside it, and their (i0, i1, i2)."""
    pid = _as_index(tl.program_id(0), WIDE)
    chunks: tl.constexpr = (CD * CH * CW + BLOCK - 1) // BLOCK
    cube = pid // chunks
    c = cube % C
    bm = cube // C
    offs = (pid % chunks) * BLOCK + tl.arange(0, BLOCK)
    return cube, c, bm, bm // M, offs, offs < CD * CH * CW, offs // (CW * CH), (offs // CW) % CH, offs % CW


@triton.jit
def _clamped_axis(pos, bottom, top):
    """Trilinear read along one axis at ``pos`` clamped into [bottom, top]
    (the read box, inside the volume; edge values repeat; NaN reads
    ``bottom``): (lo, hi, frac), as affine_read in csrc/extract_cubes.h."""
    bottom_f = bottom.to(tl.float64)
    top_f = top.to(tl.float64)
    pos = tl.where(pos > bottom_f, tl.where(pos < top_f, pos, top_f), bottom_f)
    base = tl.floor(pos)
    lo = base.to(tl.int32)
    return lo, tl.where(lo + 1 <= top, lo + 1, lo), pos - base


@triton.jit
def _affine_read(affine_ptr, box_ptr, origins_ptr, rot_ptr, b, bm, i0, i1, i2,
                 CD: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr, HAS_ROT: tl.constexpr):
    """Where output voxel (i0, i1, i2) of cube bm reads (the spec:
    rubikops.reference.affine_box): its box voxel j (the code's turn applied
    backwards), at crop-frame position origin + j, mapped through sample b's
    3 x 4 affine (float64, row-major) and clamped into its read box (int32
    (B, 2, 3), inside the volume: read_boxes).  Returns (lo, hi, frac) along
    D, H and W.

    Positions in float64, as the CPU kernel: the reference with float32
    positions, on 20 seeds of tests/test_affine_cut.py's cases, is off by
    at most 3.9e-6 on float32 normal banks but 8.8e-5 on int16 banks
    (-1024..3072, scale <= 0.02), nine times the tests' 1e-5.  Origins are
    not clamped: the affine decides where they land."""
    if HAS_ROT:
        a0, a1, a2, f0, f1, f2 = _code_axes(rot_ptr, bm, CD, CH, CW)
        k0 = tl.where(f0, CD - 1 - i0, i0)
        k1 = tl.where(f1, CH - 1 - i1, i1)
        k2 = tl.where(f2, CW - 1 - i2, i2)
        jd = tl.where(a0 == 0, k0, tl.where(a1 == 0, k1, k2))
        jh = tl.where(a0 == 1, k0, tl.where(a1 == 1, k1, k2))
        jw = tl.where(a0 == 2, k0, tl.where(a1 == 2, k1, k2))
    else:
        jd = i0
        jh = i1
        jw = i2
    qd = tl.load(origins_ptr + bm * 3 + 0).to(tl.int64).to(tl.float64) + jd.to(tl.float64)
    qh = tl.load(origins_ptr + bm * 3 + 1).to(tl.int64).to(tl.float64) + jh.to(tl.float64)
    qw = tl.load(origins_ptr + bm * 3 + 2).to(tl.int64).to(tl.float64) + jw.to(tl.float64)
    A = affine_ptr + b * 12
    pd = tl.load(A + 0) * qd + tl.load(A + 1) * qh + tl.load(A + 2) * qw + tl.load(A + 3)
    ph = tl.load(A + 4) * qd + tl.load(A + 5) * qh + tl.load(A + 6) * qw + tl.load(A + 7)
    pw = tl.load(A + 8) * qd + tl.load(A + 9) * qh + tl.load(A + 10) * qw + tl.load(A + 11)
    box = box_ptr + b * 6
    zl, zh, fz = _clamped_axis(pd, tl.load(box + 0), tl.load(box + 3))
    yl, yh, fy = _clamped_axis(ph, tl.load(box + 1), tl.load(box + 4))
    xl, xh, fx = _clamped_axis(pw, tl.load(box + 2), tl.load(box + 5))
    return zl, zh, fz, yl, yh, fy, xl, xh, fx


@triton.jit
def _corner(z: tl.constexpr, y: tl.constexpr, x: tl.constexpr, zl, zh, fz, yl, yh, fy, xl, xh, fx,
            st_d, st_h, st_w, WIDE: tl.constexpr):
    """Weight (float64) and element offset of corner (z, y, x) (1: the hi
    side), with corner_of's product order in csrc/extract_cubes.h."""
    if z == 1:
        w = fz
        off = _as_index(zh, WIDE) * st_d
    else:
        w = 1.0 - fz
        off = _as_index(zl, WIDE) * st_d
    if y == 1:
        w = w * fy
        off += _as_index(yh, WIDE) * st_h
    else:
        w = w * (1.0 - fy)
        off += _as_index(yl, WIDE) * st_h
    if x == 1:
        w = w * fx
        off += _as_index(xh, WIDE) * st_w
    else:
        w = w * (1.0 - fx)
        off += _as_index(xl, WIDE) * st_w
    return w, off


@triton.jit
def _interpolate(ptr, base, zl, zh, fz, yl, yh, fy, xl, xh, fx, st_d, st_h, st_w, read, WIDE: tl.constexpr):
    """The trilinear value (float64) of the volume at ``ptr + base`` with
    strides (st_d, st_h, st_w): corners summed in corner_of's order, as the
    reference and the CPU kernel (same value to the last bits in float64)."""
    total = tl.zeros_like(fz)
    for dz in tl.static_range(2):
        for dy in tl.static_range(2):
            for dx in tl.static_range(2):
                w, off = _corner(dz, dy, dx, zl, zh, fz, yl, yh, fy, xl, xh, fx, st_d, st_h, st_w, WIDE)
                total += w * tl.load(ptr + base + off, mask=read, other=0).to(tl.float64)
    return total


@triton.jit
def _splitmix64(seed, k):
    """splitmix64 of seed + (k + 1) * golden (uint64 seed and k), as csrc/extract_cubes.h."""
    z = seed + (k + 1) * 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)


@triton.jit
def _keep(out_offs, seed_lo, seed_hi, threshold):
    """Rubik's Cube+ keep decision: splitmix64 of the output's linear index
    (normative, see the core issue).  The 64-bit seed arrives as two signed
    32-bit halves (see rubikops._schema.seed_halves)."""
    k = out_offs.to(tl.int64).to(tl.uint64, bitcast=True)
    seed = (tl.cast(seed_hi, tl.int64) << 32) | (tl.cast(seed_lo, tl.int64) & 0xFFFFFFFF)
    z = _splitmix64(seed.to(tl.uint64, bitcast=True), k)
    return (z >> 40) < tl.full([], threshold, tl.int64).to(tl.uint64)


@triton.jit
def _bias_factor(coefficient, i, n: tl.constexpr, ctype: tl.constexpr):
    """exp(coefficient * r) at output voxel i of an axis of n, r = i * (2 / (n - 1)) - 1 (0 for n = 1)."""
    if n > 1:
        r = i.to(ctype) * tl.full([], 2.0 / (n - 1), ctype) - 1.0
    else:
        r = tl.zeros_like(i).to(ctype)
    return tl.exp(coefficient * r)


@triton.jit
def _intensity(v, out_offs, bm, C, intensity_ptr, ctype: tl.constexpr, CD: tl.constexpr, CH: tl.constexpr,
               CW: tl.constexpr):
    """Cube bm's intensity stage (rubikops._schema.CUBE_INTENSITY_FIELDS) on its values v (ctype) at
    output offsets out_offs; its row of ``cube_intensity`` is float64.  Gamma as exp2(gamma * log2(t))
    (within a few float32 ulps of pow, which Triton's core has not)."""
    row = intensity_ptr + bm * _INTENSITY_WIDTH
    gain = tl.load(row + 0).to(ctype)
    offset = tl.load(row + 1).to(ctype)
    gamma = tl.load(row + 2).to(ctype)
    low = tl.load(row + 3).to(ctype)
    span = tl.load(row + 4).to(ctype)
    noise = tl.load(row + 5).to(ctype)
    bias_d = tl.load(row + 6).to(ctype)
    bias_h = tl.load(row + 7).to(ctype)
    bias_w = tl.load(row + 8).to(ctype)
    key_value = tl.load(row + 9)
    v = v * gain + offset
    t = (v - low) / span
    zeros = tl.zeros_like(v)  # the per-cube conditions as blocks: the interpreter refuses scalar & block
    inside = (t > 0) & (t < 1) & (zeros + gamma != 1)
    powered = tl.exp2(gamma * tl.log2(tl.where(inside, t, 1.0)))
    v = tl.where(inside, low + span * powered, v)
    numel: tl.constexpr = CD * CH * CW
    local = out_offs.to(tl.int64) % numel
    field = (_bias_factor(bias_d, local // (CH * CW), CD, ctype) * _bias_factor(bias_h, (local // CW) % CH, CH, ctype)
             * _bias_factor(bias_w, local % CW, CW, ctype))
    bias_on = (zeros + bias_d != 0) | (zeros + bias_h != 0) | (zeros + bias_w != 0)
    centre = low + span * 0.5
    v = tl.where(bias_on, centre + (v - centre) * field, v)
    key = tl.where((key_value >= 0) & (key_value < 18446744073709551616.0), key_value, 0.0).to(tl.uint64)
    j = (out_offs.to(tl.int64) - bm.to(tl.int64) * C * numel).to(tl.uint64, bitcast=True)
    z = _splitmix64(key, j)
    # the four 16-bit fields by shifts alone (the interpreter refuses uint64 & int)
    total = (((z << 48) >> 48) + ((z << 32) >> 48) + ((z << 16) >> 48) + (z >> 48)).to(tl.int64)
    normal = (total - _NOISE_CENTRE).to(ctype) * tl.full([], _NOISE_UNIT, ctype)
    return tl.where(zeros + noise != 0, v + noise * normal, v)


@triton.jit
def _to_out(v, out_dtype: tl.constexpr, BF16_RTNE: tl.constexpr):
    """v as out_dtype.  BF16_RTNE (the interpreter, bfloat16 out): round
    float32 to nearest even by hand, as torch and the GPU compiler do; the
    interpreter's own float32 -> bfloat16 cast truncates (2063 -> 2048, not
    2064)."""
    if BF16_RTNE:
        bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
        rounded = bits + 0x7FFF + ((bits >> 16) & 1)
        rounded = tl.where(v != v, bits | 0x400000, rounded)  # NaN stays a (quiet) NaN
        return (rounded >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return v.to(out_dtype)


@triton.jit
def _finish_and_store(x, out_ptr, out_offs, valid, b, bm, mask_ptr, scale_ptr, shift_ptr, params_ptr,
                      intensity_ptr, C, scale_value, shift_value, clamp_lo, clamp_hi, fill, seed_lo, seed_hi,
                      threshold, HAS_MASK: tl.constexpr, KEEP_RANDOM: tl.constexpr, HAS_SCALE: tl.constexpr,
                      HAS_SHIFT: tl.constexpr, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr, ARITH: tl.constexpr,
                      F64: tl.constexpr, PARAMS_IN_TENSOR: tl.constexpr, VIA_F32: tl.constexpr,
                      BF16_RTNE: tl.constexpr, HAS_INTENSITY: tl.constexpr, CD: tl.constexpr, CH: tl.constexpr,
                      CW: tl.constexpr):
    """Intensity (float(x) * scale + shift, the cube's intensity stage, clamp,
    cast), the mask and its random keep rule, then the store."""
    out_dtype = out_ptr.dtype.element_ty
    if F64:
        ctype = tl.float64
    else:
        ctype = tl.float32
    if ARITH:
        if PARAMS_IN_TENSOR:  # float64 scalars travel in a tensor (kernel float args are fp32)
            scale_value = tl.load(params_ptr + 0)
            shift_value = tl.load(params_ptr + 1)
            clamp_lo = tl.load(params_ptr + 2)
            clamp_hi = tl.load(params_ptr + 3)
        v = x.to(ctype)
        if HAS_SCALE:
            v = v * tl.load(scale_ptr + b).to(ctype)
        else:
            v = v * scale_value
        if HAS_SHIFT:
            v = v + tl.load(shift_ptr + b).to(ctype)
        else:
            v = v + shift_value
        if HAS_INTENSITY:
            v = _intensity(v, out_offs, bm, C, intensity_ptr, ctype, CD, CH, CW)
        # Compare-and-select (not minimum/maximum) so NaN passes through, as in torch.clamp.
        if HAS_LO:
            v = tl.where(v < clamp_lo, clamp_lo, v)
        if HAS_HI:
            v = tl.where(v > clamp_hi, clamp_hi, v)
        if VIA_F32:
            v = v.to(tl.float32)
        y = _to_out(v, out_dtype, BF16_RTNE)
    else:
        if VIA_F32:
            y = _to_out(x.to(tl.float32), out_dtype, BF16_RTNE)
        else:
            y = _to_out(x, out_dtype, BF16_RTNE)
    if HAS_MASK:
        masked = tl.load(mask_ptr + bm) != 0
        if PARAMS_IN_TENSOR:
            fill_v = _to_out(tl.load(params_ptr + 4), out_dtype, BF16_RTNE)
        else:
            fill_v = _to_out(tl.full([], fill, tl.float32), out_dtype, BF16_RTNE)
        if KEEP_RANDOM:
            y = tl.where(masked & ~_keep(out_offs, seed_lo, seed_hi, threshold), fill_v, y)
        else:
            y = tl.where(masked, fill_v, y)
    tl.store(out_ptr + out_offs, y, mask=valid)
