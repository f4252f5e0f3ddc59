"""What the experiment scripts share for their reports: the sections they own
in markdown files, mean +- sd over seeds, and what a result file records of
where it was made (git revision, machine)."""
from __future__ import annotations

import math
import os
import subprocess

from common import write_text


def write_doc_section(path: str, name: str, text: str) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in a
    markdown file (appended with its markers when absent), so each script that
    writes into a document owns one section and leaves the prose around it."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    old = open(path).read() if os.path.exists(path) else ""
    block = f"{start}\n{text.strip()}\n{end}"
    if start in old and end in old.split(start, 1)[1]:
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


def _run(cmd: list) -> str:
    """A command's stdout, or "" when it cannot run (no git, no lscpu)."""
    try:
        return subprocess.run(cmd, cwd=os.path.dirname(os.path.abspath(__file__)), capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_revision() -> str:
    """The checkout's commit, with "-dirty" when tracked files differ from it; "unknown" outside git."""
    rev = _run(["git", "rev-parse", "HEAD"])
    if not rev:
        return "unknown"
    return rev + ("-dirty" if _run(["git", "status", "--porcelain", "--untracked-files=no"]) else "")


def machine() -> dict:
    """The CPU model as lscpu names it, the cores this process may use, and the threads torch uses."""
    import torch
    fields = dict(line.split(":", 1) for line in _run(["lscpu"]).splitlines() if ":" in line)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": fields.get("Model name", "unknown").strip(), "cores": cores,
            "torch_threads": torch.get_num_threads()}
