"""The augmented cut at the default pretraining geometry: resampling each
crop (rubikops.augment.resample_crops, one grid_sample call) and cutting the
puzzle from it, against one extract_cubes(affine=) call that reads the same
cubes through the crop's affine (same puzzles, same output).

    python benchmarks/affine_cut.py            # CPU, one thread per torch default
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import utils  # noqa: E402

import rubikops  # noqa: E402
from rubikops.augment import resample_crops, rotation_matrices  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16, help="puzzles per step (the default pretraining's 16)")
    ap.add_argument("--cube", type=int, default=16, help="cube edge (default 16; grid 2x2x2, gap 2: 34^3 crops)")
    ap.add_argument("--volume", type=int, default=96, help="edge of the 4 bank volumes")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)
    B, M, edge = args.batch, 8, args.cube
    crop = 2 * edge + 2
    gen = torch.Generator().manual_seed(0)
    source = torch.randn(4, 1, args.volume, args.volume, args.volume, generator=gen)
    shapes = torch.tensor([[args.volume] * 3] * 4)
    offsets = torch.zeros(4, 3, dtype=torch.int64)
    offsets[:, 0] = torch.arange(4) * args.volume
    storage = source.reshape(1, 1, 4 * args.volume, args.volume, args.volume)  # the bank's packed layout
    index = torch.randint(0, 4, (B,), generator=gen)
    half = torch.full((3,), (crop - 1) / 2, dtype=torch.float64)
    centres = half + torch.rand(B, 3, generator=gen, dtype=torch.float64) * (args.volume - 1 - 2 * half)
    angles = (torch.rand(B, 3, generator=gen, dtype=torch.float64) * 2 - 1) * math.radians(10.0)
    zoom = torch.exp(math.log(0.9) + torch.rand(B, generator=gen, dtype=torch.float64) * math.log(1.1 / 0.9))
    matrices = rotation_matrices(angles) * zoom[:, None, None]
    affine = torch.cat([matrices, (centres - (matrices @ half[:, None]).squeeze(-1))[..., None]], -1)
    cells = torch.tensor([[z, y, x] for z in (0, 1) for y in (0, 1) for x in (0, 1)]) * (edge + 2)
    origins = cells.expand(B, M, 3).contiguous()
    rotations = torch.randint(0, 24, (B, M), generator=gen)
    out = torch.empty(B, M, 1, edge, edge, edge)

    def two_pass():
        crops = resample_crops(storage, shapes, offsets, index, centres, matrices, (crop,) * 3)
        return rubikops.extract_cubes(crops, origins, (edge,) * 3, rotations=rotations, out=out, validate=False)

    def fused():
        return rubikops.extract_cubes(source, origins, (edge,) * 3, index=index, rotations=rotations, affine=affine,
                                      out=out, validate=False)

    err = (two_pass().clone() - fused()).abs().max().item()
    dev = torch.device("cpu")
    t2 = utils.time_fn(two_pass, dev, repeats=args.repeats)
    t1 = utils.time_fn(fused, dev, repeats=args.repeats)
    print(f"B={B} M={M} {edge}^3 cubes from {crop}^3 crops of 4 x {args.volume}^3 float32, "
          f"torch threads {torch.get_num_threads()}; max |difference| {err:.2e}")
    print(f"grid_sample then cut: {t2.median_s * 1e3:.2f} ms; fused affine cut: {t1.median_s * 1e3:.2f} ms; "
          f"fused is {t2.median_s / t1.median_s:.2f}x faster")


if __name__ == "__main__":
    main()
