"""3D relative patch location (Taleb et al., NeurIPS 2020, after Doersch
et al. 2015 in 2D): the centre cube of a 3x3x3 grid and one of its 26
neighbours; the network names which neighbour.

Geometry as :class:`rubikops.tasks.RubikCube`'s (pitch ``cube + lo + J``,
each cube at a uniform offset in [0, J] inside its cell, so the gap is in
[lo, hi] and the network cannot match edges).  Output cube 0 is the centre
(grid cell 13), cube 1 the neighbour, grid cell ``NEIGHBOUR_CELLS[location]``
with cell ``j = (jz * 3 + jy) * 3 + jx``; its direction from the centre is
``NEIGHBOUR_DIRECTIONS[location]`` (each component -1, 0 or 1, in (z, y, x)).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .base import ClassificationTask, Cut, Targets, register
from .rubik import GridGeometry

CENTRE_CELL = 13
NEIGHBOUR_CELLS = tuple(j for j in range(27) if j != CENTRE_CELL)
NEIGHBOUR_DIRECTIONS = tuple((j // 9 - 1, j // 3 % 3 - 1, j % 3 - 1) for j in NEIGHBOUR_CELLS)


@dataclass(kw_only=True)
class LocationTargets(Targets):
    location: torch.Tensor  # (B,) int64 index into NEIGHBOUR_CELLS


@register("relative_location")
class RelativePatchLocation3D(GridGeometry, ClassificationTask):
    """``cubes, targets = RelativePatchLocation3D(cube_size=16)(volumes, generator=gen)``:
    cubes (B, 2, C, d, h, w) (centre, neighbour), targets a :class:`LocationTargets`."""

    label_field, metric, metric_word = "location", "location_acc", "location"
    num_cubes = 2
    num_classes = len(NEIGHBOUR_CELLS)

    def __init__(self, cube_size: Union[int, Sequence[int]] = 32, *, gap: Union[int, Sequence[int]] = (0, 10),
                 normalize=None, validate: bool = True, backend: Optional[str] = None):
        super().__init__(normalize=normalize, validate=validate, backend=backend)
        self._set_geometry((3, 3, 3), cube_size, gap)

    def sample(self, batch: int, volume_shapes: torch.Tensor, index: torch.Tensor,
               generator: Optional[torch.Generator] = None):
        """One row of 10 uniforms per sample (crop start per axis, two cubes' jitters, the neighbour),
        on ``index``'s device."""
        dev = index.device
        key = ("geometry", str(dev))
        if key not in self._device_cache:
            self._device_cache[key] = (self.cell_corners().to(dev), torch.tensor(self.crop_size, device=dev),
                                       torch.tensor(NEIGHBOUR_CELLS, device=dev))
        corners, crop, neighbour_cells = self._device_cache[key]
        u = torch.rand(batch, 10, generator=generator, device=dev, dtype=torch.float64)
        # floor(u * n) is n only when u rounds up to 1 in the product; the clamps keep it in range
        span = (volume_shapes[index] - crop + 1).clamp_min(1)
        start = torch.minimum((u[:, :3] * span).long(), span - 1)
        jitter = (u[:, 3:9] * (self.jitter + 1)).long().clamp_max(self.jitter).view(batch, 2, 3)
        location = (u[:, 9] * self.num_classes).long().clamp_max(self.num_classes - 1)
        cells = torch.stack([torch.full_like(location, CENTRE_CELL), neighbour_cells[location]], 1)  # (B, 2)
        origins = start[:, None, :] + corners[cells] + jitter
        codes = torch.zeros(batch, 2, dtype=torch.int64, device=dev)
        return Cut(origins, codes), LocationTargets(origins=origins, codes=codes, index=index, location=location)
