"""The offline default dataset (installed by requirements-data.txt) and the
labelled tasks built from it."""
import numpy as np
import pytest

from rubikops.data import DataError, Preprocessing, load_nifti, load_volumes, reorient, resample_to
from rubikops.data import __main__ as cli
from rubikops.data import default

from .nifti_files import write


def test_every_bundled_volume_is_installed_and_loads():
    paths = default.available()
    missing = [n for n, p in paths.items() if p is None]
    assert not missing, f"not installed: {missing}; run {default.INSTALL_HINT}"
    for name in default.PRETRAINING:
        vol = load_nifti(paths[name])
        assert vol.data.ndim == 4 and min(vol.shape) >= 150 and np.isfinite(vol.data).all()
        assert vol.data.std() > 0


def test_default_pretraining_volumes_preprocess(tmp_path):
    r = load_volumes(default.pretraining_files(), Preprocessing.mri(spacing=2.0, crop_foreground=True),
                     cache=str(tmp_path))
    assert len(r.volumes) == len(default.PRETRAINING) == 5
    for v in r.volumes:
        assert v.orientation == "RAS" and np.allclose(v.spacing, 2.0, rtol=0.03)
        assert all(60 <= n <= 130 for n in v.shape)


def test_atlas_aligned_through_affines_not_indices():
    img = load_nifti(default.source_path("mni152_nlin6asym_t1_2mm"))
    atlas = load_nifti(default.source_path("harvard_oxford_cortical_2mm"), label=True)
    assert atlas.orientation == "LAS" and img.orientation == "RAS"
    # two independent routes onto the image grid agree: axis flips, and world-coordinate resampling
    via_world = resample_to(atlas, img.affine, img.shape, label=True)
    np.testing.assert_array_equal(reorient(atlas).data, via_world.data)
    assert not np.array_equal(atlas.data, via_world.data)  # raw indices would be mirrored


def test_segmentation_task_hemispheres():
    train, test, names = default.atlas_segmentation_task()
    assert len(names) == 6 and names[0] == "background"
    (tr,), (te,) = train, test
    assert tr.image.shape == tr.label.shape == te.image.shape == te.label.shape
    for case in (tr, te):
        counts = np.bincount(case.label.data.ravel(), minlength=6)
        assert (counts[1:] > 1000).all()  # every lobe present in each hemisphere
    # the template is asymmetric: the mirrored right hemisphere is not the left one
    assert not np.allclose(tr.image.data, te.image.data)
    full, _, names48 = default.atlas_segmentation_task(groups=None)
    assert len(names48) == 49 and full[0].label.data.max() <= 48
    with pytest.raises(ValueError, match="groups"):
        default.atlas_segmentation_task(groups="gyri")


def test_lesion_classification_task_is_balanced_and_seeded():
    cases, names = default.lesion_classification_task(num_cases=8, seed=3)
    again, _ = default.lesion_classification_task(num_cases=8, seed=3)
    other, _ = default.lesion_classification_task(num_cases=8, seed=4)
    assert names == ("none", "bright", "dark", "ring")
    assert [c.label for c in cases] == [0, 1, 2, 3] * 2
    for a, b in zip(cases, again):
        np.testing.assert_array_equal(a.image.data, b.image.data)
    assert not np.array_equal(cases[0].image.data, other[0].image.data)
    for c in cases:
        assert c.image.data.shape == (1, 40, 48, 40) and np.isfinite(c.image.data).all()


def test_user_pairs_and_csv(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        write(tmp_path / f"img{i}.nii.gz", rng.normal(size=(10, 12, 8)).astype(np.float32), np.diag([-1.0, 1, 1, 1]))
        write(tmp_path / f"lab{i}.nii.gz", rng.integers(0, 3, size=(10, 12, 8)).astype(np.uint8), np.diag([-1.0, 1, 1, 1]))
    pairs = default.paired_segmentation([str(tmp_path / "img0.nii.gz"), str(tmp_path / "img1.nii.gz")],
                                        [str(tmp_path / "lab0.nii.gz"), str(tmp_path / "lab1.nii.gz")])
    assert pairs[0].label.data.dtype == np.int64 and pairs[0].image.orientation == "RAS"
    write(tmp_path / "lab_small.nii.gz", np.zeros((9, 12, 8), np.uint8), np.diag([-1.0, 1, 1, 1]))
    with pytest.raises(DataError, match=r"lab_small\.nii\.gz: label grid"):
        default.paired_segmentation([str(tmp_path / "img0.nii.gz")], [str(tmp_path / "lab_small.nii.gz")])
    csv = tmp_path / "labels.csv"
    csv.write_text("image,label\nimg0.nii.gz,healthy\nimg1.nii.gz,bleed\n")
    cases, names = default.csv_classification(str(csv))
    assert names == ("bleed", "healthy") and [c.label for c in cases] == [1, 0]
    (tmp_path / "bad.csv").write_text("file,label\nimg0.nii.gz,a\n")
    with pytest.raises(DataError, match=r"bad\.csv: no column 'image'"):
        default.csv_classification(str(tmp_path / "bad.csv"))


def test_info_cli(tmp_path, capsys):
    write(tmp_path / "a.nii.gz", np.random.default_rng(1).normal(size=(10, 12, 8)).astype(np.float32) + 5,
          np.diag([-1.5, 1, 2, 1]))
    write(tmp_path / "b.nii.gz", np.zeros((4, 4), np.float32))
    assert cli.main(["info", str(tmp_path), "--spacing", "1", "--intensity", "zscore"]) == 0
    out = capsys.readouterr().out
    assert "2 case(s)" in out and "10x12x8" in out and "1.5x1x2" in out and "LAS" in out
    assert "15x12x16 @ 1x1x1 mm RAS" in out and "ERROR" in out and "2-D image" in out
    empty = tmp_path / "none"
    empty.mkdir()
    assert cli.main(["info", str(empty)]) == 2
    assert cli.main(["default"]) == 0
