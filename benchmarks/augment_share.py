"""The default pretraining with and without its augmentation, in one run.

    python benchmarks/augment_share.py                 # 3 rounds of 300 steps each of --augment none, geometry, all
    python benchmarks/augment_share.py --out docs/results/augment-share-DATE.json   # and keep the result

Runs ``python train/pretrain.py --steps N`` (every other setting its default:
the task, the data, the model, the batch) once per augmentation in each of
``--rounds`` rounds (none, geometry, all, none, ...: the machine's drift, up
to 2x between runs here, falls on every augmentation alike), and prints per
augmentation the median over the rounds of the puzzles a second, of the share
of the step spent generating the batch (cut and augmentation), and of the
puzzles a second as a fraction of the same round's ``--augment none``, with
their lowest and highest.
Both augmentations run inside the cut: the geometry as each crop's affine
(``extract_cubes(affine=)``), the intensity as each cube's stage
(``cube_intensity=``).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import utils  # noqa: E402

from rubikops.data import atomic_path  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AUGMENTS = ("none", "geometry", "all")
KEYS = ("puzzles_per_s", "batch_gen_fraction", "throughput_vs_none")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/augment_share.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each augmentation, interleaved (default 3)")
    parser.add_argument("--out", help="write the rows, command, git revision and machine to this JSON file")
    args = parser.parse_args(argv)
    if args.steps < 10:
        parser.error(f"--steps must be at least 10 (the first steps warm up), got {args.steps}")
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.out and os.path.exists(args.out):
        parser.error(f"--out {args.out}: exists already; choose a new name (nothing was overwritten)")
    runs = {augment: [] for augment in AUGMENTS}
    with tempfile.TemporaryDirectory(prefix="rubikops-augment-share-") as tmp:
        for round_ in range(args.rounds):
            for augment in AUGMENTS:
                out = os.path.join(tmp, f"{augment}-{round_}")
                command = [sys.executable, os.path.join(ROOT, "train", "pretrain.py"), "--steps", str(args.steps),
                           "--augment", augment, "--out", out]
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"augment_share: --augment {augment} failed:\n{done.stderr.strip()[-2000:]}",
                          file=sys.stderr)
                    return 1
                with open(os.path.join(out, "summary.json")) as f:
                    summary = json.load(f)
                runs[augment].append({"puzzles_per_s": summary["puzzles_per_s"],
                                      "batch_gen_fraction": summary["batch_gen_fraction"]})
    for augment in AUGMENTS:  # each run against the same round's --augment none
        for run, base in zip(runs[augment], runs["none"]):
            run["throughput_vs_none"] = run["puzzles_per_s"] / base["puzzles_per_s"]
    rows = [{"augment": augment, "steps": args.steps, "rounds": args.rounds,
             **{key: statistics.median(r[key] for r in runs[augment]) for key in KEYS},
             **{f"{key}_range": [min(r[key] for r in runs[augment]), max(r[key] for r in runs[augment])]
                for key in KEYS},
             "runs": runs[augment]} for augment in AUGMENTS]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; python train/pretrain.py --steps "
          f"{args.steps} --augment ..., median (lowest-highest) of {args.rounds} interleaved rounds")
    for row in rows:
        (t_lo, t_hi), (b_lo, b_hi) = row["throughput_vs_none_range"], row["batch_gen_fraction_range"]
        print(f"--augment {row['augment']:8s} {row['puzzles_per_s']:7.1f} puzzles/s ({row['throughput_vs_none']:.2f}x "
              f"none, {t_lo:.2f}-{t_hi:.2f}), batch generation {100 * row['batch_gen_fraction']:4.1f}% of the step "
              f"({100 * b_lo:.1f}-{100 * b_hi:.1f})")
    if args.out:
        flags = ("" if args.steps == 300 else f" --steps {args.steps}") + \
            ("" if args.rounds == 3 else f" --rounds {args.rounds}")
        doc = {"command": "python benchmarks/augment_share.py" + flags,
               "git_revision": utils.git_revision(), "machine": utils.machine_info(torch.device("cpu")),
               "seeds": [0], "rows": rows}
        with atomic_path(args.out) as tmp_path:
            with open(tmp_path, "w") as f:
                json.dump(doc, f, indent=1)
        print(f"result: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
