"""The default pretraining with and without its augmentation, in one run.

    python benchmarks/augment_share.py                 # 300 steps each of --augment none, geometry, all
    python benchmarks/augment_share.py --out docs/results/augment-share-DATE.json   # and keep the result

Runs ``python train/pretrain.py --steps N`` (every other setting its default:
the task, the data, the model, the batch) once per augmentation, one after
the other on this machine, and prints from each run's summary the puzzles a
second, the share of the step spent generating the batch (cut and
augmentation), and the puzzles a second as a fraction of ``--augment none``'s.
Both augmentations run inside the cut: the geometry as each crop's affine
(``extract_cubes(affine=)``), the intensity as each cube's stage
(``cube_intensity=``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import utils  # noqa: E402

from rubikops.data import atomic_path  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUGMENTS = ("none", "geometry", "all")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/augment_share.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    parser.add_argument("--out", help="write the rows, command, git revision and machine to this JSON file")
    args = parser.parse_args(argv)
    if args.steps < 10:
        parser.error(f"--steps must be at least 10 (the first steps warm up), got {args.steps}")
    if args.out and os.path.exists(args.out):
        parser.error(f"--out {args.out}: exists already; choose a new name (nothing was overwritten)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="rubikops-augment-share-") as tmp:
        for augment in AUGMENTS:
            out = os.path.join(tmp, augment)
            command = [sys.executable, os.path.join(ROOT, "train", "pretrain.py"), "--steps", str(args.steps),
                       "--augment", augment, "--out", out]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"augment_share: --augment {augment} failed:\n{done.stderr.strip()[-2000:]}", file=sys.stderr)
                return 1
            with open(os.path.join(out, "summary.json")) as f:
                summary = json.load(f)
            rows.append({"augment": augment, "steps": args.steps, "puzzles_per_s": summary["puzzles_per_s"],
                         "batch_gen_fraction": summary["batch_gen_fraction"]})
    base = rows[0]["puzzles_per_s"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; python train/pretrain.py --steps "
          f"{args.steps} --augment ...")
    for row in rows:
        row["throughput_vs_none"] = row["puzzles_per_s"] / base
        print(f"--augment {row['augment']:8s} {row['puzzles_per_s']:7.1f} puzzles/s ({row['throughput_vs_none']:.2f}x "
              f"none), batch generation {100 * row['batch_gen_fraction']:4.1f}% of the step")
    if args.out:
        doc = {"command": "python benchmarks/augment_share.py" + ("" if args.steps == 300 else f" --steps {args.steps}"),
               "git_revision": utils.git_revision(), "machine": utils.machine_info(torch.device("cpu")),
               "seeds": [0], "rows": rows}
        with atomic_path(args.out) as tmp_path:
            with open(tmp_path, "w") as f:
                json.dump(doc, f, indent=1)
        print(f"result: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
