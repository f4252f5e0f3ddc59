"""The Rubik's cube puzzle (Zhuang et al., MICCAI 2019) and Rubik's Cube+
(Zhu et al., MedIA 2020), sampled on the batch's device and cut with one
``extract_cubes`` call.

Conventions (normative, so labels can be checked):

- grid cell ``j = (jz * gy + jy) * gx + jx``;
- ``puzzle.permutations`` is (K, M) int64 and output cube ``m`` of sample ``b``
  is grid cell ``permutations[targets.permutation[b], m]``;
- ``rotations="paper"``: ``targets.rotation`` is (B, M, 2) float, (horizontal,
  vertical): cube m is ``ROT180_H`` of its box when ``rotation[b, m, 0] == 1``,
  ``ROT180_W`` when ``rotation[b, m, 1] == 1``, never both;
  ``rotations="all"``: (B, M) int64 index into ``rubikops.PROPER_ROTATIONS``;
- ``targets.mask[b, m] == 1`` marks a masked cube;
- ``targets.origins`` is the (B, M, 3) tensor given to ``extract_cubes``.

Geometry: along each axis, cells have pitch ``cube + lo + J`` with
``J = (hi - lo) // 2``; each cube sits at a uniform offset in [0, J] inside its
cell, so the gap between neighbouring cubes is in [lo, hi] (the paper: about
10 voxels).  The whole crop lands uniformly over the valid positions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Real
from typing import Optional, Sequence, Union

import torch

from .. import ops
from ..models.octad import SiameseOctad, puzzle_loss, puzzle_metrics
from ..permutations import check_permutation_set, load_permutation_set, permutation_set
from ..rotations import PAPER_ROTATIONS, PROPER_ROTATIONS, apply_code, inverse
from .base import Cut, PretextTask, as_ints, make_generator, register

ROTATION_MODES = ("paper", "all", "none")


@dataclass
class PuzzleTargets:
    """Labels of a batch of puzzles (all on the batch's device)."""

    permutation: torch.Tensor  # (B,) int64 index into puzzle.permutations
    rotation: torch.Tensor     # (B, M, 2) float for "paper"/"none", (B, M) int64 for "all"
    mask: torch.Tensor         # (B, M) float, 1 = masked
    origins: torch.Tensor      # (B, M, 3) int64, box corners in output order
    codes: torch.Tensor        # (B, M) int64 rotation codes applied (rubikops.rotations)
    index: torch.Tensor        # (B,) int64 volume of each sample

    def to(self, device) -> "PuzzleTargets":
        return PuzzleTargets(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class GridGeometry:
    """Cubes on a grid of cells with gaps (shared by the grid tasks): ``grid``,
    ``cube_size`` and ``gap`` set by the task; see the module docstring."""

    grid: tuple
    cube_size: tuple
    gap: tuple

    def _set_geometry(self, grid, cube_size, gap) -> None:
        self.grid = as_ints(grid, 3, f"{self.label}: grid")
        if min(self.grid) < 1 or self.num_cells < 2:
            raise ValueError(f"{self.label}: grid needs at least two cells, got {self.grid}")
        self.cube_size = as_ints(cube_size, 3, f"{self.label}: cube_size")
        if min(self.cube_size) < 1:
            raise ValueError(f"{self.label}: cube_size must be positive, got {self.cube_size}")
        lo, hi = as_ints(gap, 2, f"{self.label}: gap")
        if not 0 <= lo <= hi:
            raise ValueError(f"{self.label}: gap must be an int >= 0 or (lo, hi) with 0 <= lo <= hi, got {gap!r}")
        self.gap = (lo, hi)

    @property
    def num_cells(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def jitter(self) -> int:
        return (self.gap[1] - self.gap[0]) // 2

    @property
    def pitch(self) -> tuple[int, int, int]:
        return tuple(c + self.gap[0] + self.jitter for c in self.cube_size)

    @property
    def crop_size(self) -> tuple[int, int, int]:
        """Extent of the region one puzzle covers (the volume must be at least this big)."""
        return tuple((g - 1) * p + c + self.jitter for g, p, c in zip(self.grid, self.pitch, self.cube_size))

    def cell_corners(self) -> torch.Tensor:
        """(num_cells, 3) corner of each cell in the crop, cell j = (jz * gy + jy) * gx + jx."""
        cells = torch.stack(torch.meshgrid(*[torch.arange(g) for g in self.grid], indexing="ij"), -1).view(-1, 3)
        return cells * torch.tensor(self.pitch)


@register("rubik")
class RubikCube(GridGeometry, PretextTask):
    """Sample Rubik's cube puzzles from a batch (or bank) of volumes.

    ``cubes, targets = puzzle(volumes, index=None, generator=None, out=None)``
    returns the cubes (B, M, C, d, h, w) and :class:`PuzzleTargets`.

    Sampling never syncs with the device.  ``validate=True`` (default) also
    checks indices and per-volume shapes against the puzzle, which reads them
    back (one sync per call on GPU); training loops pass ``validate=False``
    once their data is known good (the kernels still never read out of bounds).
    """

    def __init__(
        self,
        grid: Sequence[int] = (2, 2, 2),
        cube_size: Union[int, Sequence[int]] = 32,
        num_permutations: int = 100,
        *,
        permutations: Union[None, str, torch.Tensor] = None,
        permutation_method: str = "maxmin",
        permutation_seed: int = 0,
        gap: Union[int, Sequence[int]] = (0, 10),
        rotations: str = "paper",
        mask_prob: float = 0.0,
        mask_keep_prob: float = 0.0,
        mask_fill: float = 0.0,
        normalize=None,
        validate: bool = True,
        backend: Optional[str] = None,
    ):
        self._set_geometry(grid, cube_size, gap)
        if rotations not in ROTATION_MODES:
            raise ValueError(f"{self.label}: rotations must be one of {ROTATION_MODES}, got {rotations!r}")
        if rotations == "all" and len(set(self.cube_size)) != 1:
            raise ValueError(f"{self.label}: rotations='all' needs cubic cubes, got cube_size {self.cube_size}")
        self.rotation_mode = rotations
        for name, p in (("mask_prob", mask_prob), ("mask_keep_prob", mask_keep_prob), ("mask_fill", mask_fill)):
            if not isinstance(p, Real) or isinstance(p, bool):
                raise TypeError(f"{self.label}: {name} must be a number, got {p!r}")
            if name != "mask_fill" and not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{self.label}: {name} must be in [0, 1], got {p!r}")
        if not math.isfinite(float(mask_fill)):
            raise ValueError(f"{self.label}: mask_fill must be finite, got {mask_fill!r}")
        self.mask_prob, self.mask_keep_prob, self.mask_fill = float(mask_prob), float(mask_keep_prob), float(mask_fill)
        super().__init__(normalize=normalize, validate=validate, backend=backend)
        if isinstance(permutations, torch.Tensor):
            perms = check_permutation_set(permutations, self.num_cells, f"{self.label}: permutations")
        elif isinstance(permutations, str):
            perms = load_permutation_set(permutations, self.num_cells)
        elif permutations is None:
            (count,) = as_ints(num_permutations, 1, f"{self.label}: num_permutations")
            perms = permutation_set(self.num_cells, count, permutation_method, permutation_seed)
        else:
            raise TypeError(f"{self.label}: permutations must be None, a .npy path or a tensor, got "
                            f"{type(permutations)}")
        self.permutations = perms
        self._keep_seeds_drawn = 0  # feeds the keep-mask seed (see op_seed)

    @property
    def num_permutations(self) -> int:
        return self.permutations.shape[0]

    @property
    def num_cubes(self) -> int:
        return self.permutations.shape[1]

    def _on(self, device):
        key = str(device)
        if key not in self._device_cache:
            codes = {"paper": PAPER_ROTATIONS, "all": PROPER_ROTATIONS, "none": ()}[self.rotation_mode]
            self._device_cache[key] = dict(
                perms=self.permutations.to(device),
                cells=self.cell_corners().to(device),
                # rotation code of each drawn state (none drawn for "none")
                code_table=torch.tensor(codes, dtype=torch.int64, device=device),
                # rotation target per paper state: 0 none, 1 horizontal, 2 vertical
                paper_targets=torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], device=device),
            )
        return self._device_cache[key]

    # -- sampling ------------------------------------------------------------------------
    def sample(self, batch: int, volume_shapes: torch.Tensor, index: torch.Tensor,
               generator: Optional[torch.Generator] = None):
        """Draw puzzle parameters on ``index``'s device (no host sync).

        ``volume_shapes``: (N, 3) spatial extents of the volumes (same device).
        Returns ``(Cut, targets)``.

        One uniform draw per batch and one ``rubikops::sample_puzzle`` call
        turn it into every choice (crop start, jitter, permutation, rotation
        state, mask), and two more shape the labels: four small launches
        where the plain-torch sampler took fifteen, which is what a GPU batch
        waited on (docs/performance.md)."""
        dev = index.device
        c = self._on(dev)
        M = self.permutations.shape[1]
        n = ops.sample_puzzle_row_size(self.num_cells, M, c["code_table"].numel() > 0, self.mask_prob > 0)
        u = torch.rand(batch, n, generator=generator, device=dev, dtype=torch.float64)
        origins, codes, perm, state, mask = ops.sample_puzzle(
            u, volume_shapes, index, c["cells"], c["perms"], c["code_table"], self.crop_size, self.jitter,
            self.mask_prob, backend=self.backend)
        if self.rotation_mode == "paper":
            rotation = c["paper_targets"][state]
        elif self.rotation_mode == "all":
            rotation = state
        else:
            rotation = torch.zeros(batch, M, 2, device=dev)
        targets = PuzzleTargets(permutation=perm, rotation=rotation, mask=mask.float(), origins=origins,
                                codes=codes, index=index)
        # codes are given even when all are the identity, so targets.codes is exactly what the op was given
        cut = Cut(origins, codes, mask if self.mask_prob > 0 else None)
        return cut, targets

    def op_seed(self, seed: Optional[int], generator: Optional[torch.Generator]) -> int:
        if seed is None and self.mask_keep_prob > 0:
            # Host-side, so no device sync: the generator's seed and the number
            # of seeds drawn so far, mixed (reproducible for the same seed and calls).
            base = generator.initial_seed() if generator is not None else torch.initial_seed()
            self._keep_seeds_drawn += 1
            seed = make_generator(base, rank=self._keep_seeds_drawn).initial_seed()
        return 0 if seed is None else seed

    def state_dict(self) -> dict:
        return {"keep_seeds_drawn": self._keep_seeds_drawn}

    def load_state_dict(self, state: dict) -> None:
        unknown = set(state) - {"keep_seeds_drawn"}
        if unknown:
            raise ValueError(f"{self.label}: load_state_dict got unknown keys {sorted(unknown)}")
        self._keep_seeds_drawn = int(state.get("keep_seeds_drawn", 0))

    # -- learning ------------------------------------------------------------------------
    def build_model(self, encoder, *, in_channels: int = 1, hidden: int = 256, dropout: float = 0.3,
                    pool: str = "avg", cube_heads: bool = True):
        """The Siamese-Octad network (:class:`rubikops.models.SiameseOctad`)."""
        return SiameseOctad(encoder, self.num_cells, self.num_permutations, rotation_mode=self.rotation_mode,
                            mask_head=self.mask_prob > 0, hidden=hidden, dropout=dropout, in_channels=in_channels,
                            cube_size=self.cube_size, pool=pool, cube_heads=cube_heads)

    def loss(self, outputs, targets, *, alpha: float = 1.0, beta: float = 1.0, mask_weight: float = 1.0,
             cube_loss: str = "sum") -> tuple:
        """:func:`rubikops.models.puzzle_loss`: alpha * ordering + beta * turns (+ mask_weight * masks)."""
        return puzzle_loss(outputs, targets, self.rotation_mode, alpha, beta, mask_weight, cube_loss)

    def metrics(self, outputs, targets) -> dict:
        return puzzle_metrics(outputs, targets, self.rotation_mode)

    def chance_levels(self) -> dict:
        return {"order_acc": 1.0 / self.num_permutations,
                "orient_acc": {"paper": 1 / 3, "all": 1 / 24}.get(self.rotation_mode),
                "mask_acc": max(self.mask_prob, 1 - self.mask_prob) if self.mask_prob > 0 else None}

    def metric_names(self) -> dict:
        return {"order_acc": "ordering", "orient_acc": "orientation", "mask_acc": "masking"}

    def trained_metrics(self, alpha: float = 1.0, beta: float = 1.0, mask_weight: float = 1.0, **_) -> dict:
        return {"order_acc": alpha > 0, "orient_acc": beta > 0 and self.rotation_mode != "none",
                "mask_acc": mask_weight > 0 and self.mask_prob > 0}


def solve(cubes: torch.Tensor, targets: PuzzleTargets, permutations: torch.Tensor) -> torch.Tensor:
    """Undo rotations and permutation: returns (B, n_cells, C, d, h, w) with each
    cube back in its grid cell (cell j = (jz * gy + jy) * gx + jx)."""
    B, M = cubes.shape[:2]
    order = permutations.to(cubes.device)[targets.permutation]  # (B, M)
    solved = torch.empty_like(cubes)
    codes = targets.codes.tolist()
    for b in range(B):
        for m in range(M):
            solved[b, int(order[b, m])] = apply_code(cubes[b, m], inverse(codes[b][m]))
    return solved


def assemble(solved: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Tile solved cells (B, n_cells, C, d, h, w) into (B, C, gz*d, gy*h, gx*w) without gaps."""
    B, n, C, d, h, w = solved.shape
    gz, gy, gx = grid
    x = solved.view(B, gz, gy, gx, C, d, h, w).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(B, C, gz * d, gy * h, gx * w)
