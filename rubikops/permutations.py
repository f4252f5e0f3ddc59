"""Permutation sets for the cube-ordering task.

The network classifies which of K permutations shuffled the grid cells, so
the K permutations should be far apart in Hamming distance (the number of
cells they place differently).  Two rules:

- ``"maxmean"``: the greedy rule of the public jigsaw and Rubik's cube code:
  each new permutation maximises the *mean* Hamming distance to those chosen.
  Its 8-cell sets with K = 100 have a minimum pairwise distance of only 2.
- ``"maxmin"`` (default): maximises the *minimum* distance.  For 8 cells it
  starts from PGL(2, 7), the 336 Moebius maps of the projective line over
  GF(7); the group is sharply 3-transitive, so two of its members agree on at
  most 2 of the 8 points: minimum distance 6 for any K <= 336.  Beyond that,
  and for other cell counts, it grows the set greedily (max-min, then
  max-mean as tie-break).
"""
from __future__ import annotations

import functools
import itertools
import math
import os
from typing import Optional

import numpy as np
import torch

METHODS = ("maxmin", "maxmean")
_MAX_EXHAUSTIVE = 9  # up to 9! = 362880 candidates are enumerated; above, sampled


def hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise Hamming distances between rows of a (K, n) and b (L, n)."""
    return (a[:, None, :] != b[None, :, :]).sum(-1)


def min_distance(perms: torch.Tensor) -> int:
    """Smallest Hamming distance between two different rows."""
    d = hamming(perms, perms)
    d.fill_diagonal_(perms.shape[1] + 1)
    return int(d.min())


def pgl2_7() -> np.ndarray:
    """The 336 permutations of the 8 points {0..6, inf=7} given by x -> (ax+b)/(cx+d) over GF(7)."""
    inv = {x: pow(x, 5, 7) for x in range(1, 7)}
    perms = set()
    for a, b, c, d in itertools.product(range(7), repeat=4):
        if (a * d - b * c) % 7 == 0:
            continue
        img = []
        for x in range(8):
            if x == 7:  # image of infinity
                img.append(7 if c == 0 else (a * inv[c]) % 7)
                continue
            den = (c * x + d) % 7
            img.append(7 if den == 0 else ((a * x + b) * inv[den]) % 7)
        perms.add(tuple(img))
    out = np.array(sorted(perms), dtype=np.int64)
    assert out.shape == (336, 8)
    return out


def _candidates(n: int, rng: np.random.Generator, count: int = 20000) -> np.ndarray:
    if n <= _MAX_EXHAUSTIVE:
        return np.array(list(itertools.permutations(range(n))), dtype=np.int64)
    return np.stack([rng.permutation(n) for _ in range(count)]).astype(np.int64)


def _greedy(cands: np.ndarray, k: int, method: str, rng: np.random.Generator,
            start: Optional[np.ndarray] = None) -> np.ndarray:
    n = cands.shape[1]
    chosen = [] if start is None else list(start)
    dmin = np.full(len(cands), n + 1, dtype=np.int64)
    dsum = np.zeros(len(cands), dtype=np.int64)
    taken = np.zeros(len(cands), dtype=bool)
    if not chosen:
        first = int(rng.integers(len(cands)))
        chosen.append(cands[first])
    for p in chosen:
        d = (cands != p[None, :]).sum(1)
        dmin = np.minimum(dmin, d)
        dsum += d
    taken |= dmin == 0
    while len(chosen) < k:
        if method == "maxmean":
            score = dsum.astype(np.float64)
        else:  # max-min, ties broken by max-mean
            score = dmin.astype(np.float64) * (n * (len(chosen) + 1)) + dsum
        score[taken] = -1
        best = np.flatnonzero(score == score.max())
        pick = int(best[0]) if method == "maxmean" else int(rng.choice(best))
        if score[pick] < 0:
            raise ValueError(f"permutation_set: only {len(chosen)} distinct permutations of {n} cells are available")
        p = cands[pick]
        chosen.append(p)
        d = (cands != p[None, :]).sum(1)
        dmin = np.minimum(dmin, d)
        dsum += d
        taken[pick] = True
    return np.stack(chosen)


@functools.lru_cache(maxsize=32)
def _permutation_set_cached(n_cells: int, k: int, method: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if method == "maxmin" and n_cells == 8:
        group = pgl2_7()
        rng.shuffle(group)
        if k <= len(group):
            # A max-mean greedy walk inside the group keeps distance >= 6 and spreads the choice.
            return _greedy(group, k, "maxmean", rng)
        return _greedy(_candidates(8, rng), k, "maxmin", rng, start=group)
    return _greedy(_candidates(n_cells, rng), k, method, rng)


def permutation_set(n_cells: int, k: int, method: str = "maxmin", seed: int = 0) -> torch.Tensor:
    """K permutations of ``n_cells`` cells as a (K, n_cells) int64 tensor.

    Deterministic for a given (n_cells, k, method, seed) and cached in memory.
    """
    if method not in METHODS:
        raise ValueError(f"permutation_set: method must be one of {METHODS}, got {method!r}")
    if not isinstance(n_cells, int) or n_cells < 2:
        raise ValueError(f"permutation_set: n_cells must be an integer >= 2, got {n_cells!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"permutation_set: k must be a positive integer, got {k!r}")
    if k > math.factorial(n_cells) if n_cells <= 20 else False:
        raise ValueError(f"permutation_set: k = {k} exceeds the {math.factorial(n_cells)} permutations of "
                         f"{n_cells} cells")
    return torch.from_numpy(_permutation_set_cached(n_cells, k, method, int(seed)).copy())


def load_permutation_set(path: str | os.PathLike, n_cells: Optional[int] = None) -> torch.Tensor:
    """Load a published set from a ``.npy`` file of shape (K, n_cells) (0- or 1-based)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"permutation set file {path!r} does not exist")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises several types for bad files
        raise ValueError(f"permutation set file {path!r} is not a readable .npy array: {exc}") from exc
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer) and not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"permutation set file {path!r} must hold a 2-D numeric array (K, n_cells), "
                         f"got shape {arr.shape} dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() == 1:  # MATLAB-style, 1-based
        arr = arr - 1
    if n_cells is not None and arr.shape[1] != n_cells:
        raise ValueError(f"permutation set file {path!r} has {arr.shape[1]} cells per permutation, the grid has "
                         f"{n_cells}")
    return check_permutation_set(torch.from_numpy(arr), arr.shape[1], f"permutation set file {path!r}")


def check_permutation_set(perms, n_cells: int, label: str) -> torch.Tensor:
    """``perms`` as a (K, n_cells) int64 tensor, refused (an error starting with
    ``label``) unless it is an integer tensor with K >= 1 rows, each a
    permutation of 0..n_cells-1, none repeated: a row of out-of-range or
    repeated cells would cut the same cell several times, and a repeated row
    makes two classes of one."""
    if not isinstance(perms, torch.Tensor):
        raise TypeError(f"{label} must be a torch.Tensor, got {type(perms).__name__}")
    if perms.dtype == torch.bool or perms.dtype.is_floating_point or perms.dtype.is_complex:
        raise TypeError(f"{label} must be an integer tensor, got {perms.dtype}")
    if perms.dim() != 2 or perms.shape[0] < 1 or perms.shape[1] != n_cells:
        raise ValueError(f"{label} must be (K, {n_cells}) with K >= 1, got shape {tuple(perms.shape)}")
    perms = perms.to(torch.int64).cpu()
    rows_ok = (perms.sort(1).values == torch.arange(n_cells)).all(1)
    if not bool(rows_ok.all()):
        bad = int((~rows_ok).nonzero()[0, 0])
        raise ValueError(f"{label}: row {bad} = {perms[bad].tolist()} is not a permutation of 0..{n_cells - 1}")
    if len(torch.unique(perms, dim=0)) != len(perms):
        raise ValueError(f"{label} holds repeated permutations")
    return perms
