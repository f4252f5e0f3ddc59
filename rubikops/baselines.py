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


class NumpyPuzzleDataset(torch.utils.data.Dataset):
    """Puzzles the way public Rubik's cube code makes them: one sample per
    ``__getitem__`` in a DataLoader worker, in NumPy (random crop, per-cube
    jitter, slicing in permuted order, ``np.flip`` per cube).  Same labels
    as :class:`rubikops.RubikCube` with rotations="paper": (cubes, permutation,
    rotation (M, 2)).  For benchmarks: the pipeline rubikops replaces."""

    def __init__(self, volumes, puzzle, length: int = 10**9, seed: int = 0):
        self.volumes = [np.ascontiguousarray(v, dtype=np.float32) for v in volumes]  # each (C, D, H, W)
        self.cube, self.grid, self.pitch = puzzle.cube_size, puzzle.grid, puzzle.pitch
        self.crop, self.jitter = puzzle.crop_size, puzzle.jitter
        self.perms = puzzle.permutations.numpy()
        self.length, self.seed = length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i):
        rng = np.random.default_rng((self.seed, i))
        v = self.volumes[rng.integers(len(self.volumes))]
        start = [rng.integers(0, n - c + 1) for n, c in zip(v.shape[1:], self.crop)]
        k = rng.integers(len(self.perms))
        d, h, w = self.cube
        cells = [(a, b, c) for a in range(self.grid[0]) for b in range(self.grid[1]) for c in range(self.grid[2])]
        state = rng.integers(0, 3, size=len(cells))
        cubes = []
        for m, cell in enumerate(self.perms[k]):
            z, y, x = (s + g * p + rng.integers(0, self.jitter + 1)
                       for s, g, p in zip(start, cells[cell], self.pitch))
            c = v[:, z:z + d, y:y + h, x:x + w]
            if state[m] == 1:
                c = np.flip(c, axis=(1, 3))
            elif state[m] == 2:
                c = np.flip(c, axis=(1, 2))
            cubes.append(np.ascontiguousarray(c))
        rotation = np.stack([state == 1, state == 2], -1).astype(np.float32)
        return torch.from_numpy(np.stack(cubes)), int(k), torch.from_numpy(rotation)
