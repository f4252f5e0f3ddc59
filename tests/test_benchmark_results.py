"""benchmarks/utils.write_results keeps one results file per machine and
configuration: a new run replaces the file of the previous run of the same
machine and flags, and leaves every other file alone."""
import importlib.util
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def bench_utils():
    spec = importlib.util.spec_from_file_location("bench_utils", os.path.join(ROOT, "benchmarks", "utils.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _rows(bench_utils, seconds):
    timing = bench_utils.Timing(seconds, seconds, seconds, 3)
    return [bench_utils.Row("ceiling: torch.clone (allocating)", "tiny", timing, 1000)]


def _args(**flags):
    return {"device": "cpu", "quick": False, "full": False, "compare": None, "no_save": False, "no_e2e": False,
            **flags}


def _write(bench_utils, directory, seconds, monkeypatch, stamp, benchmark=None, **flags):
    class Clock:  # distinct, increasing time stamps without sleeping
        @staticmethod
        def now(tz=None):
            return stamp

    monkeypatch.setattr(bench_utils._dt, "datetime", Clock)
    return bench_utils.write_results(_rows(bench_utils, seconds), torch.device("cpu"), _args(**flags),
                                     str(directory), benchmark=benchmark)


def test_a_run_replaces_the_previous_file_of_its_machine_and_flags(bench_utils, tmp_path, monkeypatch):
    import datetime as dt
    t = [dt.datetime(2026, 12, 1, 10, 0, s, tzinfo=dt.timezone.utc) for s in range(5)]
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"not": "a result"}')
    other_machine = tmp_path / "h100-20261126T193004Z-cuda.json"
    other_machine.write_text(json.dumps({"machine": {"gpu": "NVIDIA H100 80GB HBM3", "cpu": "x", "cores": 16},
                                         "args": {"device": "cuda", "no_e2e": True}, "rows": []}))
    same_cpu_other_cores = tmp_path / "cpu-20261126T000000Z.json"
    info = bench_utils.machine_info(torch.device("cpu"))
    same_cpu_other_cores.write_text(json.dumps({"machine": {**info, "cores": (info["cores"] or 1) + 64},
                                                "args": _args(no_e2e=True), "rows": []}))

    first = _write(bench_utils, tmp_path, 1.0, monkeypatch, t[0], no_e2e=True)
    default = _write(bench_utils, tmp_path, 2.0, monkeypatch, t[1])
    assert os.path.basename(first) == "cpu-20261201T100000Z-no-e2e.json"
    assert os.path.basename(default) == "cpu-20261201T100001Z.json"
    second = _write(bench_utils, tmp_path, 3.0, monkeypatch, t[2], no_e2e=True)

    assert not os.path.exists(first)  # replaced by the later run of the same machine and flags
    assert os.path.exists(default)  # other flags: another configuration
    assert foreign.exists() and other_machine.exists() and same_cpu_other_cores.exists()
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(second), os.path.basename(default),
                                                   foreign.name, other_machine.name, same_cpu_other_cores.name])
    doc = json.load(open(second))
    assert doc["rows"][0]["timing"]["median_s"] == 3.0 and doc["args"]["no_e2e"] is True
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_another_benchmark_keeps_its_own_file(bench_utils, tmp_path, monkeypatch):
    """A script other than run.py (affine_cut.py) on the same machine and flags replaces only its own
    earlier file, and run.py's run leaves it alone."""
    import datetime as dt
    t = [dt.datetime(2026, 12, 1, 10, 0, s, tzinfo=dt.timezone.utc) for s in range(3)]
    run = _write(bench_utils, tmp_path, 1.0, monkeypatch, t[0])
    first = _write(bench_utils, tmp_path, 2.0, monkeypatch, t[1], benchmark="affine_cut")
    assert os.path.basename(first) == "affine-cut-cpu-20261201T100001Z.json"
    assert json.load(open(first))["benchmark"] == "affine_cut" and "benchmark" not in json.load(open(run))
    second = _write(bench_utils, tmp_path, 3.0, monkeypatch, t[2], benchmark="affine_cut")
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(run), os.path.basename(second)])
    rerun = _write(bench_utils, tmp_path, 4.0, monkeypatch, t[0].replace(second=30))
    assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(rerun), os.path.basename(second)])


def test_machine_tag(bench_utils):
    assert bench_utils.machine_tag({"cpu": "Intel(R) Xeon(R) Processor"}) == "cpu"
    assert bench_utils.machine_tag({"cpu": "x", "gpu": "NVIDIA H100 80GB HBM3"}) == "h100"
    assert bench_utils.machine_tag({"cpu": "x", "gpu": "Some GPU"}) == "gpu"


def test_the_quick_benchmark_runs_every_cpu_row_kind(tmp_path):
    """`python benchmarks/run.py --quick` end to end on this checkout: every kind of CPU row (op, ceilings,
    baselines, puzzle, sampler, augmentation, tasks, backward) comes out, so no row calls a name the
    library no longer has."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    env.pop("TRITON_INTERPRET", None)
    done = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "run.py"), "--quick", "--no-save"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("rubikops compiled CPU (out=)", "rubikops whole puzzle", "rubikops::sample_puzzle",
                "backward: compiled C++", "backward: generic scatter-add", "task jigsaw", "CropAffine"):
        assert row in done.stdout, row
