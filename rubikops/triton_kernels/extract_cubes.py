"""Triton kernels of ``extract_cubes`` and its backward, and their launchers
(on :class:`rubikops._schema.ExtractCubesParams`); rubikops.backends.triton
registers them as ops.

One program writes a box of whole output rows of one (b, m, c) cube, so
stores are contiguous; loads run along source W for every code (for codes that
move W the box is loaded transposed and permuted on chip).  The affine read
(``affine=``) has its own kernel: a program interpolates consecutive output
voxels of one cube.  The cube extent is a compile-time constant: a training
run uses one cube size.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import torch
from torch import Tensor
import triton
import triton.language as tl

from .._schema import ExtractCubesParams, opmath_dtype, seed_halves
from .voxels import (_affine_read, _as_index, _corner, _cube_geometry, _finish_and_store, _flat_voxels,
                     _interpolate, _keep, _volume)

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _extract_cubes_kernel(
    src_ptr, out_ptr, origins_ptr, index_ptr, rot_ptr, mask_ptr, scale_ptr, shift_ptr, params_ptr, intensity_ptr,
    N, C, D, H, W, M,
    s_n, s_c, s_d, s_h, s_w,
    scale_value, shift_value, clamp_lo, clamp_hi, fill, seed_lo, seed_hi, threshold,
    CD: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
    HAS_INDEX: tl.constexpr, HAS_ROT: tl.constexpr, HAS_MASK: tl.constexpr, KEEP_RANDOM: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr,
    ARITH: tl.constexpr, F64: tl.constexpr, PARAMS_IN_TENSOR: tl.constexpr, VIA_F32: tl.constexpr,
    BF16_RTNE: tl.constexpr, TO: tl.constexpr, TR: tl.constexpr, TW: tl.constexpr, PER_CUBE: tl.constexpr, WIDE: tl.constexpr,
    HAS_INTENSITY: tl.constexpr,
):
    # A program writes a (TO, TR, TW) box of one (b, m, c) cube: TW along the
    # output W axis (contiguous stores), TR along the output axis `r`, TO along
    # the remaining axis `o`.  For codes that keep source W on output W,
    # (o, r) = (D, H) and the load runs along W as well.  For codes that move
    # W, r is the output axis fed by source W: the box is loaded with r
    # fastest (coalesced along source W) and permuted in registers/shared
    # memory so that the store runs along output W.  Offsets are formed per
    # axis and broadcast: one add per voxel instead of div/mod and three
    # multiplies of a flat index.  The programs of a cube are consecutive in
    # launch order, so those in flight stream through a few source boxes.
    pid = _as_index(tl.program_id(0), WIDE)
    cube = pid // PER_CUBE  # (b * M + m) * C + c
    t = pid % PER_CUBE
    c = cube % C
    bm = cube // C
    b = bm // M
    start, st0, st1, st2, w_axis = _cube_geometry(
        origins_ptr, index_ptr, rot_ptr, bm, b, c, N, D, H, W, s_n, s_c, s_d, s_h, s_w,
        CD, CH, CW, HAS_INDEX, HAS_ROT, WIDE)
    r_is_d = w_axis == 0  # W moved to output D: tiles span (D, W), o = H
    st_o = tl.where(r_is_d, st1, st0)
    st_r = tl.where(r_is_d, st0, st1)
    n_o = tl.where(r_is_d, CH, CD)
    n_r = tl.where(r_is_d, CD, CH)
    out_o = tl.where(r_is_d, CW, CH * CW)
    out_r = tl.where(r_is_d, CH * CW, CW)
    TILES_W: tl.constexpr = (CW + TW - 1) // TW
    tiles_r = (n_r + TR - 1) // TR
    jw = t % TILES_W
    rest = t // TILES_W
    io = (rest // tiles_r) * TO + tl.arange(0, TO)
    ir = (rest % tiles_r) * TR + tl.arange(0, TR)
    i2 = jw * TW + tl.arange(0, TW)
    o_part = (io * st_o)[:, None, None]
    valid = (io < n_o)[:, None, None] & (ir < n_r)[None, :, None] & (i2 < CW)[None, None, :]
    out_offs = cube * (CD * CH * CW) + (io * out_o)[:, None, None] + (ir * out_r)[None, :, None] + i2[None, None, :]
    # Each branch stores its own tile: a value merged after the branch takes
    # one layout for both, which cost the W-keeping path two round trips
    # through shared memory (seen in the sm_90 TTGIR: 2 convert_layout).
    if w_axis == 2:
        x = tl.load(src_ptr + start + o_part + (ir * st_r)[None, :, None] + (i2 * st2)[None, None, :],
                    mask=valid, other=0)
        _finish_and_store(x, out_ptr, out_offs, valid, b, bm, mask_ptr, scale_ptr, shift_ptr, params_ptr,
                          intensity_ptr, C, scale_value, shift_value, clamp_lo, clamp_hi, fill, seed_lo, seed_hi,
                          threshold, HAS_MASK, KEEP_RANDOM, HAS_SCALE, HAS_SHIFT, HAS_LO, HAS_HI, ARITH, F64,
                          PARAMS_IN_TENSOR, VIA_F32, BF16_RTNE, HAS_INTENSITY, CD, CH, CW)
    else:
        valid_t = (io < n_o)[:, None, None] & (i2 < CW)[None, :, None] & (ir < n_r)[None, None, :]
        xt = tl.load(src_ptr + start + o_part + (i2 * st2)[None, :, None] + (ir * st_r)[None, None, :],
                     mask=valid_t, other=0)
        _finish_and_store(tl.permute(xt, (0, 2, 1)), out_ptr, out_offs, valid, b, bm, mask_ptr, scale_ptr,
                          shift_ptr, params_ptr, intensity_ptr, C, scale_value, shift_value, clamp_lo, clamp_hi,
                          fill, seed_lo, seed_hi, threshold, HAS_MASK, KEEP_RANDOM, HAS_SCALE, HAS_SHIFT, HAS_LO,
                          HAS_HI, ARITH, F64, PARAMS_IN_TENSOR, VIA_F32, BF16_RTNE, HAS_INTENSITY, CD, CH, CW)


@triton.jit
def _extract_cubes_affine_kernel(
    src_ptr, out_ptr, affine_ptr, box_ptr, origins_ptr, index_ptr, rot_ptr, mask_ptr, scale_ptr, shift_ptr,
    params_ptr, intensity_ptr, N, C, D, H, W, M,
    s_n, s_c, s_d, s_h, s_w,
    scale_value, shift_value, clamp_lo, clamp_hi, fill, seed_lo, seed_hi, threshold,
    CD: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
    HAS_INDEX: tl.constexpr, HAS_ROT: tl.constexpr, HAS_MASK: tl.constexpr, KEEP_RANDOM: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr,
    F64: tl.constexpr, PARAMS_IN_TENSOR: tl.constexpr, VIA_F32: tl.constexpr, BF16_RTNE: tl.constexpr,
    BLOCK: tl.constexpr, WIDE: tl.constexpr, HAS_INTENSITY: tl.constexpr,
):
    # The affine read (augmentation in the cut): one program interpolates
    # BLOCK consecutive output voxels of one (b, m, c) cube from eight source
    # voxels each (float64, as csrc/cpu extract_cubes_affine_kernel), then
    # the value stage and the mask of the copy kernel.  Stores are
    # contiguous; the eight gathers follow the affine, so no tiling helps them.
    cube, c, bm, b, offs, valid, i0, i1, i2 = _flat_voxels(C, M, CD, CH, CW, BLOCK, WIDE)
    read = valid
    if HAS_MASK and not KEEP_RANDOM:  # a wholly filled cube reads nothing
        read = valid & (tl.load(mask_ptr + bm) == 0)
    zl, zh, fz, yl, yh, fy, xl, xh, fx = _affine_read(
        affine_ptr, box_ptr, origins_ptr, rot_ptr, b, bm, i0, i1, i2, CD, CH, CW, HAS_ROT)
    base = _volume(index_ptr, b, N, HAS_INDEX, WIDE) * _as_index(s_n, WIDE) + c * _as_index(s_c, WIDE)
    x = _interpolate(src_ptr, base, zl, zh, fz, yl, yh, fy, xl, xh, fx, _as_index(s_d, WIDE),
                     _as_index(s_h, WIDE), _as_index(s_w, WIDE), read, WIDE)
    _finish_and_store(x, out_ptr, cube * (CD * CH * CW) + offs, valid, b, bm, mask_ptr, scale_ptr, shift_ptr,
                      params_ptr, intensity_ptr, C, scale_value, shift_value, clamp_lo, clamp_hi, fill, seed_lo,
                      seed_hi, threshold, HAS_MASK, KEEP_RANDOM, HAS_SCALE, HAS_SHIFT, HAS_LO, HAS_HI, True, F64,
                      PARAMS_IN_TENSOR, VIA_F32, BF16_RTNE, HAS_INTENSITY, CD, CH, CW)


@triton.jit
def _extract_cubes_backward_kernel(
    grad_ptr, acc_ptr, src_ptr, affine_ptr, box_ptr, origins_ptr, index_ptr, rot_ptr, mask_ptr, scale_ptr,
    shift_ptr, params_ptr,
    N, C, D, H, W, M,
    s_n, s_c, s_d, s_h, s_w,
    g_b, g_m, g_c, g_0, g_1, g_2,
    scale_value, shift_value, clamp_lo, clamp_hi, seed_lo, seed_hi, threshold,
    CD: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
    HAS_INDEX: tl.constexpr, HAS_ROT: tl.constexpr, HAS_MASK: tl.constexpr, KEEP_RANDOM: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr,
    F64: tl.constexpr, PARAMS_IN_TENSOR: tl.constexpr, BLOCK: tl.constexpr, WIDE: tl.constexpr,
    GRAD_FLAT: tl.constexpr, AFFINE: tl.constexpr,
):
    # Gradient w.r.t. the source: every output voxel adds grad * scale
    # (zero where masked out or clamped) to the voxel it was read from, or
    # with AFFINE to the eight voxels it interpolated, times their weights.
    # With atomics: boxes may overlap, indices repeat, and corners are
    # shared by neighbouring output voxels; the order of the adds, and so
    # the last bits of a sum, varies from run to run, which the tests'
    # tolerance (1e-12 in float64) absorbs, and a gradient w.r.t. a bank
    # (the only input this op differentiates) is rarely asked for.  `acc` is
    # a contiguous buffer of the source's shape in the compute dtype.  One
    # program: BLOCK consecutive voxels of one (b, m, c) cube.
    cube, c, bm, b, offs, valid, i0, i1, i2 = _flat_voxels(C, M, CD, CH, CW, BLOCK, WIDE)
    a_h = _as_index(W, WIDE)  # contiguous strides of `acc`
    a_d = H * a_h
    a_c = D * a_d
    a_n = C * a_c
    if AFFINE:
        zl, zh, fz, yl, yh, fy, xl, xh, fx = _affine_read(
            affine_ptr, box_ptr, origins_ptr, rot_ptr, b, bm, i0, i1, i2, CD, CH, CW, HAS_ROT)
        n = _volume(index_ptr, b, N, HAS_INDEX, WIDE)
    else:
        start, st0, st1, st2, w_axis = _cube_geometry(
            origins_ptr, index_ptr, rot_ptr, bm, b, c, N, D, H, W, a_n, a_c, a_d, a_h, 1, CD, CH, CW,
            HAS_INDEX, HAS_ROT, WIDE)
    out_offs = cube * (CD * CH * CW) + offs
    if F64:
        ctype = tl.float64
    else:
        ctype = tl.float32
    if PARAMS_IN_TENSOR:  # float64 scalars travel in a tensor (kernel float args are fp32)
        scale_value = tl.load(params_ptr + 0)
        shift_value = tl.load(params_ptr + 1)
        clamp_lo = tl.load(params_ptr + 2)
        clamp_hi = tl.load(params_ptr + 3)
    if GRAD_FLAT:  # contiguous gradient
        g_offs = out_offs
    else:  # read through its strides (autograd hands over expanded gradients: no copy first)
        g_offs = (b * _as_index(g_b, WIDE) + (bm - b * M) * _as_index(g_m, WIDE) + c * _as_index(g_c, WIDE)
                  + i0 * _as_index(g_0, WIDE) + i1 * _as_index(g_1, WIDE) + i2 * _as_index(g_2, WIDE))
    g = tl.load(grad_ptr + g_offs, mask=valid, other=0).to(ctype)
    if HAS_SCALE:
        scale = tl.load(scale_ptr + b).to(ctype)
    else:
        scale = scale_value
    g = g * scale
    if HAS_LO or HAS_HI:
        # The clamp passes the gradient where lo <= v <= hi (as torch.clamp):
        # recompute v from the source voxel (or the eight it interpolates).
        if AFFINE:
            x = _interpolate(src_ptr, n * _as_index(s_n, WIDE) + c * _as_index(s_c, WIDE),
                             zl, zh, fz, yl, yh, fy, xl, xh, fx, _as_index(s_d, WIDE), _as_index(s_h, WIDE),
                             _as_index(s_w, WIDE), valid, WIDE).to(ctype)
        else:
            s_start, t0, t1, t2, w_axis = _cube_geometry(
                origins_ptr, index_ptr, rot_ptr, bm, b, c, N, D, H, W, s_n, s_c, s_d, s_h, s_w, CD, CH, CW,
                HAS_INDEX, HAS_ROT, WIDE)
            x = tl.load(src_ptr + s_start + i0 * t0 + i1 * t1 + i2 * t2, mask=valid, other=0).to(ctype)
        if HAS_SHIFT:
            v = x * scale + tl.load(shift_ptr + b).to(ctype)
        else:
            v = x * scale + shift_value
        inside = valid
        if HAS_LO:
            inside = inside & (v >= clamp_lo)
        if HAS_HI:
            inside = inside & (v <= clamp_hi)
        g = tl.where(inside, g, 0)
    if HAS_MASK:
        masked = tl.load(mask_ptr + bm) != 0
        if KEEP_RANDOM:
            g = tl.where(masked & ~_keep(out_offs, seed_lo, seed_hi, threshold), 0, g)
        else:
            g = tl.where(masked, 0, g)
    if AFFINE:
        base = n * a_n + c * a_c
        for dz in tl.static_range(2):
            for dy in tl.static_range(2):
                for dx in tl.static_range(2):
                    w, off = _corner(dz, dy, dx, zl, zh, fz, yl, yh, fy, xl, xh, fx, a_d, a_h, 1, WIDE)
                    tl.atomic_add(acc_ptr + base + off, w.to(ctype) * g, mask=valid)
    else:
        tl.atomic_add(acc_ptr + start + i0 * st0 + i1 * st1 + i2 * st2, g, mask=valid)


def _argument_pointers(p: ExtractCubesParams) -> tuple:
    """The argument tensors as the kernels index them: contiguous (a strided,
    stride-0 or offset view is copied), with the source standing in for
    absent ones (never read: their HAS_* flag is off); a mask that replaces
    no voxel (keep_prob 1) is absent.

    Copied, not read through their strides: 2-core VM, B=32 x M=8, the six
    .contiguous() calls cost 1.5 us a launch when the arguments are already
    contiguous (sample_puzzle's outputs always are) and 16 us when five need a
    copy, while ten stride arguments cost 2.1 us a launch in Triton's
    argument specialisation alone, and one compile per stride pattern (a
    stride of 1 or a multiple of 16 is specialised on)."""
    mask = p.mask if p.masks_voxels else None
    return tuple(t.contiguous() if t is not None else p.source
                 for t in (p.origins, p.index, p.rotations, mask, p.scale_tensor, p.shift_tensor))


def _scalars(p: ExtractCubesParams) -> tuple:
    """scale_value, shift_value, clamp_lo, clamp_hi as kernel floats (0 for an absent bound: never read)."""
    lo, hi = p.clamp_bounds
    return float(p.scale_value), float(p.shift_value), float(lo or 0.0), float(hi or 0.0)


def _flags(p: ExtractCubesParams) -> dict:
    """Compile-time constants shared by the forward and backward kernels."""
    CD, CH, CW = p.cube_size
    lo, hi = p.clamp_bounds
    return dict(CD=CD, CH=CH, CW=CW,
                HAS_INDEX=p.index is not None, HAS_ROT=p.rotations is not None, HAS_MASK=p.masks_voxels,
                KEEP_RANDOM=p.masks_voxels and p.keep_threshold > 0,
                HAS_SCALE=p.scale_tensor is not None, HAS_SHIFT=p.shift_tensor is not None,
                HAS_LO=lo is not None, HAS_HI=hi is not None)


def _intensity_pointer(p: ExtractCubesParams) -> Tensor:
    """The (B, M, 10) cube_intensity as the kernels read it: float64 (its noise_key exact), contiguous; the
    source when absent (never read)."""
    return p.cube_intensity.to(torch.float64).contiguous() if p.cube_intensity is not None else p.source


def _affine_pointer(p: ExtractCubesParams) -> Tensor:
    """The (B, 3, 4) affine as the kernels read it: float64 (the position
    math's dtype, whatever the caller's), contiguous; the source when absent
    (never read)."""
    return p.affine.to(torch.float64).contiguous() if p.affine is not None else p.source


def read_boxes(p: ExtractCubesParams) -> Tensor:
    """Each sample's read box as the kernels read it: (B, 2, 3) int32, clamped
    into the source as csrc/extract_cubes.h read_box_of clamps it (the whole
    source without ``read_box``); the source when there is no affine (never read)."""
    if p.affine is None:
        return p.source
    source = p.source
    last = torch.tensor(source.shape[2:], device=source.device, dtype=torch.int64) - 1
    if p.read_box is None:
        whole = torch.stack([torch.zeros_like(last), last])
        return whole.expand(p.origins.shape[0], 2, 3).to(torch.int32).contiguous()
    bottom = torch.minimum(p.read_box[:, 0].to(torch.int64).clamp_min(0), last)
    top = torch.maximum(torch.minimum(p.read_box[:, 1].to(torch.int64), last), bottom)
    return torch.stack([bottom, top], 1).to(torch.int32).contiguous()


# A flat GPU program (the backward, the affine read) takes 1024 voxels with 4 warps: 8 a thread.  Not
# measured on a GPU for the affine read.
FLAT_GPU_BLOCK = 1024


def _flat_block(cube_size: Sequence[int], device: torch.device, tile: Optional[Sequence[int]] = None) -> int:
    """BLOCK of the kernels whose program takes consecutive voxels of one
    cube: the whole cube (up to 64k voxels) under the interpreter, where a
    program costs the same whatever its size, FLAT_GPU_BLOCK on the GPU; the
    product of ``tile`` (rounded up to a power of two) when given, so that
    tests split cubes under the interpreter."""
    if tile is not None:
        return triton.next_power_of_2(math.prod(int(v) for v in tile))
    numel = triton.next_power_of_2(math.prod(int(s) for s in cube_size))
    return min(numel, FLAT_GPU_BLOCK if device.type == "cuda" else 1 << 16)


def launch_backward(grad: Tensor, p: ExtractCubesParams) -> Tensor:
    """Gradient w.r.t. ``p.source`` (its shape, contiguous, its dtype) of output gradient ``grad``."""
    source = p.source
    N, C, D, H, W = source.shape
    B, M = p.origins.shape[0], p.origins.shape[1]
    compute = opmath_dtype(source.dtype, grad.dtype)
    acc = torch.zeros(source.shape, dtype=compute, device=source.device)
    if grad.numel() == 0:
        return acc.to(source.dtype)
    f64 = compute == torch.float64
    lo, hi = p.clamp_bounds
    params = source
    if f64:
        params = torch.tensor([p.scale_value, p.shift_value, lo if lo is not None else 0.0,
                               hi if hi is not None else 0.0], dtype=torch.float64, device=source.device)
    block = _flat_block(p.cube_size, source.device)
    grid = (B * M * C * triton.cdiv(math.prod(p.cube_size), block),)
    _extract_cubes_backward_kernel[grid](
        grad, acc, source, _affine_pointer(p), read_boxes(p), *_argument_pointers(p), params,
        N, C, D, H, W, M, *source.stride(), *grad.stride(),
        *_scalars(p), *seed_halves(p.seed), p.keep_threshold, **_flags(p),
        F64=f64, PARAMS_IN_TENSOR=f64, BLOCK=block,
        WIDE=not (_fits_int32(source, grad) and _span(grad) < 2**31 and acc.numel() < 2**31),
        GRAD_FLAT=grad.is_contiguous(), AFFINE=p.affine is not None,
        num_warps=GPU_WARPS if source.device.type == "cuda" else 1,
    )
    return acc.to(source.dtype)


# A GPU program writes 4 KB of output with 4 warps.  H100, B=32 x 8 cubes of 64^3, paper codes, out=
# (docs/results/h100-20261126T193004Z-cuda.json), median ms for 4/8/16 KB blocks with 4 warps: float32
# 0.283/0.304/0.302 (8 warps: 0.281/0.315/0.380), bfloat16 0.175/0.176/- (8 warps: 0.186/0.255/-).
GPU_BLOCK_BYTES = 4096
GPU_WARPS = 4


def tile_shape(cube_size: Sequence[int], device: torch.device, dtype: torch.dtype,
               tile: Optional[Sequence[int]] = None) -> tuple[int, int, int, int]:
    """(TO, TR, TW, num_warps) of a program's output box.

    Under the interpreter each program costs ~5 ms whatever its size, so a
    program takes a whole cube (up to 64k voxels).  On the GPU a program
    writes GPU_BLOCK_BYTES, whole output rows first.  ``tile`` (TO, TR, TW)
    forces the box (rounded up to powers of two): the tests split cubes into
    GPU-sized tiles under the interpreter with it."""
    CD, CH, CW = (int(s) for s in cube_size)
    if tile is not None:
        to, tr, tw = (triton.next_power_of_2(int(v)) for v in tile)
        return to, tr, tw, GPU_WARPS if device.type == "cuda" else 1
    tw = triton.next_power_of_2(CW)
    rows = triton.next_power_of_2(max(CD, CH))
    if device.type != "cuda":
        tr = min(rows, max(1, (1 << 16) // tw))
        return min(rows, max(1, (1 << 16) // (tw * tr))), tr, tw, 1
    esize = torch.empty((), dtype=dtype).element_size()
    block = triton.next_power_of_2(GPU_BLOCK_BYTES // esize)
    tw = min(tw, max(16, block))
    tr = min(rows, max(1, block // tw))
    to = min(rows, max(1, block // (tw * tr)))
    return to, tr, tw, GPU_WARPS


def _programs_per_cube(cube_size: Sequence[int], to: int, tr: int, tw: int) -> int:
    """Enough programs for either split of a cube: (o, r) = (D, H) or (H, D)."""
    CD, CH, CW = (int(s) for s in cube_size)
    cdiv = triton.cdiv
    return max(cdiv(CD, to) * cdiv(CH, tr), cdiv(CH, to) * cdiv(CD, tr)) * cdiv(CW, tw)


def _span(t: Tensor) -> int:
    """One past the largest element offset of ``t`` (its strides, not its numel)."""
    return sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) + 1


def _fits_int32(source: Tensor, out: Tensor) -> bool:
    """True when every source and output offset the kernel forms fits in int32."""
    return _span(source) < 2**31 and out.numel() < 2**31 and max(abs(s) for s in source.stride()) < 2**31


def launch(p: ExtractCubesParams, out: Tensor, tile: Optional[Sequence[int]] = None) -> None:
    """Run the kernel into ``out`` (arguments checked by the caller, ``p.cube_size`` three ints).  ``tile``:
    see :func:`tile_shape` (for the affine read, :func:`_flat_block`)."""
    source = p.source
    N, C, D, H, W = source.shape
    B, M = p.origins.shape[0], p.origins.shape[1]
    if out.numel() == 0:
        return
    odt = out.dtype
    f64 = torch.float64 in (source.dtype, odt)
    lo, hi = p.clamp_bounds
    params = source  # dummy pointer when unused
    params_in_tensor = f64 and (p.changes_values or p.masks_voxels)
    if params_in_tensor:
        params = torch.tensor([p.scale_value, p.shift_value, lo if lo is not None else 0.0,
                               hi if hi is not None else 0.0, p.fill], dtype=torch.float64, device=source.device)
    # Half outputs go through float32: double -> float -> half matches torch,
    # and a direct int16/uint8 -> bfloat16 cast gave NaNs and denormals in the
    # interpreter (float32 holds every int16 exactly, so the rounding is the same).
    via_f32 = (f64 or not source.dtype.is_floating_point) and odt in (torch.float16, torch.bfloat16)
    scalar_args = (N, C, D, H, W, M, *source.stride(), *_scalars(p), float(p.fill), *seed_halves(p.seed),
                   p.keep_threshold)
    consts = dict(_flags(p), F64=f64, PARAMS_IN_TENSOR=params_in_tensor, VIA_F32=via_f32,
                  BF16_RTNE=_INTERPRET and odt == torch.bfloat16, WIDE=not _fits_int32(source, out),
                  HAS_INTENSITY=p.cube_intensity is not None)
    if p.affine is not None:
        block = _flat_block(p.cube_size, source.device, tile)
        grid = (B * M * C * triton.cdiv(math.prod(p.cube_size), block),)
        _extract_cubes_affine_kernel[grid](source, out, _affine_pointer(p), read_boxes(p), *_argument_pointers(p),
                                           params, _intensity_pointer(p),
                                           *scalar_args, **consts, BLOCK=block,
                                           num_warps=GPU_WARPS if source.device.type == "cuda" else 1)
        return
    to, tr, tw, warps = tile_shape(p.cube_size, source.device, odt, tile)
    per_cube = _programs_per_cube(p.cube_size, to, tr, tw)
    grid = (B * M * C * per_cube,)
    _extract_cubes_kernel[grid](source, out, *_argument_pointers(p), params, _intensity_pointer(p), *scalar_args,
                                **consts,
                                ARITH=p.changes_values, TO=to, TR=tr, TW=tw, PER_CUBE=per_cube, num_warps=warps)
