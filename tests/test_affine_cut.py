"""The affine read in the cut (``affine=``: augmentation in the same pass):
the compiled CPU kernel and the Triton kernel (in its interpreter) against
the plain-torch reference (forward, out=, dtypes, gradient, every tensor
argument as a view, validate=False on wild values), the reference against
resampling the crop first and cutting after (what CropAffine does), int16
banks through the value map, opcheck on the schemas, and clear errors."""
import math

import pytest
import torch

import rubikops
from rubikops import ops, reference
from rubikops.augment import _gather_corners, resample_crops, rotation_matrices
from rubikops.rotations import NUM_CODES, preserves_shape

from .testing import argument_views, random_volume

TRITON = ops.triton_available() and ops.interpreter_enabled()
BACKEND_NAMES = ["compiled"] + (["triton"] if TRITON else [])


def _affines(gen, B, max_angle=15.0, zoom=(0.8, 1.25), move=4.0):
    """Random rotations about each axis, zooms and translations (voxel units), as (B, 3, 4) float64."""
    angles = (torch.rand(B, 3, generator=gen, dtype=torch.float64) * 2 - 1) * math.radians(max_angle)
    z = torch.exp(math.log(zoom[0]) + torch.rand(B, generator=gen, dtype=torch.float64)
                  * (math.log(zoom[1]) - math.log(zoom[0])))
    shift = (torch.rand(B, 3, 1, generator=gen, dtype=torch.float64) * 2 - 1) * move
    return torch.cat([rotation_matrices(angles) * z[:, None, None], shift], -1)


def _case(seed, dtype=torch.float32, cube=(4, 4, 4), B=3, M=5):
    gen = torch.Generator().manual_seed(seed)
    vol = (9, 10, 8)
    if dtype == torch.int16:
        source = torch.randint(-1024, 3072, (4, 2, *vol), generator=gen, dtype=torch.int16)
    else:
        source = torch.randn(4, 2, *vol, generator=gen, dtype=torch.float64).to(dtype)
    # Origins past every edge: the reads clamp into the volume (edge values repeat).
    origins = torch.randint(-3, 9, (B, M, 3), generator=gen)
    codes = [c for c in range(NUM_CODES) if preserves_shape(c, cube)]
    rotations = torch.tensor(codes)[torch.randint(0, len(codes), (B, M), generator=gen)]
    kw = dict(index=torch.randint(0, 4, (B,), generator=gen), rotations=rotations,
              mask=torch.rand(B, M, generator=gen) < 0.4, keep_prob=0.3, seed=seed,
              affine=_affines(gen, B, move=6.0))
    return source, origins, cube, kw


def _tolerance(dtype):
    """(rtol, atol) of an output dtype against the reference: float32 within 1e-5, halves within their rounding."""
    return {torch.float16: (1e-3, 1e-3), torch.bfloat16: (1e-2, 1e-2)}.get(dtype, (0, 1e-5))


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cube", [(4, 4, 4), (3, 5, 2)])
def test_matches_the_reference(backend, seed, cube):
    source, origins, cube, kw = _case(seed, cube=cube)
    kw.update(scale=torch.tensor([2.0, 0.5, -1.0]), shift=0.25, clamp=(-2.0, 2.5))
    if len(set(cube)) > 1:
        kw["rotations"] = kw["rotations"] % 8  # flips only: the cube is not cubic
    want = reference.extract_cubes(source, origins, cube, **kw)
    for validate in (True, False):
        got = rubikops.extract_cubes(source, origins, cube, validate=validate, backend=backend, **kw)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    out = torch.full_like(want, float("nan"))
    assert rubikops.extract_cubes(source, origins, cube, out=out, backend=backend, **kw) is out
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)


_INTERIOR_CASES = ([(dtype, out, "contiguous") for dtype in (torch.float64, torch.float32, torch.float16,
                                                              torch.bfloat16, torch.int16, torch.uint8)
                    for out in (None, torch.float64)]
                   + [(torch.float32, None, layout) for layout in ("strided", "channels_last")])


@pytest.mark.parametrize("dtype, out_dtype, layout", _INTERIOR_CASES, ids=str)
@pytest.mark.parametrize("cube", [(4, 3, 70), (16, 16, 16), (2, 5, 1)], ids=str)
@pytest.mark.parametrize("placement", ["inside", "across the edges"])
def test_vectorised_rows_read_bit_for_bit_as_the_general_path(dtype, out_dtype, layout, cube, placement):
    """Small turns and zooms of crops well inside a larger volume (most output rows read no clamped
    voxel: the compiled kernel's vectorised interior rows, rows longer than its 64-voxel chunk too) or
    across the read box's edges (its vectorised clamped rows); a masked cube always takes the general
    voxel-by-voxel path.  The two agree bit for bit on every kept voxel (mask all cubes, keep nearly
    every voxel), in each input dtype with its own output dtype (float arithmetic) and with float64 out
    (double), with every turn and flip that keeps the cube's shape (flipped rows read backwards) and a
    read box inside the volume, NaN outside it (floating sources); the source in every layout.  Both match the reference, whose direct
    products round the read positions differently from the kernels' row form."""
    gen = torch.Generator().manual_seed(7)
    source = random_volume(gen, (2, 2, 24, 22, 90), dtype, layout)
    B, M = 3, 4
    origins = torch.randint(0, 5, (B, M, 3), generator=gen)
    affine = _affines(gen, B, max_angle=8.0, zoom=(0.9, 1.1), move=0.0)
    # the crop's corner inside, or out past the read box's low corner and (through a large zoom) its top
    affine[:, :, 3] += torch.tensor([6.0, 6.0, 8.0] if placement == "inside" else [-3.0, -4.0, 60.0],
                                    dtype=torch.float64)
    codes = torch.tensor([c for c in range(NUM_CODES) if preserves_shape(c, cube)])
    read_box = torch.tensor([[1, 2, 3], [22, 21, 88]]).expand(B, 2, 3)
    if dtype.is_floating_point:  # a read past the box, even at weight 0, would bring a NaN in
        outside = torch.ones(24, 22, 90, dtype=torch.bool)
        outside[1:23, 2:22, 3:89] = False
        source[:, :, outside] = math.nan
    kw = dict(index=torch.randint(0, 2, (B,), generator=gen), affine=affine, read_box=read_box,
              rotations=codes[torch.randint(0, len(codes), (B, M), generator=gen)], out_dtype=out_dtype,
              scale=torch.tensor([2.0, 0.5, -1.0]), shift=0.25)
    got = rubikops.extract_cubes(source, origins, cube, **kw)
    rtol, atol = (1e-10, 1e-10) if got.dtype == torch.float64 else _tolerance(got.dtype)
    torch.testing.assert_close(got, reference.extract_cubes(source, origins, cube, **kw), rtol=rtol, atol=atol)
    general = rubikops.extract_cubes(source, origins, cube, mask=torch.ones(B, M, dtype=torch.bool),
                                     keep_prob=0.999, fill=math.nan, seed=3, **kw)
    kept = ~general.isnan()
    assert kept.float().mean() > 0.99
    assert torch.equal(got[kept], general[kept])


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int16])
def test_dtypes(backend, dtype):
    """Every floating bank, and int16 banks through the value map (per-sample scale and shift)."""
    source, origins, cube, kw = _case(11, dtype=dtype)
    if dtype == torch.int16:
        kw.update(scale=torch.tensor([0.01, 0.02, 0.005], dtype=torch.float64),
                  shift=torch.tensor([-1.0, 0.5, 0.0], dtype=torch.float64))
    want = reference.extract_cubes(source, origins, cube, **kw)
    got = rubikops.extract_cubes(source, origins, cube, backend=backend, **kw)
    assert got.dtype == want.dtype == (torch.float32 if dtype == torch.int16 else dtype)
    rtol, atol = _tolerance(want.dtype)
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("dtype, out_dtype", [(torch.float32, torch.bfloat16), (torch.int16, torch.float16),
                                              (torch.float16, torch.float64), (torch.float64, torch.float32),
                                              (torch.int16, torch.bfloat16)])
def test_out_dtypes(backend, dtype, out_dtype):
    """out_dtype other than the bank's, with a scalar scale, a clamp, and a
    fill that masked cubes hold whole (keep_prob 0: the kernel reads none of their voxels)."""
    source, origins, cube, kw = _case(12, dtype=dtype)
    kw.update(scale=0.01 if dtype == torch.int16 else 1.5, shift=-0.5, clamp=(-1.0, 20.0), fill=-3.0,
              keep_prob=0.0, out_dtype=out_dtype)
    assert kw["mask"].any() and not kw["mask"].all()
    want = reference.extract_cubes(source, origins, cube, **kw)
    got = rubikops.extract_cubes(source, origins, cube, backend=backend, **kw)
    assert got.dtype == want.dtype == out_dtype
    rtol, atol = _tolerance(out_dtype)
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", BACKEND_NAMES + ["torch"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradient_matches_the_reference_autograd(backend, dtype):
    """The backward against autograd through the reference: overlapping
    reads, a repeated index, a clamp that bites, masks with kept voxels."""
    source, origins, cube, kw = _case(5, dtype=dtype)
    kw.update(scale=torch.tensor([2.0, 0.5, -1.0], dtype=dtype), shift=0.25, clamp=(-1.5, 1.5))
    weights = torch.randn(3, 5, 2, *cube, generator=torch.Generator().manual_seed(1), dtype=dtype)

    def grad(fn):
        x = source.clone().requires_grad_()
        (fn(x, origins, cube, **kw) * weights).sum().backward()
        return x.grad

    want = grad(reference.extract_cubes)
    assert want.abs().sum() > 0 and (want == 0).any()  # some voxels are read, some are not
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(grad(lambda *a, **k: rubikops.extract_cubes(*a, backend=backend, **k)), want,
                               rtol=tol, atol=tol)


def _view_case(seed):
    """A case whose every tensor argument is given: affine, origins, index, rotations, mask, scale, shift."""
    source, origins, cube, kw = _case(seed, cube=(3, 3, 3), B=3, M=4)
    kw.update(scale=torch.rand(3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.5,
              shift=torch.tensor([0.5, -0.25, 1.0]), clamp=(-2.0, 2.0))
    return source, cube, dict(kw, origins=origins)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("name", ["affine", "origins", "index", "rotations", "mask", "scale", "shift"])
@pytest.mark.parametrize("layout", ["offset", "strided", "expanded"])
def test_argument_views_read_as_their_values(backend, name, layout):
    """Each tensor argument as an offset view, with doubled strides, or
    stride 0: the reference's result on the same values laid out
    contiguously."""
    source, cube, args = _view_case(7)
    view = argument_views(args[name])[layout]
    dense, viewed = dict(args, **{name: view.contiguous()}), dict(args, **{name: view})
    want = reference.extract_cubes(source, dense.pop("origins"), cube, **dense)
    origins = viewed.pop("origins")
    for validate in (True, False):
        got = rubikops.extract_cubes(source, origins, cube, validate=validate, backend=backend, **viewed)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=f"{backend}, {name} {layout}")


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("layout", ["offset", "strided", "expanded"])
def test_gradient_with_argument_views(backend, layout):
    source, cube, args = _view_case(9)
    viewed = {name: argument_views(t)[layout] if isinstance(t, torch.Tensor) else t for name, t in args.items()}
    weights = torch.randn(3, 4, 2, *cube, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def grad(fn, kw):
        x = source.double().requires_grad_()
        kw = dict(kw)
        (fn(x, kw.pop("origins"), cube, **kw) * weights).sum().backward()
        return x.grad

    want = grad(reference.extract_cubes, {k: t.contiguous() if isinstance(t, torch.Tensor) else t
                                          for k, t in viewed.items()})
    got = grad(lambda *a, **k: rubikops.extract_cubes(*a, backend=backend, **k), viewed)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_wild_values_without_validation_stay_in_the_volume(backend):
    """validate=False: origins near the int64 limits, an affine with NaN and
    inf entries and one that throws every read far out.  Reads clamp into
    the volume (NaN reads voxel 0), as the reference; the source is a view
    inside a storage of sentinels, so a read outside it would show."""
    gen = torch.Generator().manual_seed(8)
    big = torch.full((3, 2, 11, 12, 10), 1e6)
    source = big[1:3, :, 1:10, 1:11, 1:9]  # (2, 2, 9, 10, 8), offset and strided
    source.copy_(torch.randn(source.shape, generator=gen))
    B, M, cube = 3, 4, (3, 3, 3)
    origins = torch.tensor([2**62, -(2**62), 2**63 - 1, -(2**63), 3, -5, 2**40 + 7, 0, 1, 2**31, -1, 5] * 3)
    origins = origins.view(B, M, 3)
    affine = _affines(gen, B)
    affine[0, 1, 2] = float("nan")
    affine[1, 0, 3] = float("inf")
    affine[2] *= 1e200
    kw = dict(index=torch.tensor([1, 0, 2**40]), rotations=torch.tensor([-1, 47, 2**40, 96] * 3).view(B, M),
              affine=affine, scale=1.5)
    want = reference.extract_cubes(source, origins, cube, **kw)
    assert want.abs().max() < 1e3
    got = rubikops.extract_cubes(source, origins, cube, validate=False, backend=backend, **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int16])
def test_huge_cancelling_terms_never_read_past_the_read_box(dtype):
    """Origins of 2**40 along H and W whose terms cancel (W position 0.7 w - 0.7 h + t): each product of
    about 7.7e11 is rounded to 2**-13, so a row's stepped positions (t + i * 0.7) and its corners' direct
    products differ by up to 1.2e-4 voxel.  Scanning t so that the row ends just past the read box's top
    along W while its far corner's direct product lies just inside it, no read may leave the box (NaN
    outside it; for int16, zeros inside and a negative sentinel outside, so any weight on it shows)."""
    fence = math.nan if dtype.is_floating_point else -32768
    source = torch.full((1, 1, 6, 6, 40), fence, dtype=dtype)
    source[:, :, 1:5, 1:5, 1:39] = (torch.arange(4 * 4 * 38, dtype=torch.float32).view(4, 4, 38)
                                    if dtype.is_floating_point else 0)
    read_box = torch.tensor([[[1, 1, 1], [4, 4, 38]]])
    origins = torch.tensor([[[0, 2 ** 40, 2 ** 40]]])
    for t in torch.linspace(25.4 - 5e-5, 25.4 + 5e-5, 201, dtype=torch.float64).tolist():
        affine = torch.tensor([[[0.0, 0.0, 0.0, 2.5], [0.0, 0.0, 0.0, 2.5], [0.0, -0.7, 0.7, t]]],
                              dtype=torch.float64)
        out = rubikops.extract_cubes(source, origins, (1, 1, 19), affine=affine, read_box=read_box,
                                     out_dtype=torch.float32)
        assert not out.isnan().any() and bool((out >= 0).all()), t


@pytest.mark.skipif(not TRITON, reason="needs Triton and TRITON_INTERPRET=1")
@pytest.mark.parametrize("tile", [(2, 2, 4), (4, 2, 4)], ids=str)
@pytest.mark.parametrize("cube", [(3, 5, 2), (4, 4, 4)], ids=str)
def test_triton_blocks_smaller_than_the_cube(tile, cube):
    """The affine kernel with GPU-sized programs (forced through the
    launcher's ``tile``: 16 or 32 voxels a program; under the interpreter a
    program takes a whole cube): a cube split over several programs, the
    last one partial for the 30-voxel cube."""
    from rubikops._schema import ExtractCubesParams
    from rubikops.triton_kernels import extract_cubes as triton_kernels
    source, origins, cube, kw = _case(13, cube=cube, B=2, M=2)
    kw.update(scale=torch.tensor([2.0, 0.5]), shift=0.25)
    if len(set(cube)) > 1:
        kw["rotations"] = kw["rotations"] % 8
    params = ExtractCubesParams(source, origins, cube, **kw)
    out = torch.full(params.out_shape, float("nan"))
    triton_kernels.launch(params, out, tile=tile)
    torch.testing.assert_close(out, reference.extract_cubes(source, origins, cube, **kw), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_the_fused_cut_is_resampling_then_cutting(backend):
    """With the affine of a resampled crop, cutting from the volume equals
    resampling the crop (rubikops.augment, eight gathered corners) and
    cutting the same boxes from it: the puzzle's labels describe the
    augmented crop exactly."""
    gen = torch.Generator().manual_seed(3)
    vol, crop, cube, B, M = (20, 18, 22), (10, 10, 10), (4, 4, 4), 2, 6
    storage = torch.rand(1, 1, *vol, generator=gen)
    shapes, offsets = torch.tensor([vol]), torch.zeros(1, 3, dtype=torch.int64)
    index = torch.zeros(B, dtype=torch.int64)
    half = torch.tensor([(n - 1) / 2 for n in crop], dtype=torch.float64)
    centres = half + torch.rand(B, 3, generator=gen, dtype=torch.float64) * (torch.tensor(vol) - 1 - 2 * half)
    matrices = _affines(gen, B)[:, :, :3]
    crops = resample_crops(storage, shapes, offsets, index, centres, matrices, crop)  # (B, 1, *crop)
    origins = torch.randint(0, crop[0] - cube[0] + 1, (B, M, 3), generator=gen)
    rotations = torch.randint(0, NUM_CODES, (B, M), generator=gen)
    two_pass = rubikops.extract_cubes(crops, origins, cube, rotations=rotations)
    affine = torch.cat([matrices, (centres - (matrices @ half[:, None]).squeeze(-1))[..., None]], -1)
    fused = rubikops.extract_cubes(storage, origins, cube, index=index, rotations=rotations, affine=affine,
                                   backend=backend)
    # resample_crops places voxels in float32: about 1e-6 voxel of position error on values in [0, 1).
    torch.testing.assert_close(fused, two_pass, rtol=0, atol=2e-5)
    assert _gather_corners is not None  # the crop path above is resample_crops' own


@pytest.mark.parametrize("op", ["extract_cubes"] + (["extract_cubes_triton"] if TRITON else []))
def test_opcheck_on_the_schema(op):
    source, origins, cube, kw = _case(2, dtype=torch.float64)
    params = rubikops._schema.ExtractCubesParams(source.requires_grad_(), origins, cube, **kw)
    torch.library.opcheck(getattr(torch.ops.rubikops, op).default, params.schema_args())


@pytest.mark.parametrize("bad, match", [
    (lambda B: torch.zeros(B, 3, 3, dtype=torch.float64), r"affine must have shape \(3, 3, 4\)"),
    (lambda B: torch.zeros(B, 3, 4, dtype=torch.int64), "affine must be a floating tensor"),
    (lambda B: torch.full((B, 3, 4), float("nan"), dtype=torch.float64), r"affine\[0\] is not finite"),
])
@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_bad_affine_is_a_clear_error(backend, bad, match):
    source, origins, cube, kw = _case(4)
    kw["affine"] = bad(3)
    with pytest.raises((ValueError, TypeError), match=match):
        rubikops.extract_cubes(source, origins, cube, backend=backend, **kw)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_an_integer_output_is_refused(backend):
    """The interpolation changes values: an integer output is refused on every backend (nothing else is)."""
    source, origins, cube, kw = _case(4, dtype=torch.int16)
    for validate in (True, False):
        with pytest.raises(TypeError, match="out_dtype"):
            rubikops.extract_cubes(source, origins, cube, out_dtype=torch.int16, validate=validate, backend=backend,
                                   **kw)


@pytest.mark.skipif(not TRITON, reason="needs Triton and TRITON_INTERPRET=1")
def test_triton_affine_inside_torch_compile():
    """backend="triton" with affine= inside torch.compile(fullgraph=True)."""
    source, origins, cube, kw = _case(3)
    kw.update(scale=torch.tensor([2.0, 0.5, -1.0]), shift=0.25)

    @torch.compile(fullgraph=True)
    def step(src, origins, affine):
        return rubikops.extract_cubes(src, origins, cube, validate=False, backend="triton",
                                      **dict(kw, affine=affine)) + 1

    got = step(source, origins, kw["affine"])
    torch.testing.assert_close(got, 1 + reference.extract_cubes(source, origins, cube, **kw), rtol=0, atol=1e-5)
