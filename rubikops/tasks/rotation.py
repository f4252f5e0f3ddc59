"""3D rotation prediction (Taleb et al., NeurIPS 2020): one crop per
sample, turned by one of the 24 proper rotations of the cube
(``rotation_axis="all"``) or one of the 4 rotations about one axis
(``"d"``, ``"h"`` or ``"w"``); the network names the rotation.

Conventions: ``targets.rotation[b]`` indexes ``task.rotation_codes``
(rubikops.rotations codes), ``targets.codes[b, 0]`` is that code, and the
cube is ``apply_code(box, code)`` of the box at ``targets.origins[b, 0]``.
A rotation that moves an axis onto another needs equal extents along
both, so the crop must be cubic for "all" and square across the axis for
one axis.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from ..rotations import PROPER_ROTATIONS, decode, preserves_shape
from .base import ClassificationTask, Cut, Targets, as_ints, register

ROTATION_AXES = ("all", "d", "h", "w")


def rotation_codes(rotation_axis: str = "all") -> tuple:
    """The classes: all 24 proper rotations, or the 4 about one axis (those that keep it in place, unflipped)."""
    if rotation_axis == "all":
        return tuple(PROPER_ROTATIONS)
    a = "dhw".index(rotation_axis)
    return tuple(c for c in PROPER_ROTATIONS if decode(c)[0][a] == a and not decode(c)[1][a])


@dataclass(kw_only=True)
class RotationTargets(Targets):
    rotation: torch.Tensor  # (B,) int64 index into task.rotation_codes


@register("rotation")
class RotationPrediction3D(ClassificationTask):
    """``cubes, targets = RotationPrediction3D(cube_size=16)(volumes, generator=gen)``:
    cubes (B, 1, C, d, h, w), targets a :class:`RotationTargets`.  The crop
    lands uniformly over the valid positions of its volume."""

    label_field, metric, metric_word = "rotation", "rotation_acc", "rotation"

    def __init__(self, cube_size: Union[int, Sequence[int]] = 32, *, rotation_axis: str = "all", normalize=None,
                 validate: bool = True, backend: Optional[str] = None):
        super().__init__(normalize=normalize, validate=validate, backend=backend)
        self.cube_size = as_ints(cube_size, 3, f"{self.label}: cube_size")
        if min(self.cube_size) < 1:
            raise ValueError(f"{self.label}: cube_size must be positive, got {self.cube_size}")
        if rotation_axis not in ROTATION_AXES:
            raise ValueError(f"{self.label}: rotation_axis must be one of {ROTATION_AXES}, got {rotation_axis!r}")
        self.rotation_axis = rotation_axis
        self.rotation_codes = rotation_codes(rotation_axis)
        if not all(preserves_shape(c, self.cube_size) for c in self.rotation_codes):
            need = ("a cubic crop" if rotation_axis == "all" else
                    f"a crop square across axis {rotation_axis!r} (equal extents along the other two)")
            raise ValueError(f"{self.label}: rotation_axis={rotation_axis!r} needs {need}, got cube_size "
                             f"{self.cube_size}")
        self.num_classes = len(self.rotation_codes)
        self.num_cubes = 1

    @property
    def crop_size(self) -> tuple:
        return self.cube_size

    def sample(self, batch: int, volume_shapes: torch.Tensor, index: torch.Tensor,
               generator: Optional[torch.Generator] = None):
        """One row of 4 uniforms per sample (crop start per axis, rotation class), on ``index``'s device."""
        dev = index.device
        key = ("codes", str(dev))
        if key not in self._device_cache:
            self._device_cache[key] = (torch.tensor(self.rotation_codes, dtype=torch.int64, device=dev),
                                       torch.tensor(self.cube_size, device=dev))
        codes_table, cube = self._device_cache[key]
        u = torch.rand(batch, 4, generator=generator, device=dev, dtype=torch.float64)
        # floor(u * n) is n only when u rounds up to 1 in the product; the clamp keeps it in range
        span = (volume_shapes[index] - cube + 1).clamp_min(1)
        origins = torch.minimum((u[:, :3] * span).long(), span - 1)[:, None, :]
        rotation = (u[:, 3] * self.num_classes).long().clamp_max(self.num_classes - 1)
        codes = codes_table[rotation][:, None]
        return Cut(origins, codes), RotationTargets(origins=origins, codes=codes, index=index, rotation=rotation)
