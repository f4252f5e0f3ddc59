"""The pretext study: held-out ordering and orientation accuracy of
pretraining as one setting at a time moves away from the defaults.

    python train/pretext_study.py --seeds 0,1 --docs docs  # every row, 2 seeds: the table in docs/experiment.md and README.md
    python train/pretext_study.py --rows defaults,joint_heads --seeds 0,1,2
    python train/pretext_study.py --steps 3000 --device cuda

Each row is ``python train/pretrain.py`` with the row's flags added (printed
with the table, so any row reruns on its own), evaluated on the fixed
held-out puzzles of the held-out volume.  Rows finished earlier are read
back, not rerun.  The table goes to --out/study.md and, with --docs, into
DOCS/experiment.md and --readme between their pretext-study markers."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import reporting  # noqa: E402
import pretrain  # noqa: E402
from common import UserError  # noqa: E402

# (row name, what it changes, flags added to the defaults)
ROWS = [
    ("defaults", "the defaults (64 mm cubes, octant pooling, per-cube heads, summed loss, augmentation)", []),
    ("before", "all four fixes undone: 32 mm cubes, global pooling, joint heads, mean loss, no "
               "augmentation", ["--spacing", "2", "--gap", "0,4", "--pool", "avg", "--no-cube-heads",
                                "--cube-loss", "mean", "--augment", "none"]),
    ("cubes_32mm", "scale: 16^3 cubes at 2 mm (32 mm)", ["--spacing", "2", "--gap", "0,4"]),
    ("cubes_48mm", "scale: 16^3 cubes at 3 mm (48 mm)", ["--spacing", "3", "--gap", "0,3"]),
    ("cubes_72mm", "scale: 16^3 cubes at 4.5 mm (72 mm: the largest whose 2x2x2 crop fits every bundled volume)",
     ["--spacing", "4.5"]),
    ("global_pool", "head input: global average of each cube's features", ["--pool", "avg"]),
    ("hidden_512", "head: 512 hidden units", ["--hidden", "512"]),
    ("joint_heads", "head: the paper's joint turn/mask heads over all cubes", ["--no-cube-heads"]),
    ("paper_weights", "loss: the paper's form with its alpha = beta = 0.5",
     ["--cube-loss", "mean", "--alpha", "0.5", "--beta", "0.5"]),
    ("rotation_warmup", "schedule: turns alone for the first 20% of steps", ["--rotation-warmup", "0.2"]),
    ("rotation_only", "task: turns alone", ["--alpha", "0"]),
    ("ordering_only", "task: ordering alone", ["--beta", "0"]),
    ("cube_norm", "input: each cube to [-1, 1] (the paper)", ["--normalize", "cube"]),
    ("no_augment", "data: no augmentation", ["--augment", "none"]),
    ("masks", "Rubik's Cube+: half the cubes masked", ["--mask-prob", "0.5"]),
]
ROW_NAMES = [r[0] for r in ROWS]


def parse(argv=None):
    p = common.ArgumentParser(prog="python train/pretext_study.py", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/pretext_study", help="one folder per row and seed")
    p.add_argument("--rows", default="all", help=f"comma-separated rows, or all: {', '.join(ROW_NAMES)}")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--steps", default="300", help="pretraining steps per run")
    p.add_argument("--device", default="auto")
    p.add_argument("--pretrain-args", default="", help="extra flags for every run of train/pretrain.py")
    p.add_argument("--docs", default="", help="also write the table into DOCS/experiment.md and --readme (empty: no)")
    p.add_argument("--readme", default="README.md", help="with --docs: the README that also gets the table; none: skip")
    return p.parse_args(argv)


def check_args(args):
    rows = ROW_NAMES if args.rows == "all" else [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROW_NAMES]
    if unknown or not rows:
        raise UserError(f"--rows: unknown row(s) {unknown or args.rows!r}; choose from {', '.join(ROW_NAMES)}")
    seeds = common.parse_list(args.seeds, int, "--seeds")
    steps = common.parse_list(args.steps, int, "--steps")
    if len(steps) != 1 or steps[0] < 1:
        raise UserError(f"--steps takes one int >= 1, got {args.steps!r}")
    return rows, seeds, steps[0]


def run_row(name: str, seed: int, steps: int, args) -> dict:
    flags = dict((r[0], r[2]) for r in ROWS)[name]
    folder = os.path.join(args.out, f"{name}_seed{seed}")
    summary = os.path.join(folder, "summary.json")
    if not os.path.exists(summary):
        resume = ["--resume"] if common.Checkpoints(os.path.join(folder, "checkpoints")).latest() else []
        argv = ["--out", folder, "--steps", str(steps), "--seed", str(seed), "--device", args.device,
                "--no-progress", "--no-tensorboard", "--eval-every", str(max(1, steps // 4)), *flags,
                *args.pretrain_args.split(), *resume]
        print(f"== {name} seed {seed}: python train/pretrain.py {' '.join(argv)}", flush=True)
        if common.run_main(pretrain.main, argv) != 0:
            raise UserError(f"pretext study: row {name} seed {seed} failed (see above)")
    with open(summary) as fh:
        return json.load(fh)


def table(results: dict, rows, seeds, steps: int) -> str:
    def cell(vals, chance):
        m, sd = reporting.mean_sd(vals)
        if math.isnan(m):
            return "n/a"
        spread = f" ± {100 * sd:.1f}" if len(seeds) > 1 else ""
        return f"{100 * m:.1f}{spread}" + (" (chance)" if m < chance + 0.02 else "")

    lines = [f"| row | what changes | ordering % (chance {100 / results[(rows[0], seeds[0])]['num_permutations']:.1f}) "
             "| orientation % (chance 33.3) | flags added |", "|---|---|---|---|---|"]
    what = dict((r[0], r[1]) for r in ROWS)
    flags = dict((r[0], r[2]) for r in ROWS)
    for name in rows:
        rs = [results[(name, s)] for s in seeds]
        chance_order = 1.0 / rs[0]["num_permutations"]
        order = cell([r["order_acc"] for r in rs], chance_order) if rs[0].get("trained_order") else "not trained"
        orient = cell([r["orient_acc"] for r in rs], 1 / 3) if rs[0].get("trained_orient") else "not trained"
        lines.append(f"| {name} | {what[name]} | {order} | {orient} | `{' '.join(flags[name]) or '-'}` |")
    head = (f"`python train/pretext_study.py --steps {steps} --seeds {','.join(map(str, seeds))}`: "
            f"{steps} pretraining steps per run, held-out accuracy on the fixed puzzles of the held-out volume "
            f"{'(mean ± sd over seeds)' if len(seeds) > 1 else f'(seed {seeds[0]})'}.")
    return head + "\n\n" + "\n".join(lines)


def main(argv=None) -> int:
    args = parse(argv)
    rows, seeds, steps = check_args(args)
    results = {(name, s): run_row(name, s, steps, args) for name in rows for s in seeds}
    text = table(results, rows, seeds, steps)
    os.makedirs(args.out, exist_ok=True)
    common.write_text(os.path.join(args.out, "study.md"), text + "\n")
    if args.docs:
        reporting.write_doc_section(os.path.join(args.docs, "experiment.md"), "pretext-study", text)
        if args.readme != "none":
            reporting.write_doc_section(args.readme, "pretext-study", text)
    print(text)
    return 0


if __name__ == "__main__":
    common.exit_main(main)
