"""What users run today, for benchmarks and the demo: per-sample puzzle
generation in NumPy (as public Rubik's cube code does it) and in torch."""
from __future__ import annotations

import numpy as np
import torch

from .rotations import ROT180_H, ROT180_W, apply_code


def numpy_puzzle_loop(volumes: np.ndarray, origins: np.ndarray, codes: np.ndarray, cube: int) -> torch.Tensor:
    """Slice each cube, ``np.flip`` it for its paper rotation, stack, then batch."""
    batch = []
    for b in range(volumes.shape[0]):
        cubes = []
        for m in range(origins.shape[1]):
            z, y, x = origins[b, m]
            c = volumes[b, :, z:z + cube, y:y + cube, x:x + cube]
            if codes[b, m] == ROT180_H:
                c = np.flip(c, axis=(1, 3))
            elif codes[b, m] == ROT180_W:
                c = np.flip(c, axis=(1, 2))
            cubes.append(c)
        batch.append(np.stack(cubes))
    return torch.from_numpy(np.ascontiguousarray(np.stack(batch)))


def torch_puzzle_loop(source: torch.Tensor, origins: torch.Tensor, codes: torch.Tensor, cube: int) -> torch.Tensor:
    """Per-sample slicing, flip/permute and torch.stack (the naive torch baseline)."""
    o, r = origins.tolist(), codes.tolist()
    batch = []
    for b in range(source.shape[0]):
        cubes = [apply_code(source[b, :, z:z + cube, y:y + cube, x:x + cube], r[b][m])
                 for m, (z, y, x) in enumerate(o[b])]
        batch.append(torch.stack(cubes))
    return torch.stack(batch)
