import gzip
import os
import struct

import nibabel as nib
import numpy as np
import pytest

from rubikops.data import DataError, find_files, load_nifti, load_volumes

from .nifti_files import aniso_case, write


def test_load_keeps_values_affine_and_spacing(tmp_path):
    path, data = aniso_case(tmp_path)
    vol = load_nifti(path)
    assert vol.data.shape == (1,) + data.shape and vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data[0], data)
    np.testing.assert_allclose(vol.spacing, (0.8, 2.5, 1.5))
    assert vol.orientation == "PSL"


def test_int16_ct_with_slope_and_intercept_gives_hounsfield_units(tmp_path):
    raw = np.random.default_rng(0).integers(0, 3000, size=(6, 7, 5)).astype(np.int16)
    path = write(tmp_path / "ct.nii.gz", raw, slope=1.0, inter=-1024.0)
    vol = load_nifti(path)
    np.testing.assert_array_equal(vol.data[0], raw.astype(np.float32) - 1024)


def test_four_d_needs_a_choice(tmp_path):
    data = np.random.default_rng(1).normal(size=(5, 6, 7, 3)).astype(np.float32)
    path = write(tmp_path / "dwi.nii.gz", data)
    with pytest.raises(DataError, match=r"dwi\.nii\.gz: 4-D image.*frames="):
        load_nifti(path)
    np.testing.assert_array_equal(load_nifti(path, frames=2).data[0], data[..., 2])
    np.testing.assert_array_equal(load_nifti(path, frames="channels").data, np.moveaxis(data, -1, 0))
    with pytest.raises(DataError, match="frames=5 is not valid"):
        load_nifti(path, frames=5)
    # a trailing singleton time axis is 3-D
    single = write(tmp_path / "single.nii.gz", data[..., :1])
    assert load_nifti(single).data.shape == (1, 5, 6, 7)


def test_two_d_is_refused(tmp_path):
    path = write(tmp_path / "slice.nii.gz", np.zeros((8, 8), np.float32))
    with pytest.raises(DataError, match=r"slice\.nii\.gz: 2-D image"):
        load_nifti(path)


def test_nan_refused_or_zeroed(tmp_path):
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    path = write(tmp_path / "nan.nii.gz", data)
    with pytest.raises(DataError, match=r"nan\.nii\.gz: 2 voxels are NaN or Inf"):
        load_nifti(path)
    vol = load_nifti(path, allow_nonfinite=True)
    assert vol.data[0, 1, 2, 3] == 0 and vol.data[0, 0, 0, 0] == 0 and vol.data.sum() == 62


def _patched_spacing(path, zoom):
    """A file with pixdim[2] = zoom and no q/s-form (nibabel will not write one)."""
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), path)
    with open(path, "r+b") as f:
        f.seek(76 + 4 * 2)
        f.write(struct.pack("<f", zoom))
        f.seek(252)
        f.write(struct.pack("<hh", 0, 0))  # qform_code, sform_code: affine from pixdim
    return path


@pytest.mark.parametrize("zoom", [0.0, -1.0, float("nan")])
def test_zero_negative_or_nan_spacing(tmp_path, zoom):
    path = _patched_spacing(str(tmp_path / "bad_spacing.nii"), zoom)
    with pytest.raises(DataError, match=r"bad_spacing\.nii: (voxel spacing .* zero, negative|not a readable)"):
        load_nifti(path)


def test_missing_empty_not_nifti_and_truncated(tmp_path):
    with pytest.raises(DataError, match=r"nope\.nii\.gz: no such file"):
        load_nifti(str(tmp_path / "nope.nii.gz"))
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.nii\.gz: file is empty"):
        load_nifti(str(empty))
    text = tmp_path / "notes.nii.gz"
    text.write_bytes(gzip.compress(b"this is not an image" * 50))
    with pytest.raises(DataError, match=r"notes\.nii\.gz: not a readable NIfTI"):
        load_nifti(str(text))
    plain = tmp_path / "plain.nii"
    plain.write_bytes(b"garbage" * 100)
    with pytest.raises(DataError, match=r"plain\.nii: not a readable NIfTI"):
        load_nifti(str(plain))
    good = write(tmp_path / "good.nii.gz", np.random.default_rng(2).normal(size=(20, 20, 20)).astype(np.float32))
    blob = open(good, "rb").read()
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"trunc\.nii\.gz: (truncated or corrupt|not a readable)"):
        load_nifti(str(trunc))


def test_symlink_loop_and_broken_link_are_named(tmp_path):
    from rubikops.data import find_files
    loop = tmp_path / "loop.nii.gz"
    os.symlink(loop, loop)
    dangling = tmp_path / "dangling.nii.gz"
    os.symlink(tmp_path / "gone.nii.gz", dangling)
    for fn in (load_nifti, find_files):
        with pytest.raises(DataError, match=r"loop\.nii\.gz: symbolic link loop"):
            fn(str(loop))
        with pytest.raises(DataError, match=r"dangling\.nii\.gz: broken symbolic link \(to .*gone\.nii\.gz"):
            fn(str(dangling))


def test_channels_from_several_files_and_grid_mismatch(tmp_path):
    rng = np.random.default_rng(3)
    t1, t2 = (rng.normal(size=(5, 6, 7)).astype(np.float32) for _ in range(2))
    a = write(tmp_path / "t1.nii.gz", t1)
    b = write(tmp_path / "t2.nii.gz", t2)
    vol = load_nifti([a, b])
    np.testing.assert_array_equal(vol.data, np.stack([t1, t2]))
    shifted = np.eye(4)
    shifted[0, 3] = 10
    c = write(tmp_path / "t2_elsewhere.nii.gz", t2, shifted)
    with pytest.raises(DataError, match=r"t2_elsewhere\.nii\.gz: grid .* does not match"):
        load_nifti([a, c])


def test_find_files_folder_glob_list(tmp_path):
    for n in ("b.nii.gz", "a.nii", "c.txt"):
        (tmp_path / n).write_bytes(b"x")
    assert [os.path.basename(p) for p in find_files(str(tmp_path))] == ["a.nii", "b.nii.gz"]
    assert [os.path.basename(p) for p in find_files(str(tmp_path / "*.nii.gz"))] == ["b.nii.gz"]
    cases = find_files([str(tmp_path / "a.nii"), (str(tmp_path / "a.nii"), str(tmp_path / "b.nii.gz"))])
    assert isinstance(cases[1], tuple) and len(cases) == 2
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(DataError, match="empty_dir: folder holds no .nii"):
        find_files(str(empty))
    with pytest.raises(DataError, match="pattern matches no"):
        find_files(str(tmp_path / "*.nii.bz2"))
    with pytest.raises(DataError, match="no such file or folder"):
        find_files(str(tmp_path / "missing"))


def test_folder_with_bad_files_skips_on_request(tmp_path):
    rng = np.random.default_rng(4)
    for i in range(3):
        write(tmp_path / f"good{i}.nii.gz", rng.normal(size=(6, 6, 6)).astype(np.float32))
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b garbage")
    write(tmp_path / "flat.nii.gz", np.zeros((6, 6), np.float32))
    with pytest.raises(DataError, match="broken.nii.gz"):
        load_volumes(str(tmp_path), cache=False)
    report = load_volumes(str(tmp_path), cache=False, skip_bad=True)
    assert len(report.volumes) == 3
    assert sorted(os.path.basename(c) for c, _ in report.skipped) == ["broken.nii.gz", "flat.nii.gz"]
    assert "2 skipped" in report.summary() and "2-D image" in report.summary()


def test_volume_smaller_than_the_puzzle_needs(tmp_path):
    write(tmp_path / "tiny.nii.gz", np.ones((10, 40, 40), np.float32))
    with pytest.raises(DataError, match=r"tiny\.nii\.gz: preprocessed shape \(10, 40, 40\) is smaller than"):
        load_volumes(str(tmp_path), cache=False, min_shape=(32, 32, 32))
