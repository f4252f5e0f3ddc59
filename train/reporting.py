"""What the experiment scripts share for their reports: the sections they own
in markdown files, the record that makes a committed result file traceable
(command, git revision, machine), and mean +- sd over seeds."""
from __future__ import annotations

import datetime
import glob
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


def mean_sd(values) -> tuple:
    """Mean and sample sd (0 for one value) of the finite values; (nan, nan) for none."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, sd


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
