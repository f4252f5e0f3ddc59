"""train/docs_report.py on a restoration run: --add-pretraining keeps its errors under their own prefix
(never in the puzzle tasks' accuracy range) and the dense-defaults table shows them against both baselines."""
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
