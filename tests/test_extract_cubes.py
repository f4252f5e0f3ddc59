"""extract_cubes on every backend against the plain-torch reference."""
import math

import numpy as np
import pytest
import torch

import rubikops
from rubikops import reference
from rubikops.rotations import NUM_CODES, PAPER_ROTATIONS, moves_w, preserves_shape

from .testing import ALL_DTYPES, BACKENDS, LAYOUTS, Case, assert_matches, random_case, run


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_dtypes_and_layouts(backend, dtype, layout):
    case = random_case(1, dtype=dtype, layout=layout, with_index=True)
    assert_matches(run(case, backend), case)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("B,M", [(1, 1), (1, 8), (3, 8), (2, 27)])
def test_batch_shapes(backend, B, M):
    case = random_case(2, B=B, M=M, C=2)
    assert_matches(run(case, backend), case)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cube", [(5, 7, 3), (1, 1, 1), (4, 4, 9), (7, 5, 5), (11, 13, 12)])
def test_odd_cube_sizes(backend, cube):
    case = random_case(3, cube=cube, codes="all", with_index=True)  # 'all' = codes that keep the shape
    assert_matches(run(case, backend), case)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_code_on_cubic_cubes(backend):
    for code in range(NUM_CODES):
        case = random_case(100 + code, codes=code, B=1, M=2, cube=(4, 4, 4), vol=(7, 6, 9))
        assert_matches(run(case, backend), case)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("keep_prob", [0.0, 0.3, 1.0])
def test_masking(backend, keep_prob):
    case = random_case(4, mask=0.5, keep_prob=keep_prob, fill=-7.5, with_index=True)
    assert_matches(run(case, backend), case)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale,shift", [("float", None), (None, "float"), ("tensor", "tensor"), ("float", "tensor")])
@pytest.mark.parametrize("dtype,out_dtype", [(torch.float32, None), (torch.int16, torch.float32),
                                             (torch.uint8, torch.bfloat16), (torch.float16, torch.float32),
                                             (torch.float64, None), (torch.bfloat16, None)], ids=str)
def test_intensity(backend, scale, shift, dtype, out_dtype):
    case = random_case(5, dtype=dtype, scale=scale, shift=shift, out_dtype=out_dtype)
    assert_matches(run(case, backend), case)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("clamp", [(-50.0, 80.0), (None, 0.0), (-10.0, None)])
def test_clamp_and_everything_at_once(backend, clamp):
    case = random_case(6, dtype=torch.int16, scale="tensor", shift="float", clamp=clamp, mask=0.5, keep_prob=0.3,
                       out_dtype=torch.float16, with_index=True, layout="strided", C=2)
    assert_matches(run(case, backend), case)


@pytest.mark.parametrize("backend", BACKENDS)
def test_int32_origins_and_index(backend):
    case = random_case(7, int_origins=torch.int32, with_index=True)
    case.kwargs["index"] = case.kwargs["index"].int()
    case.kwargs["rotations"] = case.kwargs["rotations"].int()
    assert_matches(run(case, backend), case)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_buffer_is_written_and_returned(backend):
    case = random_case(8, dtype=torch.bfloat16, mask=0.4)
    name, device = backend
    exp = reference.extract_cubes(case.source, case.origins, case.cube_size, **case.kwargs)
    out = torch.full(exp.shape, 123.0, dtype=exp.dtype, device=device)
    for step in range(2):  # reuse the same buffer
        result = run(case, backend, out=out)
        assert result.data_ptr() == out.data_ptr()
        assert torch.equal(out.cpu(), exp)


def test_out_dtype_identity_copy_of_integers():
    case = random_case(9, dtype=torch.uint8, out_dtype=torch.uint8, mask=0.5, fill=3)
    assert_matches(run(case, ("compiled", "cpu")), case)


def test_overlapping_boxes_and_repeated_index():
    case = random_case(10, B=3, M=5, N=2, with_index=True, vol=(6, 6, 6), cube=(5, 5, 5))
    case.kwargs["index"] = torch.tensor([1, 1, 0])
    assert_matches(run(case, ("compiled", "cpu")), case)


def test_keep_mask_matches_numpy_splitmix64():
    """The normative hash, computed independently with NumPy uint64."""
    seed, n, p = 0xDEADBEEFCAFEF00D, 5000, 0.3
    k = np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (k + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    expect = (z >> np.uint64(40)) < np.uint64(math.floor(p * 2**24))
    got = reference.keep_mask(n, p, seed)
    assert np.array_equal(got.numpy(), expect)
    assert abs(expect.mean() - p) < 0.03


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_mask_is_backend_independent_with_large_seed(backend):
    case = random_case(11, mask=1.0, keep_prob=0.5, cube=(4, 4, 4))
    case.kwargs["seed"] = 2**64 - 12345  # above 2**63: passed as its int64 bit pattern
    out = run(case, backend)
    assert_matches(out, case)
    kept = (out.cpu() != 0).double().mean().item()
    assert 0.4 < kept < 0.6


def test_large_seed_reference_equals_negative_alias():
    a = reference.keep_mask(100, 0.5, 2**64 - 1)
    b = reference.keep_mask(100, 0.5, -1)
    assert torch.equal(a, b)


def test_paper_codes_turn_the_cube():
    """ROT180_H flips D and W, ROT180_W flips D and H (independent of the kernels)."""
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 1, 2, 3, 4)
    origins = torch.zeros(1, 3, 3, dtype=torch.long)
    rot = torch.tensor([PAPER_ROTATIONS])
    out = rubikops.extract_cubes(x, origins, (2, 3, 4), rotations=rot)
    assert torch.equal(out[0, 0, 0], x[0, 0])
    assert torch.equal(out[0, 1, 0], x[0, 0].flip(0).flip(2))
    assert torch.equal(out[0, 2, 0], x[0, 0].flip(0).flip(1))


def test_gather_formulation_agrees_with_loop_reference():
    for seed in range(5):
        case = random_case(200 + seed, with_index=True, codes="all", C=2, layout="strided")
        exp = reference.extract_cubes(case.source, case.origins, case.cube_size, index=case.kwargs["index"],
                                      rotations=case.kwargs["rotations"])
        got = reference.extract_cubes_gather(case.source, case.origins, case.cube_size,
                                             index=case.kwargs["index"], rotations=case.kwargs["rotations"])
        assert torch.equal(got, exp)


def test_torch_backend_is_the_reference():
    case = random_case(12, mask=0.5, keep_prob=0.3, scale="tensor")
    assert_matches(run(case, ("torch", "cpu")), case)


@pytest.mark.parametrize("backend", BACKENDS)
def test_validate_false_never_leaves_the_source(backend):
    """Wild origins, indices and codes are clamped; the result equals the
    reference on the clamped inputs."""
    gen = torch.Generator().manual_seed(13)
    src = torch.randn(3, 1, 9, 8, 7, generator=gen)
    B, M, cube = 4, 6, (3, 3, 3)
    origins = torch.randint(-50, 50, (B, M, 3), generator=gen)
    index = torch.randint(-5, 8, (B,), generator=gen)
    codes = torch.randint(-100, 100, (B, M), generator=gen)
    name, device = backend
    out = rubikops.extract_cubes(src.to(device), origins.to(device), cube, index=index.to(device),
                                 rotations=codes.to(device), validate=False, backend=name)
    hi = torch.tensor([9 - 3, 8 - 3, 7 - 3])
    clamped = torch.minimum(torch.maximum(origins, torch.zeros(3, dtype=torch.long)), hi)
    exp = reference.extract_cubes(src, clamped, cube, index=index.clamp(0, 2), rotations=codes % 48)
    assert torch.equal(out.cpu(), exp)


ALL_BACKENDS = BACKENDS + [pytest.param(("torch", "cpu"), id="cpu-torch-reference")]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_every_backend_clamps_like_the_compiled_one(backend):
    """validate=False: negative and too-large origins, index -1 and N, codes
    below 0 and at or above 2**31 (which a 32-bit cast would turn into another
    code), a code that would reorder a non-cubic cube: the same result as
    the compiled CPU kernel, the reference included."""
    gen = torch.Generator().manual_seed(31)
    src = torch.randn(3, 2, 9, 8, 7, generator=gen)
    origins = torch.tensor([[[-1, 0, 0], [100, -5, 3], [2, 2**40, -(2**40)]],
                            [[0, 0, 0], [-(2**62), 2**62, 1], [5, 5, 4]]])
    index = torch.tensor([-1, 3])
    for cube, codes in (((3, 3, 3), [[2**31 + 5, -1, 2**40 + 47], [-(2**33) - 1, 48, 2**63 - 1]]),
                        ((2, 3, 4), [[40, 2**31 + 43, -3], [17, 0, 2**62 + 9]])):
        rot = torch.tensor(codes)
        name, device = backend
        got = rubikops.extract_cubes(src.to(device), origins.to(device), cube, index=index.to(device),
                                     rotations=rot.to(device), validate=False, backend=name)
        want = rubikops.extract_cubes(src, origins, cube, index=index, rotations=rot, validate=False,
                                      backend="compiled")
        assert torch.equal(got.cpu(), want)
        room = torch.tensor([9, 8, 7]) - torch.tensor(cube)
        clamped = torch.minimum(origins.clamp_min(0), room)
        codes_in_range = torch.tensor([[rubikops.rotations.kernel_code(c, cube) for c in row] for row in codes])
        exp = reference.extract_cubes(src, clamped, cube, index=index.clamp(0, 2), rotations=codes_in_range)
        assert torch.equal(want, exp)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("B,M", [(0, 3), (2, 0), (0, 0)])
def test_empty_batches_on_every_backend(backend, B, M):
    name, device = backend
    src = torch.randn(B, 1, 8, 8, 8, device=device)
    for validate in (True, False):
        out = rubikops.extract_cubes(src, torch.zeros(B, M, 3, dtype=torch.long, device=device), (4, 4, 4),
                                     validate=validate, backend=name)
        assert out.shape == (B, M, 1, 4, 4, 4)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8])
@pytest.mark.parametrize("out_dtype", [torch.bfloat16, torch.float16])
def test_integer_source_into_half_outputs_without_arithmetic(backend, dtype, out_dtype):
    """A plain conversion (no scale or shift): the Triton kernel's direct
    int -> bfloat16 cast gave NaNs and denormals."""
    case = random_case(32, dtype=dtype, out_dtype=out_dtype, codes="all", B=2, M=3, cube=(4, 4, 4), vol=(7, 6, 8))
    assert_matches(run(case, backend), case)


def test_non_cubic_invalid_code_with_validate_false_keeps_shape():
    src = torch.randn(1, 1, 6, 6, 6)
    origins = torch.zeros(1, 1, 3, dtype=torch.long)
    code = 8 * 5 + 3  # axis order (2, 1, 0) on a 2x3x4 cube: would change its shape
    out = rubikops.extract_cubes(src, origins, (2, 3, 4), rotations=torch.tensor([[code]]), validate=False)
    assert out.shape == (1, 1, 1, 2, 3, 4)
    assert torch.equal(out[0, 0], src[0, :, :2, :3, :4].flip(1).flip(2))  # flips kept, order ignored


def test_empty_batch():
    src = torch.randn(0, 1, 8, 8, 8)
    out = rubikops.extract_cubes(src, torch.zeros(0, 8, 3, dtype=torch.long), (4, 4, 4))
    assert out.shape == (0, 8, 1, 4, 4, 4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cube,vol", [((36, 36, 36), (40, 41, 39)), ((5, 36, 36), (9, 40, 37)),
                                      ((66, 66, 66), (68, 70, 67))])
def test_large_cubes_every_shape_keeping_code(backend, cube, vol):
    """Cubes that fill part of, or spill over, the CUDA kernel's 64x64 tiles,
    with every code that keeps the shape (W-moving codes take the tiled path
    on CUDA and the transposed load in Triton)."""
    allowed = [c for c in range(NUM_CODES) if preserves_shape(c, cube)]
    case = random_case(30, B=2, M=len(allowed) // 2, cube=cube, vol=vol, codes="none", mask=0.5, keep_prob=0.5)
    case.kwargs["rotations"] = torch.tensor(allowed).view(2, -1)
    assert_matches(run(case, backend), case)


NON_INTERPRETED = [p for p in BACKENDS if p.values[0] != ("triton", "cpu")]


@pytest.mark.parametrize("backend", NON_INTERPRETED)
@pytest.mark.parametrize("dtype,out_dtype", [(torch.bfloat16, None), (torch.uint8, None), (torch.float16, None),
                                             (torch.int16, None), (torch.float64, None),
                                             (torch.bfloat16, torch.float32)], ids=str)
@pytest.mark.parametrize("cube,vol", [((8, 8, 8), (11, 10, 13)), ((5, 40, 40), (7, 43, 45)),
                                      ((40, 7, 40), (44, 9, 41)), ((72, 72, 72), (75, 74, 77))], ids=str)
def test_w_moving_codes_with_aligned_rows(backend, dtype, out_dtype, cube, vol):
    """Codes that move W with 1-, 2- and 8-byte types on rows a multiple of 8
    long (the CUDA kernel's tiled path with aligned 16-byte rows), an odd
    number of planes (5, 7), partial 64-voxel tiles (72) and masks with keep
    noise; plus W-keeping codes (flips of W included) in the same launch."""
    allowed = [c for c in range(NUM_CODES) if preserves_shape(c, cube)]
    moving = [c for c in allowed if moves_w(c)]
    moving = moving[::max(1, len(moving) // 12)][:12]
    keeping = [c for c in allowed if not moves_w(c)]
    keeping = keeping[1::3] + [c for c in keeping if c not in keeping[1::3]]  # W flips early
    codes = moving + keeping[:16 - len(moving)]
    assert len(codes) == 16 and len(moving) >= 8
    case = random_case(45, dtype=dtype, B=2, M=8, cube=cube, vol=vol, codes="none", mask=0.4,
                       keep_prob=0.6, with_index=True, out_dtype=out_dtype,
                       scale="tensor" if out_dtype is not None else None)
    case.kwargs["rotations"] = torch.tensor(codes).view(2, -1)
    assert_matches(run(case, backend), case)


@pytest.mark.parametrize("dtype,cube", [(torch.float32, (40, 40, 40)), (torch.float16, (47, 45, 45))], ids=str)
def test_large_output_takes_streaming_path(dtype, cube):
    """Outputs of 8 MB and more are written with non-temporal stores on CPU
    into memory advised for huge pages (the allocating call); odd row lengths
    exercise the unaligned head and tail."""
    case = random_case(31, dtype=dtype, B=6, M=8, cube=cube, vol=(48, 47, 49), codes="flips", mask=0.3,
                       keep_prob=0.2, with_index=True)
    out = run(case, ("compiled", "cpu"))
    assert out.nbytes >= 8 << 20
    assert_matches(out, case)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("clamp", [(-1.0, 1.0), (None, 0.5), (-0.5, None)], ids=str)
def test_clamp_passes_nan_and_clamps_infinities(backend, dtype, clamp):
    """NaN stays NaN through scale, shift and clamp (as torch.clamp), +-inf
    are clamped, at the same voxels as the reference."""
    gen = torch.Generator().manual_seed(44)
    src = torch.randn(2, 1, 6, 7, 40, generator=gen, dtype=torch.float64)
    special = torch.rand(src.shape, generator=gen)
    src[special < 0.1] = float("nan")
    src[(special >= 0.1) & (special < 0.15)] = float("inf")
    src[(special >= 0.15) & (special < 0.2)] = -float("inf")
    src = src.to(dtype)
    case = Case(src, torch.tensor([[[0, 0, 0], [1, 2, 3]], [[2, 1, 7], [0, 0, 0]]]), (4, 5, 33),
                dict(scale=0.5, shift=0.1, clamp=clamp, rotations=torch.tensor([[0, 4], [1, 5]])))
    got = run(case, backend).cpu()
    want = reference.extract_cubes(case.source, case.origins, case.cube_size, **case.kwargs)
    assert torch.equal(got.isnan(), want.isnan()) and bool(want.isnan().any())
    assert torch.equal(got.isinf(), want.isinf())
    tol = {torch.float64: 1e-15, torch.float32: 1e-7, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_keep_mask_on_long_rows(backend, dtype):
    """Rows longer than the CPU kernel's 256-voxel keep chunks and its 4 KB
    row buffer, at odd offsets: the keep decisions stay those of the reference."""
    gen = torch.Generator().manual_seed(43)
    src = torch.randn(2, 1, 5, 4, 1100, generator=gen).to(dtype)
    origins = torch.tensor([[[0, 0, 0], [1, 2, 37], [2, 1, 69]], [[2, 2, 13], [0, 0, 70], [1, 1, 1]]])
    mask = torch.tensor([[True, True, False], [False, True, True]])
    case_kw = dict(mask=mask, keep_prob=0.37, seed=2**40 + 5, fill=-7.0, rotations=torch.tensor([[0, 4, 1], [5, 2, 0]]))
    got = run(Case(src, origins, (3, 2, 1030), case_kw), backend)
    assert torch.equal(got.cpu(), reference.extract_cubes(src, origins, (3, 2, 1030), **case_kw))


TRITON_BACKENDS = [p for p in BACKENDS if p.values[0][0] == "triton"]


@pytest.mark.parametrize("backend", TRITON_BACKENDS)
@pytest.mark.parametrize("tile", [(1, 2, 4), (2, 4, 8), (4, 1, 16)], ids=str)
@pytest.mark.parametrize("cube,codes", [((6, 5, 6), "all"), ((9, 7, 13), "flips"), ((8, 8, 8), "all")], ids=str)
def test_triton_tiles_smaller_than_the_cube(backend, tile, cube, codes):
    """The Triton kernel split into GPU-sized tiles (forced through the
    launcher's ``tile``: under the interpreter a program takes a whole cube):
    partial tiles along every axis, and (6, 5, 6) whose W-moving codes split
    the cube (o, r) = (H, D) while the others split it (D, H)."""
    from rubikops._schema import ExtractCubesParams, out_shape
    from rubikops.triton_kernels import extract_cubes as triton_kernels
    case = random_case(40, B=2, M=3, cube=cube, vol=(12, 11, 14), codes=codes, mask=0.4, keep_prob=0.3,
                       with_index=True)
    if codes == "all":  # every axis order that keeps the shape, W-moving ones included
        allowed = [c for c in range(NUM_CODES) if preserves_shape(c, cube)]
        picked = [allowed[(9 * i) % len(allowed)] for i in range(6)]
        assert len({c // 8 for c in picked}) == len(allowed) // 8
        case.kwargs["rotations"] = torch.tensor(picked).view(2, 3)
    c = case.to(backend[1])
    params = ExtractCubesParams(c.source, c.origins, c.cube_size, **c.kwargs)
    out = torch.full(out_shape(c.source, c.origins, c.cube_size), float("nan"), device=c.source.device)
    triton_kernels.launch(ExtractCubesParams.from_schema_args(*params.schema_args()), out, tile=tile)
    assert_matches(out, case)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.uint8], ids=str)
@pytest.mark.parametrize("cube", [(3, 2, 32), (5, 3, 40), (4, 4, 64)], ids=str)
def test_cuda_vector_path(dtype, cube):
    """The CUDA vector path on rows of 32 to 64 voxels, so that one block's
    packs cross rows and planes, at both unroll depths (8 packs a thread for
    4- and 8-byte outputs, 4 for 1- and 2-byte ones); masks with keep noise,
    an index, flips, and per-sample arithmetic."""
    if not rubikops.ops.HAS_CUDA_KERNEL:
        pytest.skip("CUDA kernel not built")
    case = random_case(41, dtype=dtype, B=3, M=8, cube=cube, vol=(9, 7, 70), codes="flips", mask=0.3,
                       keep_prob=0.4, with_index=True)
    assert_matches(run(case, ("compiled", "cuda")), case)
    if dtype.is_floating_point:  # the per-sample arithmetic case, on floating sources
        arith = random_case(42, dtype=dtype, B=3, M=8, cube=cube, vol=(9, 7, 70), codes="flips",
                            scale="tensor", shift="float", out_dtype=torch.float32)
        assert_matches(run(arith, ("compiled", "cuda")), arith)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["compiled", "triton"])
def test_cuda_64bit_offsets(name):
    """A source of more than 2**31 voxels: offsets must not wrap."""
    if name == "compiled" and not rubikops.ops.HAS_CUDA_KERNEL:
        pytest.skip("CUDA kernel not built")
    src = torch.empty(2, 1, 1040, 1040, 1040, dtype=torch.uint8, device="cuda")  # 2.25e9 voxels
    src[1, 0, -9:, -9:, -9:] = torch.randint(0, 256, (9, 9, 9), dtype=torch.uint8, device="cuda")
    origins = torch.tensor([[[1031, 1031, 1031]]], device="cuda")
    index = torch.tensor([1], device="cuda")
    rot = torch.tensor([[5]], device="cuda")
    out = rubikops.extract_cubes(src, origins, (9, 9, 9), index=index, rotations=rot, backend=name)
    expect = rubikops.apply_code(src[1, :, -9:, -9:, -9:].cpu(), 5).float()
    assert torch.equal(out[0, 0].cpu(), expect)
