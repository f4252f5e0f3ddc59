"""Puzzle-generation pipelines users run today, timed per batch against
rubikops: per-sample NumPy in one process and in a DataLoader with worker
processes (public Rubik's cube code), and MONAI array transforms doing the
same crops and flips (when MONAI is installed)."""
from __future__ import annotations

import torch

import utils

from rubikops.baselines import NumpyPuzzleDataset


def _loader_batches(ds, batch: int, workers: int):
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers,
                                         persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    it = iter(loader)
    return lambda: next(it)


def monai_puzzle_batch(volumes: torch.Tensor, origins: torch.Tensor, codes: torch.Tensor, cube: int):
    """Per sample and cube: monai.transforms.SpatialCrop, then Flip for a turned cube, then stack."""
    from monai.transforms import Flip, SpatialCrop
    from rubikops.rotations import ROT180_H, ROT180_W
    flip_h, flip_w = Flip(spatial_axis=(0, 2)), Flip(spatial_axis=(0, 1))
    o, r = origins.tolist(), codes.tolist()
    batch = []
    for b in range(volumes.shape[0]):
        cubes = []
        for m, (z, y, x) in enumerate(o[b]):
            c = SpatialCrop(roi_start=(z, y, x), roi_end=(z + cube, y + cube, x + cube))(volumes[b])
            if r[b][m] == ROT180_H:
                c = flip_h(c)
            elif r[b][m] == ROT180_W:
                c = flip_w(c)
            cubes.append(torch.as_tensor(c))
        batch.append(torch.stack(cubes))
    return torch.stack(batch)


def pipeline_rows(dev, source, origins, rot, puzzle, cube: int, nbytes: int, base_s: float, ceiling, rep: int,
                  workers: int = 2) -> list:
    B = source.shape[0]
    wl = f"B={B} M=8 {cube}^3 from {source.shape[-1]}^3 f32 puzzles"
    vols = [source[i].cpu().numpy() for i in range(B)]
    ds = NumpyPuzzleDataset(vols, puzzle)
    rows = []
    t = utils.time_fn(_loader_batches(ds, B, 0), torch.device("cpu"), warmup=1, repeats=max(3, rep // 3))
    rows.append(utils.Row("baseline: NumPy per-sample puzzles, 1 process", wl, t, nbytes, baseline_s=base_s))
    t = utils.time_fn(_loader_batches(ds, B, workers), torch.device("cpu"), warmup=3, repeats=max(5, rep))
    rows.append(utils.Row(f"baseline: same in a DataLoader, {workers} workers", wl, t, nbytes, baseline_s=base_s))
    try:
        import monai  # noqa: F401
    except ImportError:
        print("note: MONAI is not installed; the MONAI row is skipped (pip install monai)")
        return rows
    t = utils.time_fn(lambda: monai_puzzle_batch(source, origins, rot, cube), dev, warmup=1, repeats=max(3, rep // 3))
    rows.append(utils.Row("baseline: MONAI SpatialCrop + Flip per cube", wl, t, nbytes, ceiling, base_s))
    return rows
