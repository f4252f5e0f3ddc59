"""The op's per-cube intensity stage (``cube_intensity``) against an independent NumPy formula
(tests.testing.cube_intensity_numpy): every backend, plain and affine reads, float32, float64 and int16
sources through the value map, masks, clamps and turns, every view of the argument; the noise's
distribution; gradients by finite differences; opcheck; clear errors."""
import math
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rubikops
from rubikops import ops, reference
from rubikops._schema import ExtractCubesParams
from rubikops.rotations import NUM_CODES, preserves_shape

from .testing import BACKENDS, argument_views, cube_intensity_numpy, noise_numpy, splitmix64_numpy

NAMES = [("torch", "cpu")] + [p.values[0] for p in BACKENDS]
IDS = ["torch"] + [p.id for p in BACKENDS]


def _rows(gen, B, M, identity_share=0.25):
    """Random rows (float64): contrast, offsets, gammas below and above 1, windows, noise and bias, integer
    keys below 2**53; about a quarter of each step left at its identity (gamma 1, no bias, no noise)."""
    u = torch.rand(B, M, 8, generator=gen, dtype=torch.float64)
    off = torch.rand(B, M, 3, generator=gen) < identity_share
    gamma = torch.where(off[..., 0], 1.0, torch.exp((u[..., 2] * 2 - 1) * math.log(2.0)))
    bias = torch.where(off[..., 1:2], 0.0, (u[..., 5:8] * 2 - 1) * 0.4)
    noise = torch.where(off[..., 2], 0.0, u[..., 4] * 0.3)
    key = torch.randint(0, 1 << 53, (B, M), generator=gen, dtype=torch.int64).double()
    return torch.cat([(0.5 + u[..., 0:1]), (u[..., 1:2] - 0.5), gamma[..., None], (u[..., 3:4] * 2 - 3),
                      torch.full((B, M, 1), 4.0, dtype=torch.float64), noise[..., None], bias, key[..., None]], -1)


def _case(seed, dtype=torch.float32, cube=(4, 4, 4), B=3, M=4, affine=False):
    gen = torch.Generator().manual_seed(seed)
    vol = (9, 10, 8)
    kw = dict(index=torch.randint(0, 3, (B,), generator=gen))
    if dtype == torch.int16:  # a quantised bank: physical = stored * scale + shift, per sample
        source = torch.randint(-1024, 3072, (3, 2, *vol), generator=gen, dtype=torch.int16)
        kw.update(scale=torch.rand(B, generator=gen, dtype=torch.float64) * 1e-3 + 5e-4,
                  shift=torch.rand(B, generator=gen, dtype=torch.float64) - 0.5)
    else:
        source = torch.randn(3, 2, *vol, generator=gen, dtype=torch.float64).to(dtype)
    codes = [c for c in range(NUM_CODES) if preserves_shape(c, cube)]
    kw["rotations"] = torch.tensor(codes)[torch.randint(0, len(codes), (B, M), generator=gen)]
    if affine:
        kw["affine"] = torch.cat([torch.eye(3, dtype=torch.float64).expand(B, 3, 3) * 0.9,
                                  torch.rand(B, 3, 1, generator=gen, dtype=torch.float64) * 3], -1)
        origins = torch.randint(-2, 6, (B, M, 3), generator=gen)
    else:
        room = torch.tensor([v - c for v, c in zip(vol, cube)])
        origins = (torch.rand(B, M, 3, generator=gen) * (room + 1)).long()
    kw["cube_intensity"] = _rows(gen, B, M)
    return source, origins, cube, kw


def _expected(source, origins, cube, kw, out_dtype):
    """The op without the stage, clamp or mask (float64: exact values), then the NumPy stage, clamp and mask."""
    plain = {k: v for k, v in kw.items() if k not in ("cube_intensity", "clamp", "mask", "keep_prob", "seed")}
    base = rubikops.extract_cubes(source, origins, cube, out_dtype=torch.float64, backend="torch", **plain)
    B, M = origins.shape[:2]
    rows = kw["cube_intensity"]
    want = np.stack([np.stack([cube_intensity_numpy(base[b, m].numpy(), rows[b, m].tolist()) for m in range(M)])
                     for b in range(B)])
    if kw.get("clamp") is not None:
        want = np.clip(want, *kw["clamp"])
    want = torch.from_numpy(want).to(out_dtype)
    if kw.get("mask") is not None:
        keep = reference.keep_mask(want.numel(), kw.get("keep_prob", 0.0), kw.get("seed", 0)).view(want.shape)
        want = torch.where(kw["mask"][:, :, None, None, None, None] & ~keep, kw.get("fill", 0.0), want)
    return want


@pytest.mark.parametrize("backend", NAMES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int16])
@pytest.mark.parametrize("affine", [False, True], ids=["copy", "affine"])
@pytest.mark.parametrize("cube", [(4, 4, 4), (3, 5, 2), (1, 6, 3)])
def test_matches_the_numpy_formula(backend, dtype, affine, cube):
    name, device = backend
    source, origins, cube, kw = _case(zlib.crc32(repr((dtype, affine, cube)).encode()) % 1000, dtype, cube,
                                      affine=affine)
    kw.update(mask=torch.tensor([[True, False, False, True]] * 3), keep_prob=0.5, seed=5, fill=-7.0, clamp=(-2.5, 3.0))
    out_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    want = _expected(source, origins, cube, kw, out_dtype)
    moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kw.items()}
    got = rubikops.extract_cubes(source.to(device), origins.to(device), cube, backend=name, **moved).cpu()
    # float32: the arithmetic's rounding on values below 10 (and Triton's exp2/log2 gamma); float64: exact
    # but for the order of the corners' sums
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 if out_dtype == torch.float32 else 1e-10)
    assert not torch.equal(got, rubikops.extract_cubes(source, origins, cube, backend="torch",
                                                      **{k: v for k, v in kw.items() if k != "cube_intensity"}))


@pytest.mark.parametrize("backend", NAMES, ids=IDS)
@pytest.mark.parametrize("view", ["offset", "strided", "expanded", "float32"])
def test_cube_intensity_reads_as_its_values_through_any_view(backend, view):
    """An offset, strided or stride-0 view, or a float32 copy (keys below 2**24 are exact in it), reads as
    the dense float64 tensor of its values."""
    name, device = backend
    source, origins, cube, kw = _case(7, affine=True)
    rows = kw["cube_intensity"]
    rows[..., -1] = torch.randint(0, 1 << 24, rows.shape[:2], generator=torch.Generator().manual_seed(1)).double()
    rows = rows.float().double()  # values float32 holds exactly
    viewed = rows.float() if view == "float32" else argument_views(rows)[view]
    dense = viewed.double().contiguous()
    run = lambda q: rubikops.extract_cubes(source.to(device), origins.to(device), cube, backend=name,  # noqa: E731
                                           **dict({k: v.to(device) for k, v in kw.items()}, cube_intensity=q))
    assert torch.equal(run(viewed.to(device)).cpu(), run(dense.to(device)).cpu())


@pytest.mark.parametrize("backend", NAMES, ids=IDS)
@pytest.mark.parametrize("dtype, out_dtype", [(torch.float32, torch.float16), (torch.float32, torch.bfloat16),
                                              (torch.uint8, torch.float32), (torch.float16, None)], ids=str)
def test_other_dtypes_out_and_no_validation(backend, dtype, out_dtype):
    """Half and bfloat16 outputs (the float32 result rounded once), a uint8 source, out= and
    validate=False give the formula's values too."""
    name, device = backend
    source, origins, cube, kw = _case(31, torch.float32, affine=True)
    source = (source * 40 + 120).clamp(0, 255).round().to(dtype) if dtype == torch.uint8 else source.to(dtype)
    want = _expected(source, origins, cube, kw, torch.float32)
    result_dtype = out_dtype or dtype
    want = want.to(result_dtype)
    moved = {k: v.to(device) for k, v in kw.items()}
    out = torch.full(want.shape, float("nan"), dtype=result_dtype, device=device)
    got = rubikops.extract_cubes(source.to(device), origins.to(device), cube, out_dtype=out_dtype, out=out,
                                 validate=False, backend=name, **moved)
    assert got is out
    tol = {torch.float16: 1e-2, torch.bfloat16: 6e-2}.get(result_dtype, 1e-5 * float(want.abs().max() + 1))
    torch.testing.assert_close(got.cpu().float(), want.float(), rtol=0, atol=tol)


@pytest.mark.parametrize("backend", NAMES, ids=IDS)
def test_gamma_at_the_edges_of_float32(backend):
    """Small gammas on denormal ratios t, a huge span, and (validate=False) gammas that are NaN,
    negative or infinite: the kernels' float32 power agrees with the reference's, inf and NaN included
    (the CPU kernel returns 0 for a power below float's normal range, 1.2e-38, where powf returns a
    denormal)."""
    name, device = backend
    source = torch.tensor([3e-39, 1e-10, 0.25, 0.5, 1e-30, 2e-38, 0.999, 5e-45], dtype=torch.float32)
    source = source.view(1, 1, 1, 1, 8).expand(1, 1, 2, 2, 8).contiguous()
    gammas = [0.05, 1e-3, 1.0 / 3, 7.0, float("nan"), -2.0, -math.inf, math.inf]
    spans = [1.0, 1e30, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    rows = torch.tensor([[1, 0, g, 0, s, 0, 0, 0, 0, 1] for g, s in zip(gammas, spans)], dtype=torch.float64)
    origins = torch.zeros(1, 8, 3, dtype=torch.long)
    run = lambda backend_name: rubikops.extract_cubes(  # noqa: E731
        source.to(device), origins.to(device), (2, 2, 8), cube_intensity=rows[None].to(device), validate=False,
        backend=backend_name).cpu()
    torch.testing.assert_close(run(name), run("torch"), rtol=1e-5, atol=1.2e-38, equal_nan=True)


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="the CPU kernel's vector versions are x86-64 builds")
def test_every_cpu_vector_version_gives_the_same_bits():
    """RUBIKOPS_CPU_ISA caps the CPU kernel's vector versions (AVX-512, AVX2, baseline): the same calls
    (affine and plain reads with the intensity stage in float32 and float64, masks with their keep rule;
    affine reads of long interior rows from float32 and int16 banks) give the same bits under each, the baseline and AVX2 bodies included, which the host's own choice
    would never run."""
    script = """
import sys, torch, rubikops
from rubikops.augment import rotation_matrices
from rubikops.rotations import preserves_shape
from tests.test_cube_intensity import _case
outs = []
for dtype in (torch.float32, torch.float64):
    for affine in (False, True):
        source, origins, cube, kw = _case(41, dtype, (5, 4, 7), affine=affine)
        kw.update(mask=torch.tensor([[True, False, False, True]] * 3), keep_prob=0.5, seed=9)
        outs.append(rubikops.extract_cubes(source, origins, cube, backend="compiled", **kw))
# rows of 19 voxels well inside the volume (AVX-512: two blocks of eight through the W-pair loads, then
# three alone), float32 and int16 banks, every turn that keeps the cube's shape (backward rows too)
gen = torch.Generator().manual_seed(5)
angles = (torch.rand(3, 3, generator=gen, dtype=torch.float64) * 2 - 1) * 0.15
affine = torch.cat([rotation_matrices(angles) * 0.95, torch.full((3, 3, 1), 6.0, dtype=torch.float64)], -1)
for dtype in (torch.float32, torch.int16):
    source = (torch.randn(2, 1, 26, 24, 40, generator=gen) * 500).to(dtype)
    codes = torch.tensor([c for c in range(24) if preserves_shape(c, (5, 5, 19))])
    kw = dict(index=torch.tensor([0, 1, 1]), affine=affine, out_dtype=torch.float32,
              rotations=codes[torch.randint(0, len(codes), (3, 4), generator=gen)])
    origins = torch.randint(0, 4, (3, 4, 3), generator=gen)
    outs.append(rubikops.extract_cubes(source, origins, (5, 5, 19), backend="compiled", **kw))
    outs.append(rubikops.extract_cubes(source, origins, (5, 5, 19), backend="compiled", out_dtype=torch.float64,
                                       **{k: v for k, v in kw.items() if k != "out_dtype"}))
torch.save(outs, sys.argv[1])
"""
    results = []
    for isa in ("avx512", "avx2", "baseline"):
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"rubikops-isa-{os.getpid()}-{isa}.pt")
        env = dict(os.environ, RUBIKOPS_CPU_ISA=isa, OMP_NUM_THREADS="1")
        done = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, timeout=300,
                              env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        assert done.returncode == 0, done.stderr[-2000:]
        results.append(torch.load(path))
        os.remove(path)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_noise_is_a_unit_irwin_hall_variable():
    """The NumPy formula's noise over 2**20 voxels: mean 0, variance 1, bounded by 2 sqrt(3), the excess
    kurtosis of four uniforms (-0.3); and the op's noise is that formula's, voxel for voxel."""
    n = noise_numpy(123456789, 1 << 20)
    assert abs(n.mean()) < 0.005 and abs(n.var() - 1) < 0.005
    assert np.abs(n).max() <= 2 * math.sqrt(3)
    assert abs(((n - n.mean()) ** 4).mean() / n.var() ** 2 - 3 - (-0.3)) < 0.02
    source = torch.zeros(1, 2, 6, 5, 7, dtype=torch.float64)
    row = torch.tensor([1, 0, 1, 0, 1, 0.5, 0, 0, 0, 2 ** 52 + 12345], dtype=torch.float64).view(1, 1, 10)
    got = rubikops.extract_cubes(source, torch.zeros(1, 1, 3, dtype=torch.long), (6, 5, 7), cube_intensity=row)
    assert torch.allclose(got.flatten(), torch.from_numpy(0.5 * noise_numpy(2 ** 52 + 12345, 2 * 6 * 5 * 7)),
                          rtol=0, atol=1e-15)
    assert splitmix64_numpy(0, 1)[0] == np.uint64(0xE220A8397B1DCDAF)  # splitmix64's published first output


def test_identity_rows_change_nothing():
    source, origins, cube, kw = _case(3, affine=True)
    identity = torch.tensor([1, 0, 1, -1, 2, 0, 0, 0, 0, 5], dtype=torch.float64).expand(3, 4, 10)
    plain = {k: v for k, v in kw.items() if k != "cube_intensity"}
    want = rubikops.extract_cubes(source, origins, cube, **plain)
    assert torch.equal(rubikops.extract_cubes(source, origins, cube, cube_intensity=identity, **plain), want)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(seed=st.integers(0, 10_000), cube=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
       affine=st.booleans(), gamma=st.floats(0.1, 4.0), span=st.floats(0.01, 10.0), low=st.floats(-5, 5))
def test_compiled_kernel_matches_the_formula_on_drawn_windows(seed, cube, affine, gamma, span, low):
    source, origins, cube, kw = _case(seed, torch.float32, cube, affine=affine)
    kw["cube_intensity"][..., 2] = gamma
    kw["cube_intensity"][..., 3] = low
    kw["cube_intensity"][..., 4] = span
    want = _expected(source, origins, cube, kw, torch.float32)
    got = rubikops.extract_cubes(source, origins, cube, backend="compiled", **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * max(1.0, abs(low) + span))


@pytest.mark.parametrize("backend", [b for b in NAMES if b[0] != "torch"], ids=[i for i in IDS if i != "torch"])
@pytest.mark.parametrize("affine", [False, True], ids=["copy", "affine"])
def test_gradient_by_finite_differences(backend, affine):
    """float64, windows wide enough that every value is inside (the gamma is smooth there)."""
    name, device = backend
    source, origins, cube, kw = _case(11, torch.float64, (3, 3, 2), B=2, M=2, affine=affine)
    kw["cube_intensity"][..., 3] = -20.0
    kw["cube_intensity"][..., 4] = 40.0
    kw = {k: v.to(device) for k, v in kw.items()}
    x = source.to(device).requires_grad_()
    f = lambda s: rubikops.extract_cubes(s, origins.to(device), cube, backend=name, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7, fast_mode=name == "triton")


@pytest.mark.parametrize("op", ["extract_cubes"] + (["extract_cubes_triton"] if ops.triton_available() and
                                                    ops.interpreter_enabled() else []))
def test_opcheck_on_the_schema(op):
    source, origins, cube, kw = _case(2, torch.float64, affine=True)
    params = ExtractCubesParams(source.requires_grad_(), origins, cube, **kw)
    torch.library.opcheck(getattr(torch.ops.rubikops, op).default, params.schema_args())


@pytest.mark.parametrize("edit, match", [
    (lambda q: q[..., :9], r"cube_intensity must have shape \(3, 4, 10\)"),
    (lambda q: q.long(), "cube_intensity must be a floating tensor"),
    (lambda q: q.index_fill(0, torch.tensor([1]), float("nan")), r"cube_intensity\[1, 0\] .* is not finite"),
    (lambda q: q.index_fill(2, torch.tensor([4]), 0.0), r"cube_intensity\[0, 0\] .* has span <= 0"),
    (lambda q: q.index_fill(2, torch.tensor([2]), -1.0), r"cube_intensity\[0, 0\] .* has gamma <= 0"),
    (lambda q: q.index_fill(2, torch.tensor([5]), -0.1), r"cube_intensity\[0, 0\] .* has noise < 0"),
    (lambda q: q.index_fill(2, torch.tensor([9]), 0.5), r"cube_intensity\[0, 0\] .* noise_key that is not an integer"),
    (lambda q: q.index_fill(2, torch.tensor([9]), 2.0 ** 60), r"noise_key that is not an integer in \[0, 2\*\*53\)"),
])
def test_bad_cube_intensity_is_a_clear_error(edit, match):
    source, origins, cube, kw = _case(4)
    kw["cube_intensity"] = edit(kw["cube_intensity"])
    with pytest.raises((ValueError, TypeError), match=match):
        rubikops.extract_cubes(source, origins, cube, **kw)


def test_an_integer_output_is_refused():
    source, origins, cube, kw = _case(5, torch.int16)
    kw = {k: v for k, v in kw.items() if k not in ("scale", "shift")}
    with pytest.raises(TypeError, match="out_dtype"):
        rubikops.extract_cubes(source, origins, cube, out_dtype=torch.int16, **kw)


def test_kernels_refuse_to_differentiate_the_stage_themselves():
    """The backward op's kernels have no intensity stage: called directly with one they refuse it (autograd
    routes such calls to the plain-torch gradient)."""
    source, origins, cube, kw = _case(6, torch.float64)
    args = ExtractCubesParams(source, origins, cube, **kw).schema_args()
    grad = torch.ones(3, 4, 2, *cube, dtype=torch.float64)
    with pytest.raises(ValueError, match="no kernel differentiates cube_intensity"):
        torch.ops.rubikops.extract_cubes_backward(grad, *args)
