"""The NumPy per-sample pipeline used as the benchmarks' baseline must make
the same puzzles (labels that solve) as RubikCube, or the comparison is unfair."""
import numpy as np
import torch

import rubikops
from rubikops.baselines import NumpyPuzzleDataset


def test_numpy_dataset_labels_solve_the_puzzle():
    g = np.random.default_rng(0)
    vol = g.normal(size=(1, 40, 42, 38)).astype(np.float32)
    puzzle = rubikops.RubikCube(cube_size=(8, 6, 10), gap=(0, 0), num_permutations=12)
    ds = NumpyPuzzleDataset([vol], puzzle, seed=3)
    seen = set()
    for i in range(25):
        cubes, k, rot = ds[i]
        assert cubes.shape == (8, 1, 8, 6, 10) and rot.shape == (8, 2)
        seen.add(k)
        codes = torch.tensor([[rubikops.ROT180_H if r[0] else rubikops.ROT180_W if r[1] else 0 for r in rot.tolist()]])
        t = rubikops.PuzzleTargets(permutation=torch.tensor([k]), rotation=rot[None], mask=torch.zeros(1, 8),
                                   origins=torch.zeros(1, 8, 3, dtype=torch.long), codes=codes,
                                   index=torch.zeros(1, dtype=torch.long))
        solved = rubikops.assemble(rubikops.solve(cubes[None], t, puzzle.permutations), puzzle.grid)[0, 0]
        # with no gap the solved puzzle is one contiguous box of the volume: find it
        d, h, w = solved.shape
        hits = [(z, y, x) for z in range(41 - d) for y in range(43 - h) for x in range(39 - w)
                if np.array_equal(vol[0, z:z + d, y:y + h, x:x + w], solved.numpy())]
        assert len(hits) == 1
    assert len(seen) > 6
