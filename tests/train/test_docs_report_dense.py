"""train/docs_report.py: --add-pretraining keeps a restoration run's errors under their own prefix
(never in the puzzle accuracy range), the dense-defaults table shows them against both baselines, and
the GPU targets keep one value per committed run."""
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "train"))

import docs_report  # noqa: E402


def test_a_dense_run_is_recorded_and_tabled_with_its_baselines(tmp_path):
    rng = np.random.default_rng(3)
    results = tmp_path / "results"
    results.mkdir()
    rows = []
    for task in ("genesis", "masked"):
        run = tmp_path / task
        run.mkdir()
        mse, ident, mean = (float(v) for v in rng.uniform(0.05, 3.0, 3))
        summary = {"task": task, "steps": int(rng.integers(10, 900)), "encoder_step": 5, "mse": mse,
                   "identity_mse": ident, "mean_mse": mean, "restoration_gain": 1 - mse / ident,
                   "puzzles_per_s": 12.5, "batch_gen_fraction": float(rng.uniform(0, 0.1)),
                   "held_out": ["v.nii.gz"], "eval_puzzles": 64, "order_acc": None}
        (run / "summary.json").write_text(json.dumps(summary))
        path = docs_report.add_pretraining(str(run), 123.0, f"python train/pretrain.py --task {task}", str(results))
        assert os.path.basename(path).startswith("dense-pretrain-")
        record = json.loads(open(path).read())
        assert record["wall_s"] == 123.0 and record["summary"]["mse"] == mse and "order_acc" not in record["summary"]
        rows.append((task, summary))
        os.replace(path, path.replace(".json", f"-{task}.json"))  # one second apart would share the stamp
    assert docs_report.pretraining_runs(str(results)) == []  # the puzzle accuracy range never sees them
    block = docs_report.dense_pretraining_block(str(results))
    for task, s in rows:
        line = next(line for line in block.splitlines() if f"--task {task}`" in line)
        assert f"| {s['mse']:.3f} |" in line
        assert f"{s['identity_mse']:.3f} ({s['identity_mse'] / s['mse']:.2f}x)" in line
        assert f"{s['mean_mse']:.3f} ({s['mean_mse'] / s['mse']:.2f}x)" in line
        assert f"| {100 * s['batch_gen_fraction']:.1f} |" in line


def _row(name, ms, pct=None, extra=None):
    return {"name": name, "timing": {"median_s": ms / 1e3, "p20_s": ms / 1e3, "p80_s": ms / 1e3}, "gb_per_s": 1.0,
            "pct_of_ceiling": pct, "speedup_vs_baseline": None, "extra": extra or {}}


def test_gpu_targets_one_value_per_run_and_not_measured_without_a_file(tmp_path):
    """A run that lacks a row shows '-' in its place (the others keep their places) and the status counts
    the runs that have it; a target no file measures says so instead of 'not met'."""
    machine = {"gpu": "G", "gpu_memory_gib": 80.0, "cores": 8, "python": "3", "torch": "t", "cuda": "c", "triton": "x"}
    full = [_row("rubikops CUDA C++ out= [float32, paper]", 0.2, pct=91.0),
            _row("rubikops Triton out= [float32, paper]", 0.3),
            _row("rubikops whole puzzle (sample + op, out=)", 0.3, extra={"ratio_to_bare_op": 1.10})]
    for stamp, rows, no_e2e in (("20260101T000000Z", full, False), ("20260101T000100Z", full[:2], True),
                                ("20260101T000200Z", [_row("rubikops whole puzzle (sample + op, out=)", 0.4,
                                                           extra={"ratio_to_bare_op": 1.40})], True)):
        (tmp_path / f"h200-{stamp}-cuda{'-no-e2e' if no_e2e else ''}.json").write_text(json.dumps(
            {"machine": machine, "git": "g", "time": stamp, "args": {"no_e2e": no_e2e}, "rows": rows}))
    lines = docs_report.gpu_block(str(tmp_path)).splitlines()

    def target(prefix):
        return next(line for line in lines if line.startswith(f"| {prefix}"))
    assert target("CUDA `out=`, paper rotations, float32").endswith("| 91.0%, 91.0%, - | met |")
    assert target("whole puzzle").endswith("| 1.10x, -, 1.40x | met in 1 of 2 runs |")
    assert target("Triton `out=` within 1.10x of CUDA, float32").endswith("| 1.50x, 1.50x, - | not met |")
    assert target("paper-preset pretraining").endswith("|  | not measured |")
