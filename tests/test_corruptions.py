"""The dense tasks' corruptions against plain NumPy versions on fixed draws,
over drawn shapes (Hypothesis), and the tasks built on them: the target is an
independent re-cut of the untouched crop, the same generator gives the same
batch, every draw comes from the caller's generator, the batch stays on the
volumes' device, and views of the arguments give what contiguous copies give."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from rubikops import corruptions as K
from rubikops.tasks import DenseTargets, MaskedVolumeModelling, ModelsGenesis

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def np_bezier_map(v, controls, mirrored):
    """The curve at values v in [0, 1], NumPy: the cubic through (0,0), (x1,y1), (x2,y2), (1,1) sampled densely
    in t, the table evenly spaced in v read from it with np.interp, then v read from the table."""
    x1, y1, x2, y2 = controls
    t = np.linspace(0, 1, K.CURVE_SAMPLES)
    bx = 3 * (1 - t) ** 2 * t * x1 + 3 * (1 - t) * t ** 2 * x2 + t ** 3
    by = 3 * (1 - t) ** 2 * t * y1 + 3 * (1 - t) * t ** 2 * y2 + t ** 3
    grid = np.linspace(0, 1, K.CURVE_TABLE)
    table = np.interp(grid, np.maximum.accumulate(bx), np.maximum.accumulate(by))
    table = 1 - table if mirrored else table
    return np.interp(v, grid, table)


@FUZZ
@given(shape=st.tuples(st.integers(1, 4), st.integers(1, 2), st.integers(1, 6), st.integers(1, 7), st.integers(1, 5)),
       seed=st.integers(0, 2**31 - 1))
def test_intensity_curve_is_the_bezier_map_of_each_crops_range(shape, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 50 + 10
    controls, mirrored, apply = torch.rand(shape[0], 4, generator=g), torch.rand(shape[0], generator=g) < 0.5, \
        torch.rand(shape[0], generator=g) < 0.7
    got = K.intensity_curve(x, controls, mirrored, apply).numpy()
    for b in range(shape[0]):
        v = x[b].double().numpy()
        if not apply[b]:
            np.testing.assert_array_equal(got[b], x[b].numpy())
            continue
        lo, hi = v.min(), v.max()
        expect = lo + (hi - lo) * np_bezier_map((v - lo) / max(hi - lo, 1e-30), controls[b].double().numpy(),
                                                bool(mirrored[b]))
        np.testing.assert_allclose(got[b], expect, atol=1e-5 * max(hi - lo, 1.0), rtol=0)


def test_the_curve_is_monotone_and_keeps_the_range():
    g = torch.Generator().manual_seed(0)
    controls = torch.rand(64, 4, generator=g)
    for mirrored in (False, True):
        table = K.curve_table(controls, torch.full((64,), mirrored))
        step = table.diff(dim=1)
        assert bool((step <= 1e-7).all() if mirrored else (step >= -1e-7).all())
        ends = table[:, [0, -1]]
        torch.testing.assert_close(ends, torch.tensor([1.0, 0.0] if mirrored else [0.0, 1.0]).expand(64, 2))


def np_shuffle(x, window, chosen, keys):
    out = x.copy()
    B, C, D, H, W = x.shape
    nd, nh, nw = D // window, H // window, W // window
    for b in range(B):
        j = 0
        for i in range(nd):
            for k in range(nh):
                for m in range(nw):
                    if chosen[b, j]:
                        sl = (slice(i * window, (i + 1) * window), slice(k * window, (k + 1) * window),
                              slice(m * window, (m + 1) * window))
                        order = np.argsort(keys[b, j], kind="stable")
                        for c in range(C):
                            block = x[b, c][sl].reshape(-1)
                            out[b, c][sl] = block[order].reshape(window, window, window)
                    j += 1
    return out


@FUZZ
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(1, 9), st.integers(1, 9), st.integers(1, 9)),
       window=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_shuffle_permutes_the_chosen_windows_of_the_grid(shape, window, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    J = int(np.prod(K.window_grid(shape[2:], window)))
    chosen = torch.rand(shape[0], J, generator=g) < 0.5
    keys = torch.rand(shape[0], J, window ** 3, generator=g)
    got = K.shuffle_windows(x, window, chosen, keys)
    np.testing.assert_array_equal(got.numpy(), np_shuffle(x.numpy(), window, chosen.numpy(), keys.numpy()))
    # a strided view of the crops gives what its contiguous copy gives
    wide = torch.randn(shape[0], shape[1], shape[2], shape[3], 2 * shape[4], generator=g)
    view = wide[..., ::2]
    assert torch.equal(K.shuffle_windows(view, window, chosen, keys), K.shuffle_windows(view.contiguous(), window,
                                                                                         chosen, keys))


def np_fill_boxes(x, corners, sizes, active, noise, outside):
    out = x.copy()
    B = x.shape[0]
    for b in range(B):
        if not active[b].any():
            continue
        inside = np.zeros(x.shape[2:], bool)
        for k in range(corners.shape[1]):
            if active[b, k]:
                (z, y, w), (dz, dy, dw) = corners[b, k], sizes[b, k]
                inside[z:z + dz, y:y + dy, w:w + dw] = True
        replace = ~inside if outside[b] else inside
        lo, hi = x[b].min(), x[b].max()
        out[b][:, replace] = (lo + noise[b] * (hi - lo))[:, replace]
    return out


@FUZZ
@given(shape=st.tuples(st.integers(1, 3), st.integers(1, 2), st.integers(1, 8), st.integers(1, 8), st.integers(1, 8)),
       boxes=st.integers(1, 5), seed=st.integers(0, 2**31 - 1))
def test_fill_boxes_paints_inside_or_outside_the_active_boxes(shape, boxes, seed):
    g = torch.Generator().manual_seed(seed)
    B, ext = shape[0], torch.tensor(shape[2:])
    x = torch.randn(shape, generator=g) * 3
    sizes = (torch.rand(B, boxes, 3, generator=g) * ext).long() + 1
    corners = (torch.rand(B, boxes, 3, generator=g) * (ext - sizes + 1)).long()
    active = torch.rand(B, boxes, generator=g) < 0.6
    outside = torch.rand(B, generator=g) < 0.5
    noise = torch.rand(shape, generator=g)
    got = K.fill_boxes(x, corners, sizes, active, noise, outside)
    expect = np_fill_boxes(x.numpy(), corners.numpy(), sizes.numpy(), active.numpy(), noise.numpy(), outside.numpy())
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-6, atol=1e-6)


@FUZZ
@given(grid=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)), patch=st.integers(1, 3),
       batch=st.integers(1, 3), ratio=st.floats(0.05, 0.95), seed=st.integers(0, 2**31 - 1))
def test_masked_patches_normalised_targets_and_the_exact_masked_count(grid, patch, batch, ratio, seed):
    g = torch.Generator().manual_seed(seed)
    shape = tuple(n * patch for n in grid)
    x = torch.randn(batch, 2, *shape, generator=g)
    masked = K.choose_patches(batch, grid, ratio, g, "cpu")
    assert masked.shape == (batch, *grid)
    assert (masked.flatten(1).sum(1) == round(ratio * int(np.prod(grid)))).all()
    got, norm = K.mask_patches(x, masked, patch, fill=-3.0).numpy(), K.normalised_patches(x, patch).numpy()
    xn = x.numpy()
    for b in range(batch):
        for i, j, k in np.ndindex(*grid):
            sl = (b, slice(None), slice(i * patch, (i + 1) * patch), slice(j * patch, (j + 1) * patch),
                  slice(k * patch, (k + 1) * patch))
            np.testing.assert_array_equal(got[sl], -3.0 if masked[b, i, j, k] else xn[sl])
            block = xn[sl].astype(np.float64)
            mean = block.mean(axis=(1, 2, 3), keepdims=True)
            var = block.var(axis=(1, 2, 3), keepdims=True)
            np.testing.assert_allclose(norm[sl], (block - mean) / np.sqrt(var + 1e-6), rtol=1e-4, atol=1e-4)


# -- the tasks ---------------------------------------------------------------------------------------
def volumes(seed=0, n=3, shape=(21, 19, 23)):
    return torch.randn(n, 1, *shape, generator=torch.Generator().manual_seed(seed)) * 4 + 2


TASKS = [lambda: ModelsGenesis(cube_size=(8, 12, 8), shuffle_window=2),
         lambda: ModelsGenesis(cube_size=8, shuffle_prob=1.0, curve_prob=1.0, paint_prob=1.0, outpaint_prob=0.0),
         lambda: MaskedVolumeModelling(cube_size=8, patch=2, mask_ratio=0.5),
         lambda: MaskedVolumeModelling(cube_size=(8, 4, 8), patch=4, mask_ratio=0.5, normalized_target=True)]


@pytest.mark.parametrize("make", TASKS)
def test_the_target_is_the_untouched_crop_recut_by_slicing(make):
    task, vols = make(), volumes()
    index = torch.tensor([2, 0, 1, 2, 2])
    inputs, t = task(vols, index=index, generator=torch.Generator().manual_seed(4))
    assert isinstance(t, DenseTargets) and inputs.shape == (5, 1, 1, *task.cube_size)
    assert torch.equal(t.corrupted, inputs[:, 0]) and torch.equal(t.index, index)
    for b in range(5):
        z, y, x = t.origins[b, 0].tolist()
        d, h, w = task.cube_size
        crop = vols[int(index[b]), :, z:z + d, y:y + h, x:x + w][None]
        expect = K.normalised_patches(crop, task.patch)[0] if getattr(task, "normalized_target", False) else crop[0]
        torch.testing.assert_close(t.target[b], expect, rtol=0, atol=1e-5 if task.name == "masked" else 0)
        assert ((t.origins[b, 0] + torch.tensor(task.cube_size)) <= torch.tensor(vols.shape[2:])).all()


def test_genesis_inputs_are_the_transformations_of_the_recut_crop_on_the_drawn_numbers():
    """The corrupted input equals the documented chain (shuffle, curve, painting) applied with the
    numbers drawn from a copy of the generator, in order: crop placement first, then the corruptions."""
    task, vols = ModelsGenesis(cube_size=8, shuffle_window=2), volumes(1)
    index = torch.tensor([0, 1, 2, 0])
    gen = torch.Generator().manual_seed(9)
    replay = torch.Generator().manual_seed(9)
    inputs, t = task(vols, index=index, generator=gen)
    torch.rand(4, 3, generator=replay, dtype=torch.float64)  # the crop placement
    drawn = task.draw(t.target, replay)
    assert torch.equal(inputs[:, 0], task.apply(t.target, drawn))
    assert torch.equal(gen.get_state(), replay.get_state())  # nothing else was drawn
    assert drawn["active"].any() and drawn["shuffle"].any()  # the fixed draws exercise painting and shuffling


@pytest.mark.parametrize("make", TASKS)
def test_same_generator_same_batch_and_views_of_the_arguments_change_nothing(make):
    task, vols = make(), volumes(2)
    index = torch.tensor([1, 1, 0, 2])
    a = task(vols, index=index, generator=torch.Generator().manual_seed(5))
    b = task(vols, index=index, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1].target, b[1].target)
    wide = torch.zeros(3, 1, 21, 19, 46)
    wide[..., ::2] = vols
    strided_index = torch.tensor([9, 1, 9, 1, 9, 0, 9, 2])[1::2]   # an offset, strided view
    c = task(wide[..., ::2], index=strided_index, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], c[0]) and torch.equal(a[1].target, c[1].target)
    same = torch.tensor([1]).expand(4)  # stride 0
    d = task(vols, index=same, generator=torch.Generator().manual_seed(5))
    e = task(vols, index=same.contiguous(), generator=torch.Generator().manual_seed(5))
    assert torch.equal(d[0], e[0])
    out = torch.empty_like(a[0])
    f = task(vols, index=index, generator=torch.Generator().manual_seed(5), out=out)
    assert f[0] is out and torch.equal(out, a[0]) and torch.equal(f[1].corrupted, out[:, 0])


@pytest.mark.parametrize("make", TASKS)
def test_the_batch_stays_on_the_volumes_device(make):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        task = make()
        vols = volumes(3).to(dev)
        inputs, t = task(vols, index=torch.tensor([0, 2], device=dev), generator=torch.Generator(dev).manual_seed(1))
        assert inputs.device.type == dev
        assert all(v.device.type == dev for v in vars(t).values())


@pytest.mark.parametrize("bad, match", [
    (lambda: MaskedVolumeModelling(cube_size=8, patch=3), "multiple"),
    (lambda: MaskedVolumeModelling(cube_size=8, mask_ratio=1.0), "mask_ratio"),
    (lambda: MaskedVolumeModelling(cube_size=4, patch=4, mask_ratio=0.4), "at least one patch"),
    (lambda: MaskedVolumeModelling(cube_size=8, fill=float("nan")), "fill"),
    (lambda: ModelsGenesis(cube_size=8, shuffle_prob=1.5), "shuffle_prob"),
    (lambda: ModelsGenesis(cube_size=8, shuffle_window=0), "shuffle_window"),
    (lambda: ModelsGenesis(cube_size=0), "cube_size"),
])
def test_bad_settings_are_one_line_naming_the_setting(bad, match):
    with pytest.raises(ValueError, match=match) as err:
        bad()
    assert "\n" not in str(err.value)
