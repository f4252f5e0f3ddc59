"""Every preprocessing step against world coordinates (a value that is a
linear function of world position must stay that function of the voxel's
new world position) and against plain NumPy formulas."""
import numpy as np
import pytest

from rubikops.data import (DataError, Preprocessing, Volume, crop, foreground_box, load_nifti, pad_to, preprocess,
                           reorient, resample, resample_to)
from rubikops.data.preprocess import check_same_grid

from .nifti_files import LPS_PERMUTED, aniso_case, world_linear


def _vol(data, affine, **meta):
    return Volume(np.asarray(data, np.float32)[None], np.asarray(affine, np.float64), ("mem.nii",), meta)


def test_reorient_to_ras_keeps_world_positions(tmp_path):
    path, _ = aniso_case(tmp_path)
    vol = reorient(load_nifti(path))
    assert vol.orientation == "RAS"
    assert np.allclose(vol.affine[:3, :3], np.diag(np.diag(vol.affine[:3, :3]))) and (np.diag(vol.affine) > 0).all()
    np.testing.assert_allclose(vol.spacing, (1.5, 0.8, 2.5))
    np.testing.assert_allclose(vol.data[0], world_linear(vol.affine, vol.shape), atol=1e-4)


@pytest.mark.parametrize("codes", ["LAS", "RPI", "SAL", "IRP"])
def test_reorient_each_orientation(codes):
    import nibabel.orientations as nio
    rng = np.random.default_rng(0)
    shape = (5, 7, 6)
    # an affine whose voxel axes point along ``codes``
    ornt = nio.axcodes2ornt(tuple(codes))
    aff = np.zeros((4, 4))
    aff[3, 3] = 1
    for i, (ax, flip) in enumerate(ornt):
        aff[int(ax), i] = flip * rng.uniform(0.5, 2.0)
    aff[:3, 3] = rng.uniform(-50, 50, 3)
    vol = reorient(_vol(world_linear(aff, shape), aff))
    assert vol.orientation == "RAS"
    np.testing.assert_allclose(vol.data[0], world_linear(vol.affine, vol.shape), rtol=1e-5, atol=1e-3)


def test_resample_anisotropic_to_isotropic_keeps_world_function():
    aff = np.diag([0.7, 1.3, 3.0, 1.0])
    aff[:3, 3] = (-10, 4, 2)
    shape = (30, 17, 9)
    vol = resample(_vol(world_linear(aff, shape), aff), (1.0, 1.0, 1.0))
    assert vol.shape == (21, 22, 27)
    np.testing.assert_allclose(vol.spacing, (0.7 * 30 / 21, 1.3 * 17 / 22, 1.0), rtol=1e-6)
    expect = world_linear(vol.affine, vol.shape)
    # trilinear is exact for a linear function wherever no border clamping happens
    inner = tuple(slice(2, n - 2) for n in vol.shape)
    np.testing.assert_allclose(vol.data[0][inner], expect[inner], atol=1e-3)
    # the field of view is kept: first and last voxel centres inside the old extent
    old_lo = aff[:3, 3] - 0.5 * np.diag(aff)[:3]
    new_lo = vol.affine[:3, 3] - 0.5 * np.diag(vol.affine)[:3]
    np.testing.assert_allclose(new_lo, old_lo, atol=1e-9)


def test_resample_labels_nearest_against_numpy():
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 5, size=(9, 10, 11))
    vol = Volume(lab[None], np.diag([2.0, 2.0, 1.0, 1.0]), ("lab.nii",))
    out = resample(vol, (1.0, 1.0, 2.0), label=True)
    assert out.shape == (18, 20, 6) and out.data.dtype == lab.dtype
    ratio = np.array(lab.shape) / np.array(out.shape)
    idx = [np.minimum(np.floor((np.arange(n) + 0.5) * r).astype(int), m - 1)
           for n, r, m in zip(out.shape, ratio, lab.shape)]
    np.testing.assert_array_equal(out.data[0], lab[np.ix_(*idx)])


def test_resample_to_another_grid_through_affines():
    # an LAS label map on the same field of view as an RAS image
    rng = np.random.default_rng(2)
    lab = rng.integers(0, 7, size=(8, 9, 10))
    las = np.diag([-2.0, 2.0, 2.0, 1.0])
    las[:3, 3] = (14, -8, 0)
    ras_vol = reorient(Volume(lab[None], las, ("lab.nii",)))
    on_grid = resample_to(Volume(lab[None], las, ("lab.nii",)), ras_vol.affine, ras_vol.shape, label=True)
    np.testing.assert_array_equal(on_grid.data, ras_vol.data)
    # an image onto a shifted, finer grid: the world function is kept inside
    aff = np.diag([1.0, 1.0, 1.0, 1.0])
    img = _vol(world_linear(aff, (12, 12, 12)), aff)
    dst = np.diag([0.5, 0.5, 0.5, 1.0])
    dst[:3, 3] = 2.25
    out = resample_to(img, dst, (10, 10, 10))
    np.testing.assert_allclose(out.data[0], world_linear(dst, (10, 10, 10)), atol=1e-3)
    # outside the source: filled
    far = np.eye(4)
    far[:3, 3] = 100
    assert (resample_to(img, far, (2, 2, 2), fill=-7).data == -7).all()


def test_crop_and_pad_keep_world_positions():
    aff = np.diag([1.5, 1.0, 2.0, 1.0])
    aff[:3, 3] = (3, -4, 5)
    data = np.zeros((20, 16, 12), np.float32)
    data[5:9, 3:10, 2:5] = 1 + world_linear(aff, (20, 16, 12))[5:9, 3:10, 2:5] ** 2
    vol = _vol(data, aff)
    lo, hi = foreground_box(vol, 0.0, margin=1)
    assert lo == (4, 2, 1) and hi == (10, 11, 6)
    c = crop(vol, lo, hi)
    np.testing.assert_array_equal(c.data[0], data[4:10, 2:11, 1:6])
    np.testing.assert_allclose(c.affine @ [0, 0, 0, 1], aff @ [4, 2, 1, 1])
    p = pad_to(c, (9, 9, 9), value=-3)
    assert p.shape == (9, 9, 9) and p.data[0, 0, 0, 0] == -3
    # the voxel that held data[4, 2, 1] is at the same world point
    before = [(m - n) // 2 for n, m in zip(c.shape, (9, 9, 9))]
    np.testing.assert_array_equal(p.data[0][before[0]:before[0] + 6, before[1]:before[1] + 9, before[2]:before[2] + 5],
                                  c.data[0])
    np.testing.assert_allclose(p.affine @ [*before, 1], c.affine @ [0, 0, 0, 1])
    assert foreground_box(_vol(np.zeros((3, 3, 3)), np.eye(4)), 0.0, 0) is None


def test_window_and_zscore_formulas():
    rng = np.random.default_rng(3)
    hu = rng.uniform(-1500, 2500, size=(10, 11, 12)).astype(np.float32)
    vol = preprocess(_vol(hu, np.eye(4)), Preprocessing.ct(window=(-100, 300)))
    np.testing.assert_allclose(vol.data[0], (np.clip(hu, -100, 300) + 100) / 400, atol=1e-6)
    mri = rng.gamma(2.0, 50.0, size=(10, 11, 12)).astype(np.float32)
    mri[:3] = 0  # background
    vol = preprocess(_vol(mri, np.eye(4)), Preprocessing.mri())
    fg = mri > 0
    np.testing.assert_allclose(vol.data[0], (mri - mri[fg].mean()) / mri[fg].std(), rtol=1e-4, atol=1e-4)
    assert abs(vol.data[0][fg].mean()) < 1e-4 and abs(vol.data[0][fg].std() - 1) < 1e-4


def test_full_pipeline_on_int16_ct_file(tmp_path):
    from .nifti_files import write
    rng = np.random.default_rng(4)
    raw = np.full((40, 30, 20), -1000, np.int16)  # air
    raw[8:30, 5:25, 4:16] = rng.integers(0, 80, size=(22, 20, 12))  # soft tissue
    aff = np.diag([-0.6, 0.6, 2.5, 1.0])  # LAS, thick slices
    path = write(tmp_path / "ct.nii.gz", raw, aff)
    s = Preprocessing.ct(window=(-1000, 1000), spacing=1.2, crop_foreground=True, margin=0, min_shape=(24, 24, 48))
    vol = preprocess(load_nifti(path), s)
    assert vol.orientation == "RAS"
    np.testing.assert_allclose(vol.spacing, 1.2, rtol=0.05)
    assert all(n >= m for n, m in zip(vol.shape, (24, 24, 48)))
    assert 0.0 <= vol.data.min() and vol.data.max() <= 1.0
    assert vol.meta["preprocessing"] == s.key()


def test_label_map_follows_the_image_and_grid_mismatch_is_refused():
    rng = np.random.default_rng(5)
    aff = LPS_PERMUTED
    img = _vol(rng.normal(size=(12, 10, 8)) + 3, aff)
    lab = Volume(rng.integers(0, 4, size=(1, 12, 10, 8)), aff, ("lab.nii",))
    s = Preprocessing(spacing=1.0, crop_foreground=True, foreground_threshold=4.0, min_shape=(30, 30, 30))
    im2, lab2 = preprocess(img, s, label=lab)
    assert im2.shape == lab2.shape and np.allclose(im2.affine, lab2.affine)
    assert set(np.unique(lab2.data)) <= {0, 1, 2, 3}
    wrong = Volume(lab.data[:, :-1], aff, ("wrong_label.nii.gz",))
    with pytest.raises(DataError, match=r"wrong_label\.nii\.gz: label grid .* does not match image"):
        preprocess(img, s, label=wrong)
    with pytest.raises(DataError, match="does not match"):
        check_same_grid(img, Volume(lab.data, aff + np.diag([0.5, 0, 0, 0]), ("l.nii",)))


def test_bad_settings():
    for kw, msg in [(dict(spacing=0), "spacing"), (dict(intensity="minmax"), "intensity"),
                    (dict(window=(5, 5)), "window"), (dict(min_shape=(1, 2)), "min_shape"),
                    (dict(orientation="LPS"), "orientation"), (dict(margin=-1), "margin")]:
        with pytest.raises(ValueError, match=msg):
            Preprocessing(**kw)
    with pytest.raises(DataError, match="no voxel above the foreground threshold"):
        preprocess(_vol(np.zeros((4, 4, 4)), np.eye(4)), Preprocessing(crop_foreground=True))
