"""Issue 28, items 2-6 on the data surfaces: prepared folders are checked, not trusted; no user file is
overwritten; every bad input is a one-line DataError/ValueError naming the file or argument."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch

from rubikops.data import (DataError, Preprocessing, StreamingBank, VolumeBank, load_nifti, load_prepared,
                           make_bank, parse_size, prepare, read_manifest)
from rubikops.data import prepared as prepared_module
from rubikops.data.__main__ import main as data_cli
from rubikops.data.streaming import slot_bytes

from .test_prepare import ROOT, write_volume

SETTINGS = Preprocessing(spacing=1.5, intensity="none")


@pytest.fixture
def scans(tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for i in range(4):
        write_volume(folder / f"v{i}.nii.gz", seed=i)
    return str(folder)


@pytest.fixture
def prepared(scans, tmp_path):
    out = tmp_path / "prepared"
    prepare(scans, out, SETTINGS, progress=False)
    return str(out)


def manifest_path(out) -> str:
    return os.path.join(out, "manifest.json")


def edit_manifest(out, edit) -> None:
    with open(manifest_path(out)) as f:
        m = json.load(f)
    edit(m)
    with open(manifest_path(out), "w") as f:
        json.dump(m, f)


def npy_of(out, i=0) -> str:
    return os.path.join(out, read_manifest(out)["volumes"][i]["file"])


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# -- item 2: prepared folders are trusted too far -------------------------------------------------------------
@pytest.mark.parametrize("bank", ["resident", "streaming"])
def test_a_nan_npy_is_refused_naming_the_file(prepared, bank):
    path = npy_of(prepared, 1)
    np.save(path, np.full(np.load(path).shape, np.nan, dtype=np.float32))
    vols = load_prepared(prepared)
    with pytest.raises(DataError, match="NaN or Inf") as info:
        if bank == "resident":
            VolumeBank(vols)
        else:  # a streaming bank reads the volume when it is due: every volume is due within one epoch
            b = StreamingBank(vols, budget=2 * slot_bytes(vols), refresh_every=1)
            puzzle = __import__("rubikops").tasks.get("rotation")(cube_size=4)
            for _ in range(2 * len(vols)):
                b.puzzles(puzzle, 2)
    assert os.path.basename(path) in one_line(info)


@pytest.mark.parametrize("edit", ["values", "mean", "std"])
def test_statistics_that_do_not_match_the_content_are_refused(prepared, edit):
    if edit == "values":
        path = npy_of(prepared, 0)
        a = np.load(path)
        np.save(path, a * 3 + 1000)
    else:
        value = {"mean": 1e6, "std": 0.0}[edit]
        edit_manifest(prepared, lambda m: m["volumes"][0]["stats"].__setitem__(edit, value))
    for dtype in ("float32", "int16"):
        with pytest.raises(DataError, match="statistics") as info:
            VolumeBank(load_prepared(prepared), dtype=dtype)
        assert "run prepare again" in one_line(info)


def test_zscore_cubes_of_a_prepared_bank_match_those_of_the_arrays(prepared):
    """The statistics used are the content's: a prepared bank and a bank of the same arrays in memory
    give the same z-scored cubes (reference: the arrays' own float64 mean and std)."""
    vols = load_prepared(prepared)
    arrays = [np.array(v.data) for v in vols]
    a, b = VolumeBank(vols), VolumeBank(arrays)
    for i, arr in enumerate(arrays):
        assert float(a.stats[0][i]) == pytest.approx(arr.mean(dtype=np.float64), rel=1e-6, abs=1e-9)
        assert float(a.stats[1][i]) == pytest.approx(arr.std(dtype=np.float64), rel=1e-6, abs=1e-9)
    torch.testing.assert_close(a.stats[0], b.stats[0], rtol=1e-6, atol=1e-9)


def test_a_npy_of_another_dtype_is_refused(prepared):
    path = npy_of(prepared, 2)
    np.save(path, np.load(path).astype(np.float64))
    with pytest.raises(DataError, match="dtype float64 does not match the manifest's float32") as info:
        load_prepared(prepared)
    assert os.path.basename(path) in one_line(info)


# -- item 3: no user file overwritten -----------------------------------------------------------------------
@pytest.mark.parametrize("theirs", ["manifest.json", "report.json", "notes.txt"])
def test_prepare_refuses_an_out_folder_it_did_not_make(scans, tmp_path, theirs):
    out = tmp_path / "mine"
    out.mkdir()
    (out / theirs).write_text('{"my": "own data"}')
    with pytest.raises(DataError, match="holds files prepare did not write") as info:
        prepare(scans, out, SETTINGS, progress=False)
    assert theirs in one_line(info)
    assert (out / theirs).read_text() == '{"my": "own data"}'
    assert sorted(os.listdir(out)) == [theirs]


def test_prepare_reruns_into_its_own_folder_and_into_an_empty_one(scans, tmp_path, prepared):
    before = read_manifest(prepared)
    assert prepare(scans, prepared, SETTINGS, progress=False).manifest is not None
    assert read_manifest(prepared) == before
    (tmp_path / "empty").mkdir()
    assert prepare(scans, tmp_path / "empty", SETTINGS, progress=False).manifest is not None


# -- item 4: raw tracebacks become one-line errors -----------------------------------------------------------
@pytest.mark.parametrize("spacing_mm, target", [(1e6, 1.5), (1000.0, 0.25)])
def test_a_huge_voxel_spacing_is_skipped_with_its_reason(scans, tmp_path, spacing_mm, target):
    bad = os.path.join(scans, "huge.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((6, 6, 6), np.float32), np.diag([spacing_mm] * 3 + [1.0])), bad)
    report = prepare(scans, tmp_path / "out", Preprocessing(spacing=target), progress=False)
    assert [s["file"] for s in report.skipped] == [os.path.abspath(bad)]
    assert "implausible" in report.skipped[0]["detail"] and len(report.prepared) == 4
    assert report.manifest is not None


@pytest.mark.parametrize("case", ["missing key", "wrong type", "bad shape", "nan stats", "outside", "absolute",
                                  "not a list", "zero-byte npy"])
def test_a_hand_edited_manifest_is_a_data_error_naming_the_file(prepared, tmp_path, case):
    secret = tmp_path / "secret.npy"
    np.save(secret, np.zeros((1, 4, 4, 4), np.float32))
    edits = {
        "missing key": lambda m: m["volumes"][0].pop("stats"),
        "wrong type": lambda m: m["volumes"][0].__setitem__("shape", "1,2,3,4"),
        "bad shape": lambda m: m["volumes"][0].__setitem__("shape", [1, 2, 3]),
        "nan stats": lambda m: m["volumes"][0]["stats"].__setitem__("std", float("nan")),
        "outside": lambda m: m["volumes"][0].__setitem__("file", "../secret.npy"),
        "absolute": lambda m: m["volumes"][0].__setitem__("file", str(secret)),
        "not a list": lambda m: m.__setitem__("volumes", {"a": 1}),
    }
    if case == "zero-byte npy":
        open(npy_of(prepared, 0), "w").close()
        name = os.path.basename(npy_of(prepared, 0))
    else:
        edit_manifest(prepared, edits[case])
        name = "manifest.json"
    with pytest.raises(DataError) as info:
        load_prepared(prepared)
    assert name in one_line(info)


@pytest.mark.parametrize("case", ["no world", "string rank", "bad result"])
def test_a_hand_edited_rank_part_is_a_data_error_naming_it(scans, tmp_path, case):
    out = tmp_path / "ranks"
    prepare(scans, out, SETTINGS, rank=0, world=2, progress=False)
    part = out / "manifest.rank0.json"
    data = json.loads(part.read_text())
    {"no world": lambda: data.pop("world"), "string rank": lambda: data.__setitem__("rank", "0"),
     "bad result": lambda: data["results"][0].pop("sources")}[case]()
    part.write_text(json.dumps(data))
    with pytest.raises(DataError, match="manifest.rank0.json") as info:
        prepare(scans, out, SETTINGS, rank=1, world=2, progress=False)
    one_line(info)


def test_load_prepared_refuses_volume_indices_it_does_not_have(prepared):
    with pytest.raises(DataError, match=r"volumes \[7\] are not indices"):
        load_prepared(prepared, volumes=[0, 7])


@pytest.mark.parametrize("flags, expected", [(["--spacing", "-1"], "spacing"), (["--spacing", "0"], "spacing"),
                                             (["--spacing", "nan"], "spacing"), (["--window", "1,0"], "window")])
def test_prepare_and_info_flags_out_of_range_are_one_line(scans, tmp_path, capsys, flags, expected):
    for cmd in (["prepare", scans, "--out", str(tmp_path / "o"), "--no-progress"], ["info", scans]):
        if cmd[0] == "info" and flags[0] == "--window":
            continue
        assert data_cli(cmd + flags) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and err.startswith("error:") and len(err.splitlines()) == 1


def test_bank_arguments_are_checked(tmp_path):
    arrays = [np.random.default_rng(i).random((1, 10, 10, 10), dtype=np.float32) for i in range(4)]
    if not torch.cuda.is_available():
        for cls in (VolumeBank, StreamingBank):
            with pytest.raises(ValueError, match="no CUDA device is available"):
                cls(arrays, device="cuda", **({"budget": 9000} if cls is StreamingBank else {}))
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        StreamingBank(arrays, budget=9000, seed=-1)
    with pytest.raises(ValueError, match="names must be one string per volume"):
        VolumeBank(arrays, names=["a"])
    with pytest.raises(ValueError, match="names must be one string per volume"):
        make_bank(arrays, budget=9000, names=["a", "b"])
    for text in ("1e400", "1e30TB", "1e19"):
        with pytest.raises(ValueError, match="beyond any memory"):
            parse_size(text, "--bank-budget")
    bank = StreamingBank(arrays, budget=9000)
    for calls in ("x", -5, 2.5, True, None):
        state = dict(bank.state_dict(), calls=calls)
        with pytest.raises(ValueError, match="calls must be an int >= 0"):
            bank.load_state_dict(state)
    bank.close()


# -- item 5: silently accepted input becomes an error --------------------------------------------------------
def test_a_label_map_of_non_integers_is_refused_before_the_cast(tmp_path):
    path = str(tmp_path / "lab.nii.gz")
    lab = np.zeros((5, 5, 5), np.float32)
    lab[1, 1, 1] = 1.7
    nib.save(nib.Nifti1Image(lab, np.eye(4)), path)
    with pytest.raises(DataError, match="non-integer") as info:
        load_nifti(path, label=True)
    assert path in one_line(info)
    lab[1, 1, 1] = 2.0  # integer values stored as floats load exactly
    nib.save(nib.Nifti1Image(lab, np.eye(4)), path)
    assert load_nifti(path, label=True).data.max() == 2


def test_a_bank_state_over_the_same_arrays_in_another_order_is_refused():
    arrays = [np.random.default_rng(i).random((1, 10, 10, 10), dtype=np.float32) for i in range(4)]
    state = StreamingBank(arrays, budget=9000).state_dict()
    reordered = StreamingBank(arrays[::-1], budget=9000)
    with pytest.raises(ValueError, match="volumes_hash"):
        reordered.load_state_dict(state)
    StreamingBank([a.copy() for a in arrays], budget=9000).load_state_dict(state)  # same contents: accepted


# -- item 6: misleading messages and leftovers ---------------------------------------------------------------
def test_an_unreadable_src_folder_is_named_not_the_out_folder(scans, tmp_path, capsys, monkeypatch):
    real_listdir = os.listdir

    def listdir(path="."):  # what a folder without read permission gives (chmod 0 does not stop root)
        if os.fspath(path) == scans:
            raise PermissionError(13, "Permission denied", scans)
        return real_listdir(path)
    monkeypatch.setattr(os, "listdir", listdir)
    assert data_cli(["prepare", scans, "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {scans}: cannot list the folder") and str(tmp_path / "o") not in err


def test_ranks_prepared_with_different_settings_are_named_at_once(scans, tmp_path):
    out = tmp_path / "mixed"
    prepare(scans, out, SETTINGS, rank=0, world=2, progress=False)
    report = prepare(scans, out, Preprocessing(spacing=2.0), rank=1, world=2, progress=False)
    assert report.manifest is None and "other settings" in report.waiting
    with pytest.raises(DataError, match="rank\\(s\\) 0 were prepared with other settings") as info:
        read_manifest(out)
    assert "have not finished" not in one_line(info)


def test_a_killed_jobs_temporaries_are_removed_by_the_next_run(scans, tmp_path):
    out = tmp_path / "killed"
    prepare(scans, out, SETTINGS, progress=False, stop_after=1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = getattr(prepared_module, "_HOST", "thishost")
    tag = f".tmp-{dead.pid}@{host}-"  # a temporary of a process of this host that has ended
    left = [out / "volumes" / f"{tag}abc-v1.npy", out / f"{tag}def-manifest.json"]
    old = out / "volumes" / ".tmp-k2j3h4-v3.npy"  # untagged (another host's, or an older version's), 2 hours old
    alive = out / "volumes" / f".tmp-{os.getpid()}@{host}-ghi-v2.npy"  # a write in progress
    fresh = out / "volumes" / ".tmp-x8y9z0-v0.npy"  # untagged and new: maybe another host's write in progress
    for p in left + [old, alive, fresh]:
        p.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    prepare(scans, out, SETTINGS, progress=False)
    assert not any(p.exists() for p in left + [old]) and alive.exists() and fresh.exists()


def _running(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_prepare_workers_end_with_their_killed_parent(scans, tmp_path):
    """SIGKILL a --workers 2 job once its workers run: they end within a few seconds, not with the queue."""
    code = (f"import sys; sys.path.insert(0, {ROOT!r})\n"
            "from rubikops.data import Preprocessing, prepare\n"
            f"prepare({scans!r}, {str(tmp_path / 'o')!r}, Preprocessing(spacing=0.1), workers=2, progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    children: list = []
    try:
        for _ in range(600):  # the two spawn workers (and multiprocessing's resource tracker) appear
            time.sleep(0.05)
            children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            if len(children) >= 3:
                break
        assert len(children) >= 2, "the job started no workers"
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 15
        while time.time() < deadline and any(map(_running, children)):
            time.sleep(0.1)
        assert not [c for c in children if _running(c)], "workers outlived their killed parent"
    finally:
        for c in children:
            if _running(c):
                os.kill(int(c), signal.SIGKILL)
    assert not os.path.exists(tmp_path / "o" / "manifest.json")
