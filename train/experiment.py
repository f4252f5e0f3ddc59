"""Does pretraining pay off?  A fair downstream protocol: from scratch
against fine-tuning each pretrained arm (--arms) on the offline
classification and segmentation tasks, at several label fractions and seeds.

    python train/experiment.py --results docs/results/experiment-YYYYMMDDTHHMMSSZ.json --docs docs
    python train/experiment.py --arms scratch,rubik --tasks classification --fractions 0.1,0.25 --lrs 1e-3,3e-3
    python train/experiment.py --arms scratch,rubik,rubik_small --pretrain-scale matched --device cuda
    python train/experiment.py --report-only --results docs/results/experiment-YYYYMMDDTHHMMSSZ.json --docs docs
    python train/experiment.py --unlabelled scans/ --images "img/*.nii.gz" --labels "lab/*.nii.gz" --seeds 0-4

Arms (ARMS: name -> label, train/pretrain.py flags): scratch (no
pretraining), rubik (the defaults: 16^3 cubes at 4 mm, a 2x2x2 crop of 136
mm), ordering (rubik without turns, the paper's ablation), genesis (Models
Genesis restoration, encoder and decoder), masked (masked-volume modelling,
encoder and decoder), rubik_small (the shortcut test: 16^3 cubes at 2 mm, a
68 mm crop that lands anywhere in the head, so a cube cannot be placed by
recognising which octant of a canonical head it is; the same voxels and
compute per cube as rubik, so only the crop's physical size changes.  The
pretext study measured this scale at chance on held-out puzzles after 300
steps, docs/experiment.md row cubes_32mm).  --pretrain-scale matched pretrains
rubik, ordering, genesis and masked at the segmentation task's scale instead:
2 mm voxels (the atlas's) and 32^3 cubes or crops (finetune.py's --patch),
the gap scaled to the same millimetres; rubik_small keeps its own scale.

Every arm gets the same tuning budget: each learning rate of --lrs (the
encoder's; the new layers get the same multiple of it as finetune.py's
defaults, and so does a decoder loaded from a dense pretraining, genesis or
masked, with --pretrained-decoder-lr head, the default) is run for every
seed, the rate with the best mean VALIDATION metric over the seeds is
chosen per (task, arm, label fraction), and only the test
metrics at that rate are reported.  A validation metric that ties across the
rates (nothing to choose on) is an error naming task, arm and fraction.
Validation data come from finetune.py's --val-fraction split (classification:
held-out cases; segmentation: 4 axial slabs spread over the training
hemisphere, which hold every lobe) and never overlap training or test data.
Per (task, label fraction) the table gives mean ± sd of the test metric per
arm, which arm wins, the best pretrained arm's difference to scratch with an
exact two-sided Wilcoxon signed-rank test over the seeds (pairs by seed), and
which pretrained arms beat scratch by more than one sd of scratch.

Your data (--unlabelled, --images, --labels; train/experiment_data.py):
each pretrained arm pretrains on the --unlabelled scans (train/pretrain.py
--data, any format it reads), then every arm fine-tunes on your labelled
cases for segmentation.  The cases are split once for every run: the test
cases (--test-cases, default 25%), the validation cases that choose the
learning rate (--val-cases, default 20% of the rest, at least one) and the
training cases, of which a label fraction keeps the first in file order (one
training case: its axial slices); fewer than 3 cases, or a test case among
the --unlabelled scans, is refused.  The split and the files are recorded in
OUT/data.json and in the results file; the documents get sections and a plot
of their own (protocol-own-data, experiment-own-data.png).

Outputs: every run in --out (resumable: a finished run is skipped, pretraining
resumes from its checkpoints); the raw per-run results (task, metric,
fraction, arm, seed, lr, val, test, with the command, git revision, machine
and each arm's pretraining) in --results (default
OUT/experiment-YYYYMMDDTHHMMSSZ.json, a UTC time stamp), from which
``--report-only --results FILE`` rebuilds every table on a fresh
clone.  Documents only when asked: --docs DIR writes DIR/experiment.md's
section between ``<!-- protocol:start -->`` and ``<!-- protocol:end -->`` and
DIR/experiment.png; --readme FILE writes the verdict between
``<!-- protocol-verdict:start/end -->``; the rest of each file is kept, and
every file written is named.  A --pretrain-scale matched protocol has its
own markers and plot (protocol-matched, protocol-verdict-matched,
experiment-matched.png), so both scales can stand side by side.
:func:`render` gives those blocks from a results file.

Time on the project's 2-core AMD EPYC VM, one thread (OMP_NUM_THREADS=1),
measured with /usr/bin/time: one segmentation run at the defaults (from
scratch, 150 steps of 8 patches of 32^3, then sliding-window evaluation of the
whole training hemisphere for the validation slices and of the test
hemisphere) takes 76 s of CPU time, about 77 s of wall time on an idle
machine (191 s while other jobs kept the load near 9); one classification run
at the defaults (300 steps, 120 cases) 55 s of CPU time (134 s of wall time at
the same load).  The defaults run 2 tasks x 5 arms x 4 label fractions x 5
seeds x 3 rates = 600 fine-tuning runs, one after another: 300 x 77 s + 300 x
55 s = 11 hours on an idle machine, plus 4 pretrainings (rubik at
pretrain.py's defaults: 175 s on a 2-core Intel VM; genesis and masked are
meant to take at most 6 minutes each), so about 11.5 hours, and about 2.5
times that on a machine shared as above.  --pretrain-scale matched cuts cubes
of 8 times the voxels: over 20 steps of rubik it made 2.2 puzzles/s against
10.1 at the default scale (same machine, same load), so expect about 4.6
times the pretraining time, some 15 minutes per arm."""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import shlex
import sys
from dataclasses import dataclass
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import experiment_data  # noqa: E402
import reporting  # noqa: E402
import finetune  # noqa: E402
import pretrain  # noqa: E402
from common import UserError  # noqa: E402
from protocol_stats import METRIC, compare  # noqa: E402


@dataclass(frozen=True)
class Arm:
    label: str                       # the name in tables and plots
    pretrain: Optional[tuple]        # train/pretrain.py flags; None: no pretraining (from scratch)
    matched: tuple = ()              # flags --pretrain-scale matched adds
    decoder: bool = False            # the pretraining trains the segmentation decoder too


_DEFAULTS = pretrain.PretrainConfig()
DOWNSTREAM_SPACING = 2.0  # mm: the offline atlas task's grid (MNI152 at 2 mm), where segmentation runs
DOWNSTREAM_PATCH = tuple(finetune.FinetuneConfig.patch)  # finetune.py's training patch, 32^3
# the gap kept in millimetres: (0, 2) voxels at 4 mm are (0, 4) at 2 mm
_MATCHED_GAP = ",".join(str(round(g * _DEFAULTS.spacing / DOWNSTREAM_SPACING)) for g in _DEFAULTS.gap)
_DOWNSTREAM_VOXELS = ("--spacing", f"{DOWNSTREAM_SPACING:g}")
MATCHED_DENSE = _DOWNSTREAM_VOXELS + ("--cube-size", ",".join(map(str, DOWNSTREAM_PATCH)))  # the crop
MATCHED_GRID = MATCHED_DENSE + ("--gap", _MATCHED_GAP)  # each of the 2x2x2 cubes

ARMS = {
    "scratch": Arm("from scratch", None),
    "rubik": Arm("Rubik's cube", (), MATCHED_GRID),
    "ordering": Arm("ordering only", ("--rotations", "none"), MATCHED_GRID),
    "genesis": Arm("Models Genesis", ("--task", "genesis"), MATCHED_DENSE, decoder=True),
    "masked": Arm("masked volume", ("--task", "masked"), MATCHED_DENSE, decoder=True),
    # the shortcut test: the default 16^3 cubes at 2 mm (32 mm) in a 68 mm crop placed anywhere in the head
    "rubik_small": Arm("Rubik's cube, small crops", _DOWNSTREAM_VOXELS + ("--gap", _MATCHED_GAP)),
}
SCALES = ("default", "matched")
# the new layers' learning rate is the encoder's times finetune.py's default ratio (3e-3 / 1e-3)
HEAD_LR_RATIO = finetune.FinetuneConfig.head_lr / finetune.FinetuneConfig.encoder_lr
# what a pretrained decoder's learning rate is in the protocol (finetune.py --pretrained-decoder-lr)
DECODER_RATES = ("head", "encoder")
SECTION, VERDICT_SECTION = "protocol", "protocol-verdict"  # + "-matched" for --pretrain-scale matched
# finetune.py flags every run gets from the protocol's own flags: refused in --finetune-args
PROTOCOL_FINETUNE_FLAGS = ("--task", "--pretrained", "--label-fraction", "--encoder-lr", "--head-lr",
                           "--pretrained-decoder-lr", "--seed", "--out", "--steps")
# flags that say where results and documents go, not what was run: left out of the recorded command
OUTPUT_FLAGS = ("--report-only", "--results", "--docs", "--readme")


def parse(argv=None):
    p = common.ArgumentParser(prog="python train/experiment.py", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="", help="output folder of every run (empty: runs/experiment; with your data "
                                             f"runs/experiment{experiment_data.SUFFIX})")
    p.add_argument("--tasks", default="", help=f"comma-separated, of {sorted(METRIC)} (empty: both; with "
                                                "--images/--labels: segmentation on your data)")
    p.add_argument("--arms", "--inits", dest="arms", default="scratch,rubik,genesis,masked,rubik_small",
                   help=f"comma-separated, of {list(ARMS)}: scratch and at least one pretrained arm")
    p.add_argument("--pretrain-scale", default="default", choices=SCALES,
                   help="default: each arm at train/pretrain.py's settings (4 mm); matched: at the segmentation "
                        f"task's scale ({DOWNSTREAM_SPACING:g} mm, {'x'.join(map(str, DOWNSTREAM_PATCH))} cubes)")
    p.add_argument("--fractions", default="0.05,0.1,0.25,1", help="label fractions, each in (0, 1]")
    p.add_argument("--seeds", default="0,1,2,3,4", help="fine-tuning seeds, ranges too (0-4; the pairs of the "
                                                        "Wilcoxon test)")
    # segmentation: validation chose the top of 1e-3, 3e-3 for every dense arm and scratch at every fraction, and
    # 1e-2 at 0.05 (and masked at 0.25) once the grid had it; classification chose 1e-3, the bottom, in 4 of 12
    # cells (docs/results/experiment-20261204T234330Z.json): both ends stay in the grid
    p.add_argument("--lrs", default="3e-4,1e-3,3e-3,1e-2",
                   help=f"learning-rate grid (finetune.py's --encoder-lr; --head-lr is {HEAD_LR_RATIO:g} times it), "
                        "the same for every arm; chosen on validation data")
    p.add_argument("--pretrained-decoder-lr", default="head", choices=DECODER_RATES,
                   help="segmentation: the rate of a decoder loaded from a dense pretraining (genesis, masked): "
                        "head, the new layers' rate (the rate scratch's decoder learns at); encoder, the "
                        "encoder's (finetune.py's own default)")
    p.add_argument("--pretrain-steps", default="", help="pretraining steps per encoder (empty: train/pretrain.py's "
                                                        "own default)")
    p.add_argument("--pretrain-args", default="", help="extra flags for train/pretrain.py")
    p.add_argument("--steps", default="classification=300,segmentation=150", help="fine-tuning steps per task")
    p.add_argument("--finetune-args", default="", help="extra flags for train/finetune.py (e.g. --val-fraction)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--results", default="", help="the raw per-run results file: written after the runs "
                                                  "(empty: OUT/experiment-YYYYMMDDTHHMMSSZ.json, a UTC time "
                                                  "stamp); with --report-only, read")
    p.add_argument("--docs", default="", metavar="DIR", help="write DIR/experiment.md (its protocol section) and "
                                                             "DIR/experiment.png (empty: no documents)")
    p.add_argument("--readme", default="", metavar="FILE", help="write the verdict into this file's protocol-"
                   "verdict section (empty: none; this README shows train/docs_report.py's verdict instead)")
    p.add_argument("--report-only", action="store_true", help="train nothing: rebuild the table and plot from "
                                                             "--results, or from the runs finished in --out")
    experiment_data.add_flags(p)
    return p.parse_args(argv)


def check_args(args) -> tuple:
    """(tasks, arms, fractions, seeds, lrs, steps per task) from the flags, or a UserError naming the flag."""
    own = experiment_data.given(args)
    args.out = args.out or f"runs/experiment{experiment_data.SUFFIX if own else ''}"
    tasks = [t for t in (args.tasks or ("segmentation" if own else ",".join(METRIC))).split(",") if t]
    if own and (tasks != ["segmentation"] or args.pretrain_scale != "default"):
        raise UserError("--images/--labels: your data is one segmentation task at its own scale; drop --tasks "
                        "and --pretrain-scale (the pretraining's scale: --pretrain-args, e.g. --spacing)")
    for t in tasks:
        if t not in METRIC:
            raise UserError(f"--tasks: unknown task {t!r}; choose from {sorted(METRIC)}")
    if not tasks:
        raise UserError("--tasks: empty list")
    arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown or "scratch" not in arms or len(set(arms)) < 2 or len(set(arms)) != len(arms):
        raise UserError(f"--arms: {args.arms!r} must name scratch and at least one of "
                        f"{', '.join(a for a in ARMS if a != 'scratch')}, each once")
    fractions = common.parse_list(args.fractions, float, "--fractions")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise UserError(f"--fractions: {bad} not in (0, 1]")
    seeds = experiment_data.parse_seeds(args.seeds)
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds: {args.seeds!r} names a seed twice")
    lrs = common.parse_list(args.lrs, float, "--lrs")
    if not all(0 < lr < math.inf for lr in lrs) or len(set(lrs)) != len(lrs):
        raise UserError(f"--lrs: {args.lrs!r} must be distinct positive learning rates")
    owned = sorted({a.split("=", 1)[0] for a in args.finetune_args.split()} & set(PROTOCOL_FINETUNE_FLAGS))
    if owned:
        raise UserError(f"--finetune-args: {', '.join(owned)} is set by the protocol itself (--lrs, --seeds, "
                        "--fractions, --steps, --pretrained-decoder-lr); drop it from --finetune-args")
    if args.pretrain_steps:
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
    return tasks, arms, fractions, seeds, lrs, steps


# -- runs ----------------------------------------------------------------------------------------------
def pretrain_flags(arm: str, scale: str) -> list:
    """train/pretrain.py flags of a pretrained arm at --pretrain-scale ``scale``."""
    a = ARMS[arm]
    return [*a.pretrain, *(a.matched if scale == "matched" else ())]


def pretrain_run_flags(arm: str, args) -> list:
    """What an arm's pretraining runs with: --pretrain-steps, the arm's flags, then --pretrain-args."""
    steps = ["--steps", str(args.pretrain_steps)] if args.pretrain_steps else []
    return [*steps, *pretrain_flags(arm, args.pretrain_scale), *experiment_data.pretrain_flags(args.own),
            *args.pretrain_args.split()]


def arm_folder(arm: str, scale: str) -> str:
    """An arm's name in folder names: a matched-scale encoder is another encoder."""
    return arm if scale == "default" or not ARMS[arm].matched else f"{arm}_matched"


def check_pretext_tasks(arms, scale: str) -> None:
    """A UserError before any run when an arm's pretext task is not one train/pretrain.py has."""
    for arm in arms:
        if ARMS[arm].pretrain is None:
            continue
        cfg, _ = pretrain.parse(pretrain_flags(arm, scale))
        if cfg.task not in pretrain.TASKS:
            raise UserError(f"--arms: {arm} pretrains with train/pretrain.py --task {cfg.task}, which this "
                            f"installation does not have (tasks: {', '.join(pretrain.TASKS)})")


def _pretrain(arm: str, args) -> str:
    folder = os.path.join(args.out, f"pretrain_{arm_folder(arm, args.pretrain_scale)}")
    if os.path.exists(os.path.join(folder, "summary.json")):
        return folder
    if common.Checkpoints(os.path.join(folder, "checkpoints")).latest():
        argv = ["--out", folder, "--no-progress", "--resume"]
    else:
        argv = ["--out", folder, "--device", args.device, "--no-progress", *pretrain_run_flags(arm, args)]
    print(f"== pretraining {arm}: {' '.join(argv)}", flush=True)
    if common.run_main(pretrain.main, argv) != 0:
        raise UserError(f"pretraining {arm} failed (see above)")
    return folder


def run_folder(out: str, task: str, arm: str, fraction: float, lr: float, seed: int) -> str:
    return os.path.join(out, task, f"{arm}_frac{fraction:g}_lr{lr:g}_seed{seed}")


def pretrained_decoder_lr(task: str, lr: float, args) -> float:
    """finetune.py's --pretrained-decoder-lr at grid rate ``lr``: with head, the new layers' rate (every
    arm's decoder learns at it); 0, finetune.py's default (the encoder's rate), for encoder or classification."""
    return lr * HEAD_LR_RATIO if task == "segmentation" and args.pretrained_decoder_lr == "head" else 0.0


def check_decoder_rate(folder: str, task: str, lr: float, args) -> None:
    """A UserError when a dense arm's run in ``folder`` trained its decoder at another rate than the flag gives
    (made before it, or with the other choice): its row would be reported under the wrong rate."""
    made = float(common.read_config_file(os.path.join(folder, "config.yaml")).get("pretrained_decoder_lr") or 0.0)
    if not math.isclose(made, pretrained_decoder_lr(task, lr, args)):
        other = "encoder" if args.pretrained_decoder_lr == "head" else "head"
        raise UserError(f"{folder}: its pretrained decoder learned at {made:g} (finetune.py "
                        f"--pretrained-decoder-lr; 0: the encoder's rate), not what --pretrained-decoder-lr "
                        f"{args.pretrained_decoder_lr} gives; pass --pretrained-decoder-lr {other} or use another --out")


def _finetune(task, arm, fraction, lr, seed, pre, args, steps) -> None:
    folder = run_folder(args.out, task, arm_folder(arm, args.pretrain_scale), fraction, lr, seed)
    if os.path.exists(os.path.join(folder, "results.json")):
        return
    argv = ["--task", task, "--pretrained", pre.get(arm, "none"), "--label-fraction", str(fraction),
            "--encoder-lr", repr(lr), "--head-lr", repr(lr * HEAD_LR_RATIO),
            "--pretrained-decoder-lr", repr(pretrained_decoder_lr(task, lr, args)), "--seed", str(seed),
            "--out", folder,
            "--steps", str(steps), "--device", args.device, "--no-progress", "--no-tensorboard",
            *experiment_data.finetune_flags(args.own), *args.finetune_args.split()]
    if common.Checkpoints(os.path.join(folder, "checkpoints")).latest():
        if ARMS[arm].decoder:
            check_decoder_rate(folder, task, lr, args)
        argv = ["--out", folder, "--resume", "--no-progress"]
    print(f"== {task} {arm} fraction {fraction:g} lr {lr:g} seed {seed}", flush=True)
    if common.run_main(finetune.main, argv) != 0:
        raise UserError(f"fine-tuning {folder} failed (see above)")


def collect(args, tasks, arms, fractions, lrs, seeds) -> list:
    """Every finished run in --out as a raw result row: task, metric, fraction, arm, seed, lr, val, test."""
    rows, no_val = [], []
    for task, arm, f, lr, s in itertools.product(tasks, arms, fractions, lrs, seeds):
        path = os.path.join(run_folder(args.out, task, arm_folder(arm, args.pretrain_scale), f, lr, s),
                            "results.json")
        if not os.path.exists(path):
            continue
        with open(path) as fh:
            res = json.load(fh)
        if ARMS[arm].decoder:
            check_decoder_rate(os.path.dirname(path), task, lr, args)
        key = METRIC[task][0]
        val = (res.get("val_metrics") or {}).get(key)
        if val is None:
            no_val.append(os.path.dirname(path))
        rows.append({"task": task, "metric": key, "fraction": f, "arm": arm, "seed": s, "lr": lr, "val": val,
                     "test": res["metrics"][key]})
    if no_val:
        raise UserError(f"{no_val[0]} (and {len(no_val) - 1} more) has no validation metric: the LR choice needs "
                        "finetune.py's validation split (--val-fraction > 0 in --finetune-args)")
    return rows


def pretraining_record(args, arms) -> dict:
    """Per pretrained arm: its train/pretrain.py flags and the numbers of its summary.json (the held-out
    pretext scores), or None where it has not finished."""
    out = {}
    for arm in arms:
        if ARMS[arm].pretrain is None:
            continue
        path = os.path.join(args.out, f"pretrain_{arm_folder(arm, args.pretrain_scale)}", "summary.json")
        summary = json.load(open(path)) if os.path.exists(path) else None
        out[arm] = {"flags": shlex.join(pretrain_run_flags(arm, args)),
                    "summary": None if summary is None else {
                        k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}
    return out


def recorded_command(argv) -> str:
    """The command that made the runs: argv without the flags that only say where outputs go."""
    kept, skip = [], False
    for a in argv:
        name = a.split("=", 1)[0]
        if skip:
            skip = False
        elif name in OUTPUT_FLAGS:
            skip = "=" not in a and name != "--report-only"
        else:
            kept.append(a)
    return shlex.join(["python", "train/experiment.py", *kept])


def results_document(args, argv, tasks, arms, fractions, seeds, lrs, steps, rows) -> dict:
    if not any(a.split("=", 1)[0] == "--pretrained-decoder-lr" for a in argv):
        argv = [*argv, "--pretrained-decoder-lr", args.pretrained_decoder_lr]  # the command reruns as made
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"command": recorded_command(argv), "git_revision": reporting.git_revision(),
            "machine": reporting.machine(), "date": now.strftime("%Y-%m-%d"), "time": now.strftime("%H:%M:%SZ"),
            "tasks": tasks, "arms": arms, "fractions": fractions, "seeds": seeds, "lrs": lrs,
            "head_lr_ratio": HEAD_LR_RATIO, "pretrained_decoder_lr": args.pretrained_decoder_lr,
            "steps": steps, "pretrain_scale": args.pretrain_scale,
            "pretraining": pretraining_record(args, arms), "rows": rows} | ({"data": args.own} if args.own else {})


def read_results(path: str) -> dict:
    """A results file written by this script, or a UserError naming it."""
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UserError(f"--results: {path}: not a readable results file ({type(exc).__name__})") from None
    need = ("command", "tasks", "arms", "fractions", "seeds", "lrs", "rows")
    missing = [k for k in need if not isinstance(doc, dict) or k not in doc]
    if missing:
        raise UserError(f"--results: {path}: missing {missing}; expected the file train/experiment.py writes")
    row_keys = {"task", "metric", "fraction", "arm", "seed", "lr", "val", "test"}
    bad = [i for i, r in enumerate(doc["rows"]) if not isinstance(r, dict) or not row_keys <= set(r)]
    if bad:
        raise UserError(f"--results: {path}: row {bad[0]} lacks one of {sorted(row_keys)}")
    unknown = sorted({str(r["arm"]) for r in doc["rows"]} - set(ARMS)) + sorted(
        {str(r["task"]) for r in doc["rows"]} - set(METRIC))
    if unknown:
        raise UserError(f"--results: {path}: unknown arm(s) or task(s) {unknown}")
    experiment_data.check_record(doc, path)
    return doc


# -- the report -----------------------------------------------------------------------------------------
_fmt = reporting.fmt


def _label(arm) -> str:
    return "n/a" if arm is None else ARMS[arm].label


def decoder_rate_sentence(doc: dict) -> str:
    """How fast a decoder pretrained by a dense arm learned (files written before the flag existed have no
    ``pretrained_decoder_lr``: finetune.py's default then, the encoder's rate)."""
    ratio = f"{doc.get('head_lr_ratio', HEAD_LR_RATIO):g}"
    if doc.get("pretrained_decoder_lr", "encoder") == "head":
        return (f"A decoder pretrained by a dense arm learned at the new layers' rate ({ratio} times the grid's), "
                "as scratch's decoder does, so each layer learned at the same multiple of the grid's rate in every "
                "arm (`--pretrained-decoder-lr head`).")
    return (f"A decoder pretrained by a dense arm learned at the encoder's rate (the grid's), 1/{ratio} of the "
            "rate scratch's decoder learned at (`--pretrained-decoder-lr encoder`).")


def table(rows: list, doc: dict, n_runs: int) -> str:
    arms, seeds = doc["arms"], doc["seeds"]
    n_expected = len(doc["tasks"]) * len(arms) * len(doc["fractions"]) * len(doc["lrs"]) * len(seeds)
    lines = [f"Made by `{doc['command']}` (from the rows of its results file; mean ± sd of the "
             f"test metric over seeds {list(seeds)}, each arm at the learning rate with its best mean validation "
             "metric; **bold**: more than one sd of scratch above scratch; Δ and p: the best pretrained arm "
             "against scratch, exact two-sided Wilcoxon signed-rank test over seeds, n = nonzero pairs).", ""]
    if doc.get("data"):
        lines += [experiment_data.describe(doc["data"], doc["fractions"]), ""]
    if "segmentation" in doc["tasks"] and any(ARMS[a].decoder for a in arms):
        lines += [decoder_rate_sentence(doc), ""]
    if n_runs < n_expected:
        lines += [f"**Incomplete: {n_runs} of {n_expected} runs finished.**", ""]
    lines += ["| task | metric | label fraction | " + " | ".join(_label(a) for a in arms)
              + " | wins | best pretrained | Δ | Wilcoxon p (n) | beats scratch by > 1 sd of scratch |",
              "|---" * (len(arms) + 8) + "|"]
    for r in rows:
        cells = []
        for a in arms:
            c = r["arms"][a]
            text = f"{_fmt(c['mean'])} ± {_fmt(c['sd'])}"
            cells.append(f"**{text}**" if a != "scratch" and r["versus_scratch"][a]["beats_by_one_sd"] else text)
        best = r["best_pretrained"]
        v = r["versus_scratch"].get(best) or {"difference": math.nan, "wilcoxon": {"p": math.nan, "n": 0}}
        beats = [_label(a) for a in arms if a != "scratch" and r["versus_scratch"][a]["beats_by_one_sd"]]
        lines.append(f"| {r['task']} | {METRIC[r['task']][1]} | {r['fraction']:g} | " + " | ".join(cells)
                     + f" | {_label(r['winner'])} | {_label(best)} | {_fmt(v['difference'], 3, '+')} | "
                       f"{_fmt(v['wilcoxon']['p'])} ({v['wilcoxon']['n']}) | "
                     + (f"**yes**: {', '.join(beats)}" if beats else "no") + " |")
    lines += ["", "Learning rate chosen per arm on validation (its mean validation metric):", "",
              "| task | label fraction | " + " | ".join(_label(a) for a in arms) + " |", "|---" * (len(arms) + 2) + "|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['fraction']:g} | " + " | ".join(
            "n/a" if r["arms"][a]["lr"] is None else f"{r['arms'][a]['lr']:g} ({_fmt(r['arms'][a]['val'])})"
            for a in arms) + " |")
    pre = doc.get("pretraining") or {}
    if pre:
        lines += ["", f"Pretraining (`--pretrain-scale {doc.get('pretrain_scale', 'default')}`), "
                      "`python train/pretrain.py` flags per arm: "
                  + "; ".join(f"{_label(a)}: `{p['flags'] or '(the defaults)'}`{reporting.pretext_scores(p['summary'])}"
                              for a, p in pre.items()) + "."]
    lines += ["", *targets(rows, arms)]
    return "\n".join(lines)


def targets(rows: list, arms) -> list:
    """Per task and pretrained arm: does it beat scratch by more than one sd of scratch at every label
    fraction <= 0.25?"""
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        low = [r for r in rows if r["task"] == task and r["fraction"] <= 0.25]
        if not low:
            out.append(f"- {task}: no label fraction <= 0.25 in this run.")
            continue
        for arm in (a for a in arms if a != "scratch"):
            won = [r for r in low if r["versus_scratch"][arm]["beats_by_one_sd"]]
            met = len(won) == len(low)
            out.append(f"- {task}, every label fraction <= 0.25: {_label(arm)} beats scratch by more than one sd "
                       f"of scratch at {len(won)} of {len(low)}: **{'met' if met else 'not met'}**.")
    return out


def verdict(rows: list, doc: dict) -> str:
    """The README's block: per task and fraction the winner and the arms above scratch by more than one sd."""
    lines = [f"Mean ± sd of the test metric over {len(doc['seeds'])} seeds; each arm at its learning rate chosen "
             "on validation. Full table, learning rates and Wilcoxon tests: "
             "[docs/experiment.md](docs/experiment.md).", "",
             "| task | label fraction | wins | from scratch | arms above scratch by > 1 sd of scratch |",
             "|---|---|---|---|---|"]
    for r in rows:
        w, s = r["winner"], r["arms"]["scratch"]
        beats = [f"{_label(a)} ({_fmt(r['versus_scratch'][a]['difference'], 3, '+')})" for a in doc["arms"]
                 if a != "scratch" and r["versus_scratch"][a]["beats_by_one_sd"]]
        won = "n/a" if w is None else f"{_label(w)} {_fmt(r['arms'][w]['mean'])} ± {_fmt(r['arms'][w]['sd'])}"
        lines.append(f"| {r['task']} | {r['fraction']:g} | {won} | {_fmt(s['mean'])} ± {_fmt(s['sd'])} | "
                     f"{', '.join(beats) or 'none'} |")
    return "\n".join(lines + ["", *targets(rows, doc["arms"])])


def names(doc: dict) -> tuple:
    """(protocol marker, verdict marker, plot file name) of a results document: a matched-scale protocol
    has its own ("protocol-matched", ...), so that both scales can be shown side by side."""
    scale = doc.get("pretrain_scale", "default")
    suffix = ("" if scale == "default" else f"-{scale}") + (experiment_data.SUFFIX if doc.get("data") else "")
    return SECTION + suffix, VERDICT_SECTION + suffix, f"experiment{suffix}.png"


def blocks(doc: dict) -> tuple:
    """(rows, {marker: text}) of a results document: the protocol section of docs/experiment.md and the
    verdict of README.md."""
    rows = compare(doc["rows"], doc["tasks"], doc["arms"], doc["fractions"], doc["lrs"], doc["seeds"])
    section, verdict_section, png = names(doc)
    return rows, {section: f"{table(rows, doc, len(doc['rows']))}\n\n![test score vs label fraction, mean ± sd "
                           f"over seeds]({png})",
                  verdict_section: verdict(rows, doc)}


def render(results_path: str) -> dict:
    """{marker: text} that --report-only --results ``results_path`` writes between ``<!-- marker:start -->``
    and ``<!-- marker:end -->``: "protocol" in docs/experiment.md, "protocol-verdict" in README.md (with
    "-matched" after each for a --pretrain-scale matched protocol)."""
    return blocks(read_results(results_path))[1]


def plot(rows: list, doc: dict, path: str) -> bool:
    """The plot of test score against label fraction (False: no matplotlib)."""
    return reporting.plot_scores(rows, doc, path, {a: ARMS[a].label for a in doc["arms"]},
                                 {t: f"test {METRIC[t][1]}" for t in doc["tasks"]},
                                 "your data" if doc.get("data") else "offline tasks")


def report(args, argv, tasks, arms, fractions, seeds, lrs, steps) -> str:
    """Rebuild the tables (from --results with --report-only, else from the runs in --out, then written to
    --results) and write the documents asked for; every file written is named on stderr."""
    written = []
    if args.report_only and args.results:
        doc = read_results(args.results)
    else:
        runs = collect(args, tasks, arms, fractions, lrs, seeds)
        doc = results_document(args, argv, tasks, arms, fractions, seeds, lrs, steps, runs)
        stamp = f"{doc['date'].replace('-', '')}T{doc['time'].replace(':', '')}"  # file names sort by time
        path = args.results or os.path.join(args.out, f"experiment-{stamp}.json")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        common.write_json(path, doc)
        written.append(path)
    rows, text = blocks(doc)
    section, verdict_section, png_name = names(doc)
    if args.docs:
        png = os.path.join(args.docs, png_name)
        if plot(rows, doc, png):
            written.append(png)
        md = os.path.join(args.docs, "experiment.md")
        reporting.write_doc_section(md, section, text[section])
        written.append(md)
    if args.readme:
        reporting.write_doc_section(args.readme, verdict_section, text[verdict_section])
        written.append(args.readme)
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    if not (args.docs or args.readme):
        print("no document written (--docs DIR and --readme FILE write them)", file=sys.stderr)
    return text[section]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    tasks, arms, fractions, seeds, lrs, steps = check_args(args)
    # your data's record, checked against --out (not needed to rebuild from a results file)
    args.own = None if args.report_only and args.results else experiment_data.open_out(args)
    if not args.report_only:
        check_pretext_tasks(arms, args.pretrain_scale)
        # the pretraining folder: finetune.py takes its encoder.pt (and, for genesis and masked, the decoder)
        pre = {arm: _pretrain(arm, args) for arm in arms if ARMS[arm].pretrain is not None}
        for task, f, arm, lr, s in itertools.product(tasks, fractions, arms, lrs, seeds):
            _finetune(task, arm, f, lr, s, pre, args, steps[task])
    print(report(args, argv, tasks, arms, fractions, seeds, lrs, steps))
    return 0


if __name__ == "__main__":
    common.exit_main(main)
