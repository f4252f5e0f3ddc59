"""rubikops.data.prepared (prepare, load_prepared): parallel, resumable preprocessing into a folder of
memory-mapped volumes, and shard-only reads of it."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from rubikops.data import DataError, Preprocessing, load_prepared, load_volumes, prepare, read_manifest
from rubikops.data import prepared as prepared_module
from rubikops.data.__main__ import main as data_cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = Preprocessing(spacing=1.5, intensity="zscore", crop_foreground=True)


def write_volume(path, seed, shape=(14, 16, 12)) -> str:
    """A smooth random volume with a bright blob, on an anisotropic grid so
    resampling does real work."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape).cumsum(0).cumsum(1)
    zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    x = (x - x.mean()) / x.std() + 5 * ((zz ** 2 + yy ** 2 + xx ** 2) < 0.6)
    nib.save(nib.Nifti1Image((x * 50 + 200).astype(np.float32), np.diag([1.0, 1.2, 2.0, 1.0])), str(path))
    return str(path)


@pytest.fixture
def scans(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(4):
        write_volume(folder / f"v{i}.nii.gz", seed=i)
    return str(folder)


def manifest_volumes(out) -> list:
    return read_manifest(str(out))["volumes"]


def npy_mtimes(out) -> dict:
    folder = os.path.join(str(out), "volumes")
    return {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in os.listdir(folder) if f.endswith(".npy")}


def test_outputs_equal_load_volumes(scans, tmp_path):
    report = prepare(scans, tmp_path / "out", SETTINGS, progress=False)
    assert len(report.prepared) == 4 and not report.skipped and report.manifest
    expected = load_volumes(scans, SETTINGS, cache=False).volumes
    got = load_prepared(tmp_path / "out")
    assert [v.paths for v in got] == [tuple(os.path.abspath(p) for p in v.paths) for v in expected]
    for g, e in zip(got, expected):
        assert isinstance(g.data, np.memmap) and g.data.dtype == np.float32
        assert np.array_equal(np.asarray(g.data), e.data)
        assert np.array_equal(g.affine, e.affine)
    for entry, e in zip(manifest_volumes(tmp_path / "out"), expected):
        assert entry["shape"] == list(e.data.shape) and entry["spacing"] == list(e.spacing)
        assert entry["stats"]["max"] == float(e.data.max())
        assert entry["stats"]["mean"] == pytest.approx(float(e.data.astype(np.float64).mean()))


def test_resume_after_kill_redoes_only_the_unfinished(scans, tmp_path):
    out = tmp_path / "out"
    script = ("import os, signal\n"
              "from rubikops.data import Preprocessing, prepare\n"
              f"prepare({scans!r}, {str(out)!r}, Preprocessing(spacing=1.5, intensity='zscore', "
              "crop_foreground=True), progress=False, stop_after=2)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    finished = npy_mtimes(out)
    assert len(finished) == 2 and not os.path.exists(out / "manifest.json")

    report = prepare(scans, out, SETTINGS, progress=False)
    assert len(report.reused) == 2 and len(report.prepared) == 2
    after = npy_mtimes(out)
    assert all(after[f] == t for f, t in finished.items())  # the killed job's outputs were not rewritten

    prepare(scans, tmp_path / "whole", SETTINGS, progress=False)
    assert manifest_volumes(out) == manifest_volumes(tmp_path / "whole")
    assert len(after) == 4


def test_two_workers_match_one(scans, tmp_path):
    prepare(scans, tmp_path / "one", SETTINGS, workers=1, progress=False)
    report = prepare(scans, tmp_path / "two", SETTINGS, workers=2, progress=False)
    assert len(report.prepared) == 4
    assert manifest_volumes(tmp_path / "one") == manifest_volumes(tmp_path / "two")
    for entry in manifest_volumes(tmp_path / "one"):
        a = (tmp_path / "one" / entry["file"]).read_bytes()
        assert a == (tmp_path / "two" / entry["file"]).read_bytes()


def test_bad_inputs_are_reported_and_good_ones_kept(scans, tmp_path):
    src = tmp_path / "scans"
    (src / "empty.nii.gz").write_bytes(b"")
    (src / "garbage.nii.gz").write_bytes(np.random.default_rng(0).bytes(500))
    nib.save(nib.Nifti1Image(np.ones((8, 9), np.float32), np.eye(4)), str(src / "flat.nii.gz"))
    nib.save(nib.Nifti1Image(np.full((6, 6, 6), np.nan, np.float32), np.eye(4)), str(src / "nan.nii.gz"))
    shutil.copyfile(src / "v1.nii.gz", src / "v1_copy.nii.gz")
    report = prepare(scans, tmp_path / "out", SETTINGS, progress=False)
    assert report.manifest
    reasons = {os.path.basename(item["file"]): item["reason"]
               for item in json.loads((tmp_path / "out" / "report.json").read_text())["skipped"]}
    assert reasons == {os.path.basename(item["file"]): item["reason"] for item in report.skipped}
    assert reasons == {"empty.nii.gz": "empty", "garbage.nii.gz": "unreadable", "flat.nii.gz": "not 3-D",
                       "nan.nii.gz": "NaN or Inf voxels", "v1_copy.nii.gz": "duplicate"}
    kept = [os.path.basename(e["sources"][0]) for e in manifest_volumes(tmp_path / "out")]
    assert kept == ["v0.nii.gz", "v1.nii.gz", "v2.nii.gz", "v3.nii.gz"]
    assert (src / "garbage.nii.gz").stat().st_size == 500 and (src / "empty.nii.gz").exists()


def test_a_changed_source_is_redone_and_the_rest_reused(scans, tmp_path):
    out = tmp_path / "out"
    prepare(scans, out, SETTINGS, progress=False)
    before = npy_mtimes(out)
    write_volume(os.path.join(scans, "v2.nii.gz"), seed=99)
    report = prepare(scans, out, SETTINGS, progress=False)
    assert [os.path.basename(p) for p in report.prepared] == ["v2.nii.gz"] and len(report.reused) == 3
    after = npy_mtimes(out)
    # the changed file gets a new output (its key hashes the content); the old one is left, unlisted
    assert all(after[f] == t for f, t in before.items()) and len(after) == 5
    fresh = load_volumes(os.path.join(scans, "v2.nii.gz"), SETTINGS, cache=False).volumes[0]
    assert np.array_equal(np.asarray(load_prepared(out, volumes=[2])[0].data), fresh.data)


def test_a_file_changed_while_processed_is_reported_not_stored(scans, tmp_path, monkeypatch):
    real_load_case = prepared_module.load_case

    def load_then_change(paths, *args, **kwargs):
        vol = real_load_case(paths, *args, **kwargs)
        if paths[0].endswith("v1.nii.gz"):
            write_volume(paths[0], seed=7)
        return vol

    monkeypatch.setattr(prepared_module, "load_case", load_then_change)
    report = prepare(scans, tmp_path / "out", SETTINGS, progress=False)
    assert [(os.path.basename(s["file"]), s["reason"]) for s in report.skipped] == \
        [("v1.nii.gz", "changed during the job")]
    assert len(npy_mtimes(tmp_path / "out")) == 3
    monkeypatch.setattr(prepared_module, "load_case", real_load_case)
    report = prepare(scans, tmp_path / "out", SETTINGS, progress=False)  # the next run takes it
    assert [os.path.basename(p) for p in report.prepared] == ["v1.nii.gz"] and not report.skipped


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_opens_only_its_shard(scans, tmp_path, monkeypatch, rank):
    prepare(scans, tmp_path / "out", SETTINGS, progress=False)
    files = [e["file"] for e in manifest_volumes(tmp_path / "out")]
    opened = []
    real_load = np.load

    def counting_load(path, *args, **kwargs):
        opened.append(os.path.relpath(os.fspath(path), tmp_path / "out"))
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(np, "load", counting_load)
    vols = load_prepared(tmp_path / "out", shard=(rank, 2))
    assert opened == files[rank::2] and len(vols) == 2


def test_rank_slices_cover_every_file_once(scans, tmp_path):
    out = tmp_path / "out"
    done = []
    for rank in range(3):
        report = prepare(scans, out, SETTINGS, rank=rank, world=3, progress=False)
        done += report.prepared
        assert (report.manifest is None) == (rank < 2)  # merged once the last part is there
    assert sorted(done) == sorted(os.path.join(scans, f"v{i}.nii.gz") for i in range(4))
    prepare(scans, tmp_path / "single", SETTINGS, progress=False)
    assert manifest_volumes(out) == manifest_volumes(tmp_path / "single")


def test_load_prepared_merges_parts_when_no_rank_did(scans, tmp_path):
    out = tmp_path / "out"
    for rank in range(2):
        prepare(scans, out, SETTINGS, rank=rank, world=2, progress=False)
    os.unlink(out / "manifest.json")
    assert len(load_prepared(out)) == 4 and (out / "manifest.json").exists()


def test_cli_errors_are_one_line(scans, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    cases = [([str(tmp_path / "missing"), "--out", str(tmp_path / "o")], "missing: no such file"),
             ([scans, "--out", str(tmp_path / "a_file")], "a_file: --out is a file"),
             ([scans, "--out", str(tmp_path / "o"), "--workers", "0"], "--workers must be at least 1"),
             ([scans, "--out", str(tmp_path / "o"), "--rank", "2", "--world", "2"], "--rank 2 --world 2")]
    for args, expected in cases:
        assert data_cli(["prepare", *args, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert data_cli(["prepare", scans, "--out", str(tmp_path / "o"), "--no-progress", "--spacing", "1.5"]) == 0
    assert "4 volume(s) prepared" in capsys.readouterr().out
    with pytest.raises(DataError, match="no manifest.json"):
        read_manifest(str(tmp_path / "scans"))


def test_a_duplicate_on_another_rank_is_dropped_at_the_merge(scans, tmp_path):
    shutil.copyfile(os.path.join(scans, "v1.nii.gz"), os.path.join(scans, "v1_copy.nii.gz"))
    out = tmp_path / "out"
    shares = [prepare(scans, out, SETTINGS, rank=rank, world=2, progress=False) for rank in range(2)]
    assert "v1_copy.nii.gz" in [os.path.basename(p) for p in shares[0].prepared]  # v1 itself is rank 1's
    skipped = json.loads((out / "report.json").read_text())["skipped"]
    assert [(os.path.basename(s["file"]), s["reason"]) for s in skipped] == [("v1_copy.nii.gz", "duplicate")]
    assert [os.path.basename(e["sources"][0]) for e in manifest_volumes(out)] == [f"v{i}.nii.gz" for i in range(4)]


def test_a_second_run_rereads_only_sources_whose_size_or_time_changed(scans, tmp_path, monkeypatch):
    prepare(scans, tmp_path / "out", SETTINGS, progress=False)
    read = []
    real = prepared_module.file_digest
    monkeypatch.setattr(prepared_module, "file_digest", lambda p: read.append(os.path.basename(p)) or real(p))
    again = prepare(scans, tmp_path / "out", SETTINGS, progress=False)
    assert read == [] and len(again.reused) == 4 and not again.prepared  # nothing reread
    files = sorted(glob.glob(os.path.join(str(scans), "*.nii*")))
    os.utime(files[1], ns=(os.stat(files[1]).st_atime_ns, os.stat(files[1]).st_mtime_ns + 10**9))
    again = prepare(scans, tmp_path / "out", SETTINGS, progress=False)
    assert read == [os.path.basename(files[1])]  # touched: reread, same content, so reused
    assert len(again.reused) == 4 and not again.prepared


def test_settings_differences_names_what_changes_the_volumes():
    """Against a manifest's JSON settings (tuples as lists): spacing, intensity and crop always; the
    window only when windowing; settings that do not change the volumes (margin) never."""
    import json
    from rubikops.data import Preprocessing, settings_differences
    folder = json.loads(Preprocessing(spacing=4.0, intensity="window", window=(-100.0, 100.0), margin=2).key())
    assert settings_differences(folder, Preprocessing(spacing=4.0, intensity="window", window=(-100.0, 100.0))) == []
    got = settings_differences(folder, Preprocessing(spacing=2.0, intensity="window", crop_foreground=True))
    assert [(k, a) for k, a, _ in got] == [("spacing", folder["spacing"]), ("crop_foreground", False),
                                          ("window", [-100.0, 100.0])]
    assert [k for k, _, _ in settings_differences(folder, Preprocessing(spacing=4.0, intensity="zscore"))] == [
        "intensity"]  # zscore takes no window: its window is not compared
