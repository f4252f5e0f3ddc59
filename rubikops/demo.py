"""`python -m rubikops.demo`: build a batch of Rubik's cube puzzles from head
phantoms with one kernel launch, check the labels by solving the puzzles,
compare the speed with the per-sample NumPy loop, and draw one puzzle."""
from __future__ import annotations

import argparse
import os
import time

import torch

import rubikops
from rubikops.baselines import numpy_puzzle_loop
from rubikops.info import describe
from rubikops.phantom import head_phantom


def _median_time(fn, repeats=7):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m rubikops.demo", description=__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--cube", type=int, default=48)
    p.add_argument("--out", "--picture", dest="out", default=os.path.join("runs", "rubikops_demo.png"),
                   help="where to write the picture of one puzzle, PNG ('' to skip); default: under runs/ in the "
                        "working folder (ignored by git), never inside the package")
    args = p.parse_args(argv)
    if args.batch < 1 or args.cube < 1:
        p.error("--batch and --cube must be positive integers")
    print(describe())
    dev = torch.device(args.device)
    volumes = torch.cat([head_phantom((128, 128, 128), seed=i) for i in range(args.batch)]).unsqueeze(1).to(dev)
    puzzle = rubikops.RubikCube(grid=(2, 2, 2), cube_size=args.cube, num_permutations=100, gap=(0, 10),
                                rotations="paper", mask_prob=0.25, mask_keep_prob=0.3,
                                normalize=("window", -100.0, 200.0))
    g = torch.Generator(device=dev).manual_seed(0)
    out = torch.empty(args.batch, 8, 1, args.cube, args.cube, args.cube, device=dev)
    cubes, targets = puzzle(volumes, generator=g, out=out)
    print(f"\nbatch: cubes {tuple(cubes.shape)} {cubes.dtype} on {cubes.device}; permutation labels "
          f"{targets.permutation[:6].tolist()}...; rotation labels {tuple(targets.rotation.shape)}; "
          f"masked cubes {int(targets.mask.sum())}/{targets.mask.numel()}")

    if args.out:  # before `out` is reused below
        from rubikops.viz import draw_puzzle
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        print(f"picture: {os.path.abspath(draw_puzzle(volumes, cubes, targets, puzzle, args.out))}")

    # Check every label: solving the puzzle must give back the boxes of the grid cells.
    plain = rubikops.RubikCube(grid=(2, 2, 2), cube_size=args.cube, num_permutations=100, gap=(0, 10))
    cubes_plain, t = plain(volumes, generator=torch.Generator(device=dev).manual_seed(1))
    solved = rubikops.solve(cubes_plain, t, plain.permutations)
    order = plain.permutations.to(dev)[t.permutation]
    ok = all(torch.equal(solved[b, int(order[b, m])],
                         volumes[b, :, z:z + args.cube, y:y + args.cube, x:x + args.cube])
             for b in range(args.batch) for m, (z, y, x) in enumerate(t.origins[b].tolist()))
    print(f"labels check (solve puts every cube back in its cell): {'OK' if ok else 'FAILED'}")

    vols_np = volumes.cpu().numpy()
    o, c = t.origins.cpu().numpy(), t.codes.cpu().numpy()
    t_np = _median_time(lambda: numpy_puzzle_loop(vols_np, o, c, args.cube), repeats=3)
    t_ops = _median_time(lambda: plain(volumes, generator=g, out=out))
    print(f"speed, {args.batch} puzzles of 8 x {args.cube}^3: rubikops {t_ops * 1e3:.1f} ms (sampling + one kernel), "
          f"per-sample NumPy loop {t_np * 1e3:.1f} ms: {t_np / t_ops:.1f}x")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
