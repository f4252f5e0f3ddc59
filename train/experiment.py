"""Does Rubik's-cube pretraining pay off?  Scratch vs pretrained (full
puzzle) vs ordering-only pretraining (the paper's ablation), at several
label fractions and seeds, on the offline classification and segmentation
tasks; writes a markdown table and a plot.

    python train/experiment.py                          # CPU defaults, well under an hour on 2 cores
    python train/experiment.py --fractions 0.05,0.1,0.25,1 --seeds 0,1,2,3,4 --device cuda --steps 2000

Resumable: every finished run leaves its results.json and is skipped when
the experiment is started again; pretraining resumes from its checkpoints."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import finetune  # noqa: E402
import pretrain  # noqa: E402
from common import UserError  # noqa: E402

INITS = ("scratch", "rubik", "ordering")
METRIC = {"classification": ("macro_auc", "macro AUC"), "segmentation": ("mean_dice", "mean Dice")}


def parse(argv=None):
    p = common.ArgumentParser(prog="python train/experiment.py", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/experiment", help="output folder of every run")
    p.add_argument("--tasks", default="classification,segmentation", help=f"comma-separated, of {sorted(METRIC)}")
    p.add_argument("--fractions", default="0.25,1.0", help="label fractions, each in (0, 1]")
    p.add_argument("--seeds", default="0,1", help="fine-tuning seeds")
    p.add_argument("--pretrain-steps", default="2000", help="pretraining steps per encoder")
    p.add_argument("--pretrain-args", default="", help="extra flags for train/pretrain.py")
    p.add_argument("--steps", default="classification=300,segmentation=150", help="fine-tuning steps per task")
    p.add_argument("--finetune-args", default="", help="extra flags for train/finetune.py")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--docs", default="docs", help="where the table and the plot go")
    return p.parse_args(argv)


def check_args(args) -> tuple:
    """(tasks, fractions, seeds, steps per task) from the flags, or a UserError naming the flag."""
    tasks = [t for t in args.tasks.split(",") if t]
    for t in tasks:
        if t not in METRIC:
            raise UserError(f"--tasks: unknown task {t!r}; choose from {sorted(METRIC)}")
    if not tasks:
        raise UserError("--tasks: empty list")
    fractions = common.parse_list(args.fractions, float, "--fractions")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise UserError(f"--fractions: {bad} not in (0, 1]")
    seeds = common.parse_list(args.seeds, int, "--seeds")
    (args.pretrain_steps,) = common.parse_list(args.pretrain_steps, int, "--pretrain-steps")
    if args.pretrain_steps < 1:
        raise UserError(f"--pretrain-steps must be a positive integer, got {args.pretrain_steps}")
    steps = {}
    for item in (kv for kv in args.steps.split(",") if kv):
        task, _, n = item.partition("=")
        if task not in METRIC or not n.strip().isdigit() or int(n) < 1:
            raise UserError(f"--steps: {item!r} is not TASK=STEPS with a task of {sorted(METRIC)} and STEPS >= 1")
        steps[task] = int(n)
    missing = [t for t in tasks if t not in steps]
    if missing:
        raise UserError(f"--steps: no step count for {missing} (e.g. --steps {missing[0]}=150)")
    return tasks, fractions, seeds, steps


def _pretrain(name: str, out: str, args, extra: list) -> str:
    folder = os.path.join(out, name)
    if os.path.exists(os.path.join(folder, "summary.json")):
        return folder
    resume = ["--resume"] if common.Checkpoints(os.path.join(folder, "checkpoints")).latest() else []
    argv = ["--out", folder, "--steps", str(args.pretrain_steps), "--device", args.device, "--no-progress",
            *extra, *args.pretrain_args.split()] if not resume else ["--out", folder, "--no-progress", *resume]
    print(f"== pretraining {name}: {' '.join(argv)}", flush=True)
    if common.run_main(pretrain.main, argv) != 0:
        raise UserError(f"pretraining {name} failed (see above)")
    return folder


def _finetune(task, init, fraction, seed, pre, out, args, steps) -> dict:
    folder = os.path.join(out, task, f"{init}_frac{fraction:g}_seed{seed}")
    res = os.path.join(folder, "results.json")
    if not os.path.exists(res):
        argv = ["--task", task, "--pretrained", pre.get(init, "none"), "--label-fraction", str(fraction),
                "--seed", str(seed), "--out", folder, "--steps", str(steps), "--device", args.device,
                "--no-progress", "--no-tensorboard", *args.finetune_args.split()]
        if common.Checkpoints(os.path.join(folder, "checkpoints")).latest():
            argv.append("--resume")
        print(f"== {task} {init} fraction {fraction:g} seed {seed}", flush=True)
        if common.run_main(finetune.main, argv) != 0:
            raise UserError(f"fine-tuning {folder} failed (see above)")
    return json.load(open(res))


def _stats(values):
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, sd


def report(results: dict, tasks, fractions, seeds, docs: str, pretrain_steps: int) -> str:
    lines = ["| task | metric | label fraction | scratch | Rubik's cube | ordering only |", "|---|---|---|---|---|---|"]
    for task in tasks:
        key, label = METRIC[task]
        for f in fractions:
            cells = []
            for init in INITS:
                m, sd = _stats([results[(task, init, f, s)]["metrics"][key] for s in seeds])
                cells.append(f"{m:.3f} ± {sd:.3f}")
            lines.append(f"| {task} | {label} | {f:g} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    os.makedirs(docs, exist_ok=True)
    png = os.path.join(docs, "experiment.png")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            key, label = METRIC[task]
            for init in INITS:
                ms = [_stats([results[(task, init, f, s)]["metrics"][key] for s in seeds]) for f in fractions]
                ax.errorbar(fractions, [m for m, _ in ms], yerr=[sd for _, sd in ms], marker="o", capsize=3,
                            label={"scratch": "from scratch", "rubik": "Rubik's cube", "ordering": "ordering only"}[init])
            ax.set_xscale("log")
            ax.set_xlabel("label fraction")
            ax.set_ylabel(label)
            ax.set_title(task)
            ax.legend(fontsize=8)
        fig.suptitle(f"offline tasks, mean ± sd over seeds {list(seeds)}", fontsize=9)
        fig.tight_layout()
        from rubikops.data import atomic_path
        with atomic_path(png) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
    except ImportError:
        png = None
    md = os.path.join(docs, "experiment.md")
    text = (f"# Scratch vs Rubik's-cube pretraining on the offline tasks\n\nMade by `python train/experiment.py` "
            f"({pretrain_steps} pretraining steps per pretrained encoder; seeds {list(seeds)}; mean ± sd).\n\n"
            f"{table}\n\n" + ("![score vs label fraction](experiment.png)\n" if png else ""))
    from rubikops.data import atomic_path
    with atomic_path(md) as tmp, open(tmp, "w") as fh:
        fh.write(text)
    return table


def main(argv=None) -> int:
    args = parse(argv)
    tasks, fractions, seeds, steps = check_args(args)
    pre = {"rubik": os.path.join(_pretrain("pretrain_rubik", args.out, args, []), "encoder.pt"),
           "ordering": os.path.join(_pretrain("pretrain_ordering", args.out, args, ["--rotations", "none"]),
                                    "encoder.pt")}
    results = {}
    for task in tasks:
        for f in fractions:
            for init in INITS:
                for s in seeds:
                    results[(task, init, f, s)] = _finetune(task, init, f, s, pre, args.out, args, steps[task])
    print(report(results, tasks, fractions, seeds, args.docs, args.pretrain_steps))
    return 0


if __name__ == "__main__":
    common.exit_main(main)
