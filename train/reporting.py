"""What the experiment scripts share for their reports: the sections they own
in markdown files, the record that makes a committed result file traceable
(command, git revision, machine), mean +- sd over seeds, the exact Wilcoxon
signed-rank test of paired seeds, and the plot of scores against label fraction."""
from __future__ import annotations

import datetime
import glob
import itertools
import math
import os
import platform
import subprocess

from common import UserError, write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "docs", "results")


def section_markers(name: str) -> tuple:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def read_doc_section(text: str, name: str):
    """The text between a section's markers (stripped), or None when the markers are absent."""
    start, end = section_markers(name)
    if text.count(start) > 1 or text.count(end) > 1:  # a second copy would escape the check and go stale
        raise UserError(f"the generated section {name!r} appears {max(text.count(start), text.count(end))} times; "
                        "keep one pair of its markers")
    if start not in text or end not in text.split(start, 1)[1]:
        return None
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def write_doc_section(path: str, name: str, text: str) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in a
    markdown file (appended with its markers when absent), so each script that
    writes into a document owns one section and leaves the prose around it."""
    start, end = section_markers(name)
    old = open(path).read() if os.path.exists(path) else ""
    block = f"{start}\n{text.strip()}\n{end}"
    if read_doc_section(old, name) is not None:
        before, rest = old.split(start, 1)
        new = before + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block + "\n"
    write_text(path, new)


def fmt(x, digits: int = 3, sign: str = "") -> str:
    """A table number: ``digits`` decimals, "n/a" for None or NaN (a missing level or a diverged run)."""
    return "n/a" if x is None or math.isnan(x) else f"{x:{sign}.{digits}f}"


def pretext_scores(summary) -> str:
    """" (held-out order_acc 0.625, chance 0.042; ...)": a pretraining summary's held-out scores beside
    their chance levels, and a restoration's error beside returning its input unchanged and the mean."""
    if not summary:
        return " (not finished)"
    scores = [f"{k} {fmt(summary[k])}, chance {fmt(summary['chance_' + k])}" for k in summary
              if f"chance_{k}" in summary and summary[k] is not None]
    if all(summary.get(k) is not None for k in ("mse", "identity_mse", "mean_mse")):
        scores.append(f"MSE {fmt(summary['mse'])}, identity {fmt(summary['identity_mse'])}, "
                      f"mean {fmt(summary['mean_mse'])}")
    return f" (held-out {'; '.join(scores)})" if scores else ""


def mean_sd(values) -> tuple:
    """Mean and sample sd (0 for one value) of the finite values; (nan, nan) for none."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, sd


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


def plot_scores(rows: list, doc: dict, path: str, arm_labels: dict, metric_labels: dict, data: str) -> bool:
    """Per task, each arm's mean ± sd of the test metric against the label fraction (log scale), written to
    ``path``; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    tasks, fractions = doc["tasks"], doc["fractions"]
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in rows if r["task"] == task]
        for arm in doc["arms"]:
            pts = [(r["fraction"], r["arms"][arm]) for r in mine]
            ax.errorbar([f for f, _ in pts], [p["mean"] for _, p in pts], yerr=[p["sd"] for _, p in pts],
                        marker="o", capsize=3, label=arm_labels[arm])
        ax.set_xscale("log")
        ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
        ax.set_xlabel("label fraction")
        ax.set_ylabel(metric_labels[task])
        ax.set_title(task)
        ax.legend(fontsize=8)
    fig.suptitle(f"{data}: mean ± sd over seeds {list(doc['seeds'])}, LR chosen on validation", fontsize=9)
    fig.tight_layout()
    from rubikops.data import atomic_path
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return True


def git_revision() -> str:
    """The checkout's commit, with -dirty when tracked files differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    try:
        rev = git("rev-parse", "HEAD")
        return (rev or "unknown") + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict:
    """The processor, its cores and the software versions a result depends on."""
    import torch
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": cpu, "cores": cores, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        info["load_average_1min"] = round(os.getloadavg()[0], 2)  # a shared VM's timings depend on it
    except OSError:
        pass
    return info


def run_record(command: str) -> dict:
    """What makes a committed result file traceable: the command, the revision, the machine, the time."""
    return {"command": command, "git_revision": git_revision(), "machine": machine(),
            "time": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


def result_stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def result_files(prefix: str, directory: str = RESULTS) -> list:
    """Committed result files ``<prefix>-*.json``, oldest first (their names carry a UTC time stamp)."""
    return sorted(glob.glob(os.path.join(directory, f"{prefix}-*.json")))


def newest_result(prefix: str, directory: str = RESULTS) -> str:
    files = result_files(prefix, directory)
    if not files:
        raise UserError(f"no result file {prefix}-*.json in {directory}")
    return files[-1]
