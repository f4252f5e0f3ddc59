"""Shared benchmark utilities: timing (medians with p20/p80 spread), machine
description, table printing and JSON records."""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import torch


@dataclass
class Timing:
    median_s: float
    p20_s: float
    p80_s: float
    repeats: int


def time_fn(fn: Callable[[], object], device: torch.device, *, warmup: int = 3, repeats: int = 20,
            min_time_s: float = 0.0, host_sync: bool = False) -> Timing:
    """Median of `repeats` calls after `warmup`.

    On the GPU each call is bracketed by CUDA events and the calls are queued
    back to back (as triton.testing.do_bench does), so a row measures the
    kernels' device time, not the host's Python and launch overhead.
    ``host_sync=True`` waits for each call before queuing the next: the
    latency of one isolated call, launch overhead included."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(repeats)]
        for start, end in events:
            start.record()
            fn()
            end.record()
            if host_sync:
                end.synchronize()
        torch.cuda.synchronize()
        times = [start.elapsed_time(end) / 1e3 for start, end in events]
    else:
        t_end = time.perf_counter() + min_time_s
        while len(times) < repeats or time.perf_counter() < t_end:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    q = lambda f: times[min(len(times) - 1, int(f * len(times)))]  # noqa: E731
    return Timing(statistics.median(times), q(0.2), q(0.8), len(times))


def machine_info(device: torch.device) -> dict:
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_revision() -> str:
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (rev or "unknown") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class Row:
    name: str
    workload: str
    timing: Timing
    bytes_moved: int
    ceiling_gbs: Optional[float] = None
    baseline_s: Optional[float] = None
    extra: dict = field(default_factory=dict)

    @property
    def gbs(self) -> float:
        return self.bytes_moved / self.timing.median_s / 1e9

    def to_record(self) -> dict:
        d = asdict(self)
        d["gb_per_s"] = self.gbs
        d["pct_of_ceiling"] = 100 * self.gbs / self.ceiling_gbs if self.ceiling_gbs else None
        d["speedup_vs_baseline"] = self.baseline_s / self.timing.median_s if self.baseline_s else None
        return d


def format_table(rows: list[Row]) -> str:
    head = f"{'row':44s} {'median ms':>10s} {'p20-p80 ms':>15s} {'GB/s':>8s} {'% ceil':>7s} {'vs base':>8s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        t = r.timing
        pct = f"{100 * r.gbs / r.ceiling_gbs:6.1f}%" if r.ceiling_gbs else "      -"
        sp = f"{r.baseline_s / t.median_s:7.1f}x" if r.baseline_s else "       -"
        lines.append(f"{r.name:44s} {t.median_s * 1e3:10.3f} {t.p20_s * 1e3:7.3f}-{t.p80_s * 1e3:<7.3f} "
                     f"{r.gbs:8.1f} {pct:>7s} {sp:>8s}")
    return "\n".join(lines)


def write_results(rows: list[Row], device: torch.device, args: dict, directory: str) -> str:
    """Atomically write one JSON file per run under `directory`."""
    os.makedirs(directory, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = os.path.join(directory, f"{stamp}-{device.type}.json")
    doc = {"machine": machine_info(device), "git": git_revision(), "time": stamp, "args": args,
           "rows": [r.to_record() for r in rows]}
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    os.replace(tmp, path)
    return path


def compare(rows: list[Row], path: str) -> str:
    with open(path) as f:
        old = {(r["name"], r["workload"]): r for r in json.load(f)["rows"]}
    lines = [f"{'row':44s} {'old ms':>9s} {'new ms':>9s} {'new/old':>8s}"]
    for r in rows:
        o = old.get((r.name, r.workload))
        if o:
            om = o["timing"]["median_s"]
            lines.append(f"{r.name:44s} {om * 1e3:9.3f} {r.timing.median_s * 1e3:9.3f} {r.timing.median_s / om:8.2f}")
    return "\n".join(lines)
