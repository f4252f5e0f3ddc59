"""Shared test helpers: backends x dtypes x layouts, per-dtype tolerances, and
random extract_cubes cases."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

import rubikops
from rubikops import backends, reference
from rubikops.rotations import NUM_CODES, preserves_shape

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
ALL_DTYPES = FLOAT_DTYPES + [torch.int16, torch.uint8]
LAYOUTS = ["contiguous", "channels_last", "strided"]


def _backend_params():
    """Every backend that is installed: one that failed to load stays in, so its tests fail, not vanish."""
    params = [pytest.param(("compiled", "cpu"), id="cpu-compiled")]
    interp = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    triton_installed = backends.REGISTRY["triton"].installed
    if triton_installed and interp:
        params.append(pytest.param(("triton", "cpu"), id="cpu-triton-interpreter"))
    if torch.cuda.is_available():
        params.append(pytest.param(("compiled", "cuda"), id="cuda-default", marks=pytest.mark.cuda))
        if rubikops.ops.HAS_CUDA_KERNEL and triton_installed:
            params.append(pytest.param(("triton", "cuda"), id="cuda-triton", marks=pytest.mark.cuda))
    return params


BACKENDS = _backend_params()


def argument_views(t: torch.Tensor) -> dict:
    """``t``'s values as an offset view, a view with doubled strides, and (of its first entry along dim 0)
    a stride-0 expansion; each inside a larger storage."""
    big = torch.zeros((2 * t.numel() + 3,), dtype=t.dtype)
    offset = big[3:3 + t.numel()].view(t.shape)
    offset.copy_(t)
    strided = big.new_zeros((2 * t.numel() + 1,))[1::2].view(t.shape)
    strided.copy_(t)
    expanded = t[:1].clone().expand(t.shape)
    return {"offset": offset, "strided": strided, "expanded": expanded}


def random_volume(gen, shape, dtype, layout="contiguous"):
    """Random voxels in a range typical of the dtype, laid out as asked."""
    N, C, D, H, W = shape
    if layout == "strided":  # every other voxel along W and a transposed H/D storage
        base = _values(gen, (N, C, H, D, 2 * W), dtype)
        return base.transpose(2, 3)[..., ::2]
    x = _values(gen, shape, dtype)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last_3d)
    return x


def _values(gen, shape, dtype):
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    if dtype == torch.int16:
        return torch.randint(-1024, 3072, shape, generator=gen, dtype=torch.int16)  # CT-like HU
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * 100).to(dtype)


@dataclass
class Case:
    source: torch.Tensor
    origins: torch.Tensor
    cube_size: tuple
    kwargs: dict = field(default_factory=dict)

    def to(self, device):
        move = lambda v: v.to(device) if isinstance(v, torch.Tensor) else v  # noqa: E731
        return Case(move(self.source), move(self.origins), self.cube_size,
                    {k: move(v) for k, v in self.kwargs.items()})


def random_case(seed, *, dtype=torch.float32, layout="contiguous", B=2, M=8, C=1, cube=(6, 6, 6),
                vol=(11, 13, 12), N=None, with_index=False, codes="all", mask=None, keep_prob=0.0,
                scale=None, shift=None, clamp=None, out_dtype=None, fill=0.0, int_origins=torch.int64):
    """A reproducible random case.  codes: 'none', 'all' (of those that keep
    the cube's shape), 'flips' or an explicit int code."""
    gen = torch.Generator().manual_seed(seed)
    N = N if N is not None else (B + 2 if with_index else B)
    source = random_volume(gen, (N, C, *vol), dtype, layout)
    hi = torch.tensor([v - c + 1 for v, c in zip(vol, cube)])
    origins = (torch.rand(B, M, 3, generator=gen) * hi).long().to(int_origins)
    kw = dict(fill=fill, keep_prob=keep_prob, out_dtype=out_dtype, clamp=clamp)
    if with_index:
        kw["index"] = torch.randint(0, N, (B,), generator=gen)
    if codes == "all":
        allowed = torch.tensor([c for c in range(NUM_CODES) if preserves_shape(c, cube)])
        kw["rotations"] = allowed[torch.randint(0, len(allowed), (B, M), generator=gen)]
    elif codes == "flips":
        kw["rotations"] = torch.randint(0, 8, (B, M), generator=gen)
    elif isinstance(codes, int):
        kw["rotations"] = torch.full((B, M), codes, dtype=torch.int64)
    if mask is not None:
        kw["mask"] = torch.rand(B, M, generator=gen) < mask
        kw["seed"] = int(torch.randint(0, 2**62, (1,), generator=gen))
    for name, mode in (("scale", scale), ("shift", shift)):
        if mode == "float":
            kw[name] = float(torch.rand(1, generator=gen) * 2 - 0.5)
        elif mode == "tensor":
            kw[name] = torch.rand(B, generator=gen, dtype=torch.float64) * 2 - 0.5
    return Case(source, origins, tuple(cube), kw)


def run(case: Case, backend, **extra):
    name, device = backend
    c = case.to(device)
    return rubikops.extract_cubes(c.source, c.origins, c.cube_size, backend=name, **c.kwargs, **extra)


def expected(case: Case):
    return reference.extract_cubes(case.source, case.origins, case.cube_size, **case.kwargs)


def magnitude(case: Case):
    """|x| * |scale| + |shift| per output voxel: the scale of the rounding error."""
    kw = dict(case.kwargs)
    for name in ("scale", "shift"):
        v = kw.get(name)
        if v is not None:
            kw[name] = v.abs() if isinstance(v, torch.Tensor) else abs(v)
    kw.update(clamp=None, mask=None, out_dtype=torch.float64)
    src = case.source.to(torch.float64).abs() if case.source.dtype.is_floating_point else case.source.abs().double()
    return reference.extract_cubes(src, case.origins, case.cube_size, **kw)


def assert_matches(actual: torch.Tensor, case: Case):
    """Bit-identical where no arithmetic is applied; otherwise within one unit in
    the last place of out_dtype (at the voxel's magnitude) plus the rounding of
    one float32 fused multiply-add, which GPU compilers may form (and, for an
    affine read, the rounding of its float64 positions)."""
    exp = expected(case)
    actual = actual.cpu()
    assert actual.shape == exp.shape and actual.dtype == exp.dtype, (actual.shape, exp.shape, actual.dtype, exp.dtype)
    assert actual.is_contiguous()
    arithmetic = any(case.kwargs.get(k) is not None for k in ("scale", "shift", "clamp", "affine"))
    if not arithmetic:
        assert torch.equal(actual, exp), f"max diff {(actual.double() - exp.double()).abs().max()}"
        return
    mag = magnitude(case)
    out_eps = torch.finfo(exp.dtype).eps
    compute = reference.opmath_dtype(case.source.dtype, exp.dtype)
    tol = out_eps * torch.maximum(exp.double().abs(), mag) + torch.finfo(compute).eps * mag * 2
    if case.kwargs.get("affine") is not None and mag.numel():
        # Read positions in float64 on every path, as a row's start + i * step in the kernels and a matrix
        # product in the reference: a few ulps of position, times a slope of at most the largest magnitude.
        tol = tol + 1e-9 * mag.max()
    diff = (actual.double() - exp.double()).abs()
    bad = diff > tol
    assert not bad.any(), f"{int(bad.sum())} voxels off; worst {diff[bad].max()} vs tol {tol[bad].min()}"


# -- the per-cube intensity stage, independently in NumPy (the rule: rubikops._schema.CUBE_INTENSITY_FIELDS) ----
_U64 = np.uint64


def splitmix64_numpy(seed: int, count: int) -> np.ndarray:
    """splitmix64 of seed + (k + 1) * golden for k < count, in NumPy's wrapping uint64 arithmetic."""
    k = np.arange(1, count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = _U64(seed % (1 << 64)) + k * _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def noise_numpy(key: int, count: int) -> np.ndarray:
    """The stage's noise of voxels 0..count-1: the four 16-bit fields of each hash summed, centred, scaled
    to unit variance (float64)."""
    z = splitmix64_numpy(key, count)
    total = sum(((z >> _U64(16 * f)) & _U64(0xFFFF)).astype(np.int64) for f in range(4))
    return (total - 131070) * (np.sqrt(3.0) / 65536.0)


def cube_intensity_numpy(v: np.ndarray, row) -> np.ndarray:
    """One cube's (C, d, h, w) float64 values through its row (gain, offset, gamma, low, span, noise,
    bias_d, bias_h, bias_w, noise_key) of cube_intensity."""
    gain, offset, gamma, low, span, noise, *bias, key = (float(x) for x in row)
    v = v * gain + offset
    if gamma != 1.0:
        t = (v - low) / span
        inside = (t > 0) & (t < 1)
        v = np.where(inside, low + span * np.clip(t, 0, 1) ** gamma, v)
    if any(c != 0.0 for c in bias):
        r = [np.linspace(-1.0, 1.0, n) if n > 1 else np.zeros(1) for n in v.shape[1:]]
        field = (np.exp(bias[0] * r[0])[:, None, None] * np.exp(bias[1] * r[1])[None, :, None]
                 * np.exp(bias[2] * r[2])[None, None, :])
        centre = low + span * 0.5
        v = centre + (v - centre) * field
    if noise != 0.0:
        v = v + noise * noise_numpy(int(key), v.size).reshape(v.shape)
    return v
