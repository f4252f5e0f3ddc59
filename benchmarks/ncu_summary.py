"""The numbers of an Nsight Compute log of ``benchmarks/profile_kernels.py`` as a
result file: one entry per profiled launch, labelled with its configuration.

    python benchmarks/ncu_summary.py ncu.log --gpu "NVIDIA H200" --git REV --out docs/results/ncu-h200-STAMP.json

``gpu_check.sh`` (RUBIKOPS_GPU_PROFILE=1) runs Nsight Compute with the sections
and metrics this reads: speed of light, warp state, launch, occupancy, the load
request/sector counters, and the rule messages ("OPT ...", with their estimated
speed-up), which name the measured cause of a gap."""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from profile_kernels import CONFIGS  # noqa: E402

KERNEL = re.compile(r"^\s+\S.*extract_cubes_kernel<(?P<args>[^>]*)>")
METRIC = re.compile(r"^\s{4}(?P<name>[A-Za-z][\w./%() -]*?)\s{2,}(?:(?P<unit>[A-Za-z/%]+)\s+)?(?P<value>[-\d.,]+)\s*$")
RULE = re.compile(r"^\s{4}OPT\s+(?P<head>.*?)\s*$")


def number(text: str) -> float:
    return float(text.replace(",", ""))


def parse(lines: list) -> list:
    """One dict per kernel launch in the log: template arguments, metrics, rule messages."""
    launches, current, rule = [], None, None
    for line in lines:
        m = KERNEL.match(line)
        if m:
            current = {"kernel": f"extract_cubes_kernel<{m['args']}>", "metrics": {}, "rules": []}
            launches.append(current)
            rule = None
            continue
        if current is None:
            continue
        r = RULE.match(line)
        if r:
            rule = {"estimate": r["head"], "text": ""}
            current["rules"].append(rule)
            continue
        if rule is not None and line.startswith(" " * 10) and line.strip():
            rule["text"] = (rule["text"] + " " + line.strip()).strip()
            continue
        rule = None
        m = METRIC.match(line)
        if m and not set(m["name"]) <= set("- "):
            current["metrics"][m["name"].strip()] = number(m["value"])
    return launches


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log", help="the ncu output of profile_kernels.py (ncu.log)")
    p.add_argument("--gpu", required=True, help="the card's name, as nvidia-smi gives it")
    p.add_argument("--git", required=True, help="the revision that was profiled")
    p.add_argument("--time", default="", help="when it ran (UTC stamp)")
    p.add_argument("--out", required=True, help="the JSON to write")
    args = p.parse_args(argv)
    try:
        with open(args.log) as fh:
            launches = parse(fh.read().splitlines())
    except OSError as exc:
        raise SystemExit(f"ncu_summary: cannot read {args.log}: {exc.strerror}") from None
    if len(launches) != len(CONFIGS):
        raise SystemExit(f"ncu_summary: {args.log} holds {len(launches)} profiled launches, expected "
                         f"{len(CONFIGS)} (one per profile_kernels.py configuration)")
    for launch, (dtype, codes) in zip(launches, CONFIGS):
        launch["config"] = f"{str(dtype).replace('torch.', '')} {codes}"
    doc = {"command": "RUBIKOPS_GPU_PROFILE=1 bash benchmarks/gpu_check.sh (ncu on benchmarks/profile_kernels.py)",
           "git": args.git, "time": args.time, "machine": {"gpu": args.gpu},
           "workload": "B=32, 8 cubes of 64^3 from 160^3", "launches": launches}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=1)
    os.replace(tmp, args.out)
    for launch in launches:
        m = launch["metrics"]
        print(f"{launch['config']:>18}: {m.get('Duration', float('nan')):.1f} us, DRAM {m.get('DRAM Throughput', 0):.1f}%, "
              f"occupancy {m.get('Achieved Occupancy', 0):.1f}% (theoretical {m.get('Theoretical Occupancy', 0):.0f}%), "
              f"{m.get('Registers Per Thread', 0):.0f} registers, {len(launch['rules'])} rule messages")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
