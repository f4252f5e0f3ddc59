"""The pretext study: ordering and orientation accuracy on the validation
volume as one pretraining setting at a time moves away from the defaults.

    python train/pretext_study.py --seeds 0,1 --docs docs  # every row, 2 seeds: docs/results/ and docs/experiment.md
    python train/pretext_study.py --rows defaults,joint_heads --seeds 0,1,2
    python train/pretext_study.py --steps 3000 --device cuda
    python train/pretext_study.py --report-only --docs docs  # the table again from the committed result file

Each row is ``python train/pretrain.py`` with the row's flags added (printed
with the table, so any row reruns on its own), scored on the fixed puzzles of
the held-out volume.  That volume also chose the defaults and the step count,
so the score is a validation score, not a test score.  Rows finished earlier
are read back, not rerun.  Every run's result goes to --out/results.json (the
command, git revision, machine and seeds with it), the table to --out/study.md;
with --docs, the result file also goes to DOCS/results/ and the table into
DOCS/experiment.md between its pretext-study markers."""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import reporting  # noqa: E402
import pretrain  # noqa: E402
from common import UserError  # noqa: E402

RESULT_PREFIX = "pretext-study"

# (row name, what it changes, flags added to the defaults)
ROWS = [
    ("defaults", "the defaults (64 mm cubes, octant pooling, per-cube heads, summed loss, augmentation)", []),
    ("before", "every default moved back at once: 32 mm cubes, global pooling, joint heads, mean loss, no "
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
    p.add_argument("--docs", default="", help="also write the result file into DOCS/results/ and the table into "
                                              "DOCS/experiment.md (empty: no)")
    p.add_argument("--report-only", action="store_true", help="run nothing: the table from --results")
    p.add_argument("--results", default="", help="with --report-only: a result file; empty: the newest "
                                                 f"docs/results/{RESULT_PREFIX}-*.json")
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


def row_stats(result: dict) -> dict:
    """Per row: its flags and, per task, (mean %, sd %) over the seeds, or None where the task was not
    trained.  A result file recovered from a printed table carries these directly ("row_stats")."""
    if result.get("row_stats"):
        return {name: {"flags": r["flags"], **{k: None if r[k] is None else (r[k]["mean_pct"], r[k]["sd_pct"])
                                               for k in ("ordering", "orientation")}}
                for name, r in result["row_stats"].items()}
    stats = {}
    for name in dict.fromkeys(run["row"] for run in result["runs"]):
        runs = [run for run in result["runs"] if run["row"] == name]
        stats[name] = {"flags": runs[0]["flags"]}
        for task, acc, trained in (("ordering", "order_acc", "trained_order"),
                                   ("orientation", "orient_acc", "trained_orient")):
            m, sd = reporting.mean_sd([run[acc] for run in runs])
            stats[name][task] = (100 * m, 100 * sd) if runs[0][trained] else None
    return stats


def table(result: dict, source: str) -> str:
    """The study's table from its result file (``source``: the file's path as the docs name it)."""
    seeds = result["seeds"]

    def cell(stat, chance_pct):
        if stat is None:
            return "not trained"
        m, sd = stat
        if math.isnan(m):
            return "n/a"
        spread = f" ± {sd:.1f}" if len(seeds) > 1 else ""
        return f"{m:.1f}{spread}" + (" (chance)" if m < chance_pct + 2 else "")

    chance_order = 100 / result["num_permutations"]
    lines = [f"| row | what changes | ordering % (chance {chance_order:.1f}) | orientation % (chance 33.3) "
             "| flags added |", "|---|---|---|---|---|"]
    what = dict((r[0], r[1]) for r in ROWS)
    for name, st in row_stats(result).items():
        lines.append(f"| {name} | {what.get(name, '(a row no longer in the study)')} | "
                     f"{cell(st['ordering'], chance_order)} | {cell(st['orientation'], 100 / 3)} | "
                     f"`{' '.join(st['flags']) or '-'}` |")
    spread = "mean ± sd over seeds " + ",".join(map(str, seeds)) if len(seeds) > 1 else f"seed {seeds[0]}"
    head = (f"`{result['command']}`: {result['steps']} pretraining steps per run, accuracy on the fixed puzzles of "
            f"the validation volume ({spread}). Result file, with the revision and the machine: `{source}`."
            + (f" {result['note']}." if result.get("note") else ""))
    return head + "\n\n" + "\n".join(lines)


def report(path: str) -> str:
    """The table of a committed result file, as --report-only prints it."""
    with open(path) as fh:
        result = json.load(fh)
    return table(result, os.path.relpath(path, reporting.ROOT) if os.path.isabs(path) else path)


def main(argv=None) -> int:
    args = parse(argv)
    if args.report_only:
        path = args.results or reporting.newest_result(RESULT_PREFIX)
        text = report(path)
    else:
        rows, seeds, steps = check_args(args)
        record = reporting.run_record(shlex.join(["python", "train/pretext_study.py", *(argv or sys.argv[1:])]))
        runs = []
        for name in rows:
            for s in seeds:
                summary = run_row(name, s, steps, args)
                runs.append({"row": name, "seed": s, "flags": dict((r[0], r[2]) for r in ROWS)[name],
                             **{k: summary.get(k) for k in ("order_acc", "orient_acc", "trained_order",
                                                            "trained_orient", "num_permutations", "held_out")}})
        result = {**record, "steps": steps, "seeds": seeds, "num_permutations": runs[0]["num_permutations"],
                  "runs": runs}
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "results.json")
        common.write_json(path, result)
        if args.docs:
            path = os.path.join(args.docs, "results", f"{RESULT_PREFIX}-{reporting.result_stamp()}.json")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            common.write_json(path, result)
        text = report(path)
        common.write_text(os.path.join(args.out, "study.md"), text + "\n")
    if args.docs:
        reporting.write_doc_section(os.path.join(args.docs, "experiment.md"), "pretext-study", text)
    print(text)
    return 0


if __name__ == "__main__":
    common.exit_main(main)
