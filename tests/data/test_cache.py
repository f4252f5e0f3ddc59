import os

import numpy as np
import pytest

from rubikops.data import PreprocessCache, Preprocessing, atomic_path, load_volumes
from rubikops.data import cache as cache_mod

from .nifti_files import write


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "scans"
    d.mkdir()
    for i in range(3):
        write(d / f"s{i}.nii.gz", rng.gamma(2, 40, size=(12, 14, 10)).astype(np.float32), np.diag([-1.0, 1, 2, 1]))
    return d


def test_hit_after_first_load_and_same_result(folder, tmp_path):
    cdir = tmp_path / "cache"
    s = Preprocessing.mri(spacing=1.5)
    first = load_volumes(str(folder), s, cache=str(cdir))
    assert (first.cache_hits, first.cache_misses) == (0, 3)
    assert len([f for f in os.listdir(cdir) if f.endswith(".npz")]) == 3
    second = load_volumes(str(folder), s, cache=str(cdir))
    assert (second.cache_hits, second.cache_misses) == (3, 0)
    for a, b in zip(first.volumes, second.volumes):
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.affine, b.affine)
        assert a.paths == b.paths and a.meta == b.meta


def test_changed_setting_or_content_invalidates(folder, tmp_path):
    c = PreprocessCache(str(tmp_path / "cache"))
    load_volumes(str(folder), Preprocessing.mri(spacing=1.5), cache=c)
    r = load_volumes(str(folder), Preprocessing.mri(spacing=2.0), cache=PreprocessCache(c.folder))
    assert r.cache_misses == 3
    write(folder / "s1.nii.gz", np.ones((12, 14, 10), np.float32), np.diag([-1.0, 1, 2, 1]))
    c2 = PreprocessCache(c.folder)
    load_volumes(str(folder), Preprocessing.mri(spacing=1.5), cache=c2)
    assert (c2.hits, c2.misses) == (2, 1)


def test_interrupted_write_leaves_no_entry_and_keeps_the_others(folder, tmp_path, monkeypatch):
    cdir = tmp_path / "cache"
    s = Preprocessing.mri()
    load_volumes(str(folder / "s0.nii.gz"), s, cache=str(cdir))
    kept = {f: open(cdir / f, "rb").read() for f in os.listdir(cdir)}
    real = np.savez

    def dies_half_way(f, **arrays):
        real(f, **arrays)
        f.truncate(f.tell() // 2)  # the bytes that made it to disk
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod.np, "savez", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        load_volumes(str(folder / "s1.nii.gz"), s, cache=str(cdir))
    monkeypatch.setattr(cache_mod.np, "savez", real)
    assert {f: open(cdir / f, "rb").read() for f in os.listdir(cdir)} == kept  # no partial entry, no temp file
    r = load_volumes(str(folder), s, cache=str(cdir))
    assert (r.cache_hits, r.cache_misses) == (1, 2)


def test_corrupt_entry_is_reported_and_rebuilt(folder, tmp_path):
    c = PreprocessCache(str(tmp_path / "cache"))
    first = load_volumes(str(folder / "s2.nii.gz"), Preprocessing(), cache=c).volumes[0]
    (entry,) = [os.path.join(c.folder, f) for f in os.listdir(c.folder)]
    with open(entry, "r+b") as f:
        f.truncate(100)
    c2 = PreprocessCache(c.folder)
    with pytest.warns(UserWarning, match="is corrupt"):
        again = load_volumes(str(folder / "s2.nii.gz"), Preprocessing(), cache=c2).volumes[0]
    assert c2.misses == 1
    np.testing.assert_array_equal(first.data, again.data)


def test_atomic_path_keeps_suffix_and_cleans_up(tmp_path):
    target = tmp_path / "out.nii.gz"
    with atomic_path(str(target)) as tmp:
        assert tmp.endswith("out.nii.gz") and os.path.dirname(tmp) == str(tmp_path)
        open(tmp, "wb").write(b"new")
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            open(tmp, "wb").write(b"half")
            raise RuntimeError
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.nii.gz"]


def test_identical_files_are_each_reported_under_their_own_name(folder, tmp_path):
    import shutil
    shutil.copyfile(folder / "s0.nii.gz", folder / "s0_copy.nii.gz")
    cdir = str(tmp_path / "cache")
    for _ in range(2):  # the second run serves both from the one shared entry
        vols = load_volumes(str(folder), Preprocessing(), cache=cdir).volumes
        assert [v.name for v in vols] == ["s0.nii.gz", "s0_copy.nii.gz", "s1.nii.gz", "s2.nii.gz"]
    assert len(os.listdir(cdir)) == 3


def test_wrong_extension_fails_with_and_without_the_cache(folder, tmp_path):
    import shutil
    from rubikops.data import DataError
    cdir = str(tmp_path / "cache")
    load_volumes(str(folder), Preprocessing(), cache=cdir)  # s0's content is now cached
    renamed = tmp_path / "s0.txt"
    shutil.copyfile(folder / "s0.nii.gz", renamed)
    for cache in (False, cdir):
        with pytest.raises(DataError, match=r"s0\.txt: no reader for this file name"):
            load_volumes(str(renamed), Preprocessing(), cache=cache)
    # gzip bytes named .nii are read as plain NIfTI by nibabel: not served from the .nii.gz entry
    plain_named = tmp_path / "s0.nii"
    shutil.copyfile(folder / "s0.nii.gz", plain_named)
    c = PreprocessCache(cdir)
    with pytest.raises(DataError, match=r"s0\.nii: not a readable NIfTI"):
        load_volumes(str(plain_named), Preprocessing(), cache=c)
    assert c.hits == 0


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_keep_the_umask_mode(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        fresh = tmp_path / "fresh.bin"
        with atomic_path(str(fresh)) as tmp:
            open(tmp, "wb").write(b"x")
        assert os.stat(fresh).st_mode & 0o777 == mode
        os.chmod(fresh, 0o640)  # an existing file keeps its own mode, as open(path, "w") would
        with atomic_path(str(fresh)) as tmp:
            open(tmp, "wb").write(b"y")
        assert os.stat(fresh).st_mode & 0o777 == 0o640
        load_volumes(str(_one_volume(tmp_path)), Preprocessing(), cache=str(tmp_path / "cache"))
        (entry,) = os.listdir(tmp_path / "cache")
        assert os.stat(tmp_path / "cache" / entry).st_mode & 0o777 == mode
    finally:
        os.umask(old)


def _one_volume(folder):
    return write(folder / "one.nii.gz", np.arange(10 * 12 * 8, dtype=np.float32).reshape(10, 12, 8))
