"""RubikCube: labels match transforms exactly; label frequencies are uniform."""
import math

import pytest
import torch

import rubikops
from rubikops import PROPER_ROTATIONS, ROT180_H, ROT180_W, RubikCube, apply_code, solve
from rubikops.puzzle import normalize_cubes

from .testing import BACKENDS


def coordinate_volumes(n, shape, dtype=torch.float64):
    """Voxel value = its linear index (plus an offset per volume): every box is unique."""
    D, H, W = shape
    base = torch.arange(D * H * W, dtype=dtype).view(1, 1, D, H, W)
    return torch.cat([base + i * 1e7 for i in range(n)])


def box(vol, n, origin, size):
    z, y, x = origin
    return vol[n, :, z:z + size[0], y:y + size[1], x:x + size[2]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["paper", "all", "none"])
@pytest.mark.parametrize("grid,masking", [((2, 2, 2), False), ((2, 2, 2), True), ((3, 3, 3), False)])
def test_labels_invert_to_the_original_boxes(backend, mode, grid, masking):
    name, device = backend
    cube = (5, 5, 5)
    puzzle = RubikCube(grid=grid, cube_size=cube, num_permutations=30, gap=(1, 5), rotations=mode,
                       mask_prob=0.5 if masking else 0.0, mask_fill=-1.0, backend=name)
    vols = coordinate_volumes(3, (26, 27, 25)).to(device)
    index = torch.tensor([2, 0, 2, 1], device=device)
    g = torch.Generator(device=device).manual_seed(5)
    cubes, t = puzzle(vols, index=index, generator=g)
    M = puzzle.num_cells
    assert cubes.shape == (4, M, 1, *cube)
    cubes, vols = cubes.cpu(), vols.cpu()
    t = t.to("cpu")
    perms = puzzle.permutations
    for b in range(4):
        order = perms[t.permutation[b]]
        for m in range(M):
            code = int(t.codes[b, m])
            if mode == "paper":
                h, v = t.rotation[b, m].tolist()
                assert not (h and v)
                assert code == (ROT180_H if h else ROT180_W if v else 0)
            elif mode == "all":
                assert code == PROPER_ROTATIONS[int(t.rotation[b, m])]
            else:
                assert code == 0
            expect = apply_code(box(vols, int(index[b]), t.origins[b, m].tolist(), cube), code)
            if t.mask[b, m]:
                assert bool((cubes[b, m] == -1).all())
            else:
                assert torch.equal(cubes[b, m], expect)
        # Solved cells sit on the grid: neighbours along each axis are one pitch apart, +- jitter.
        solved = solve(cubes, t, perms)
        cell_origin = torch.empty(M, 3, dtype=torch.long)
        cell_origin[order] = t.origins[b]
        for j in range(M):
            if not t.mask[b, (order == j).nonzero()[0, 0]]:
                assert torch.equal(solved[b, j], box(vols, int(index[b]), cell_origin[j].tolist(), cube))
        gz, gy, gx = grid
        cells = cell_origin.view(gz, gy, gx, 3)
        for axis in range(3):
            gaps = cells.narrow(axis, 1, grid[axis] - 1)[..., axis] - cells.narrow(axis, 0, grid[axis] - 1)[..., axis]
            gaps = gaps - cube[axis]
            assert int(gaps.min()) >= puzzle.gap[0] and int(gaps.max()) <= puzzle.gap[1]


def test_label_frequencies_are_uniform():
    puzzle = RubikCube(cube_size=4, num_permutations=100, gap=(0, 4), rotations="paper", mask_prob=0.5)
    vols = torch.zeros(1, 1, 14, 14, 14)
    index = torch.zeros(4000, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    _, t = puzzle(vols, index=index, generator=g)
    counts = torch.bincount(t.permutation, minlength=100)
    assert counts.min() > 0 and counts.numel() == 100  # every index in [0, K), the last one too
    chi2 = (((counts - 40.0) ** 2) / 40.0).sum().item()
    assert chi2 < 99 + 5 * math.sqrt(2 * 99)  # chi-square, 99 dof, ~5 sigma
    n = 4000 * 8
    h, v = t.rotation[..., 0].sum().item(), t.rotation[..., 1].sum().item()
    for k in (h, v, n - h - v):
        assert abs(k / n - 1 / 3) < 5 * math.sqrt((1 / 3) * (2 / 3) / n)
    assert abs(t.mask.mean().item() - 0.5) < 5 * math.sqrt(0.25 / n)
    # the crop position covers the whole valid range
    start = t.origins.min(1).values
    assert int(start.min()) == 0 and int(start.max()) == 14 - max(puzzle.crop_size) + puzzle.jitter


def test_all_mode_uses_every_proper_rotation():
    puzzle = RubikCube(cube_size=3, gap=0, rotations="all")
    _, t = puzzle(torch.zeros(1, 1, 6, 6, 6), index=torch.zeros(500, dtype=torch.long),
                  generator=torch.Generator().manual_seed(1))
    assert set(t.rotation.flatten().tolist()) == set(range(24))


def test_same_seed_same_puzzles_and_rank_streams():
    puzzle = RubikCube(cube_size=4, gap=(0, 2))
    vols = torch.randn(4, 1, 12, 12, 12)
    a = puzzle(vols, generator=torch.Generator().manual_seed(7))
    b = puzzle(vols, generator=torch.Generator().manual_seed(7))
    c = puzzle(vols, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1].origins, b[1].origins)
    assert not torch.equal(a[1].origins, c[1].origins)


def test_rank_generators_are_distinct_and_reproducible():
    puzzle = RubikCube(cube_size=4, gap=(0, 2))
    vols = torch.randn(4, 1, 12, 12, 12)
    runs = {r: puzzle(vols, generator=rubikops.make_generator(123, rank=r))[1].origins for r in range(3)}
    assert torch.equal(runs[1], puzzle(vols, generator=rubikops.make_generator(123, rank=1))[1].origins)
    assert not torch.equal(runs[0], runs[1]) and not torch.equal(runs[1], runs[2])


def test_normalisations():
    vols = torch.randint(-1000, 2000, (2, 1, 12, 12, 12), dtype=torch.int16)
    g = torch.Generator().manual_seed(0)
    win = RubikCube(cube_size=4, gap=0, normalize=("window", -100.0, 300.0))
    cubes, t = win(vols, generator=g)
    assert cubes.dtype == torch.float32 and cubes.min() >= -1 and cubes.max() <= 1
    raw = RubikCube(cube_size=4, gap=0, rotations="none")(vols.float(), generator=torch.Generator().manual_seed(0))[0]
    per_cube = RubikCube(cube_size=4, gap=0, rotations="none", normalize="cube")
    c2, _ = per_cube(vols.float(), generator=torch.Generator().manual_seed(0))
    flat = c2.flatten(2)
    assert torch.allclose(flat.amin(-1), torch.tensor(-1.0)) and torch.allclose(flat.amax(-1), torch.tensor(1.0))
    r = raw.flatten(2)
    expect = (r - r.amin(-1, keepdim=True)) / (r.amax(-1, keepdim=True) - r.amin(-1, keepdim=True)) * 2 - 1
    torch.testing.assert_close(flat, expect)
    z = RubikCube(cube_size=4, gap=0, rotations="none", normalize="zscore")
    c3, t3 = z(vols.float(), generator=torch.Generator().manual_seed(0))
    v = vols.float().flatten(1)
    mean, std = v.mean(1), v.std(1)
    torch.testing.assert_close(c3, (raw - mean.view(2, 1, 1, 1, 1, 1)) / std.view(2, 1, 1, 1, 1, 1),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_cube_normalisation_in_place_and_with_autograd(dtype):
    """normalize='cube' rewrites the op's output in place, so an out= buffer
    ends up holding the normalised cubes; with autograd it goes out of place
    and the gradient reaches the volumes.  Checked against the plain formula
    on the same puzzles, constant cubes (span 0 -> -1) included."""
    gen = torch.Generator().manual_seed(5)
    vols = (torch.randn(3, 1, 14, 13, 15, generator=gen, dtype=torch.float64) * 50).to(dtype)
    vols[1] = 7  # every cube of volume 1 is constant
    per_cube = RubikCube(cube_size=(4, 5, 6), gap=(0, 2), normalize="cube", mask_prob=0.5, mask_fill=-3.0)
    plain = RubikCube(cube_size=(4, 5, 6), gap=(0, 2), mask_prob=0.5, mask_fill=-3.0)
    raw, _ = plain(vols, generator=torch.Generator().manual_seed(1))
    r = raw.flatten(2).double()
    lo, hi = r.amin(-1, keepdim=True), r.amax(-1, keepdim=True)
    expect = torch.where(hi > lo, (r - lo) / (hi - lo) * 2 - 1, torch.full_like(r, -1.0)).view_as(raw)
    out = torch.empty_like(raw)
    cubes, _ = per_cube(vols, generator=torch.Generator().manual_seed(1), out=out)
    assert cubes.data_ptr() == out.data_ptr()
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.double(), expect, **tol)
    varied = (hi > lo).view(out.shape[:2])  # constant cubes (volume 1, fully masked ones) map to -1
    assert varied.any() and out.flatten(2).amin(-1).eq(-1).all() and out.flatten(2).amax(-1)[varied].eq(1).all()
    if dtype == torch.bfloat16:
        return
    # Autograd (a constant cube has no finite gradient: give volume 1 values).
    vols[1] = vols[0].flip(-1)
    weights = torch.randn(raw.shape, generator=gen, dtype=torch.float64).to(dtype)
    grads = []
    for normalise in (lambda c: normalize_cubes(c), lambda c: ((c - c.amin((2, 3, 4, 5), keepdim=True)) / (
            c.amax((2, 3, 4, 5), keepdim=True) - c.amin((2, 3, 4, 5), keepdim=True)) * 2 - 1)):
        src = vols.clone().requires_grad_(True)
        cubes, _ = plain(src, generator=torch.Generator().manual_seed(1))
        (normalise(cubes) * weights).sum().backward()
        grads.append(src.grad)
    torch.testing.assert_close(grads[0], grads[1], **tol)
    assert grads[0].abs().sum() > 0


def test_out_buffer_and_keep_masking():
    puzzle = RubikCube(cube_size=4, gap=0, mask_prob=1.0, mask_keep_prob=0.5, mask_fill=0.0)
    vols = torch.rand(2, 1, 10, 10, 10) + 1
    out = torch.empty(2, 8, 1, 4, 4, 4)
    cubes, t = puzzle(vols, out=out, generator=torch.Generator().manual_seed(0), seed=11)
    assert cubes.data_ptr() == out.data_ptr()
    kept = (cubes != 0).float().mean().item()
    assert 0.4 < kept < 0.6 and bool(t.mask.all())


def test_bad_configurations():
    with pytest.raises(ValueError, match="smaller than the puzzle's crop"):
        RubikCube(cube_size=8, gap=4)(torch.zeros(1, 1, 16, 30, 30))
    with pytest.raises(ValueError, match="rotations='all' needs cubic cubes"):
        RubikCube(cube_size=(4, 4, 2), rotations="all")
    with pytest.raises(ValueError, match="rotations must be one of"):
        RubikCube(rotations="spin")
    with pytest.raises(ValueError, match="gap"):
        RubikCube(gap=(5, 2))
    with pytest.raises(ValueError, match="mask_prob"):
        RubikCube(mask_prob=2)
    with pytest.raises(ValueError, match="normalize"):
        RubikCube(normalize="minmax")
    with pytest.raises(ValueError, match="permutations must be"):
        RubikCube(permutations=torch.zeros(5, 7, dtype=torch.long))


def test_arguments_on_another_device_are_named():
    """An index (or volume shapes) on another device than the volumes is
    named as such, not reported by whatever op first meets it."""
    vols = torch.randn(2, 1, 12, 12, 12)
    puzzle = RubikCube(cube_size=4, gap=0, validate=False)
    with pytest.raises(ValueError, match=r"index must be a tensor on the volumes' device \(cpu\), got meta"):
        puzzle(vols, torch.zeros(2, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match="volume_shapes must be a tensor on the volumes' device"):
        puzzle(vols, volume_shapes=torch.full((2, 3), 12, device="meta"))


@pytest.mark.parametrize("bad,exc,match", [
    (dict(out=torch.empty(2, 8, 1, 4, 4, 4, dtype=torch.float16)), TypeError, "out must have dtype torch.float32"),
    (dict(out=torch.empty(2, 8, 1, 4, 4, 5)), ValueError, "out must have shape"),
    (dict(out=torch.empty(2, 8, 1, 4, 4, 4).transpose(-1, -2)), ValueError, "out must be contiguous"),
    (dict(volumes=torch.zeros(2, 1, 12, 12, 12, dtype=torch.int32)), TypeError, "unsupported source dtype"),
    (dict(index=torch.zeros(2)), TypeError, "index must be int32 or int64"),
    (dict(index=torch.zeros(2, 1, dtype=torch.long)), ValueError, "index must be 1-D"),
])
def test_unvalidated_puzzles_still_refuse_bad_arguments(bad, exc, match):
    """validate=False skips the op's Python checks, not the C++ ones nor the
    check of the caller's out= buffer: every bad argument is still an error."""
    args = {**dict(volumes=torch.randn(2, 1, 12, 12, 12), index=None, out=None), **bad}
    puzzle = RubikCube(cube_size=4, gap=0, validate=False)
    with pytest.raises(exc, match=match):
        puzzle(args["volumes"], args["index"], out=args["out"])


def test_keep_mask_seed_is_reproducible_without_a_device_sync():
    vols = torch.rand(2, 1, 10, 10, 10) + 1
    make = lambda: RubikCube(cube_size=4, gap=0, mask_prob=1.0, mask_keep_prob=0.5)  # noqa: E731
    a, b = make(), make()
    first_a = a(vols, generator=torch.Generator().manual_seed(3))[0]
    first_b = b(vols, generator=torch.Generator().manual_seed(3))[0]
    assert torch.equal(first_a, first_b)
    second_a = a(vols, generator=torch.Generator().manual_seed(3))[0]
    assert not torch.equal((first_a == 0), (second_a == 0))  # a new keep mask on the next call


def test_whole_puzzle_compiles_fullgraph():
    """A training step that samples and cuts its puzzles inside torch.compile
    (fullgraph: no graph break): same cubes and labels as eager for the same
    draws.  Inductor has its own random numbers unless told to fall back to
    eager's (fallback_random), so the comparison asks for that and seeds the
    global stream before both runs."""
    puzzle = RubikCube(cube_size=6, gap=(0, 4), validate=False, mask_prob=0.5, mask_keep_prob=0.2,
                       normalize="cube")
    vols = torch.randn(3, 1, 30, 31, 32, generator=torch.Generator().manual_seed(0))
    index = torch.tensor([2, 0, 2, 1])

    def step(v, idx):
        cubes, t = puzzle(v, idx, seed=123)
        return cubes, t.permutation, t.rotation, t.mask, t.origins

    torch.manual_seed(7)
    eager = step(vols, index)
    torch.manual_seed(7)
    with torch._inductor.config.patch(fallback_random=True):
        compiled = torch.compile(step, fullgraph=True)(vols, index)
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(cube_size="444"), TypeError, r"RubikCube: cube_size \(an int or 3 ints\) must be three integers, got '444'"),
    (dict(cube_size=2.7), ValueError, r"cube_size .* \(2.7 is not an integer\)"),
    (dict(cube_size=True), TypeError, "cube_size"),
    (dict(grid=(2.5, 2, 2)), ValueError, r"grid .* \(2.5 is not an integer\)"),
    (dict(grid=(2, 2)), TypeError, "grid .* must be three integers"),
    (dict(gap=(1, 2, 3)), TypeError, r"gap \(an int or 2 ints\) must be two integers, got \(1, 2, 3\)"),
    (dict(gap=(0.5, 2)), ValueError, "gap .* is not an integer"),
    (dict(permutations=torch.full((4, 8), 99)), ValueError, r"permutations: row 0 = \[99, .* is not a permutation"),
    (dict(permutations=torch.tensor([[0, 0, 1, 2, 3, 4, 5, 6]])), ValueError, "row 0 .* is not a permutation"),
    (dict(permutations=torch.arange(8).repeat(3, 1)), ValueError, "permutations holds repeated permutations"),
    (dict(permutations=torch.arange(8.0).view(1, 8)), TypeError, "permutations must be an integer tensor"),
    (dict(permutations=torch.zeros(0, 8, dtype=torch.long)), ValueError, r"must be \(K, 8\) with K >= 1"),
])
def test_bad_sizes_and_permutation_tensors_are_named(kw, exc, match):
    """Nothing is truncated (int(2.7) = 2, "444" read as three 4s) and no
    permutation tensor that would cut one cell twice gets through."""
    with pytest.raises(exc, match=match):
        RubikCube(**kw)


def test_integral_floats_count_as_integers():
    puzzle = RubikCube(grid=(2.0, 2, 2), cube_size=4.0, gap=(0.0, 2))
    assert puzzle.grid == (2, 2, 2) and puzzle.cube_size == (4, 4, 4) and puzzle.gap == (0, 2)
    assert all(type(v) is int for v in puzzle.cube_size + puzzle.grid + puzzle.gap)


def test_a_valid_permutation_tensor_of_any_integer_dtype_is_taken():
    perms = torch.tensor([[1, 0, 2, 3, 4, 5, 6, 7], [0, 1, 2, 3, 4, 5, 7, 6]], dtype=torch.int32)
    assert torch.equal(RubikCube(permutations=perms).permutations, perms.long())
