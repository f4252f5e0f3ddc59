"""Launch the CUDA kernel of ``extract_cubes`` once per configuration, for a
profiler to capture (``gpu_check.sh`` with RUBIKOPS_GPU_PROFILE=1 runs it under
Nsight Compute).  The benchmark workload: B=32, 8 cubes of 64^3 from 160^3.

  python benchmarks/profile_kernels.py [--list]

Every configuration runs once as a warm-up, then once more: profile with
``--launch-skip N --launch-count N`` where N = the number of configurations."""
from __future__ import annotations

import argparse

import torch

from utils import make_workload

import rubikops

CONFIGS = [  # (dtype, codes): the rows that miss their targets, and float32 paper as the reference
    (torch.float32, "paper"),
    (torch.bfloat16, "paper"),
    (torch.bfloat16, "w-moving"),
    (torch.float32, "w-moving"),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="print the configurations in launch order and exit")
    args = p.parse_args(argv)
    if args.list:
        for dtype, codes in CONFIGS:
            print(f"{str(dtype).replace('torch.', '')} {codes}")
        return
    if not torch.cuda.is_available() or not rubikops.ops.HAS_CUDA_KERNEL:
        raise SystemExit("profile_kernels: needs a CUDA GPU and the compiled CUDA kernel")
    dev = torch.device("cuda")
    B, M, cube, vol = 32, 8, 64, 160
    calls = []
    for dtype, codes in CONFIGS:
        source, origins, rot = make_workload(B, M, cube, vol, dtype, dev, codes)
        out = torch.empty(B, M, 1, cube, cube, cube, dtype=dtype, device=dev)
        calls.append(lambda s=source, o=origins, r=rot, y=out: rubikops.extract_cubes(
            s, o, (cube,) * 3, rotations=r, validate=False, out=y, backend="compiled"))
    for _ in range(2):  # warm-up pass, then the pass to profile
        for call in calls:
            call()
    torch.cuda.synchronize()
    print(f"profile_kernels: {len(calls)} configurations launched twice")


if __name__ == "__main__":
    main()
