"""Augmentation keeps every puzzle label valid: crops against grid_sample,
puzzles cut from augmented crops invert to those crops, intensity draws
leave the labels bit for bit and the geometry untouched, and the cut runs
them in its output units."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rubikops import RubikCube, apply_code
from rubikops.augment import CropAffine, IntensityAugment, resample_crops, rotation_matrices
from rubikops.data import VolumeBank

from .testing import cube_intensity_numpy

SHAPES = [(20, 31, 25), (40, 22, 33), (17, 17, 19)]  # awkward, unequal: the bank pads H and W


def _bank(dtype="float32", seed=0):
    g = torch.Generator().manual_seed(seed)
    return VolumeBank([torch.randn(1, *s, generator=g) * 3 + 1 for s in SHAPES], "cpu", dtype)


def _grid_sample_reference(vol, centre, matrix, crop):
    """One crop by torch's grid_sample (float64, border padding, align_corners=True): an
    independent implementation of 'read the volume at centre + matrix @ offset, clamped'."""
    D, H, W = vol.shape[1:]
    axes = [torch.arange(n, dtype=torch.float64) - (n - 1) / 2 for n in crop]
    local = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    pos = local @ matrix.double().T + centre.double()
    size = torch.tensor([D, H, W], dtype=torch.float64)
    norm = 2 * pos / (size - 1) - 1
    grid = norm.flip(-1)[None]  # grid_sample wants (x, y, z) = (W, H, D)
    return F.grid_sample(vol[None].double(), grid, mode="bilinear", padding_mode="border", align_corners=True)[0]


@pytest.mark.parametrize("dtype", ["float32", "int16", "bfloat16"])
def test_resample_crops_matches_grid_sample(dtype):
    bank = _bank(dtype, seed=1)
    g = torch.Generator().manual_seed(2)
    B, crop = 7, (9, 6, 11)
    index = torch.tensor([0, 1, 2, 2, 1, 0, 1])
    # centres anywhere (some near or past the edges: clamping), rotations up to 40 degrees, zoom 0.7-1.3
    centres = torch.rand(B, 3, generator=g).double() * (bank.shapes[index].double() + 6) - 3
    angles = (torch.rand(B, 3, generator=g).double() * 2 - 1) * math.radians(40)
    zoom = 0.7 + 0.6 * torch.rand(B, generator=g).double()
    mats = rotation_matrices(angles) * zoom[:, None, None]
    scale, shift = (bank.scale, bank.shift) if bank.quantised else (None, None)
    out = resample_crops(bank.storage, bank.shapes, bank.offsets, index, centres, mats, crop, scale, shift)
    assert out.shape == (B, 1, *crop) and out.dtype == torch.float32
    for b in range(B):
        ref = _grid_sample_reference(bank[int(index[b])], centres[b], mats[b], crop)
        torch.testing.assert_close(out[b].double(), ref, atol=2e-4 * float(ref.abs().max()), rtol=1e-4)


@pytest.mark.parametrize("path", ["grid_sample", "gather"])
def test_identity_resampling_is_the_box(path, monkeypatch):
    """The corner gather gives the box bit for bit; grid_sample's normalised float32 coordinates
    are off by about 1e-7 of the packed storage's length."""
    import rubikops.augment as augment
    monkeypatch.setattr(augment, "_force_gather", path == "gather")
    bank = _bank()
    crop = (8, 9, 10)
    index = torch.tensor([0, 1, 1, 2])
    starts = torch.tensor([[3, 4, 5], [10, 2, 7], [0, 0, 0], [9, 8, 9]])
    centres = starts + torch.tensor([(n - 1) / 2 for n in crop])
    out = resample_crops(bank.storage, bank.shapes, bank.offsets, index, centres, torch.eye(3).expand(4, 3, 3), crop)
    for b in range(4):
        z, y, x = starts[b].tolist()
        box = bank[int(index[b])][:, z:z + 8, y:y + 9, x:x + 10]
        if path == "gather":
            assert torch.equal(out[b], box)
        else:
            torch.testing.assert_close(out[b], box, atol=1e-4, rtol=0)


def test_rotation_matrices_are_the_product_about_each_axis():
    """R = R_d @ R_h @ R_w, each elementary rotation written out in NumPy (about D: the (h, w) plane
    turns, ...), on random and on exactly-zero and right angles."""
    a = (torch.rand(40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1) * math.pi
    a[:4] = torch.tensor([[0.0, 0.0, 0.0], [math.pi / 2, 0.0, 0.0], [0.0, -math.pi / 2, 0.0], [0.0, 0.0, math.pi]],
                         dtype=torch.float64)
    want = []
    for d, h, w in a.numpy():
        rd = np.array([[1, 0, 0], [0, np.cos(d), -np.sin(d)], [0, np.sin(d), np.cos(d)]])
        rh = np.array([[np.cos(h), 0, np.sin(h)], [0, 1, 0], [-np.sin(h), 0, np.cos(h)]])
        rw = np.array([[np.cos(w), -np.sin(w), 0], [np.sin(w), np.cos(w), 0], [0, 0, 1]])
        want.append(rd @ rh @ rw)
    np.testing.assert_allclose(rotation_matrices(a).numpy(), np.stack(want), rtol=0, atol=1e-15)
    assert rotation_matrices(a[:, [2, 0, 1]].contiguous()[::2]).shape == (20, 3, 3)  # any (B, 3) view


def test_rotation_matrices_are_rotations():
    a = (torch.rand(50, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1) * math.pi
    r = rotation_matrices(a.double())
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(50, 3, 3))
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(50, dtype=torch.float64))


@pytest.mark.parametrize("dtype", ["float32", "int16"])
@pytest.mark.parametrize("mode", ["paper", "all"])
def test_puzzles_from_augmented_crops_invert_to_those_crops(mode, dtype):
    """Solving with the labels gives back the augmented crop: every cube is its box of the crop (made
    here by grid_sample in float64, from the volume alone), turned by its code, though the bank never
    makes a crop (one extract_cubes(affine=) pass over its packed, padded storage)."""
    bank = _bank(dtype, seed=3)
    puzzle = RubikCube(grid=(2, 2, 2), cube_size=5, num_permutations=12, gap=(0, 3), rotations=mode)
    aug = CropAffine(max_angle=15, zoom=(0.8, 1.2))  # crops of 13^3 rotated and zoomed past the volumes' edges
    cubes, t = bank.puzzles(puzzle, 6, torch.Generator().manual_seed(4), crop_transform=aug)
    g = torch.Generator().manual_seed(4)  # replay the same draws: volumes, then the crops' affines
    index = bank.sample_index(6, g)
    affine = aug.draw(bank.shapes, puzzle.crop_size, index, g)
    half = torch.tensor([(n - 1) / 2 for n in puzzle.crop_size], dtype=torch.float64)
    assert torch.equal(t.index, index)
    for b in range(6):
        matrix = affine[b, :, :3]
        crop = _grid_sample_reference(bank[int(index[b])].double(), affine[b, :, 3] + matrix @ half, matrix,
                                      puzzle.crop_size)
        for m in range(puzzle.num_cells):
            z, y, x = t.origins[b, m].tolist()
            box = crop[:, z:z + 5, y:y + 5, x:x + 5]
            torch.testing.assert_close(cubes[b, m].double(), apply_code(box, int(t.codes[b, m])), rtol=0,
                                       atol=1e-5)


def test_crop_affine_is_reproducible_and_stays_in_range():
    bank = _bank(seed=5)
    aug = CropAffine()
    idx = torch.tensor([0, 1, 2])
    a = aug.crops(bank, (12, 12, 12), idx, torch.Generator().manual_seed(9))
    b = aug.crops(bank, (12, 12, 12), idx, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    for i in range(3):  # trilinear interpolation never leaves the volume's range
        v = bank[i]
        assert float(a[i].min()) >= float(v.min()) - 1e-5 and float(a[i].max()) <= float(v.max()) + 1e-5


@pytest.mark.parametrize("bad", [dict(max_angle=-1), dict(max_angle=90), dict(zoom=(0, 1)), dict(zoom=(1.2, 1.1))])
def test_crop_affine_refuses_bad_settings(bad):
    with pytest.raises(ValueError, match="CropAffine: " + next(iter(bad))):
        CropAffine(**bad)


def _puzzle(**kw):
    return RubikCube(**dict(dict(grid=(2, 2, 2), cube_size=5, num_permutations=12, gap=(0, 3), mask_prob=0.3), **kw))


def test_intensity_augment_leaves_labels_bit_for_bit():
    """The draws come after the puzzle's: the same generator gives the same labels with and without them."""
    bank, puzzle = _bank(seed=6), _puzzle()
    cubes, t = bank.puzzles(puzzle, 5, torch.Generator().manual_seed(1), crop_transform=CropAffine())
    aug, t2 = bank.puzzles(puzzle, 5, torch.Generator().manual_seed(1), crop_transform=CropAffine(),
                           intensity_transform=IntensityAugment(p=1.0))
    for f in ("permutation", "rotation", "mask", "origins", "codes", "index"):
        assert torch.equal(getattr(t, f), getattr(t2, f)), f
    assert not torch.equal(aug, cubes)


def test_contrast_and_gamma_keep_each_cubes_voxel_order():
    """Without noise or bias field each cube's map is increasing (contrast, and gamma on a window with the
    identity outside it): its voxels keep their order, so the geometry is untouched."""
    bank, puzzle = _bank(seed=2), _puzzle(mask_prob=0.0)
    x, _ = bank.puzzles(puzzle, 4, torch.Generator().manual_seed(2))
    y, _ = bank.puzzles(puzzle, 4, torch.Generator().manual_seed(2),
                        intensity_transform=IntensityAugment(bias_field=0.0, noise=0.0, p=1.0, gamma=(0.5, 2.0)))
    xf, yf = x.flatten(3), y.flatten(3)
    ys = yf.gather(-1, xf.argsort(-1))
    assert bool((ys[..., 1:] >= ys[..., :-1] - 1e-5).all())
    assert not torch.allclose(x, y)


def test_intensity_augment_off_is_identity_and_draws_are_reproducible():
    bank, puzzle = _bank(seed=3), _puzzle()
    x, _ = bank.puzzles(puzzle, 4, torch.Generator().manual_seed(0))
    y, _ = bank.puzzles(puzzle, 4, torch.Generator().manual_seed(0), intensity_transform=IntensityAugment(p=0.0))
    assert torch.equal(x, y)
    a = IntensityAugment().draw(4, 8, torch.Generator().manual_seed(3))
    b = IntensityAugment().draw(4, 8, torch.Generator().manual_seed(3))
    assert torch.equal(a.values, b.values)
    assert bool((a.values[..., -1] == a.values[..., -1].floor()).all()) and float(a.values[..., -1].max()) < 2 ** 53


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_intensity_draws_follow_the_documented_uniforms(p):
    """draw() against its rule, written out field by field in NumPy from the same generator's 11 uniforms
    a cube: u[0:4] < p switch contrast, gamma, bias field and noise on; contrast in the contrast range
    from u[4], gamma log-uniform from u[5], the bias coefficients in +-bias_field from u[6:9], the noise
    key floor(u[10] * 2**53); an unused step is its identity (1, 1, 0, 0)."""
    aug = IntensityAugment(contrast=(0.6, 1.3), gamma=(0.5, 2.0), bias_field=0.4, noise=0.07, p=p)
    got = aug.draw(5, 6, torch.Generator().manual_seed(11)).values.numpy()
    u = torch.rand(5, 6, 11, generator=torch.Generator().manual_seed(11), dtype=torch.float64).numpy()
    on = u[..., :4] < p
    want = np.empty((5, 6, 7))
    want[..., 0] = np.where(on[..., 0], 0.6 + u[..., 4] * (1.3 - 0.6), 1.0)
    want[..., 1] = np.where(on[..., 1], np.exp(np.log(0.5) + u[..., 5] * (np.log(2.0) - np.log(0.5))), 1.0)
    want[..., 2] = np.where(on[..., 3], 0.07, 0.0)
    want[..., 3:6] = np.where(on[..., 2:3], (u[..., 6:9] * 2 - 1) * 0.4, 0.0)
    want[..., 6] = np.floor(u[..., 10] * 2.0 ** 53)
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
    assert np.array_equal(got[..., 6], want[..., 6])  # the key exactly: it seeds the noise


def test_draws_in_a_volumes_units():
    """in_units against the documented formula, each column by hand."""
    aug = IntensityAugment(p=1.0, window=2.5)
    draws = aug.draw(3, 4, torch.Generator().manual_seed(4))
    mean, sd = torch.tensor([0.0, 10.0, -3.0], dtype=torch.float64), torch.tensor([1.0, 4.0, 0.5], dtype=torch.float64)
    rows = draws.in_units(mean, sd)
    c, g, nu, bias, key = (draws.values[..., 0], draws.values[..., 1], draws.values[..., 2], draws.values[..., 3:6],
                           draws.values[..., 6])
    m, s = mean[:, None], sd[:, None]
    for k, want in enumerate([c, (1 - c) * m, g, m - 2.5 * c * s, 5.0 * c * s, nu * c * s, *bias.unbind(-1), key]):
        torch.testing.assert_close(rows[..., k], want, rtol=1e-15, atol=1e-15)
    assert bool(((c >= 0.75) & (c <= 1.25)).all() and ((g >= 0.7) & (g <= 1.5)).all())
    assert bool((bias.abs() <= 0.3).all()) and bool((nu == 0.05).all())


@pytest.mark.parametrize("normalize", [None, "zscore", ("window", -1.0, 4.0)], ids=["none", "zscore", "window"])
@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_the_task_runs_the_draws_in_its_output_units(normalize, dtype):
    """A task's cubes with draws equal the same cubes without them, put through the NumPy stage with the
    draws in the units of the task's output: each volume's mean and sd after its value map and the
    task's normalisation, whose clamp (a window's) comes after the stage."""
    bank = _bank(dtype, seed=8)
    aug = IntensityAugment(p=0.9, gamma=(0.5, 2.0), noise=0.2)
    got, t = bank.puzzles(_puzzle(normalize=normalize, mask_prob=0.0), 3, torch.Generator().manual_seed(5),
                          intensity_transform=aug)
    mean, std = (s.double()[t.index] for s in bank.stats)
    g = torch.Generator().manual_seed(5)
    base, _ = bank.puzzles(_puzzle(normalize="zscore" if normalize == "zscore" else None, mask_prob=0.0), 3, g)
    base = base.double()
    if normalize == "zscore":
        mean_o, sd_o = torch.zeros_like(mean), std / std.clamp_min(1e-6)
    elif isinstance(normalize, tuple):  # (x - lo) / (hi - lo) * 2 - 1 on (-1, 4)
        base = base * 0.4 - 0.6
        mean_o, sd_o = mean * 0.4 - 0.6, std * 0.4
    else:
        mean_o, sd_o = mean, std
    rows = aug.draw(3, 8, g).in_units(mean_o, sd_o)
    want = torch.from_numpy(np.stack([np.stack([cube_intensity_numpy(base[b, m].numpy(), rows[b, m].tolist())
                                                for m in range(8)]) for b in range(3)]))
    if isinstance(normalize, tuple):
        want = want.clamp(-1.0, 1.0)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-5 * (1 + float(want.abs().max())))


@pytest.mark.parametrize("bad", [dict(contrast=(0, 1)), dict(gamma=(2, 1)), dict(noise=-1), dict(p=1.5),
                                 dict(bias_field=float("nan")), dict(window=0.0), dict(gamma=(1, float("inf")))])
def test_intensity_augment_refuses_bad_settings(bad):
    with pytest.raises(ValueError, match="IntensityAugment: " + next(iter(bad))):
        IntensityAugment(**bad)


def test_grid_sample_path_matches_the_corner_gather_path(monkeypatch):
    """float32 banks take one grid_sample over the packed storage; the corner gather (every other
    dtype) is the independent check, on volumes of different shapes so that crops near an edge
    would read the neighbouring volume if the clamping were wrong."""
    import rubikops.augment as augment
    g = torch.Generator().manual_seed(11)
    bank = VolumeBank([torch.randn(1, 9 + i, 12 - i, 7 + 2 * i, generator=g) * 50 for i in range(3)])
    index = torch.tensor([0, 1, 2, 2, 1, 0])
    angles = (torch.rand(6, 3, generator=g) * 2 - 1) * 0.6
    mats = rotation_matrices(angles) * (0.7 + 0.6 * torch.rand(6, 1, 1, generator=g))
    centres = torch.rand(6, 3, generator=g) * bank.shapes[index].float()  # some crops hang over the edges
    args = (bank.storage, bank.shapes, bank.offsets, index, centres, mats, (5, 6, 7))
    fast = resample_crops(*args)
    monkeypatch.setattr(augment, "_force_gather", True)
    slow = resample_crops(*args)
    torch.testing.assert_close(fast, slow, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("task", ["rubik", "masked"])
def test_an_affine_read_stays_inside_each_padded_volume(task):
    """A batch tensor whose volumes are smaller than its storage (volume_shapes given): the affine read
    of every task clamps into each volume's own extent, never into the padding, and the targets
    (the dense task's untouched crop) are the grid_sample crop of the volume alone."""
    from rubikops.tasks import get
    g = torch.Generator().manual_seed(6)
    shapes = torch.tensor([[14, 12, 13], [12, 15, 12]])
    storage = torch.full((2, 1, 15, 15, 15), 1e4)  # loud padding
    for i, s in enumerate(shapes.tolist()):
        storage[i, :, :s[0], :s[1], :s[2]] = torch.randn(1, *s, generator=g)
    puzzle = get(task)(cube_size=4, **({"grid": (2, 2, 2), "num_permutations": 4, "gap": (0, 1)}
                                         if task == "rubik" else {"patch": 2}))
    index = torch.tensor([0, 1, 1, 0])
    affine = CropAffine(max_angle=20, zoom=(0.8, 1.25)).draw(shapes, puzzle.crop_size, index, g)
    cubes, t = puzzle(storage, index, torch.Generator().manual_seed(1), volume_shapes=shapes, affine=affine)
    half = torch.tensor([(n - 1) / 2 for n in puzzle.crop_size], dtype=torch.float64)
    for b, v in enumerate(index.tolist()):
        d, h, w = shapes[v].tolist()
        matrix = affine[b, :, :3]
        crop = _grid_sample_reference(storage[v, :, :d, :h, :w].double(), affine[b, :, 3] + matrix @ half, matrix,
                                      puzzle.crop_size)
        if task == "masked":
            torch.testing.assert_close(t.target[b].double(), crop, rtol=0, atol=1e-5)
            continue
        for m in range(puzzle.num_cells):
            z, y, x = t.origins[b, m].tolist()
            box = crop[:, z:z + 4, y:y + 4, x:x + 4]
            torch.testing.assert_close(cubes[b, m].double(), apply_code(box, int(t.codes[b, m])), rtol=0, atol=1e-5)


@pytest.mark.parametrize("view", ["strided", "offset", "stride0", "transposed"])
@pytest.mark.parametrize("task", ["rubik", "jigsaw", "rotation", "relative_location", "genesis", "masked"])
def test_a_task_reads_its_affine_through_any_view(task, view):
    """Every task's ``affine`` argument may be a strided, offset, stride-0 or transposed view: the cubes
    and targets equal those of a dense copy, bit for bit (packed int16 bank, reads past the edges)."""
    from rubikops.tasks import get
    options = {"rubik": dict(grid=(2, 2, 2), cube_size=3, num_permutations=4, gap=(0, 1)),
               "jigsaw": dict(cube_size=3, num_permutations=4, gap=(0, 1)), "rotation": dict(cube_size=4),
               "relative_location": dict(cube_size=3, gap=(0, 1)), "genesis": dict(cube_size=4, shuffle_window=2),
               "masked": dict(cube_size=4, patch=2)}[task]
    puzzle = get(task)(**options)
    bank = _bank("int16", seed=8)
    index = torch.tensor([2, 0, 1, 2])
    dense = CropAffine(max_angle=25, zoom=(0.8, 1.25)).draw(bank.shapes, puzzle.crop_size, index,
                                                            torch.Generator().manual_seed(3))
    if view == "stride0":
        dense = dense[:1].expand(4, 3, 4).contiguous()
        viewed = dense[:1].expand(4, 3, 4)
    elif view == "strided":
        viewed = torch.zeros(8, 3, 4, dtype=torch.float64)[::2]
        viewed.copy_(dense)
    elif view == "offset":
        viewed = torch.full((6, 3, 4), float("nan"), dtype=torch.float64)[2:]
        viewed.copy_(dense)
    else:
        viewed = dense.transpose(1, 2).contiguous().transpose(1, 2)
    want, want_t = puzzle(bank, index, torch.Generator().manual_seed(5), affine=dense)
    got, got_t = puzzle(bank, index, torch.Generator().manual_seed(5), affine=viewed)
    assert torch.equal(got, want)
    for field in vars(want_t):
        assert torch.equal(getattr(got_t, field), getattr(want_t, field)), field


def test_device_constants_keep_their_values_types_and_signs():
    """The batch-drawing code's cached constants: equal Python values of other types (1, 1.0, True) or
    signs (0.0, -0.0) are other tensors, and each is what torch.tensor makes of its values."""
    from rubikops._constants import device_constant
    made = [device_constant(v, "cpu") for v in ((1, 2), (1.0, 2.0), (True, False), (0.0,), (-0.0,))]
    assert [t.dtype for t in made] == [torch.int64, torch.float32, torch.bool, torch.float32, torch.float32]
    assert str(made[3].item()) == "0.0" and str(made[4].item()) == "-0.0"
    assert device_constant((1.0, 2.0), "cpu") is made[1]  # cached
    assert device_constant((1.0, 2.0), "cpu", torch.float64).dtype == torch.float64
