"""Shared benchmark utilities: the workloads, timing (medians with p20/p80
spread), machine description, table printing and JSON records.

The benchmark scripts import this module and never each other's entry
points: run.py -> sweeps.py, pipelines.py, e2e.py -> utils.py."""
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

import rubikops
from rubikops.rotations import PAPER_ROTATIONS


def make_workload(B, M, cube, vol, dtype, device, codes="paper", seed=0):
    g = torch.Generator().manual_seed(seed)
    source = (torch.randn(B, 1, vol, vol, vol, generator=g) * 100).to(dtype).to(device)
    origins = torch.randint(0, vol - cube + 1, (B, M, 3), generator=g).to(device)
    if codes == "paper":
        rot = torch.tensor(PAPER_ROTATIONS)[torch.randint(0, 3, (B, M), generator=g)]
    elif codes == "w-moving":  # axis orders that put source W elsewhere (e.g. 90-degree turns)
        moving = [c for c in range(48) if rubikops.rotations.moves_w(c)]
        rot = torch.tensor(moving)[torch.randint(0, len(moving), (B, M), generator=g)]
    else:
        rot = None
    return source, origins, rot.to(device) if rot is not None else None


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
    return timing_of(times)


def timing_of(times: list) -> Timing:
    """Median and p20/p80 spread of measured seconds."""
    times = sorted(times)
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


# The flags of benchmarks/run.py that choose which rows a run measures: runs
# that differ in them are different configurations of the same machine.
CONFIG_FLAGS = ("quick", "full", "variants", "no_e2e", "scale")


def machine_tag(info: dict) -> str:
    """Short machine name for file names: "cpu", or the GPU model ("h100")."""
    gpu = info.get("gpu")
    if not gpu:
        return "cpu"
    model = [t for t in gpu.replace("-", " ").split() if any(c.isdigit() for c in t)]
    return model[0].lower() if model else "gpu"


def result_key(doc: dict) -> tuple:
    """What makes two result files measurements of the same thing: the
    benchmark (absent: run.py), the machine (model, cores) and the
    configuration flags of the run."""
    machine, args = doc["machine"], doc.get("args", {})
    return (doc.get("benchmark"), args.get("device"), machine.get("gpu") or machine.get("cpu"), machine.get("cores"),
            tuple(flag for flag in CONFIG_FLAGS if args.get(flag)))


def write_results(rows: list[Row], device: torch.device, args: dict, directory: str,
                  sections: Optional[dict] = None, benchmark: Optional[str] = None) -> str:
    """Write the run's JSON under `directory`, replacing the file of an
    earlier run of the same benchmark, machine and configuration (see
    `result_key`), so the folder holds the latest run of each.  The new file
    is written to a temporary name and renamed into place before the old one
    is removed: an interrupted run leaves the previous file intact.
    `sections`: more top-level entries (the scale section's floors and
    checks).  `benchmark`: the script's name for scripts other than run.py
    (recorded, and the file name's first part)."""
    os.makedirs(directory, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    doc = {"machine": machine_info(device), "git": git_revision(), "time": stamp, "args": args,
           "rows": [r.to_record() for r in rows], **(sections or {}), **({"benchmark": benchmark} if benchmark else {})}
    key = result_key(doc)
    name = (benchmark.replace("_", "-") + "-" if benchmark else "") + machine_tag(doc["machine"]) + f"-{stamp}" + \
        ("-cuda" if device.type == "cuda" else "") + "".join("-" + flag.replace("_", "-") for flag in key[-1]) + ".json"
    path = os.path.join(directory, name)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    os.replace(tmp, path)
    for other in sorted(os.listdir(directory)):
        other_path = os.path.join(directory, other)
        if other_path == path or not other.endswith(".json"):
            continue
        try:
            with open(other_path) as f:
                same = result_key(json.load(f)) == key
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue  # not a results file of ours: leave it alone
        if same:
            os.remove(other_path)
    return path


def format_extras(rows: list[Row]) -> str:
    """The rows' derived figures (whole puzzle / bare op, steps per second,
    batch generation's share of a step), one line each."""
    lines = []
    for r in rows:
        for key, value in r.extra.items():
            shown = f"{100 * value:.1f}%" if key.startswith("fraction") else f"{value:.2f}"
            lines.append(f"{r.name}: {key.replace('_', ' ')} {shown}")
    return "\n".join(lines)


def load_rows(path: str) -> list[Row]:
    """The rows of a results JSON, as `format_table` takes them."""
    with open(path) as f:
        records = json.load(f)["rows"]
    fields = ("name", "workload", "bytes_moved", "ceiling_gbs", "baseline_s", "extra")
    return [Row(timing=Timing(**r["timing"]), **{k: r[k] for k in fields}) for r in records]


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
