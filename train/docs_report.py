"""Every generated block of README.md and docs/*.md, rebuilt from the committed
result files in docs/results/ (each carries its command, git revision and machine).

    python train/docs_report.py                  # rewrite every generated block from docs/results/
    python train/docs_report.py --check          # exit 1, naming each block that differs (CI runs this check)
    python train/docs_report.py --add-pretraining runs/pretrain-rubik --wall-s 330
                                                 # a finished default run's summary into docs/results/

A generated block is the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``.
BLOCKS names, for each, the files it lives in and what makes it: a function of the
committed result files, or a script's --report-only run (the protocol's).  A
number edited by hand between the markers fails the check."""
from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402
import protocol_stats  # noqa: E402
import reporting  # noqa: E402
from common import UserError  # noqa: E402

ROOT = reporting.ROOT
PRETRAIN_PREFIX = "pretrain"


def _load(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def _rel(path: str) -> str:
    return os.path.relpath(path, ROOT)


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _cpu_name(m: dict) -> str:
    return f"{m.get('cores', '?')}-core {m.get('cpu', 'unknown CPU')}"


# --- the default pretraining (python train/pretrain.py), one result file per machine quoted ---

def _wall(record: dict) -> str:
    """A pretraining result's wall time in minutes, with the load average recorded beside it."""
    load = record["machine"].get("load_average_1min")
    wall = "-" if record.get("wall_s") is None else f"{record['wall_s'] / 60:.1f} min"
    return wall + (f" (load {load:.1f})" if load is not None else "")


def pretraining_runs(results: str = reporting.RESULTS) -> list:
    return [(path, _load(path)) for path in reporting.result_files(PRETRAIN_PREFIX, results)]


def pretraining_range(runs: list) -> tuple:
    """(lowest, highest) ordering and orientation over the committed default runs, in %."""
    order = [r["summary"]["order_acc"] for _, r in runs]
    orient = [r["summary"]["orient_acc"] for _, r in runs]
    return (min(order), max(order)), (min(orient), max(orient))


def default_pretraining_block(results: str = reporting.RESULTS) -> str:
    runs = pretraining_runs(results)
    if not runs:
        raise UserError(f"no {PRETRAIN_PREFIX}-*.json in {results}")
    s0 = runs[0][1]["summary"]
    lines = [f"| machine | ordering % (chance {_pct(s0['chance_order_acc'])}) | orientation % (chance "
             f"{_pct(s0['chance_orient_acc'])}) | puzzles/s | batch generation, % of step | whole command | "
             "result file |", "|---|---:|---:|---:|---:|---:|---|"]
    for path, r in runs:
        s, m = r["summary"], r["machine"]
        lines.append(f"| {_cpu_name(m)} | {_pct(s['order_acc'])} | {_pct(s['orient_acc'])} | "
                     f"{s['puzzles_per_s']:.1f} | {_pct(s['batch_gen_fraction'])} | {_wall(r)} | `{_rel(path)}` |")
    (o_lo, o_hi), (r_lo, r_hi) = pretraining_range(runs)
    held = {v for _, r in runs for v in r["summary"].get("held_out") or []}
    return (f"`python train/pretrain.py` ({s0['steps']} steps, seed 0), scored on {s0.get('eval_puzzles', 512)} "
            "fixed puzzles of the validation volume" + (f" ({', '.join(sorted(held))})" if held else "")
            + ". The run is deterministic on one machine; processors round differently, so a new machine should "
            f"land near the range below (ordering {_pct(o_lo)} to {_pct(o_hi)}%, orientation {_pct(r_lo)} to "
            f"{_pct(r_hi)}%). Each result file carries its command, revision and machine; load is the 1-minute "
            "load average when the run ended (2 cores: above 2 means the run shared them).\n\n" + "\n".join(lines)
            + "".join(f"\n\n`{_rel(path)}`: {r['note']}" for path, r in runs if r.get("note")))


DENSE_PREFIX = "dense-pretrain"
DENSE_KEEP = ("task", "steps", "encoder_step", "mse", "identity_mse", "mean_mse", "restoration_gain", "puzzles_per_s",
              "batch_gen_fraction", "held_out", "eval_puzzles")


def dense_pretraining_block(results: str = reporting.RESULTS) -> str:
    """docs/dense-tasks.md's table: each committed run of a restoration task, its held-out error against
    the identity (the corrupted input returned) and against the crops' mean."""
    lines = ["| command | steps | wall time | held-out MSE | identity MSE (MSE x lower) | mean MSE (MSE x lower) | "
             "batch generation, % of step | result file |", "|---|---:|---:|---:|---:|---:|---:|---|"]
    runs = [(path, _load(path)) for path in reporting.result_files(DENSE_PREFIX, results)]
    for path, r in runs:
        s = r["summary"]
        lower = lambda v: f"{v / s['mse']:.2f}x" if s["mse"] > 0 else "-"  # noqa: E731
        lines.append(f"| `{r['command']}` | {s['steps']} | {_wall(r)} | {s['mse']:.3f} | {s['identity_mse']:.3f} "
                     f"({lower(s['identity_mse'])}) | {s['mean_mse']:.3f} ({lower(s['mean_mse'])}) | "
                     f"{_pct(s['batch_gen_fraction'])} | `{_rel(path)}` |")
    return ("Seed 0, scored on the fixed crops of the validation volume; "
            f"{_cpu_name(runs[-1][1]['machine'])}; load is the 1-minute load average when the result file was "
            "written.\n\n" + "\n".join(lines)
            + "".join(f"\n\n`{_rel(path)}`: {r['note']}" for path, r in runs if r.get("note")))


def add_pretraining(run_dir: str, wall_s: float, command: str, results: str = reporting.RESULTS) -> str:
    """A finished run's summary as a committed result file; the revision and machine are this checkout's."""
    summary_path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(summary_path):
        raise UserError(f"--add-pretraining: {summary_path} does not exist (is the run finished?)")
    summary = _load(summary_path)
    dense = summary.get("mse") is not None  # a restoration task: its errors, not puzzle accuracies
    keep = DENSE_KEEP if dense else (
        "task", "steps", "encoder_step", "order_acc", "orient_acc", "chance_order_acc", "chance_orient_acc",
        "num_permutations", "puzzles_per_s", "batch_gen_fraction", "held_out", "eval_puzzles")
    record = {**reporting.run_record(command), "seeds": [0], "wall_s": wall_s,
              "summary": {k: summary.get(k) for k in keep if k in summary}}
    path = os.path.join(results, f"{DENSE_PREFIX if dense else PRETRAIN_PREFIX}-{reporting.result_stamp()}.json")
    common.write_json(path, record)
    return path


# --- the README's verdict: what the committed results say, one line per question ---

def _bench_row(results: str, pattern: str, prefix: str) -> dict:
    """The row named ``prefix...`` of the newest benchmark file ``pattern`` in ``results`` that has one
    (a later run of the same machine and flags replaces its file, so the newest is the current one)."""
    import glob
    for path in sorted(glob.glob(os.path.join(results, pattern)), reverse=True):
        row = _row(_load(path), prefix)
        if row is not None:
            return row
    raise UserError(f"no benchmark row {prefix!r} in {os.path.join(results, pattern)}")


def _default_share(results: str) -> str:
    """The default pretraining's batch generation, from the newest benchmarks/augment_share.py file."""
    files = reporting.result_files("augment-share", results)
    if not files:
        return ""
    rows = {r["augment"]: r for r in _load(files[-1])["rows"]}
    return (f"; the default pretraining (2 CPU cores) spends {100 * rows['all']['batch_gen_fraction']:.1f}% of its step "
            f"generating batches with its augmentation, {100 * rows['none']['batch_gen_fraction']:.1f}% without")


def verdict_block(results: str = reporting.RESULTS) -> str:
    def cpu(prefix):
        return _bench_row(results, "cpu-*.json", prefix)

    def gpu(prefix):
        return _bench_row(results, "h200-2*-cuda.json", prefix)
    op_cpu = cpu("rubikops compiled CPU (out=)")
    op_gpu = gpu("rubikops CUDA C++ out= [float32")
    e2e_cpu = cpu("e2e: pretrain step, rubikops")
    e2e_gpu = gpu("e2e: pretrain step, rubikops")
    gen_gpu = gpu("e2e: batch generation alone")
    loader_gpu = gpu("baseline: same in a DataLoader")
    puzzle_gpu = gpu("rubikops whole puzzle")
    runs = pretraining_runs(results)
    (o_lo, o_hi), (r_lo, r_hi) = pretraining_range(runs)
    s0 = runs[0][1]["summary"]
    rows = [
        ("Is cutting a batch of puzzles faster?",
         f"yes: {op_cpu['speedup_vs_baseline']:.1f}x the per-sample NumPy loop on 2 CPU cores; "
         f"{op_gpu['speedup_vs_baseline']:.1f}x a per-sample torch loop on an H200",
         "[performance](docs/performance.md)"),
        ("Is a pretraining step faster?",
         f"only where the host cannot keep up: {e2e_cpu['speedup_vs_baseline']:.2f}x a 2-worker DataLoader on 2 CPU "
         f"cores (an unaugmented 2 mm workload), {e2e_gpu['speedup_vs_baseline']:.2f}x on an H200 with 32^3 cubes (batch generation "
         f"{100 * gen_gpu['extra']['fraction_of_step']:.1f}% of a {_ms(e2e_gpu):.0f} ms step); 2 NumPy workers need "
         f"{_ms(loader_gpu):.0f} ms for a batch of 32 x 8 cubes of 64^3, which the H200 draws and cuts in "
         f"{_ms(puzzle_gpu):.2f} ms" + _default_share(results),
         "[performance](docs/performance.md)"),
        ("Does the default pretext task learn?",
         f"yes: ordering {_pct(o_lo)} to {_pct(o_hi)}% (chance {_pct(s0['chance_order_acc'])}%), orientation "
         f"{_pct(r_lo)} to {_pct(r_hi)}% (chance {_pct(s0['chance_orient_acc'])}%) on the validation volume, "
         f"{len(runs)} runs on {len({r[1]['machine']['cpu'] for r in runs})} CPU models",
         "[experiment](docs/experiment.md#the-defaults-run-to-the-end)"),
        ("Does pretraining beat training from scratch downstream?", protocol_verdict(results),
         "[experiment](docs/experiment.md#does-pretraining-pay-off-downstream-the-protocol)"),
    ]
    return ("| question | measured answer | details |\n|---|---|---|\n"
            + "\n".join(f"| {q} | {a} | {d} |" for q, a, d in rows))


PROTOCOL_SCALES = {"default": "pretrained at train/pretrain.py's scale",
                   "matched": "pretrained at the segmentation scale (--pretrain-scale matched)"}


def protocol_files(results: str = reporting.RESULTS, scale: str = "default") -> list:
    """The committed results of the bundled protocol pretrained at ``scale`` (--pretrain-scale), oldest
    first (a run on your data writes its own sections, not these)."""
    docs = ((f, _load(f)) for f in reporting.result_files("experiment", results))
    return [f for f, doc in docs if not doc.get("data") and doc.get("pretrain_scale", "default") == scale]


def _protocol_marker(scale: str) -> str:
    """The docs/experiment.md block of a protocol pretrained at ``scale`` (experiment.py's names())."""
    return "protocol" if scale == "default" else f"protocol-{scale}"


def _verdict_parts(runs: list) -> tuple:
    """(one sentence per task, whether any pretrained arm is ahead): the protocol's own comparison
    (protocol_stats.compare, as experiment.py's table: each arm at the rate with the best mean validation
    score, paired with scratch by seed), each arm's mean ± sd test score per fraction and the pretrained
    arms that beat scratch by more than scratch's sd."""
    parts, any_ahead = [], False
    for task in sorted({r["task"] for r in runs}):
        mine = [r for r in runs if r["task"] == task]
        fractions = sorted({r["fraction"] for r in mine if r["arm"] == "scratch"})
        arms = ["scratch"] + sorted({r["arm"] for r in mine} - {"scratch"})
        rows = protocol_stats.compare(mine, [task], arms, fractions, sorted({r["lr"] for r in mine}),
                                      sorted({r["seed"] for r in mine}))
        ahead = {}
        for row in rows:
            for arm, versus in row["versus_scratch"].items():
                if versus["beats_by_one_sd"]:
                    ahead.setdefault(arm, []).append(f"{row['fraction']:g}")
        any_ahead = any_ahead or bool(ahead)

        def scores(arm):
            cells = [row["arms"][arm] for row in rows]
            return " / ".join("n/a" if math.isnan(c["mean"]) else f"{c['mean']:.3f} ± {c['sd']:.3f}" for c in cells)
        metric = next((r["metric"] for r in mine if r.get("metric")), None)
        parts.append(f"{task}{f' ({metric})' if metric else ''} at label fractions "
                     f"{' / '.join(f'{f:g}' for f in fractions)}: "
                     + ", ".join(f"{a} {scores(a)}" for a in arms) + "; "
                     + ("ahead by more than one sd of scratch: " + ", ".join(f"{a} at {', '.join(fs)}"
                                                                             for a, fs in sorted(ahead.items()))
                        if ahead else "no pretrained arm ahead by more than one sd of scratch"))
    return parts, any_ahead


def protocol_verdict(results: str) -> str:
    """From the protocol's raw runs (task, arm, fraction, seed, lr, val, test) of the newest result file
    of each pretraining scale: per task and fraction each arm's mean ± sd test score (at the rate chosen
    on validation) and which pretrained arms beat scratch by more than scratch's sd, paired by seed
    (_verdict_parts: the protocol's own comparison)."""
    newest = [(scale, files[-1]) for scale in PROTOCOL_SCALES if (files := protocol_files(results, scale))]
    if not newest:
        return ("not shown: no committed result file of the protocol at this revision (the table in "
                "docs/experiment.md predates result files)")
    segments, any_ahead, seeds = [], False, set()
    for scale, path in newest:
        doc = _load(path)
        runs = doc.get("runs") or doc.get("rows") or []
        parts, ahead = _verdict_parts(runs)
        any_ahead = any_ahead or ahead
        seeds |= {r["seed"] for r in runs}
        segments.append(("" if len(newest) == 1 else f"{PROTOCOL_SCALES[scale]}: ") + "; ".join(parts)
                        + f" (`{_rel(path)}`)")
    return (f"{'yes, in part' if any_ahead else 'not shown'}: " + "; ".join(segments)
            + f"; {len(seeds)} seeds, test scores")

# --- the registry ---

@dataclass
class Block:
    name: str                              # the marker name
    files: tuple                           # where it lives, relative to the repository root
    build: Callable[[], str]               # the block's text from the committed result files
    needs: Optional[str] = None            # a result-file prefix ("protocol", "protocol-matched": the bundled
    # protocol's at either pretraining scale): the block is checked only when such a file exists


def augmentation_block(results: str = reporting.RESULTS) -> str:
    """docs/performance.md's augmentation section: the fused cut against resampling then cutting
    (benchmarks/affine_cut.py) and the default pretraining with each augmentation
    (benchmarks/augment_share.py), from their newest CPU result files."""
    import glob
    cut_files = [f for f in sorted(glob.glob(os.path.join(results, "affine-cut-*.json"))) if not f.endswith("-cuda.json")]
    if not cut_files:
        raise UserError(f"no CPU result file affine-cut-*.json in {results}")
    cut = _load(cut_files[-1])
    share_path = reporting.newest_result("augment-share", results)
    share = _load(share_path)
    lines = [f"`python benchmarks/affine_cut.py --results-dir docs/results` (`{_rel(cut_files[-1])}`, "
             f"{_cpu_name(cut['machine'])}, {cut['args']['batch']} puzzles of 8 cubes of {cut['args']['cube']}^3, "
             "the default pretraining's geometry):", "",
             "| row | median ms | p20-p80 ms | vs grid_sample then cut |", "|---|---:|---:|---:|"]
    for row in cut["rows"]:
        t = row["timing"]
        speed = f"{row['speedup_vs_baseline']:.1f}x" if row.get("speedup_vs_baseline") else "-"
        lines.append(f"| {row['name']} | {1e3 * t['median_s']:.3f} | {1e3 * t['p20_s']:.3f}-{1e3 * t['p80_s']:.3f} "
                     f"| {speed} |")
    rounds = share["rows"][0].get("rounds", 1)
    how = "one after the other" if rounds == 1 else \
        f"in {rounds} interleaved rounds; the median, with the lowest and highest round in brackets"
    lines += ["", f"`{share['command']}` (`{_rel(share_path)}`, {_cpu_name(share['machine'])}): "
              f"`python train/pretrain.py --steps {share['rows'][0]['steps']}` with each augmentation, {how}:", "",
              "| `--augment` | puzzles/s | vs `none` (same round) | batch generation, % of the step |",
              "|---|---:|---:|---:|"]

    def cell(row, key, form, scale=1.0):
        value = form.format(scale * row[key])
        if f"{key}_range" not in row:
            return value
        lo, hi = row[f"{key}_range"]
        return f"{value} ({form.format(scale * lo)}-{form.format(scale * hi)})"

    for row in share["rows"]:
        lines.append(f"| `{row['augment']}` | {cell(row, 'puzzles_per_s', '{:.1f}')} | "
                     f"{cell(row, 'throughput_vs_none', '{:.2f}')} | "
                     f"{cell(row, 'batch_gen_fraction', '{:.1f}', 100)} |")
    return "\n".join(lines)


# --- the GPU section: the newest H200 runs of gpu_check.sh, their targets and the profile ---

GPU_RUNS = "h200-2*-cuda*.json"  # benchmarks/run.py --device cuda on the H200 (with and without --no-e2e)


def _row(doc: dict, prefix: str) -> Optional[dict]:
    """The first row of a benchmark result whose name starts with ``prefix``, or None."""
    return next((r for r in doc.get("rows", []) if r["name"].startswith(prefix)), None)


def _ms(row: dict) -> float:
    return 1e3 * row["timing"]["median_s"]


def _gpu_files(results: str) -> list:
    import glob
    return [(path, _load(path)) for path in sorted(glob.glob(os.path.join(results, GPU_RUNS)))]


def _bench_table(doc: dict) -> list:
    lines = ["| row | median ms | p20-p80 ms | GB/s | % ceil | vs base |", "|---|---:|---:|---:|---:|---:|"]
    for r in doc["rows"]:
        t = r["timing"]
        pct = f"{r['pct_of_ceiling']:.1f}%" if r.get("pct_of_ceiling") is not None else "-"
        speed = f"{r['speedup_vs_baseline']:.1f}x" if r.get("speedup_vs_baseline") else "-"
        lines.append(f"| {r['name']} | {1e3 * t['median_s']:.3f} | {1e3 * t['p20_s']:.3f}-{1e3 * t['p80_s']:.3f} | "
                     f"{r['gb_per_s']:.1f} | {pct} | {speed} |")
    return lines


def gpu_block(results: str = reporting.RESULTS) -> str:
    """docs/performance.md's H200 section: the full benchmark, the targets over every committed run,
    the GPU pretraining runs and the Nsight Compute profile of the CUDA kernel."""
    runs = _gpu_files(results)
    if not runs:
        raise UserError(f"no GPU result file {GPU_RUNS} in {results}")
    full_path, full = next(((p, d) for p, d in reversed(runs) if not d["args"].get("no_e2e")), runs[-1])
    m = full["machine"]
    names = ", ".join(f"`{_rel(p)}`" for p, _ in runs)
    lines = [f"{m['gpu']} ({m['gpu_memory_gib']:.0f} GiB), {m['cores']}-core host, Python {m['python']}, torch "
             f"{m['torch']}, CUDA {m['cuda']}, Triton {m['triton']}. B=32 samples, C=1, 8 cubes of 64^3 cut from 160^3 "
             "volumes; medians of 20 calls after 3 warm-up calls (the per-sample loops: 5 after 1).", "",
             f"`python benchmarks/run.py --device cuda`, run by `bash benchmarks/gpu_check.sh` (`{_rel(full_path)}`):", ""]
    lines += _bench_table(full)

    def over_runs(fn) -> list:
        """One value per committed run, None where a run lacks the row."""
        return [fn(d) for _, d in runs]

    def pct(prefix):
        return lambda d: (_row(d, prefix) or {}).get("pct_of_ceiling")

    def ratio(prefix, key):
        return lambda d: ((_row(d, prefix) or {}).get("extra") or {}).get(key)

    def triton_to_cuda(dtype):
        def get(d):
            tri, cu = _row(d, f"rubikops Triton out= [{dtype}, paper]"), _row(d, f"rubikops CUDA C++ out= [{dtype}, paper]")
            return _ms(tri) / _ms(cu) if tri and cu else None
        return get

    def fmt(values, unit=""):
        return ", ".join("-" if v is None else f"{v:.1f}{unit}" if unit == "%" else f"{v:.2f}{unit}" for v in values)

    def status(values, ok):
        measured = [v for v in values if v is not None]
        met = sum(bool(ok(v)) for v in measured)
        if not measured:
            return "not measured"
        return "met" if met == len(measured) else "not met" if met == 0 else f"met in {met} of {len(measured)} runs"

    paper_pretrain = [(_rel(p), _load(p)) for p in reporting.result_files("gpu-pretrain-h200-paper-sized", results)]
    targets = [
        ("CUDA `out=`, paper rotations, float32 >= 90% of clone", over_runs(pct("rubikops CUDA C++ out= [float32, paper]")),
         "%", lambda v: v >= 90),
        ("CUDA `out=`, paper rotations, bfloat16 >= 85% of clone",
         over_runs(pct("rubikops CUDA C++ out= [bfloat16, paper]")), "%", lambda v: v >= 85),
        ("CUDA, codes that move W, float32 >= 80% of clone", over_runs(pct("rubikops CUDA C++ [float32, w-moving]")),
         "%", lambda v: v >= 80),
        ("CUDA, codes that move W, bfloat16 >= 65% of clone", over_runs(pct("rubikops CUDA C++ [bfloat16, w-moving]")),
         "%", lambda v: v >= 65),
        ("Triton `out=` within 1.10x of CUDA, float32 paper (time ratio)", over_runs(triton_to_cuda("float32")), "x",
         lambda v: v <= 1.10),
        ("Triton `out=` within 1.10x of CUDA, bfloat16 paper (time ratio)", over_runs(triton_to_cuda("bfloat16")), "x",
         lambda v: v <= 1.10),
        ("whole puzzle <= 1.15x the bare op", over_runs(ratio("rubikops whole puzzle", "ratio_to_bare_op")), "x",
         lambda v: v <= 1.15),
        ("augmented cut (`CropAffine` in the cut) <= 1.3x the plain `bank.puzzles`",
         over_runs(ratio("bank.puzzles + CropAffine", "ratio_to_no_augmentation")), "x", lambda v: v <= 1.3),
        ("paper-preset pretraining: batch generation < 1% of the step",
         [100 * d["summary"]["batch_gen_fraction"] for _, d in paper_pretrain], "%", lambda v: v < 1.0),
    ]
    lines += ["", f"Targets, one value per committed run ({names}; the pretraining row from "
              f"{', '.join(f'`{p}`' for p, _ in paper_pretrain) or 'no file'}):", "",
              "| target | measured | status |", "|---|---|---|"]
    lines += [f"| {what} | {fmt(vals, unit)} | {status(vals, ok)} |" for what, vals, unit, ok in targets]

    pretrain = [(_rel(p), _load(p)) for p in reporting.result_files("gpu-pretrain-h200", results)]
    if pretrain:
        lines += ["", "Pretraining on the H200 (`train/pretrain.py --device cuda`, run by `gpu_check.sh`; one seed each; "
                  "validation puzzles of the held-out volume):", "",
                  "| command | steps | puzzles/s | batch generation, % of step | ordering (chance) | "
                  "orientation (chance) | file |", "|---|---:|---:|---:|---:|---:|---|"]
        for path, d in pretrain:
            s = d["summary"]
            cmd = d["command"].split("  (")[0].replace("python train/pretrain.py ", "")
            lines.append(f"| `{cmd}` | {s['steps']} | {s['puzzles_per_s']:.0f} | {100 * s['batch_gen_fraction']:.1f} | "
                         f"{_pct(s['order_acc'])}% ({_pct(s['chance_order_acc'])}%) | {_pct(s['orient_acc'])}% "
                         f"({_pct(s['chance_orient_acc'])}%) | `{path}` |")
    profiles = reporting.result_files("ncu-h200", results)
    if profiles:
        prof = _load(profiles[-1])
        lines += ["", f"Nsight Compute, one launch of the CUDA forward kernel per configuration ({prof['workload']}; "
                  f"`{_rel(profiles[-1])}`):", "",
                  "| configuration | duration us | DRAM throughput | compute (SM) throughput | registers/thread | "
                  "occupancy (theoretical) | global load sectors per request | largest estimated speed-up (rule) |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for launch in prof["launches"]:
            mt = collections.defaultdict(lambda: math.nan, launch["metrics"])  # a section ncu left out: nan
            rules = [(float(r["estimate"].rsplit(":", 1)[1].strip(" %")), r["text"]) for r in launch["rules"]
                     if r["estimate"].startswith("Est. Speedup")]
            top = max(rules, default=(0.0, ""))
            sectors = mt["l1tex__t_sectors_pipe_lsu_mem_global_op_ld.sum"] / (
                mt["l1tex__t_requests_pipe_lsu_mem_global_op_ld.sum"] or math.nan)
            lines.append(f"| {launch['config']} | {mt['Duration']:.1f} | {mt['DRAM Throughput']:.1f}% | "
                         f"{mt['Compute (SM) Throughput']:.1f}% | {mt['Registers Per Thread']:.0f} | "
                         f"{mt['Achieved Occupancy']:.1f}% ({mt['Theoretical Occupancy']:.0f}%) | {sectors:.1f} | "
                         f"{top[0]:.1f}%: {top[1].split('. This')[0]} |")
    return "\n".join(lines)


def _script_block(script: str, name: str, doc: str, *extra) -> Callable[[], str]:
    """A block as a script's --report-only writes it: run into a scratch copy of the doc, read it back."""
    def build() -> str:
        with tempfile.TemporaryDirectory() as tmp:
            docs = os.path.join(tmp, "docs")
            os.makedirs(docs)
            with open(os.path.join(docs, os.path.basename(doc)), "w") as fh:
                fh.write(f"<!-- {name}:start -->\n<!-- {name}:end -->\n")
            r = subprocess.run([sys.executable, os.path.join(ROOT, "train", script), "--report-only", "--docs", docs,
                                *extra], cwd=ROOT, capture_output=True, text=True)
            if r.returncode != 0:
                raise UserError(f"train/{script} --report-only failed: {r.stderr.strip()[-2000:]}")
            with open(os.path.join(docs, os.path.basename(doc))) as fh:
                return reporting.read_doc_section(fh.read(), name)
    return build


def _protocol_block(scale: str) -> Block:
    """The protocol's table at one pretraining scale, once its raw results are committed
    (docs/results/experiment-<UTC time stamp>.json)."""
    marker = _protocol_marker(scale)
    return Block(marker, ("docs/experiment.md",), lambda: _script_block(
        "experiment.py", marker, "docs/experiment.md", "--results", protocol_files(scale=scale)[-1])(), needs=marker)


BLOCKS = [
    Block("verdict", ("README.md",), verdict_block),
    Block("default-pretraining", ("docs/experiment.md",), default_pretraining_block),
    Block("augmentation", ("docs/performance.md",), augmentation_block, needs="augment-share"),
    Block("gpu", ("docs/performance.md",), gpu_block, needs="h200"),
    Block("dense-defaults", ("docs/dense-tasks.md",), dense_pretraining_block, needs=DENSE_PREFIX),
    Block("pretext-study", ("docs/experiment.md",), _script_block("pretext_study.py", "pretext-study",
                                                                  "docs/experiment.md")),
    *(_protocol_block(scale) for scale in PROTOCOL_SCALES),
]


def active_blocks(results: str = reporting.RESULTS) -> list:
    def present(needs):
        scale = next((scale for scale in PROTOCOL_SCALES if _protocol_marker(scale) == needs), None)
        return protocol_files(results, scale) if scale else reporting.result_files(needs, results)
    return [b for b in BLOCKS if b.needs is None or present(b.needs)]


def differences(blocks=None, root: str = ROOT) -> list:
    """(block, file, what is there, what the results make) for each block that differs in the
    docs under ``root``."""
    out = []
    for b in active_blocks() if blocks is None else blocks:
        want = b.build().strip()
        for f in b.files:
            with open(os.path.join(root, f)) as fh:
                have = reporting.read_doc_section(fh.read(), b.name)
            if have != want:
                out.append((b.name, f, have, want))
    return out


def main(argv=None) -> int:
    p = common.ArgumentParser(prog="python train/docs_report.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 naming each block that differs")
    p.add_argument("--add-pretraining", metavar="RUN_DIR", help="write RUN_DIR/summary.json into docs/results/")
    p.add_argument("--wall-s", type=float, help="with --add-pretraining: the whole command's wall time, seconds")
    p.add_argument("--command", default="python train/pretrain.py", help="with --add-pretraining: the run's command")
    args = p.parse_args(argv)
    if args.add_pretraining:
        if args.wall_s is None:
            raise UserError("--add-pretraining needs --wall-s (the whole command's wall time)")
        print(add_pretraining(args.add_pretraining, args.wall_s, args.command))
    if args.check:
        diffs = differences()
        for name, f, have, _ in diffs:
            print(f"{f}: block {name} " + ("is missing" if have is None else "differs from what the committed "
                                           "results make (python train/docs_report.py rewrites it)"))
        return 1 if diffs else 0
    for b in active_blocks():
        text = b.build()
        for f in b.files:
            reporting.write_doc_section(os.path.join(ROOT, f), b.name, text)
    return 0


if __name__ == "__main__":
    common.exit_main(main)
