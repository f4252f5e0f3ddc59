"""Triton kernel of ``extract_cubes``: kernel, launcher, registered op.

One program writes one contiguous chunk of one (b, m, c) cube, so stores are
contiguous and, for codes that keep W as the fastest axis, loads are contiguous
(or reversed) too.  The cube extent is a compile-time constant: div/mod by it
compile to multiply-shift, and a training run uses one cube size.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch
from torch import Tensor
import triton
import triton.language as tl

from .. import reference

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _size_of(axis, CD: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr):
    return tl.where(axis == 0, CD, tl.where(axis == 1, CH, CW))


@triton.jit
def _extract_cubes_kernel(
    src_ptr, out_ptr, origins_ptr, index_ptr, rot_ptr, mask_ptr, scale_ptr, shift_ptr, params_ptr,
    N, C, D, H, W, M,
    s_n, s_c, s_d, s_h, s_w,
    scale_value, shift_value, clamp_lo, clamp_hi, fill, seed, threshold,
    CD: tl.constexpr, CH: tl.constexpr, CW: tl.constexpr,
    HAS_INDEX: tl.constexpr, HAS_ROT: tl.constexpr, HAS_MASK: tl.constexpr, KEEP_RANDOM: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_LO: tl.constexpr, HAS_HI: tl.constexpr,
    ARITH: tl.constexpr, F64: tl.constexpr, PARAMS_IN_TENSOR: tl.constexpr, VIA_F32: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One flat grid with the chunks of a cube consecutive: the programs in
    # flight stream through a few source boxes instead of one chunk of every
    # cube (H100, B=32, 8 cubes of 64^3 f32: see docs/performance.md).
    pid = tl.program_id(0).to(tl.int64)
    chunks: tl.constexpr = (CD * CH * CW + BLOCK - 1) // BLOCK
    cube = pid // chunks  # (b * M + m) * C + c
    chunk = pid % chunks
    c = cube % C
    bm = cube // C
    b = bm // M

    # Per-cube geometry; index, origins and codes are clamped so that no input
    # (validate=False) can take a load out of the source.
    if HAS_INDEX:
        n = tl.load(index_ptr + b).to(tl.int64)
        n = tl.minimum(tl.maximum(n, 0), N - 1)
    else:
        n = b
    oz = tl.minimum(tl.maximum(tl.load(origins_ptr + bm * 3 + 0).to(tl.int64), 0), D - CD)
    oy = tl.minimum(tl.maximum(tl.load(origins_ptr + bm * 3 + 1).to(tl.int64), 0), H - CH)
    ox = tl.minimum(tl.maximum(tl.load(origins_ptr + bm * 3 + 2).to(tl.int64), 0), W - CW)
    start = n * s_n + c * s_c + oz * s_d + oy * s_h + ox * s_w
    if HAS_ROT:
        code = tl.load(rot_ptr + bm).to(tl.int64) % 48
        code = tl.where(code < 0, code + 48, code)
        # axis_order(p, a) = (0x061209211824 >> (8p + 2a)) & 3 (see csrc/extract_cubes.h)
        p = code // 8
        a0 = (0x061209211824 >> (8 * p)) & 3
        a1 = (0x061209211824 >> (8 * p + 2)) & 3
        a2 = (0x061209211824 >> (8 * p + 4)) & 3
        keeps_shape = (_size_of(a0, CD, CH, CW) == CD) & (_size_of(a1, CD, CH, CW) == CH) & (_size_of(a2, CD, CH, CW) == CW)
        a0 = tl.where(keeps_shape, a0, 0)
        a1 = tl.where(keeps_shape, a1, 1)
        a2 = tl.where(keeps_shape, a2, 2)
        st0 = tl.where(a0 == 0, s_d, tl.where(a0 == 1, s_h, s_w))
        st1 = tl.where(a1 == 0, s_d, tl.where(a1 == 1, s_h, s_w))
        st2 = tl.where(a2 == 0, s_d, tl.where(a2 == 1, s_h, s_w))
        f0 = (code & 1) != 0
        f1 = (code & 2) != 0
        f2 = (code & 4) != 0
        start += tl.where(f0, st0 * (CD - 1), 0) + tl.where(f1, st1 * (CH - 1), 0) + tl.where(f2, st2 * (CW - 1), 0)
        st0 = tl.where(f0, -st0, st0)
        st1 = tl.where(f1, -st1, st1)
        st2 = tl.where(f2, -st2, st2)
    else:
        st0 = s_d
        st1 = s_h
        st2 = s_w

    offs = chunk * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    valid = offs < CD * CH * CW
    i2 = offs % CW
    i1 = (offs // CW) % CH
    i0 = offs // (CW * CH)
    x = tl.load(src_ptr + start + i0 * st0 + i1 * st1 + i2 * st2, mask=valid, other=0)

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
        # Compare-and-select (not minimum/maximum) so NaN passes through, as in torch.clamp.
        if HAS_LO:
            v = tl.where(v < clamp_lo, clamp_lo, v)
        if HAS_HI:
            v = tl.where(v > clamp_hi, clamp_hi, v)
        if VIA_F32:
            v = v.to(tl.float32)
        y = v.to(out_dtype)
    else:
        if VIA_F32:
            y = x.to(tl.float32).to(out_dtype)
        else:
            y = x.to(out_dtype)

    out_offs = cube * (CD * CH * CW) + offs
    if HAS_MASK:
        masked = tl.load(mask_ptr + bm) != 0
        if PARAMS_IN_TENSOR:
            fill_v = tl.load(params_ptr + 4).to(out_dtype)
        else:
            fill_v = tl.full([], fill, tl.float32).to(out_dtype)
        if KEEP_RANDOM:  # splitmix64 of the output's linear index (normative, see the core issue)
            z = tl.full([], seed, tl.int64).to(tl.uint64, bitcast=True) + (out_offs.to(tl.uint64, bitcast=True) + 1) * 0x9E3779B97F4A7C15
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
            z = (z ^ (z >> 27)) * 0x94D049BB133111EB
            z = z ^ (z >> 31)
            keep = (z >> 40) < tl.full([], threshold, tl.int64).to(tl.uint64)
            y = tl.where(masked & ~keep, fill_v, y)
        else:
            y = tl.where(masked, fill_v, y)
    tl.store(out_ptr + out_offs, y, mask=valid)


def _block_size(cube_numel: int, device: torch.device, dtype: torch.dtype) -> tuple[int, int]:
    """(BLOCK, num_warps).  Under the interpreter each program costs ~5 ms
    whatever its size, so take whole cubes at once."""
    if device.type != "cuda":
        return min(triton.next_power_of_2(cube_numel), 1 << 16), 1
    # 8 KB of output per program: H100, f32 paper codes, B=32 x 8 cubes of
    # 64^3 (2-D grid): BLOCK 1024/2048/4096 with 4 warps gave 56.1/57.1/56.4 %
    # of the clone ceiling, so the size matters little; bytes, not elements,
    # set it so that 16-bit outputs get the same bytes per program.
    esize = torch.empty((), dtype=dtype).element_size()
    block = int(os.environ.get("RUBIKOPS_TRITON_BLOCK", str(8192 // esize)))
    warps = int(os.environ.get("RUBIKOPS_TRITON_WARPS", "4"))
    return min(block, max(128, triton.next_power_of_2(cube_numel))), warps


def _launch(kernel_runner, source, origins, cube_size, index, rotations, mask, fill, keep_prob, seed, scale, shift,
            scale_value, shift_value, clamp_lo, clamp_hi, out):
    N, C, D, H, W = source.shape
    B, M = origins.shape[0], origins.shape[1]
    CD, CH, CW = (int(s) for s in cube_size)
    if out.numel() == 0:
        return
    odt = out.dtype
    f64 = torch.float64 in (source.dtype, odt)
    arith = scale is not None or shift is not None or clamp_lo is not None or clamp_hi is not None \
        or scale_value != 1.0 or not reference.is_noop_shift(shift_value)
    threshold = reference.keep_threshold(keep_prob)
    if threshold >= (1 << 24):  # keep_prob == 1: a masked cube keeps every voxel
        mask = None
    params = source  # dummy pointer when unused
    params_in_tensor = f64 and (arith or mask is not None)
    if params_in_tensor:
        params = torch.tensor([scale_value, shift_value, clamp_lo if clamp_lo is not None else 0.0,
                               clamp_hi if clamp_hi is not None else 0.0, fill], dtype=torch.float64,
                              device=source.device)
    via_f32 = f64 and odt in (torch.float16, torch.bfloat16)  # match torch: double -> float -> half
    block, warps = _block_size(CD * CH * CW, source.device, odt)
    grid = (B * M * C * triton.cdiv(CD * CH * CW, block),)
    dummy = source
    kernel_runner(_extract_cubes_kernel)[grid](
        source, out, origins, index if index is not None else dummy, rotations if rotations is not None else dummy,
        mask if mask is not None else dummy, scale if scale is not None else dummy,
        shift if shift is not None else dummy, params,
        N, C, D, H, W, M, *source.stride(),
        float(scale_value), float(shift_value), float(clamp_lo or 0.0), float(clamp_hi or 0.0), float(fill),
        int(seed), int(threshold),
        CD=CD, CH=CH, CW=CW,
        HAS_INDEX=index is not None, HAS_ROT=rotations is not None, HAS_MASK=mask is not None,
        KEEP_RANDOM=0 < threshold < (1 << 24) and mask is not None,
        HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None,
        HAS_LO=clamp_lo is not None, HAS_HI=clamp_hi is not None,
        ARITH=arith, F64=f64, PARAMS_IN_TENSOR=params_in_tensor, VIA_F32=via_f32,
        BLOCK=block, num_warps=warps,
    )


def _check(source, origins, cube_size, out_dtype):
    """Cheap shape checks that keep the kernel in bounds when the op is called
    directly through torch.ops (rubikops.extract_cubes validates fully)."""
    torch._check(source.dim() == 5 and origins.dim() == 3 and origins.shape[2] == 3,
                 lambda: "rubikops.extract_cubes: source must be 5-D and origins (B, M, 3)")
    for k in range(3):
        torch._check(1 <= int(cube_size[k]) <= source.shape[2 + k],
                     lambda: f"rubikops.extract_cubes: cube_size {list(cube_size)} does not fit the source")


class _TritonExtractCubes:
    """The registered Triton op and its out= variant (two ops: a custom op
    cannot define an overload)."""

    def __init__(self, functional, out_variant):
        self._functional = functional
        self._out = out_variant

    def __call__(self, *args):
        return self._functional(*args)

    def out(self, *args, out):
        self._out(*args, out)
        return out


def use_triton_op() -> bool:
    """torch.library.triton_op only on a real GPU and when asked for."""
    return not _INTERPRET and os.environ.get("RUBIKOPS_TRITON_OP", "0") not in ("", "0")


def register() -> _TritonExtractCubes:
    from .. import ops

    # Annotated so that torch.library can infer the schema where triton_op
    # takes none (torch 2.11).
    def functional(source: Tensor, origins: Tensor, cube_size: Sequence[int], index: Optional[Tensor],
                   rotations: Optional[Tensor], mask: Optional[Tensor], fill: float, keep_prob: float, seed: int,
                   scale: Optional[Tensor], shift: Optional[Tensor], scale_value: float, shift_value: float,
                   clamp_lo: Optional[float], clamp_hi: Optional[float], out_dtype: Optional[torch.dtype]) -> Tensor:
        _check(source, origins, cube_size, out_dtype)
        odt = out_dtype or reference.default_out_dtype(source.dtype)
        out = torch.empty(ops._out_shape(source, origins, cube_size), dtype=odt, device=source.device)
        _launch(runner, source, origins, cube_size, index, rotations, mask, fill, keep_prob, seed, scale, shift,
                scale_value, shift_value, clamp_lo, clamp_hi, out)
        return out

    def out_variant(source: Tensor, origins: Tensor, cube_size: Sequence[int], index: Optional[Tensor],
                    rotations: Optional[Tensor], mask: Optional[Tensor], fill: float, keep_prob: float, seed: int,
                    scale: Optional[Tensor], shift: Optional[Tensor], scale_value: float, shift_value: float,
                    clamp_lo: Optional[float], clamp_hi: Optional[float], out_dtype: Optional[torch.dtype],
                    out: Tensor) -> None:
        _check(source, origins, cube_size, out_dtype)
        _launch(runner, source, origins, cube_size, index, rotations, mask, fill, keep_prob, seed, scale, shift,
                scale_value, shift_value, clamp_lo, clamp_hi, out)

    schema = ops.EXTRACT_CUBES_SCHEMA.replace("extract_cubes(", "(")
    out_schema = schema.replace(") -> Tensor", ", Tensor(a!) out) -> ()")
    if use_triton_op():
        # Lets inductor trace into the kernel.  On torch 2.11 + Triton 3.6
        # (H100) torch.compile of this op failed inside inductor with
        # "AttributeError: 'int' object has no attribute 'xreplace'", so it is
        # opt-in (RUBIKOPS_TRITON_OP=1) until that is understood.
        from torch.library import triton_op, wrap_triton
        runner = wrap_triton
        func_op = triton_op("rubikops::extract_cubes_triton", functional, mutates_args=())
        out_op = triton_op("rubikops::extract_cubes_triton_out", out_variant, mutates_args=("out",))
    else:
        # An opaque custom op around the same launcher: opcheck and
        # torch.compile(fullgraph=True) pass with it on CPU (interpreter) and GPU.
        runner = lambda k: k  # noqa: E731
        func_op = torch.library.custom_op("rubikops::extract_cubes_triton", functional, mutates_args=(),
                                          schema=schema)
        out_op = torch.library.custom_op("rubikops::extract_cubes_triton_out", out_variant,
                                         mutates_args=("out",), schema=out_schema)
    torch.library.register_fake("rubikops::extract_cubes_triton", ops._extract_cubes_fake)
    torch.library.register_autograd("rubikops::extract_cubes_triton", ops._backward, setup_context=ops._setup_context)
    return _TritonExtractCubes(func_op, out_op)
