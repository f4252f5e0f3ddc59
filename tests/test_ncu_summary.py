"""benchmarks/ncu_summary.py turns an Nsight Compute log of profile_kernels.py into a result file:
every launch labelled with its configuration, its metrics as numbers and its rule messages whole."""
import json
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "ncu_summary.py")

HEADER = "  void {ns}::extract_cubes_kernel<{targs}>(ExtractCubesParams, long) (8192, 1, 1)x(256, 1, 1), Context 1"


def _launch(rng, targs):
    metrics = {"Duration": ("us", round(float(rng.uniform(100, 300)), 2)),
               "DRAM Throughput": ("%", round(float(rng.uniform(10, 90)), 2)),
               "Registers Per Thread": ("register/thread", int(rng.integers(32, 96))),
               "l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum": ("sector", int(rng.integers(1e6, 5e7)))}
    lines = [HEADER.format(ns="(anonymous namespace)", targs=targs), "    Section: GPU Speed Of Light Throughput",
             "    ----------------------- ----------- ------------"]
    for name, (unit, value) in metrics.items():
        lines.append(f"    {name:<40} {unit:>16} {value:>14,}")
    speedup = round(float(rng.uniform(1, 80)), 2)
    lines += [f"    OPT   Est. Speedup: {speedup}%", "          The memory access pattern for local stores",
              "          might not be optimal.", "", "    ---- ----"]
    return lines, {k: float(v) for k, (_, v) in metrics.items()}, speedup


def test_every_launch_labelled_with_its_metrics_and_rules(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from profile_kernels import CONFIGS
    rng = np.random.default_rng(7)
    log, want = ["==PROF== Profiling ..."], []
    for i, _ in enumerate(CONFIGS):
        lines, metrics, speedup = _launch(rng, "float, float, float, 4, 8" if i % 2 == 0 else "__nv_bfloat16, float, 8, 4")
        log += lines
        want.append((metrics, speedup))
    path = tmp_path / "ncu.log"
    path.write_text("\n".join(log) + "\n")
    out = tmp_path / "ncu.json"
    r = subprocess.run([sys.executable, SCRIPT, str(path), "--gpu", "NVIDIA X", "--git", "abc", "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert doc["machine"]["gpu"] == "NVIDIA X" and doc["git"] == "abc"
    assert [launch["config"] for launch in doc["launches"]] == [
        f"{str(d).replace('torch.', '')} {c}" for d, c in CONFIGS]
    for launch, (metrics, speedup) in zip(doc["launches"], want):
        assert launch["metrics"] == metrics
        assert launch["rules"] == [{"estimate": f"Est. Speedup: {speedup}%",
                                    "text": "The memory access pattern for local stores might not be optimal."}]


def test_a_log_with_missing_launches_is_refused_in_one_line(tmp_path):
    path = tmp_path / "ncu.log"
    path.write_text("==PROF== nothing profiled\n")
    r = subprocess.run([sys.executable, SCRIPT, str(path), "--gpu", "G", "--git", "x", "--out", str(tmp_path / "o.json")],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "holds 0 profiled launches" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.json").exists()
    r = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "none.log"), "--gpu", "G", "--git", "x", "--out",
                        str(tmp_path / "o.json")], capture_output=True, text=True)
    assert r.returncode != 0 and "none.log" in r.stderr and len(r.stderr.strip().splitlines()) == 1
