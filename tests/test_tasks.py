"""Pretext tasks: labels invert to the boxes they were cut from (each cube
cut again on its own with plain slicing and rubikops.rotations), the
registry's contract for every task, volume sources, and bad input."""
import inspect
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import rubikops
from rubikops import tasks
from rubikops.data import VolumeBank
from rubikops.models import build_encoder
from rubikops.permutations import min_distance
from rubikops.rotations import apply_code, code_matrix, compose, decode, inverse
from rubikops.tasks import (NEIGHBOUR_CELLS, NEIGHBOUR_DIRECTIONS, Jigsaw3D, RelativePatchLocation3D,
                            RotationPrediction3D, solve)
from rubikops.volumes import TensorVolumes

from .testing import BACKENDS


def coordinate_volumes(n, shape, channels=1):
    """Voxel value = its linear index (plus an offset per volume and channel): every box is unique."""
    D, H, W = shape
    base = torch.arange(D * H * W, dtype=torch.float64).view(1, 1, D, H, W)
    return torch.cat([torch.cat([base + i * 1e7 + c * 1e6 for c in range(channels)], 1) for i in range(n)])


def box(vol, n, origin, size):
    z, y, x = (int(v) for v in origin)
    return vol[n, :, z:z + size[0], y:y + size[1], x:x + size[2]]


def cut_of(cubes, targets):
    """What the op cut: the cubes, or for a dense task its untouched crops (the cubes are their
    corrupted copies)."""
    return targets.target[:, None] if isinstance(targets, tasks.DenseTargets) else cubes


def check_cubes_are_their_boxes(cubes, targets, vols, cube_size):
    """The contract every task keeps: cube m of sample b is box targets.origins[b, m] of volume
    targets.index[b], turned by targets.codes[b, m]."""
    cubes = cut_of(cubes, targets)
    B, M = cubes.shape[:2]
    assert targets.origins.shape == (B, M, 3) and targets.origins.dtype == torch.int64
    assert targets.codes.shape == (B, M) and targets.codes.dtype == torch.int64
    assert targets.index.shape == (B,) and targets.index.dtype == torch.int64
    for b in range(B):
        for m in range(M):
            expect = apply_code(box(vols, int(targets.index[b]), targets.origins[b, m], cube_size),
                                int(targets.codes[b, m]))
            assert torch.equal(cubes[b, m], expect.to(cubes.dtype)), (b, m)


# -- Jigsaw3D ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cube,gap", [((3, 4, 2), (1, 4)), ((2, 2, 2), 0)])
def test_jigsaw_labels_put_the_cells_back_in_grid_order(backend, cube, gap):
    name, device = backend
    task = Jigsaw3D(cube_size=cube, num_permutations=20, gap=gap, backend=name)
    assert task.permutations.shape == (20, 27) and task.num_cubes == 27
    vols = coordinate_volumes(3, (23, 21, 19), channels=2).to(device)
    index = torch.tensor([2, 0, 1, 2], device=device)
    cubes, t = task(vols, index=index, generator=torch.Generator(device).manual_seed(3))
    assert cubes.shape == (4, 27, 2, *cube) and cubes.device.type == device
    cubes, t, vols = cubes.cpu(), t.to("cpu"), vols.cpu()
    check_cubes_are_their_boxes(cubes, t, vols, task.cube_size)
    solved = solve(cubes, t, task.permutations)  # undo the permutation with the labels
    pitch = torch.tensor(task.pitch)
    for b in range(4):
        order = task.permutations[t.permutation[b]]
        cell_origin = torch.empty(27, 3, dtype=torch.long)
        cell_origin[order] = t.origins[b]
        for j in range(27):
            assert torch.equal(solved[b, j], box(vols, int(index[b]), cell_origin[j], task.cube_size))
        # cell j = (jz * 3 + jy) * 3 + jx sits at the crop corner + j's grid position * pitch + [0, J]
        grid = torch.tensor([(j // 9, j // 3 % 3, j % 3) for j in range(27)])
        offset = cell_origin - grid * pitch - cell_origin[0]
        assert int(offset.min()) >= -task.jitter and int(offset.max()) <= task.jitter


def test_jigsaw_permutations_of_27_cells_are_far_apart_and_reproducible():
    """27! cannot be enumerated: the set comes from a seeded random pool, picked by max-min Hamming
    distance.  Random pairs of 27-cell permutations differ in about 26 cells; the greedy pick keeps
    the closest pair of 100 at 22 or more (measured 24 at seed 0, in 0.3 s)."""
    a = Jigsaw3D(cube_size=2, num_permutations=100).permutations
    assert torch.equal(a, Jigsaw3D(cube_size=2, num_permutations=100).permutations)
    assert not torch.equal(a, Jigsaw3D(cube_size=2, num_permutations=100, permutation_seed=1).permutations)
    assert (a.sort(1).values == torch.arange(27)).all() and len(torch.unique(a, dim=0)) == 100
    assert min_distance(a) >= 22


# -- RotationPrediction3D ------------------------------------------------------------------------
def test_rotation_classes_are_proper_rotations():
    every = tasks.rotation.rotation_codes("all")
    assert len(set(every)) == 24 and all(round(float(torch.det(code_matrix(c).double()))) == 1 for c in every)
    for a, axis in enumerate("dhw"):
        four = tasks.rotation.rotation_codes(axis)
        assert len(four) == 4 and set(four) <= set(every)
        for c in four:  # the axis stays where it is, unflipped, and the four form a group
            assert decode(c)[0][a] == a and not decode(c)[1][a]
            assert {compose(c, d) for d in four} == set(four)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("axis,cube", [("all", (4, 4, 4)), ("d", (3, 5, 5)), ("h", (4, 2, 4)), ("w", (3, 3, 2))])
def test_rotation_labels_undo_to_the_upright_crop(backend, axis, cube):
    name, device = backend
    task = RotationPrediction3D(cube_size=cube, rotation_axis=axis, backend=name)
    vols = coordinate_volumes(2, (9, 8, 7), channels=2).to(device)
    index = torch.tensor([1, 0, 1, 1, 0, 0], device=device).repeat(40)
    cubes, t = task(vols, index=index, generator=torch.Generator(device).manual_seed(2))
    assert cubes.shape == (240, 1, 2, *cube)
    cubes, t, vols = cubes.cpu(), t.to("cpu"), vols.cpu()
    assert torch.equal(t.codes[:, 0], torch.tensor(task.rotation_codes)[t.rotation])
    for b in range(0, 240, 7):
        upright = apply_code(cubes[b, 0], inverse(int(t.codes[b, 0])))
        assert torch.equal(upright, box(vols, int(t.index[b]), t.origins[b, 0], cube))
    assert set(t.rotation.tolist()) == set(range(task.num_classes))
    hi = t.origins[:, 0] + torch.tensor(cube)
    assert int(t.origins.min()) == 0 and (hi <= torch.tensor([9, 8, 7])).all()
    assert (hi == torch.tensor([9, 8, 7])).any(0).all()  # the crop reaches the far end of every axis


# -- RelativePatchLocation3D ---------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_relative_location_labels_point_from_centre_to_neighbour(backend):
    name, device = backend
    task = RelativePatchLocation3D(cube_size=(3, 2, 4), gap=(1, 5), backend=name)
    assert task.jitter < min(task.cube_size) + task.gap[0]  # so the direction can be read off the origins
    vols = coordinate_volumes(2, (19, 16, 21), channels=2).to(device)
    index = torch.tensor([0, 1], device=device).repeat(150)
    cubes, t = task(vols, index=index, generator=torch.Generator(device).manual_seed(4))
    assert cubes.shape == (300, 2, 2, 3, 2, 4)
    cubes, t, vols = cubes.cpu(), t.to("cpu"), vols.cpu()
    check_cubes_are_their_boxes(cubes[::11], type(t)(**{k: v[::11] for k, v in vars(t).items()}), vols,
                                task.cube_size)
    direction = torch.tensor(NEIGHBOUR_DIRECTIONS)[t.location]
    diff = t.origins[:, 1] - t.origins[:, 0]
    residue = diff - direction * torch.tensor(task.pitch)
    assert int(residue.abs().max()) <= task.jitter
    assert bool((torch.sign(diff)[direction != 0] == direction[direction != 0]).all())
    assert set(t.location.tolist()) == set(range(26)) and (t.codes == 0).all()
    assert len(NEIGHBOUR_CELLS) == 26 and 13 not in NEIGHBOUR_CELLS


# -- any shape, any task (Hypothesis) ------------------------------------------------------------
def _task_strategy():
    cube = st.tuples(*[st.integers(1, 4)] * 3)
    gap = st.tuples(st.integers(0, 2), st.integers(0, 3)).map(lambda g: (g[0], g[0] + g[1]))
    return st.one_of(
        st.builds(lambda c, g: Jigsaw3D(cube_size=c, gap=g, num_permutations=5), cube, gap),
        st.builds(lambda c, g: RelativePatchLocation3D(cube_size=c, gap=g), cube, gap),
        st.builds(lambda e: RotationPrediction3D(cube_size=e), st.integers(1, 5)),
        st.builds(lambda c: tasks.ModelsGenesis(cube_size=c, shuffle_window=2), cube),
        st.builds(lambda c: tasks.MaskedVolumeModelling(cube_size=c, patch=1, mask_ratio=0.5),
                  cube.filter(lambda c: c[0] * c[1] * c[2] >= 2)),
        st.builds(lambda e, d, a: RotationPrediction3D(cube_size=tuple(d if i == "dhw".index(a) else e
                                                                      for i in range(3)), rotation_axis=a),
                  st.integers(1, 5), st.integers(1, 5), st.sampled_from("dhw")),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(task=_task_strategy(), extra=st.tuples(*[st.integers(0, 6)] * 3), channels=st.integers(1, 2),
       batch=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_any_task_any_shape_cuts_exactly_its_boxes(task, extra, channels, batch, seed):
    shape = tuple(c + e for c, e in zip(task.crop_size, extra))
    vols = coordinate_volumes(2, shape, channels)
    index = torch.randint(0, 2, (batch,), generator=torch.Generator().manual_seed(seed))
    cubes, t = task(vols, index=index, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(t.index, index)
    check_cubes_are_their_boxes(cubes, t, vols, task.cube_size)
    again, t2 = task(vols, index=index, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(cubes, again) and torch.equal(t.origins, t2.origins)  # deterministic for a generator


# -- volume sources ------------------------------------------------------------------------------
SHAPES = [(29, 31, 27), (33, 28, 30), (30, 30, 35)]  # odd, different


@pytest.mark.parametrize("dtype", ["uint8", "int16", "float32"])
@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_tasks_cut_banks_as_they_cut_each_volume(name, dtype):
    """A quantised, packed, 2-channel bank gives the same cubes as each de-quantised volume on its own:
    the task does not know about offsets or quantisation."""
    rng = np.random.default_rng(1)
    vols = [(rng.normal(size=(2,) + s) * 40 + 100).astype(np.float32) for s in SHAPES]
    bank = VolumeBank(vols, dtype=dtype)
    task = make(name, cube_size=4, mask_prob=0.0)  # masked cubes would not be their boxes
    cubes, t = bank.puzzles(task, 6, torch.Generator().manual_seed(5))
    assert cubes.dtype == torch.float32 and cubes.shape[:3] == (6, task.num_cubes, 2)
    cubes = cut_of(cubes, t)
    for b in range(6):
        one = bank[int(t.index[b])][None]  # (1, 2, D, H, W) physical values
        expect = rubikops.extract_cubes(one, t.origins[b:b + 1], task.cube_size, rotations=t.codes[b:b + 1])[0]
        torch.testing.assert_close(cubes[b], expect, rtol=1e-6, atol=1e-4)
    hi = t.origins + torch.tensor(task.cube_size)
    assert bool((hi <= bank.shapes[t.index][:, None]).all())


def test_plain_tensors_and_their_source_give_the_same_cubes():
    vols = torch.randn(3, 2, 21, 22, 23, generator=torch.Generator().manual_seed(0))
    for name in tasks.TASKS:
        a = make(name, cube_size=3, normalize="zscore")(vols, generator=torch.Generator().manual_seed(1))
        b = make(name, cube_size=3, normalize="zscore")(TensorVolumes(vols), generator=torch.Generator().manual_seed(1))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1].origins, b[1].origins), name
        assert torch.equal(cut_of(*a), cut_of(*b)), name


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_out_gets_the_batch_and_cuts_into_out_says_whether_the_op_wrote_it(name):
    """task(out=buf) returns buf holding the batch it returns without out (buf holding a stale batch
    and NaN beforehand: every voxel is written, masked ones too); cuts_into_out is True exactly where
    the op wrote the cubes into buf (no copy), which pretrain.py relies on to reuse the last batch."""
    vols = torch.randn(3, 1, 21, 22, 23, generator=torch.Generator().manual_seed(0))
    task = make(name)  # a fresh task for each call: RubikCube counts the keep-mask seeds it drew
    want, t = make(name)(vols, generator=torch.Generator().manual_seed(4))
    buf = make(name)(vols, generator=torch.Generator().manual_seed(9))[0].clone()
    buf.view(-1)[::3] = math.nan
    writes = []
    real = rubikops.ops.run
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(rubikops.ops, "run", lambda params, out=None, backend=None: writes.append(out is buf) or
                      real(params, out=out, backend=backend))
        got, u = task(vols, generator=torch.Generator().manual_seed(4), out=buf)
    assert got is buf and torch.equal(got, want) and torch.equal(u.origins, t.origins)
    assert writes == [task.cuts_into_out]


# -- the registry's contract, for every task ------------------------------------------------------
SMALL = dict(cube_size=4, gap=(0, 2), num_permutations=6, mask_prob=0.5, mask_keep_prob=0.3, grid=(2, 2, 1),
             patch=1, shuffle_window=2)


def make(name, **overrides):
    """Task ``name`` with small settings (each takes the ones it has)."""
    cls = tasks.get(name)
    options = {**SMALL, **overrides}
    return cls(**{k: v for k, v in options.items() if k in inspect.signature(cls.__init__).parameters})


@pytest.mark.parametrize("name", sorted(tasks.TASKS))
def test_every_registered_task_samples_learns_and_resumes(name):
    task = make(name, cube_size=8)  # the smallest cube the VGG encoder's three poolings take
    assert isinstance(task, tasks.PretextTask) and tasks.get(name) is type(task) and task.name == name
    vols = torch.randn(3, 1, 30, 29, 31, generator=torch.Generator().manual_seed(0)) * 5
    gen = torch.Generator().manual_seed(3)
    cubes, t = task(vols, index=torch.tensor([0, 2, 1, 1]), generator=gen)
    assert cubes.shape == (4, task.num_cubes, 1, *task.cube_size)
    options = {k: v for k, v in dict(hidden=8, dropout=0.0, norm="batch").items()
               if k in inspect.signature(task.build_model).parameters}
    model = task.build_model(build_encoder("vgg", 1, 4), **options)
    out = model(cubes)
    loss, parts = task.loss(out, t)
    assert torch.isfinite(loss) and parts and all(torch.isfinite(v) for v in parts.values())
    loss.backward()
    metrics, chance = task.metrics(out, t), task.chance_levels()
    headline = next(iter(chance))
    assert headline in metrics and set(task.metric_names()) >= {headline}
    if isinstance(task, tasks.DenseTask):  # errors and the gain over returning the input unchanged
        assert chance == {headline: None} and all(torch.isfinite(v) for v in metrics.values())
        assert float(metrics["restoration_gain"]) == pytest.approx(
            1 - float(metrics["mse"]) / float(metrics["identity_mse"]), rel=1e-5, abs=1e-5)
    else:
        assert set(metrics) <= set(chance) and all(0 <= float(v) <= 1 for v in metrics.values())
        assert all(v is None or 0 < v < 1 for v in chance.values())
    # state_dict (with the caller's generator state) resumes the exact next batch
    state, gen_state = task.state_dict(), gen.get_state()
    expect = task(vols, generator=gen)
    fresh = make(name, cube_size=8)
    fresh.load_state_dict(state)
    gen.set_state(gen_state)
    got = fresh(vols, generator=gen)
    assert torch.equal(expect[0], got[0])
    for k, v in vars(expect[1]).items():
        assert torch.equal(v, getattr(got[1], k)), k


def test_the_keep_mask_state_is_what_resumes_rubik():
    """Without its state a fresh RubikCube draws the first keep mask again, not the next one."""
    vols = torch.rand(2, 1, 12, 12, 12) + 1
    a = rubikops.RubikCube(cube_size=4, gap=0, mask_prob=1.0, mask_keep_prob=0.5)
    a(vols, generator=torch.Generator().manual_seed(3))
    second = a(vols, generator=torch.Generator().manual_seed(3))[0]
    b = rubikops.RubikCube(cube_size=4, gap=0, mask_prob=1.0, mask_keep_prob=0.5)
    assert not torch.equal(b(vols, generator=torch.Generator().manual_seed(3))[0], second)
    b.load_state_dict(a.state_dict())
    b.load_state_dict({"keep_seeds_drawn": 1})
    assert torch.equal(b(vols, generator=torch.Generator().manual_seed(3))[0], second)


def test_register_adds_a_task_and_refuses_a_second_with_the_same_name():
    @tasks.register("test_only_rotation")
    class Turned(RotationPrediction3D):
        pass
    try:
        assert tasks.get("test_only_rotation") is Turned and Turned.name == "test_only_rotation"
        with pytest.raises(ValueError, match="a task named 'test_only_rotation' exists already"):
            tasks.register("test_only_rotation")(RotationPrediction3D)
    finally:
        del tasks.TASKS["test_only_rotation"]


@pytest.mark.parametrize("make_bad,exc,match", [
    (lambda: tasks.get("nope"), ValueError, "task: unknown task 'nope'; choose one of"),
    (lambda: RotationPrediction3D(cube_size=(4, 4, 3)), ValueError, "rotation_axis='all' needs a cubic crop"),
    (lambda: RotationPrediction3D(cube_size=(4, 3, 4), rotation_axis="d"), ValueError,
     "rotation_axis='d' needs a crop square across axis 'd'"),
    (lambda: RotationPrediction3D(rotation_axis="z"), ValueError, "rotation_axis must be one of"),
    (lambda: RotationPrediction3D(cube_size="444"), TypeError, r"cube_size \(an int or 3 ints\)"),
    (lambda: RelativePatchLocation3D(gap=(3, 1)), ValueError, "RelativePatchLocation3D: gap must be"),
    (lambda: Jigsaw3D(cube_size=0), ValueError, "Jigsaw3D: cube_size must be positive"),
    (lambda: Jigsaw3D(normalize="minmax"), ValueError, "Jigsaw3D: normalize must be"),
    (lambda: RelativePatchLocation3D(cube_size=4)(torch.zeros(1, 1, 20, 20, 20)), ValueError,
     r"RelativePatchLocation3D: volumes of spatial shape \(20, 20, 20\) are smaller than the puzzle's crop"),
    (lambda: RotationPrediction3D(cube_size=4)(torch.zeros(1, 1, 20, 20)), ValueError,
     "volumes must be a 5-D tensor"),
    (lambda: RotationPrediction3D(cube_size=4)(torch.zeros(2, 1, 8, 8, 8), torch.zeros(2, dtype=torch.long,
                                                                                       device="meta")),
     ValueError, r"index must be a tensor on the volumes' device \(cpu\)"),
    (lambda: rubikops.RubikCube().load_state_dict({"calls": 3}), ValueError, "load_state_dict got unknown keys"),
    (lambda: RotationPrediction3D(cube_size=4)(TensorVolumes(torch.zeros(2, 1, 8, 8, 8)), stats=(1, 2)), ValueError,
     "RotationPrediction3D: stats describe a tensor's storage; a TensorVolumes describes its own"),
])
def test_bad_input_is_one_line_naming_the_argument(make_bad, exc, match):
    with pytest.raises(exc, match=match) as info:
        make_bad()
    assert "\n" not in str(info.value)


def test_uniform_labels():
    """Each class of the classification tasks is drawn uniformly (chi-square, ~5 sigma)."""
    vols = torch.zeros(1, 1, 30, 30, 30)
    index = torch.zeros(6000, dtype=torch.long)
    for task, field in ((RotationPrediction3D(cube_size=4), "rotation"), (RelativePatchLocation3D(cube_size=4, gap=0),
                                                                          "location")):
        _, t = task(vols, index=index, generator=torch.Generator().manual_seed(0))
        k = task.num_classes
        counts = torch.bincount(getattr(t, field), minlength=k).double()
        expect = 6000 / k
        chi2 = float(((counts - expect) ** 2 / expect).sum())
        assert counts.numel() == k and chi2 < (k - 1) + 5 * math.sqrt(2 * (k - 1)), (field, chi2)
