"""The augmented cut at the default pretraining geometry: resampling each
crop (rubikops.augment.resample_crops, one grid_sample call) and cutting the
puzzle from it, against one extract_cubes(affine=) call that reads the same
cubes through the crop's affine (same puzzles, same output); and the fused
cut with the default IntensityAugment's per-cube intensity stage in the
same call (cube_intensity=), the whole default augmentation in one pass.

    python benchmarks/affine_cut.py                 # CPU, one thread per torch default
    python benchmarks/affine_cut.py --device cuda   # GPU: the fused cut on the CUDA kernel and on Triton

On the GPU the fused cut runs on each backend that reads affine= (the
compiled CUDA kernel, Triton); a backend that refuses it prints a skip line.
Each run writes one JSON (machine, git revision, flags, rows) to
benchmarks/results/ or --results-dir, replacing the earlier affine-cut file
of the same machine and device there (benchmarks/utils.write_results).
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
from rubikops.augment import IntensityAugment, resample_crops, rotation_matrices  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def fused_backends(device: torch.device) -> list[str]:
    """The backends whose fused cut is timed: the compiled kernel of the device, and Triton on a GPU."""
    return ["compiled", "triton"] if device.type == "cuda" else ["compiled"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=16, help="puzzles per step (the default pretraining's 16)")
    ap.add_argument("--cube", type=int, default=16, help="cube edge (default 16; grid 2x2x2, gap 2: 34^3 crops)")
    ap.add_argument("--volume", type=int, default=96, help="edge of the 4 bank volumes")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--no-save", action="store_true", help="do not write a results JSON")
    ap.add_argument("--results-dir", default=RESULTS, metavar="DIR",
                    help="where the results JSON goes (default benchmarks/results); it replaces the affine-cut "
                         "file of an earlier run of the same machine and device there")
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible to torch")
    B, M, edge = args.batch, 8, args.cube
    crop = 2 * edge + 2
    gen = torch.Generator().manual_seed(0)
    source = torch.randn(4, 1, args.volume, args.volume, args.volume, generator=gen)
    shapes = torch.tensor([[args.volume] * 3] * 4)
    offsets = torch.zeros(4, 3, dtype=torch.int64)
    offsets[:, 0] = torch.arange(4) * args.volume
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
    source, shapes, offsets, index, centres, matrices, affine, origins, rotations = (
        t.to(dev) for t in (source, shapes, offsets, index, centres, matrices, affine, origins, rotations))
    storage = source.reshape(1, 1, 4 * args.volume, args.volume, args.volume)  # the bank's packed layout
    out = torch.empty(B, M, 1, edge, edge, edge, device=dev)

    def two_pass():
        crops = resample_crops(storage, shapes, offsets, index, centres, matrices, (crop,) * 3)
        return rubikops.extract_cubes(crops, origins, (edge,) * 3, rotations=rotations, out=out, validate=False)

    # the default IntensityAugment's draws for these unit-variance volumes: contrast, gamma, bias, noise
    intensity = IntensityAugment().draw(B, M, gen).in_units(torch.zeros(B), torch.ones(B)).to(dev)

    def fused(backend, cube_intensity=None):
        return lambda: rubikops.extract_cubes(source, origins, (edge,) * 3, index=index, rotations=rotations,
                                              affine=affine, cube_intensity=cube_intensity, out=out,
                                              validate=False, backend=backend)

    wl = f"B={B} M={M} {edge}^3 cubes from {crop}^3 crops of 4 x {args.volume}^3 f32"
    nbytes = 2 * out.numel() * out.element_size()  # the cut's own reads and writes, as run.py counts a cut
    reference = two_pass().clone()
    t2 = utils.time_fn(two_pass, dev, repeats=args.repeats)
    rows = [utils.Row("grid_sample then cut", wl, t2, nbytes)]
    info = utils.machine_info(dev)
    print(f"{wl}, {info.get('gpu') or info['cpu']}, torch threads {torch.get_num_threads()}")
    print(f"grid_sample then cut: {t2.median_s * 1e3:.3f} ms")
    for backend in fused_backends(dev):
        if backend == "triton" and not rubikops.ops.triton_available():
            print("fused affine cut (triton): skipped, Triton is not loaded")
            continue
        try:
            err = (fused(backend)() - reference).abs().max().item()
        except NotImplementedError as exc:  # a backend without an affine kernel refuses the call
            print(f"fused affine cut ({backend}): skipped, {str(exc).splitlines()[0]}")
            continue
        t1 = utils.time_fn(fused(backend), dev, repeats=args.repeats)
        rows.append(utils.Row(f"fused affine cut ({backend})", wl, t1, nbytes, baseline_s=t2.median_s,
                              extra={"max_abs_difference_to_two_pass": err}))
        print(f"fused affine cut ({backend}): {t1.median_s * 1e3:.3f} ms, {t2.median_s / t1.median_s:.2f}x faster "
              f"than grid_sample then cut; max |difference| {err:.2e}")
        t3 = utils.time_fn(fused(backend, intensity), dev, repeats=args.repeats)
        rows.append(utils.Row(f"fused affine cut + intensity stage ({backend})", wl, t3, nbytes,
                              baseline_s=t2.median_s, extra={"ratio_to_fused_cut": t3.median_s / t1.median_s}))
        print(f"fused affine cut + intensity stage ({backend}): {t3.median_s * 1e3:.3f} ms, "
              f"{t2.median_s / t3.median_s:.2f}x faster than grid_sample then cut (without intensity), "
              f"{t3.median_s / t1.median_s:.2f}x the fused cut alone")
    print()
    print(utils.format_table(rows))
    print("vs base: speed-up against grid_sample then cut.")
    if not args.no_save:
        flags = {k: v for k, v in vars(args).items() if k not in ("results_dir", "no_save")}
        print(f"results: {utils.write_results(rows, dev, flags, args.results_dir, benchmark='affine_cut')}")
    return rows


if __name__ == "__main__":
    main()
