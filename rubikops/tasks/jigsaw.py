"""3D jigsaw puzzles (Taleb et al., NeurIPS 2020, "3D Self-Supervised
Methods for Medical Imaging"): a 3x3x3 grid of cubes with gaps, shuffled by
one of K permutations chosen far apart in Hamming distance; the network
names the permutation.

It is the Rubik's cube puzzle without turns or masks, so it shares
:class:`rubikops.tasks.RubikCube`'s sampler, conventions and network:
``task.permutations`` is (K, 27), output cube ``m`` of sample ``b`` is grid
cell ``permutations[targets.permutation[b], m]`` with cell
``j = (jz * 3 + jy) * 3 + jx``.  The K permutations of 27 cells come from
:func:`rubikops.permutation_set`: max-min Hamming greedy selection from a
pool of 20000 random permutations drawn from ``permutation_seed`` (27! is
far too many to enumerate).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .base import register
from .rubik import RubikCube


@register("jigsaw")
class Jigsaw3D(RubikCube):
    """``cubes, targets = Jigsaw3D(cube_size=16)(volumes, generator=gen)``:
    cubes (B, 27, C, d, h, w), targets a :class:`rubikops.PuzzleTargets` (no
    turns, no masks: ``rotation`` and ``mask`` are zeros)."""

    def __init__(self, cube_size: Union[int, Sequence[int]] = 32, num_permutations: int = 100, *,
                 permutations: Union[None, str, torch.Tensor] = None, permutation_method: str = "maxmin",
                 permutation_seed: int = 0, gap: Union[int, Sequence[int]] = (0, 10), normalize=None,
                 validate: bool = True, backend: Optional[str] = None):
        super().__init__((3, 3, 3), cube_size, num_permutations, permutations=permutations,
                         permutation_method=permutation_method, permutation_seed=permutation_seed, gap=gap,
                         rotations="none", normalize=normalize, validate=validate, backend=backend)

    def chance_levels(self) -> dict:
        return {"order_acc": 1.0 / self.num_permutations}

    def metric_names(self) -> dict:
        return {"order_acc": "ordering"}
