"""NIfTI, NRRD, MetaImage and DICOM series into the same Volume: one volume
written by the tests in every format loads to the same array, spacing and
RAS affine; each bad DICOM series gets its one-line error or reported skip."""
import json
import os
import sys

import numpy as np
import pytest

from rubikops.data import DataError, Preprocessing, find_files, load_image, load_volumes, prepare

from .format_files import SLOPE, ScanVolume, write_slice

pytest.importorskip("SimpleITK", reason="the NRRD/MetaImage reader needs SimpleITK (requirements-formats.txt)")
pytest.importorskip("pydicom", reason="the DICOM reader needs pydicom (requirements-formats.txt)")
from hypothesis import given, settings, strategies as st  # noqa: E402


def write_all(vol: ScanVolume, folder) -> dict:
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    out = {"nifti": vol.nifti(os.path.join(folder, "a.nii.gz")), "nrrd": vol.itk(os.path.join(folder, "b.nrrd")),
           "mha": vol.itk(os.path.join(folder, "c.mha")), "mhd": vol.itk(os.path.join(folder, "d.mhd"))}
    vol.dicom(os.path.join(folder, "series"))
    out["dicom"] = os.path.join(folder, "series")
    return out


def ras_reference(vol: ScanVolume):
    """nibabel's own closest-canonical reorientation of the known array and affine."""
    import nibabel as nib
    img = nib.as_closest_canonical(nib.Nifti1Image(vol.data, vol.affine))
    return np.asarray(img.dataobj), img.affine


@pytest.mark.parametrize("reversed_slices", [False, True])
def test_every_format_gives_the_same_ras_array_spacing_and_affine(tmp_path, reversed_slices):
    vol = ScanVolume(seed=3, reversed_slices=reversed_slices)
    files = write_all(vol, tmp_path)
    assert find_files(str(tmp_path)) == sorted(files.values())
    want_data, want_affine = ras_reference(vol)
    report = load_volumes(list(files.values()), Preprocessing(), cache=False)
    for name, got in zip(files, report.volumes):
        np.testing.assert_array_equal(got.data[0], want_data, err_msg=name)
        np.testing.assert_allclose(got.affine, want_affine, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(got.spacing, np.linalg.norm(vol.affine[:3, :3], axis=0), atol=1e-6)
        assert got.orientation == "RAS"
    # as stored (no reorientation): the file formats keep the written voxel order; the DICOM
    # reader sorts along the slice normal, so a series written against it comes back z-flipped
    for name, path in files.items():
        raw = load_image(path)
        flip = reversed_slices and name == "dicom"
        np.testing.assert_array_equal(raw.data[0], vol.data[:, :, ::-1] if flip else vol.data, err_msg=name)
        expected = vol.affine.copy()
        if flip:
            expected[:3, 3] += (vol.shape[2] - 1) * vol.affine[:3, 2]
            expected[:3, 2] *= -1
        np.testing.assert_allclose(raw.affine, expected, atol=1e-5, err_msg=name)
    assert load_image(files["dicom"]).meta["format"] == "dicom"
    # a second, independent DICOM implementation (ITK/GDCM's series reader) sees the same series
    import SimpleITK as sitk
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(files["dicom"]))
    sitk.WriteImage(reader.Execute(), str(tmp_path / "by_itk.nrrd"))
    by_itk, ours = load_image(str(tmp_path / "by_itk.nrrd")), load_image(files["dicom"])
    np.testing.assert_array_equal(by_itk.data, ours.data)
    np.testing.assert_allclose(by_itk.affine, ours.affine, atol=1e-5)


@settings(max_examples=8, deadline=None)
@given(angles=st.tuples(*[st.floats(-80, 80)] * 3), spacing=st.tuples(*[st.sampled_from([0.5, 0.7, 1.0, 3.0])] * 3),
       shape=st.tuples(st.integers(1, 6), st.integers(1, 6), st.integers(2, 5)), reversed_slices=st.booleans(),
       seed=st.integers(0, 100))
def test_dicom_series_matches_its_truth_in_any_orientation(tmp_path_factory, angles, spacing, shape, reversed_slices,
                                                            seed):
    vol = ScanVolume(seed=seed, shape=shape, spacing=spacing, angles=angles, reversed_slices=reversed_slices)
    folder = tmp_path_factory.mktemp("series")
    vol.dicom(folder / "s")
    got = load_volumes(str(folder / "s"), Preprocessing(), cache=False).volumes[0]
    want_data, want_affine = ras_reference(vol)
    np.testing.assert_array_equal(got.data[0], want_data)
    np.testing.assert_allclose(got.affine, want_affine, atol=1e-5)


def test_prepare_and_info_take_a_mixed_folder(tmp_path, capsys):
    from rubikops.data.__main__ import main
    vol = ScanVolume(seed=5)
    src = tmp_path / "scans"
    write_all(vol, src)
    other = ScanVolume(seed=6, shape=(5, 5, 4))
    other.dicom(src / "two", series_uid="1.2.3.1")
    ScanVolume(seed=7, shape=(6, 4, 3)).dicom(src / "two", series_uid="1.2.3.2", order=[2, 1, 0])
    for n in range(3):  # the second series' files must not overwrite the first's
        os.rename(src / "two" / f"IM{n:04d}", src / "two" / f"B{n:04d}")
    ScanVolume(seed=6, shape=(5, 5, 4)).dicom(src / "two", series_uid="1.2.3.1")
    cases = find_files(str(src))
    assert [os.path.relpath(c, src) for c in cases] == ["a.nii.gz", "b.nrrd", "c.mha", "d.mhd", "series",
                                                         "two#1.2.3.1", "two#1.2.3.2"]
    assert find_files(str(src / "*")) == cases  # a glob takes series folders too
    with pytest.raises(DataError, match=r"IM0000: a single 2-D slice, not a volume"):
        load_image(str(src / "series" / "IM0000"))  # one slice, recognised by its DICM marker
    report = prepare(str(src), str(tmp_path / "out"), Preprocessing(spacing=1.0), progress=False)
    assert len(report.prepared) == 7 and not report.skipped, report.summary()
    manifest = json.load(open(tmp_path / "out" / "manifest.json"))
    loaded = load_volumes(str(src), Preprocessing(spacing=1.0), cache=False).volumes
    for entry, vol_loaded in zip(manifest["volumes"], loaded):
        np.testing.assert_array_equal(np.load(tmp_path / "out" / entry["file"]), vol_loaded.data)
        np.testing.assert_allclose(entry["affine"], vol_loaded.affine)
    assert prepare(str(src), str(tmp_path / "out"), Preprocessing(spacing=1.0), progress=False).reused == cases
    assert main(["info", str(src)]) == 0
    out = capsys.readouterr().out
    assert out.count("[dicom]") == 3 and "[nrrd]" in out and "[metaimage]" in out and "ERROR" not in out
    with pytest.raises(DataError, match=r"two: folder holds 2 DICOM series; name one as .*two#<SeriesInstanceUID>"):
        load_image(str(src / "two"))


def test_dicom_cache_key_follows_every_slice(tmp_path):
    vol = ScanVolume(seed=8)
    files = vol.dicom(tmp_path / "s", order=range(vol.shape[2]))
    cdir = str(tmp_path / "cache")
    first = load_volumes(str(tmp_path / "s"), Preprocessing(orientation=None), cache=cdir)
    assert first.cache_misses == 1
    assert load_volumes(str(tmp_path / "s"), Preprocessing(orientation=None), cache=cdir).cache_hits == 1
    pixels = vol.stored[:, :, 0].T.copy()
    pixels[0, 0] += 7  # one stored value of the first slice: the volume's voxel (0, 0, 0)
    import pydicom
    write_slice(files[0], pydicom.dcmread(files[0]).SeriesInstanceUID, pixels, vol.positions[0],
                np.concatenate([vol.row_cosine, vol.column_cosine]), vol.pixel_spacing)
    again = load_volumes(str(tmp_path / "s"), Preprocessing(orientation=None), cache=cdir)
    assert again.cache_misses == 1
    assert again.volumes[0].data[0, 0, 0, 0] == first.volumes[0].data[0, 0, 0, 0] + 7 * SLOPE


# -- bad series ----------------------------------------------------------------------------------------------------
def _series(tmp_path):
    vol = ScanVolume(seed=9, shape=(6, 5, 6))
    files = vol.dicom(tmp_path / "s", series_uid="1.2.826.9", order=range(6))
    return vol, files


def test_missing_slice(tmp_path):
    _, files = _series(tmp_path)
    os.unlink(files[3])
    with pytest.raises(DataError, match=r"^DICOM series 1\.2\.826\.9 in .*/s: 1 missing slice\(s\): gap of 5\.000 "
                                        r"mm between .*IM0002 and .*IM0004, where the series' slices are 2\.500 mm "
                                        r"apart$"):
        load_image(str(tmp_path / "s"))


def test_irregular_spacing(tmp_path):
    vol = ScanVolume(seed=9, shape=(6, 5, 6))
    moved = vol.positions[3] + 0.7 * (vol.positions[4] - vol.positions[3]) / 2.5
    vol.dicom(tmp_path / "s", series_uid="1.2.826.9", order=range(6), overrides={3: {"ImagePositionPatient": moved}})
    with pytest.raises(DataError, match=r"1\.2\.826\.9 .*: irregular slice spacing: gap of 3\.200 mm between "
                                        r".*IM0002 and .*IM0003"):
        load_image(str(tmp_path / "s"))


def test_gantry_tilt(tmp_path):
    vol = ScanVolume(seed=9, shape=(6, 5, 6))
    shear = {k: {"ImagePositionPatient": vol.positions[k] + k * 0.4 * vol.column_cosine, "GantryDetectorTilt": 9.1}
             for k in range(6)}
    vol.dicom(tmp_path / "s", series_uid="1.2.826.9", order=range(6), overrides=shear)
    with pytest.raises(DataError, match=r"1\.2\.826\.9 .*: gantry tilt: slices are sheared by 9\.09 degrees .*"
                                        r"IM0000 to .*IM0005, GantryDetectorTilt 9\.1"):
        load_image(str(tmp_path / "s"))


def test_mixed_sizes(tmp_path):
    vol = ScanVolume(seed=9, shape=(6, 5, 6))
    vol.dicom(tmp_path / "s", series_uid="1.2.826.9", order=range(6),
              overrides={4: {"pixels": np.zeros((5, 7), np.int16)}})
    with pytest.raises(DataError, match=r"1\.2\.826\.9 .*: mixed sizes: .*IM0004 is 5x7, .*IM0000 5x6"):
        load_image(str(tmp_path / "s"))


def test_two_d_only_series(tmp_path):
    vol = ScanVolume(seed=9, shape=(6, 5, 6))
    vol.dicom(tmp_path / "s", series_uid="1.2.826.9", order=[2])
    with pytest.raises(DataError, match=r"1\.2\.826\.9 .*: .*IM0000: a single 2-D slice, not a volume"):
        load_image(str(tmp_path / "s"))


def test_two_slices_at_one_position(tmp_path):
    vol = ScanVolume(seed=9, shape=(6, 5, 6))
    vol.dicom(tmp_path / "s", series_uid="1.2.826.9", order=[0, 1, 2, 2, 3, 4, 5])
    with pytest.raises(DataError, match=r"two slices at one position .*IM0002 and .*IM0003 \(several"):
        load_image(str(tmp_path / "s"))


@pytest.mark.parametrize("by", ["image_type", "orientation"])
def test_localizer_is_skipped_with_its_reason(tmp_path, by):
    vol, files = _series(tmp_path)
    scout = str(tmp_path / "s" / "SCOUT")
    if by == "image_type":
        write_slice(scout, "1.2.826.9", np.ones((5, 6), np.int16), vol.positions[2],
                    np.concatenate([vol.row_cosine, vol.column_cosine]), vol.pixel_spacing,
                    ImageType=("ORIGINAL", "PRIMARY", "LOCALIZER"))
        reason = "localizer (ImageType LOCALIZER)"
    else:  # a sagittal scout in an oblique-axial series, its ImageType not saying so
        write_slice(scout, "1.2.826.9", np.ones((9, 9), np.int16), (0, 0, 0), (0, 1, 0, 0, 0, -1), (1, 1))
        reason = "orientation (0, 1, 0, 0, 0, -1) differs from the series' 6 other slices (a localizer)"
    report = load_volumes(str(tmp_path / "s"), Preprocessing(orientation=None), cache=False)
    np.testing.assert_array_equal(report.volumes[0].data[0], vol.data)
    assert report.volumes[0].meta["skipped_files"] == [f"{scout}: {reason}"]
    assert report.notes == [(str(tmp_path / "s"), f"{scout}: {reason}")]
    assert reason in report.summary()
    prepared = prepare(str(tmp_path / "s"), str(tmp_path / "out"), Preprocessing(orientation=None), progress=False)
    assert prepared.notes == [f"{scout}: {reason}"] and reason in prepared.summary()


def test_missing_optional_reader_is_one_line(tmp_path, monkeypatch):
    vol = ScanVolume(seed=10)
    nrrd = vol.itk(tmp_path / "v.nrrd")
    vol.dicom(tmp_path / "s")
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import SimpleITK now raises ImportError
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(DataError, match=r"^.*v\.nrrd: reading NRRD needs SimpleITK, which is not installed: "
                                        r"pip install -r requirements-formats\.txt"):
        load_image(nrrd)
    from rubikops.data import dicom
    dicom._SCANS.clear()
    with pytest.raises(DataError, match=r"IM0000: reading DICOM needs pydicom, which is not installed: pip install"):
        load_volumes(str(tmp_path / "s"), cache=False)


def test_bad_files_of_the_itk_formats(tmp_path):
    (tmp_path / "empty.mha").write_bytes(b"")
    (tmp_path / "junk.nrrd").write_bytes(b"NRRD0004\ntype: what\n\n")
    import SimpleITK as sitk
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), np.float32)), str(tmp_path / "flat.mha"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5, 3), np.uint8), isVector=True), str(tmp_path / "rgb.mha"))
    with pytest.raises(DataError, match=r"empty\.mha: file is empty"):
        load_image(str(tmp_path / "empty.mha"))
    with pytest.raises(DataError, match=r"junk\.nrrd: not a readable NRRD file \(.+\)$"):
        load_image(str(tmp_path / "junk.nrrd"))
    with pytest.raises(DataError, match=r"flat\.mha: 2-D image of shape \(5, 4\), expected a 3-D volume"):
        load_image(str(tmp_path / "flat.mha"))
    with pytest.raises(DataError, match=r"rgb\.mha: 2-D image of shape \(5, 4\), expected a 3-D volume"):
        load_image(str(tmp_path / "rgb.mha"))  # three colour components are not three slices
    vol = ScanVolume(seed=11)
    vol.itk(tmp_path / "good.mha")
    report = load_volumes(str(tmp_path), skip_bad=True, cache=False)
    assert [os.path.basename(c) for c, _ in report.skipped] == ["empty.mha", "flat.mha", "junk.nrrd", "rgb.mha"]
    np.testing.assert_array_equal(report.volumes[0].data[0], ras_reference(vol)[0])


def test_hand_written_headers_give_the_world_their_spec_defines(tmp_path):
    """NRRD and MetaImage headers written by hand, not by SimpleITK: a NRRD in
    right-anterior-superior space is RAS as written; a MetaImage's Offset and
    TransformMatrix are LPS (ITK's world), so x and y flip into RAS."""
    rng = np.random.default_rng(12)
    data = rng.normal(size=(4, 3, 2)).astype("<f4")  # (X, Y, Z); both formats store x fastest
    raw = data.tobytes(order="F")
    (tmp_path / "ras.nrrd").write_bytes(
        b"NRRD0004\ntype: float\ndimension: 3\nspace: right-anterior-superior\nsizes: 4 3 2\n"
        b"space directions: (0,0.5,0) (-0.8,0,0) (0,0,2)\nkinds: domain domain domain\nendian: little\n"
        b"encoding: raw\nspace origin: (10,20,30)\n\n" + raw)
    (tmp_path / "lps.mha").write_bytes(
        b"ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        b"TransformMatrix = 0 1 0 -1 0 0 0 0 1\nOffset = 10 20 30\nElementSpacing = 0.5 0.8 2\n"
        b"DimSize = 4 3 2\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n" + raw)
    # both headers give the same numbers: axis 0 along the second world axis, axis 1 against the
    # first (TransformMatrix lists each voxel axis's direction in turn); the NRRD's world is RAS,
    # the MetaImage's LPS
    grid = np.array([[0, -0.8, 0, 10], [0.5, 0, 0, 20], [0, 0, 2, 30], [0, 0, 0, 1.0]])
    for name, want in (("ras.nrrd", grid), ("lps.mha", np.diag([-1.0, -1, 1, 1]) @ grid)):
        vol = load_image(str(tmp_path / name))
        np.testing.assert_array_equal(vol.data[0], data)
        np.testing.assert_allclose(vol.affine, want, atol=1e-12, err_msg=name)


def test_four_d_metaimage_follows_frames(tmp_path):
    import SimpleITK as sitk
    rng = np.random.default_rng(13)
    frames = rng.normal(size=(3, 5, 4, 6)).astype(np.float32)  # (T, X, Y, Z)
    img = sitk.JoinSeries([sitk.GetImageFromArray(f.transpose(2, 1, 0)) for f in frames])
    sitk.WriteImage(img, str(tmp_path / "t.mha"))
    with pytest.raises(DataError, match=r"t\.mha: 4-D image of shape \(5, 4, 6, 3\); pass frames="):
        load_image(str(tmp_path / "t.mha"))
    np.testing.assert_array_equal(load_image(str(tmp_path / "t.mha"), frames="channels").data, frames)
    np.testing.assert_array_equal(load_image(str(tmp_path / "t.mha"), frames=1).data[0], frames[1])


def test_a_dicom_image_pairs_with_an_nrrd_label_map(tmp_path):
    """Fine-tuning's own-data path (paired_segmentation) takes every format: the label keeps its
    integers and its grid is checked against the image's after both are reoriented."""
    from rubikops.data.default import paired_segmentation
    vol = ScanVolume(seed=14)
    vol.dicom(tmp_path / "ct")
    labels = ScanVolume(seed=14)
    labels.data = (vol.data > 0).astype(np.float32) + (vol.data > 500)
    labels.itk(tmp_path / "seg.nrrd", dtype=np.uint8)
    case = paired_segmentation([str(tmp_path / "ct")], [str(tmp_path / "seg.nrrd")])[0]
    want_image, _ = ras_reference(vol)
    want_label, _ = ras_reference(labels)
    np.testing.assert_array_equal(case.image.data[0], want_image)
    assert case.label.data.dtype == np.int64
    np.testing.assert_array_equal(case.label.data[0], want_label.astype(np.int64))
    shifted = ScanVolume(seed=14, origin=(-30.5, 22.25, 61.0))
    shifted.data = labels.data
    shifted.itk(tmp_path / "elsewhere.nrrd", dtype=np.uint8)
    with pytest.raises(DataError, match=r"elsewhere\.nrrd: label grid .* does not match image"):
        paired_segmentation([str(tmp_path / "ct")], [str(tmp_path / "elsewhere.nrrd")])
