"""Masked-volume modelling for 3D CNNs (after MAE, He et al. 2022, and
SparK, Tian et al. 2023, the strongest segmentation pretraining of the
OpenMind/nnssl benchmark): the crop is split into ``patch``^3 patches, a
fraction ``mask_ratio`` of them is set to ``fill`` and the network restores
them; the loss counts the masked voxels only.

What the CNN does with masked patches: it sees them as constant blocks of
``fill`` (0, the volume mean after z-scoring) through ordinary dense
convolutions; no mask channel is added (the encoder keeps the input channels
fine-tuning gives it) and no sparse convolution is used, so convolutions near
a patch border mix visible and masked voxels, and batch-norm statistics
include the masked blocks (the distribution shift SparK's sparse convolutions
avoid).  ``normalized_target=True`` regresses each patch normalised by its own
mean and standard deviation (MAE's ``norm_pix_loss``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .. import corruptions as K
from .base import register
from .dense import DenseTask


@register("masked")
class MaskedVolumeModelling(DenseTask):
    """``inputs, targets = MaskedVolumeModelling(cube_size=32, patch=4)(volumes, generator=gen)``."""

    def __init__(self, cube_size: Union[int, Sequence[int]] = 32, *, patch: int = 4, mask_ratio: float = 0.6,
                 fill: float = 0.0, normalized_target: bool = False, normalize=None, validate: bool = True,
                 backend: Optional[str] = None):
        super().__init__(cube_size, normalize=normalize, validate=validate, backend=backend)
        if isinstance(patch, bool) or not isinstance(patch, int) or patch < 1:
            raise ValueError(f"{self.label}: patch must be a positive int, got {patch!r}")
        try:
            self.grid = K.patch_grid(self.cube_size, patch)
        except ValueError as exc:
            raise ValueError(f"{self.label}: cube_size {self.cube_size}: {exc}") from None
        if isinstance(mask_ratio, bool) or not isinstance(mask_ratio, (int, float)) or not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"{self.label}: mask_ratio must be a number in (0, 1), got {mask_ratio!r}")
        n = self.grid[0] * self.grid[1] * self.grid[2]
        if not 1 <= round(mask_ratio * n) < n:
            raise ValueError(f"{self.label}: mask_ratio {mask_ratio:g} of {n} patches masks {round(mask_ratio * n)}: "
                             "at least one patch must be masked and one kept")
        if isinstance(fill, bool) or not isinstance(fill, (int, float)) or fill != fill or abs(fill) == float("inf"):
            raise ValueError(f"{self.label}: fill must be a finite number, got {fill!r}")
        self.patch, self.mask_ratio, self.fill = patch, float(mask_ratio), float(fill)
        self.normalized_target = bool(normalized_target)

    def describe(self) -> str:
        return (f"patches {self.patch}^3, {self.mask_ratio:g} masked"
                + (", per-patch normalised targets" if self.normalized_target else ""))

    def corrupt(self, clean: torch.Tensor, generator: Optional[torch.Generator]) -> tuple:
        masked = K.choose_patches(clean.shape[0], self.grid, self.mask_ratio, generator, clean.device)
        target = K.normalised_patches(clean, self.patch) if self.normalized_target else clean
        weight = K.patch_voxels(masked, self.patch).to(clean.dtype)
        return K.mask_patches(clean, masked, self.patch, self.fill), target, weight
