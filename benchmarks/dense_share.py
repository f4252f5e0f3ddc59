"""The dense tasks' batch generation against their training step, in one run.

    python benchmarks/dense_share.py            # genesis and masked at pretrain.py's defaults
    python benchmarks/dense_share.py --out docs/results/dense-share-DATE.json   # and keep the result

For each task at train/pretrain.py's default geometry for it (8 crops of
32^3 from 4 phantom heads, the VGG U-Net of width 8), the median over 20
steps of: the cut alone (one extract_cubes call), the cut plus the
corruptions (what a fused kernel could replace), and the whole training step
(batch, forward, backward, optimiser).  Prints each as a share of the step:
the bound on what fusing the corruptions into the cut could save.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import utils  # noqa: E402

import rubikops
from rubikops.data import atomic_path
from rubikops.phantom import head_phantom
from rubikops.tasks import get

STEPS, WARMUP = 20, 3


def median_ms(fn, steps=STEPS) -> float:
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/dense_share.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the rows, command, git revision and machine to this JSON file")
    args = parser.parse_args(argv)
    if args.out and os.path.exists(args.out):
        parser.error(f"--out {args.out}: exists already; choose a new name (nothing was overwritten)")
    rows = []
    vols = torch.stack([head_phantom((80, 80, 80), seed=s) for s in range(4)])
    vols = (vols - vols.mean()) / vols.std()  # z-scored, as pretrain.py gives them
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 8 crops of 32^3, VGG U-Net width 8")
    for name in ("genesis", "masked"):
        task = get(name)(cube_size=32)
        model = task.build_model(rubikops.models.build_encoder("vgg", 1, 8, "batch"))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        index = lambda: torch.randint(0, 4, (8,), generator=gen)  # noqa: E731

        def cut():
            src = task.source(vols)
            i = index()
            return task.cut(src, i, task.sample(8, src.shapes, i, gen)[0])

        def step():
            x, t = task(vols, index(), gen)
            loss, _ = task.loss(model(x), t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        t_cut, t_batch, t_step = median_ms(cut), median_ms(lambda: task(vols, index(), gen)), median_ms(step)
        rows.append({"task": name, "cut_ms": t_cut, "cut_and_corruptions_ms": t_batch, "step_ms": t_step,
                     "cut_share": t_cut / t_step, "batch_share": t_batch / t_step})
        print(f"{name:8s} cut {t_cut:7.2f} ms ({100 * t_cut / t_step:4.1f}% of the step), cut + corruptions "
              f"{t_batch:7.2f} ms ({100 * t_batch / t_step:4.1f}%), step {t_step:8.2f} ms")
    if args.out:
        doc = {"command": "python benchmarks/dense_share.py", "git_revision": utils.git_revision(),
               "machine": utils.machine_info(torch.device("cpu")), "load_average_1min": os.getloadavg()[0],
               "seed": 0, "steps": STEPS, "rows": rows}
        with atomic_path(args.out) as tmp, open(tmp, "w") as fh:
            json.dump(doc, fh, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
