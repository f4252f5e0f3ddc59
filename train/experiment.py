"""Does Rubik's-cube pretraining pay off?  A fair downstream protocol: from
scratch vs fine-tuning a Rubik's-cube pretrained encoder (and, on request,
ordering-only pretraining, the paper's ablation) on the offline
classification and segmentation tasks, at several label fractions and seeds.

    python train/experiment.py                  # the protocol: 240 fine-tuning runs, about 6.5 h on 2 CPU cores
    python train/experiment.py --tasks classification --fractions 0.1,0.25 --lrs 1e-3,3e-3   # CPU: 40 runs, about 1 h
    python train/experiment.py --device cuda --pretrain-steps 3000 --pretrain-args "--batch-size 64"
    python train/experiment.py --report-only    # rebuild the table and plot from the finished runs

Every arm gets the same tuning budget: each learning rate of --lrs (the
encoder's; the new layers get the same multiple of it as finetune.py's
defaults) is run for every seed, the rate with the best mean VALIDATION metric
over the seeds is chosen per (task, arm, label fraction), and only the test
metrics at that rate are reported.  Validation data come from finetune.py's
--val-fraction split and never overlap training or test data.  Per row: mean
± sd of the test metric per arm, the difference pretrained - scratch, an exact
two-sided Wilcoxon signed-rank test over the seeds (pairs by seed), and
whether pretrained beats scratch by more than one sd of scratch.

Outputs: --out/results.json (every run's raw results, the chosen rates and the
rows), the table in DOCS/experiment.md and README.md between the markers
``<!-- protocol:start -->`` / ``<!-- protocol:end -->`` (the rest of both files
is kept), and the plot DOCS/experiment.png.  Resumable: every finished run
leaves its results.json and is skipped when the experiment is started again;
pretraining resumes from its checkpoints.

Time on the project's 2 CPU cores (shared with other work, OMP_NUM_THREADS=1):
the defaults pretrain one encoder (train/pretrain.py's default steps) and run 2 tasks x 2 arms x 4
fractions x 5 seeds x 3 rates = 240 fine-tuning runs.  Measured: one
classification run (300 steps, 120 cases) took 57 s and one segmentation run
(150 steps of 8 patches of 32^3, sliding-window evaluation of the validation
slab and the test hemisphere) 139 s, so the 240 runs take about
120 x 57 s + 120 x 139 s = 6.5 hours, plus the pretraining.  The cheaper
command above (classification only, 2 fractions x 2 rates x 5 seeds x 2 arms
= 40 runs) took 56 minutes: about 11 minutes of pretraining and 64 s
per fine-tuning run, timed from its log on 2026-12-01 on the same machine."""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import reporting  # noqa: E402
import finetune  # noqa: E402
import pretrain  # noqa: E402
from common import UserError  # noqa: E402
from reporting import mean_sd  # noqa: E402

PRETRAIN_STEPS = next(f.default for f in dataclasses.fields(pretrain.PretrainConfig) if f.name == "steps")
INITS = ("scratch", "rubik", "ordering")
ARM_NAME = {"scratch": "from scratch", "rubik": "Rubik's cube", "ordering": "ordering only"}
PRETRAIN_FLAGS = {"rubik": [], "ordering": ["--rotations", "none"]}
METRIC = {"classification": ("macro_auc", "macro AUC"), "segmentation": ("mean_dice", "mean Dice")}
# the new layers' learning rate is the encoder's times finetune.py's default ratio (3e-3 / 1e-3)
HEAD_LR_RATIO = finetune.FinetuneConfig.head_lr / finetune.FinetuneConfig.encoder_lr
SECTION = "protocol"


def parse(argv=None):
    p = common.ArgumentParser(prog="python train/experiment.py", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="runs/experiment", help="output folder of every run")
    p.add_argument("--tasks", default="classification,segmentation", help=f"comma-separated, of {sorted(METRIC)}")
    p.add_argument("--inits", default="scratch,rubik", help=f"arms, comma-separated, of {list(INITS)}; scratch and "
                                                            "at least one pretrained arm")
    p.add_argument("--fractions", default="0.05,0.1,0.25,1", help="label fractions, each in (0, 1]")
    p.add_argument("--seeds", default="0,1,2,3,4", help="fine-tuning seeds (the pairs of the Wilcoxon test)")
    p.add_argument("--lrs", default="3e-4,1e-3,3e-3",
                   help=f"learning-rate grid (finetune.py's --encoder-lr; --head-lr is {HEAD_LR_RATIO:g} times it), "
                        "the same for every arm; chosen on validation data")
    p.add_argument("--pretrain-steps", default=str(PRETRAIN_STEPS), help="pretraining steps per encoder; "
                   "train/pretrain.py's own default")
    p.add_argument("--pretrain-args", default="", help="extra flags for train/pretrain.py")
    p.add_argument("--steps", default="classification=300,segmentation=150", help="fine-tuning steps per task")
    p.add_argument("--finetune-args", default="", help="extra flags for train/finetune.py (e.g. --val-fraction)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--docs", default="docs", help="where experiment.md (its protocol section) and the plot go")
    p.add_argument("--readme", default="README.md", help="README whose protocol section gets the table; none: skip")
    p.add_argument("--report-only", action="store_true", help="train nothing: rebuild the table and plot from "
                                                             "the runs finished in --out")
    return p.parse_args(argv)


def check_args(args) -> tuple:
    """(tasks, inits, fractions, seeds, lrs, steps per task) from the flags, or a UserError naming the flag."""
    tasks = [t for t in args.tasks.split(",") if t]
    for t in tasks:
        if t not in METRIC:
            raise UserError(f"--tasks: unknown task {t!r}; choose from {sorted(METRIC)}")
    if not tasks:
        raise UserError("--tasks: empty list")
    inits = [i for i in args.inits.split(",") if i]
    unknown = [i for i in inits if i not in INITS]
    if unknown or "scratch" not in inits or len(set(inits)) < 2 or len(set(inits)) != len(inits):
        raise UserError(f"--inits: {args.inits!r} must name scratch and at least one of rubik, ordering, each once")
    fractions = common.parse_list(args.fractions, float, "--fractions")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise UserError(f"--fractions: {bad} not in (0, 1]")
    seeds = common.parse_list(args.seeds, int, "--seeds")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds: {args.seeds!r} names a seed twice")
    lrs = common.parse_list(args.lrs, float, "--lrs")
    if not all(0 < lr < math.inf for lr in lrs) or len(set(lrs)) != len(lrs):
        raise UserError(f"--lrs: {args.lrs!r} must be distinct positive learning rates")
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
    return tasks, inits, fractions, seeds, lrs, steps


# -- statistics ----------------------------------------------------------------------------------------
def _average_ranks(values: list) -> list:
    """Ranks 1..n of ``values``, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def wilcoxon_exact(differences) -> tuple:
    """Exact two-sided Wilcoxon signed-rank test of paired differences: (statistic, p, n).

    Zero differences are dropped (Wilcoxon's convention) and tied absolute
    differences get average ranks; the null distribution of T+ (the sum of the
    positive differences' ranks) is enumerated over all 2^n sign assignments of
    those ranks, so it is exact with ties too.  p = min(1, 2 min(P(T+ <= t),
    P(T+ >= t))); statistic = min(T+, T-) as scipy reports it; n = the nonzero
    differences.  With no nonzero difference: (0, 1, 0)."""
    d = [float(v) for v in differences]
    if any(math.isnan(v) for v in d):
        raise ValueError("wilcoxon_exact: NaN difference")
    d = [v for v in d if v != 0]
    n = len(d)
    if n == 0:
        return 0.0, 1.0, 0
    if n > 20:
        raise ValueError(f"wilcoxon_exact: {n} pairs; the enumeration of 2^n sign assignments is meant for n <= 20")
    ranks = _average_ranks([abs(v) for v in d])
    t_plus = sum(r for r, v in zip(ranks, d) if v > 0)
    total = sum(ranks)
    eps = 1e-9 * max(1.0, total)
    low = high = 0
    for signs in itertools.product((0, 1), repeat=n):
        t = sum(r for r, s in zip(ranks, signs) if s)
        low += t <= t_plus + eps
        high += t >= t_plus - eps
    p = min(1.0, 2 * min(low, high) / 2 ** n)
    return min(t_plus, total - t_plus), p, n


# -- runs ----------------------------------------------------------------------------------------------
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


def run_folder(out: str, task: str, init: str, fraction: float, lr: float, seed: int) -> str:
    return os.path.join(out, task, f"{init}_frac{fraction:g}_lr{lr:g}_seed{seed}")


def _finetune(task, init, fraction, lr, seed, pre, args, steps) -> None:
    folder = run_folder(args.out, task, init, fraction, lr, seed)
    if os.path.exists(os.path.join(folder, "results.json")):
        return
    argv = ["--task", task, "--pretrained", pre.get(init, "none"), "--label-fraction", str(fraction),
            "--encoder-lr", repr(lr), "--head-lr", repr(lr * HEAD_LR_RATIO), "--seed", str(seed), "--out", folder,
            "--steps", str(steps), "--device", args.device, "--no-progress", "--no-tensorboard",
            *args.finetune_args.split()]
    if common.Checkpoints(os.path.join(folder, "checkpoints")).latest():
        argv = ["--out", folder, "--resume", "--no-progress"]
    print(f"== {task} {init} fraction {fraction:g} lr {lr:g} seed {seed}", flush=True)
    if common.run_main(finetune.main, argv) != 0:
        raise UserError(f"fine-tuning {folder} failed (see above)")


def collect(out: str, tasks, inits, fractions, lrs, seeds) -> list:
    """Every finished run's record: its key, validation and test metric, and its raw results.json."""
    runs = []
    for task, init, f, lr, s in itertools.product(tasks, inits, fractions, lrs, seeds):
        path = os.path.join(run_folder(out, task, init, f, lr, s), "results.json")
        if not os.path.exists(path):
            continue
        with open(path) as fh:
            res = json.load(fh)
        key = METRIC[task][0]
        val = (res.get("val_metrics") or {}).get(key)
        runs.append({"task": task, "init": init, "fraction": f, "lr": lr, "seed": s, "folder": os.path.dirname(path),
                     "val": val, "test": res["metrics"][key], "results": res})
    return runs


def choose_lr(runs: list, task: str, init: str, fraction: float, lrs) -> tuple:
    """(learning rate, its mean validation metric) with the best mean VALIDATION metric over
    the seeds among ``runs`` of (task, init, fraction); ties go to the first rate in ``lrs``.
    Test metrics are never looked at.  (None, nan) when no run has a validation metric."""
    best, best_val = None, -math.inf
    for lr in lrs:
        m, _ = mean_sd([r["val"] for r in runs if (r["task"], r["init"], r["fraction"], r["lr"]) ==
                        (task, init, fraction, lr)])
        if not math.isnan(m) and m > best_val:
            best, best_val = lr, m
    return best, (best_val if best is not None else math.nan)


def compare(runs: list, tasks, inits, fractions, lrs, seeds) -> list:
    """One row per (task, label fraction, pretrained arm) against scratch, each arm at its chosen rate."""
    rows = []
    for task in tasks:
        for f in fractions:
            chosen = {}
            for init in inits:
                lr, val = choose_lr(runs, task, init, f, lrs)
                tests = {r["seed"]: r["test"] for r in runs
                         if (r["task"], r["init"], r["fraction"], r["lr"]) == (task, init, f, lr)}
                chosen[init] = {"lr": lr, "val": val, "test": tests}
            base = chosen["scratch"]
            for init in inits:
                if init == "scratch":
                    continue
                arm = chosen[init]
                pairs = [s for s in seeds if s in base["test"] and s in arm["test"]
                         and not math.isnan(base["test"][s]) and not math.isnan(arm["test"][s])]
                m0, sd0 = mean_sd([base["test"][s] for s in pairs])
                m1, sd1 = mean_sd([arm["test"][s] for s in pairs])
                stat, p, n = wilcoxon_exact([arm["test"][s] - base["test"][s] for s in pairs]) if pairs else \
                    (math.nan, math.nan, 0)
                rows.append({"task": task, "fraction": f, "arm": init, "seeds": pairs,
                             "scratch": {"lr": base["lr"], "val": base["val"], "mean": m0, "sd": sd0},
                             "pretrained": {"lr": arm["lr"], "val": arm["val"], "mean": m1, "sd": sd1},
                             "difference": m1 - m0, "wilcoxon": {"statistic": stat, "p": p, "n": n},
                             "beats_by_one_sd": bool(pairs) and m1 - m0 > sd0})
    return rows


def _fmt(x: float, digits: int = 3, sign: str = "") -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:{sign}.{digits}f}"


def _cell(arm: dict) -> str:
    """mean ± sd (chosen learning rate) of one arm of a row."""
    return f"{_fmt(arm['mean'])} ± {_fmt(arm['sd'])} ({'n/a' if arm['lr'] is None else format(arm['lr'], 'g')})"


def table(rows: list, command: str, n_runs: int, n_expected: int, seeds) -> str:
    lines = [f"Made by `{command}` (mean ± sd of the test metric over seeds {list(seeds)}; each arm at the "
             "learning rate (LR) with its best mean validation metric; Δ = pretrained − scratch; p: exact "
             "two-sided Wilcoxon signed-rank test over seeds, n = nonzero pairs).", ""]
    if n_runs < n_expected:
        lines += [f"**Incomplete: {n_runs} of {n_expected} runs finished.**", ""]
    lines += ["| task | metric | label fraction | scratch (LR) | pretrained arm | pretrained (LR) | Δ | Wilcoxon p (n) "
              "| beats scratch by > 1 sd? |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        a, b, w = r["scratch"], r["pretrained"], r["wilcoxon"]
        lines.append(f"| {r['task']} | {METRIC[r['task']][1]} | {r['fraction']:g} | {_cell(a)} | {ARM_NAME[r['arm']]} | "
                     f"{_cell(b)} | {_fmt(r['difference'], 3, '+')} | {_fmt(w['p'])} ({w['n']}) | "
                     f"{'**yes**' if r['beats_by_one_sd'] else 'no'} |")
    low = [r for r in rows if r["fraction"] <= 0.25]
    tasks = sorted({r["task"] for r in rows})
    for arm in sorted({r["arm"] for r in rows}, key=INITS.index):
        mine = [r for r in low if r["arm"] == arm]
        won = [r for r in mine if r["beats_by_one_sd"]]
        met = bool(mine) and all(any(r["task"] == t for r in won) for t in tasks) and len(won) == len(mine)
        lines += ["", f"Target (pretrained beats scratch by more than one sd of scratch at every label fraction "
                      f"<= 0.25, on every task here: {', '.join(tasks)}): **{ARM_NAME[arm]}: "
                      f"{'met' if met else 'not met'}** ({len(won)} of {len(mine)} such rows)."]
    return "\n".join(lines)


def plot(rows: list, tasks, fractions, path: str, seeds) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in rows if r["task"] == task]
        arms = [("scratch", [(r["fraction"], r["scratch"]) for r in mine if r["arm"] == mine[0]["arm"]])]
        arms += [(a, [(r["fraction"], r["pretrained"]) for r in mine if r["arm"] == a])
                 for a in dict.fromkeys(r["arm"] for r in mine)]
        for arm, points in arms:
            ax.errorbar([f for f, _ in points], [p["mean"] for _, p in points], yerr=[p["sd"] for _, p in points],
                        marker="o", capsize=3, label=ARM_NAME[arm])
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.set_xlabel("label fraction")
        ax.set_ylabel(f"test {METRIC[task][1]}")
        ax.set_title(task)
        ax.legend(fontsize=8)
    fig.suptitle(f"offline tasks: mean ± sd over seeds {list(seeds)}, LR chosen on validation", fontsize=9)
    fig.tight_layout()
    from rubikops.data import atomic_path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return True


def report(args, argv, tasks, inits, fractions, seeds, lrs) -> str:
    runs = collect(args.out, tasks, inits, fractions, lrs, seeds)
    no_val = [r["folder"] for r in runs if r["val"] is None]
    if no_val:
        raise UserError(f"{no_val[0]} (and {len(no_val) - 1} more) has no validation metric: the LR choice needs "
                        "finetune.py's validation split (--val-fraction > 0 in --finetune-args)")
    rows = compare(runs, tasks, inits, fractions, lrs, seeds)
    command = shlex.join(["python", "train/experiment.py", *[a for a in argv if a != "--report-only"]])
    n_expected = len(tasks) * len(inits) * len(fractions) * len(lrs) * len(seeds)
    text = table(rows, command, len(runs), n_expected, seeds)
    os.makedirs(args.out, exist_ok=True)
    common.write_json(os.path.join(args.out, "results.json"),
                      {"command": command, "tasks": tasks, "inits": inits, "fractions": fractions, "seeds": seeds,
                       "lrs": lrs, "head_lr_ratio": HEAD_LR_RATIO, "rows": rows, "runs": runs})
    os.makedirs(args.docs, exist_ok=True)
    if plot(rows, tasks, fractions, os.path.join(args.docs, "experiment.png"), seeds):
        text += "\n\n![test score vs label fraction, mean ± sd over seeds](experiment.png)"
    reporting.write_doc_section(os.path.join(args.docs, "experiment.md"), SECTION, text)
    if args.readme != "none":
        png = os.path.relpath(os.path.join(args.docs, "experiment.png"), os.path.dirname(os.path.abspath(args.readme)))
        reporting.write_doc_section(args.readme, SECTION, text.replace("](experiment.png)", f"]({png})"))
    return text


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    tasks, inits, fractions, seeds, lrs, steps = check_args(args)
    if not args.report_only:
        pre = {init: os.path.join(_pretrain(f"pretrain_{init}", args.out, args, PRETRAIN_FLAGS[init]), "encoder.pt")
               for init in inits if init != "scratch"}
        for task, f, init, lr, s in itertools.product(tasks, fractions, inits, lrs, seeds):
            _finetune(task, init, f, lr, s, pre, args, steps[task])
    print(report(args, argv, tasks, inits, fractions, seeds, lrs))
    return 0


if __name__ == "__main__":
    common.exit_main(main)
