"""Dense pretext tasks: a crop is corrupted and an encoder-decoder (the 3D
U-Net that segmentation fine-tuning uses, :class:`rubikops.models.UNet3D`)
restores it, so the decoder is pretrained with the encoder.

The crop is cut by one ``extract_cubes`` call (normalisation fused); the
corruptions then run on the batch's device as a few tensor passes
(:mod:`rubikops.corruptions`).  They are not fused into the cut: at
pretrain.py's defaults for these tasks (8 crops of 32^3, the VGG U-Net of
width 8, 2-core CPU) batch generation, the cut and every corruption
together, was 3.1% of a training step for masked and 8.3% for genesis
(docs/results/experiment-20261204-pilot.json, each pretraining's summary),
so a fused kernel could save at most that; ``python
benchmarks/dense_share.py`` measures the cut and the corruptions apart.

Conventions: cubes are (B, 1, C, d, h, w), one crop per sample, the corrupted
input; ``targets.target`` (B, C, d, h, w) is the untouched crop (the cut
without corruption) and ``targets.weight`` (B, 1, d, h, w) the voxels the loss
counts (every voxel for restoration, the masked ones for masked modelling).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .. import ops
from .._constants import device_constant
from ..models.transfer import RestorationUNet
from .base import Cut, PretextTask, Targets, as_ints



@dataclass(kw_only=True)
class DenseTargets(Targets):
    target: torch.Tensor     # (B, C, d, h, w) the untouched crop (or its per-patch normalised form)
    weight: torch.Tensor     # (B, 1, d, h, w) float, 1 where the loss counts
    corrupted: torch.Tensor  # (B, C, d, h, w) the network's input (a view of the cubes, no copy)


class DenseTask(PretextTask):
    """One crop per sample, landing uniformly over its volume's valid positions;
    subclasses implement :meth:`corrupt` (and may change the target)."""

    num_cubes = 1
    cuts_into_out = False  # the corrupted inputs are new tensors: __call__(out=) copies them there

    def __init__(self, cube_size: Union[int, Sequence[int]] = 32, *, normalize=None, validate: bool = True,
                 backend: Optional[str] = None):
        super().__init__(normalize=normalize, validate=validate, backend=backend)
        self.cube_size = as_ints(cube_size, 3, f"{self.label}: cube_size")
        if min(self.cube_size) < 1:
            raise ValueError(f"{self.label}: cube_size must be positive, got {self.cube_size}")

    @property
    def crop_size(self) -> tuple:
        return self.cube_size

    def describe(self) -> str:
        return f"crop {self.cube_size}"

    def sample(self, batch: int, volume_shapes: torch.Tensor, index: torch.Tensor,
               generator: Optional[torch.Generator] = None):
        dev = index.device
        u = torch.rand(batch, 3, generator=generator, device=dev, dtype=torch.float64)
        span = (volume_shapes[index] - device_constant(tuple(self.cube_size), dev) + 1).clamp_min(1)
        origins = torch.minimum((u * span).long(), span - 1)[:, None, :]
        codes = torch.zeros(batch, 1, dtype=torch.int64, device=dev)  # code 0: no rotation
        return Cut(origins), Targets(origins=origins, codes=codes, index=index)

    def __call__(self, volumes, index: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                 out: Optional[torch.Tensor] = None, **storage):
        """``inputs, targets = task(volumes, index=None, generator=None)``: inputs
        (B, 1, C, d, h, w) the corrupted crops, targets a :class:`DenseTargets`."""
        crops, cut = super().__call__(volumes, index, generator, None, **storage)
        corrupted, target, weight = self.corrupt(crops[:, 0], generator)
        inputs = corrupted[:, None]
        if out is not None:  # the corruptions make new tensors: the caller's buffer gets a copy
            ops.check_out(out, tuple(inputs.shape), inputs.dtype, inputs.device)
            inputs = out.copy_(inputs)
            corrupted = inputs[:, 0]
        return inputs, DenseTargets(origins=cut.origins, codes=cut.codes, index=cut.index, target=target,
                                                weight=weight, corrupted=corrupted)

    def corrupt(self, clean: torch.Tensor, generator: Optional[torch.Generator]) -> tuple:
        """(corrupted input, target, loss weight) for clean crops (B, C, d, h, w)."""
        raise NotImplementedError

    # -- learning ------------------------------------------------------------------------
    def build_model(self, encoder: torch.nn.Module, *, in_channels: int = 1, norm: str = "batch") -> torch.nn.Module:
        """The segmentation U-Net (same module names as fine-tuning's) with one output per input channel."""
        return RestorationUNet(encoder, in_channels, norm)

    @staticmethod
    def _weighted_mse(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        per_voxel = ((a.float() - b.float()) ** 2).mean(dim=1, keepdim=True)
        return (per_voxel * weight).sum() / weight.sum().clamp_min(1.0)

    def loss(self, outputs, targets) -> tuple:
        mse = self._weighted_mse(outputs, targets.target, targets.weight)
        return mse, {"mse": mse}

    @torch.no_grad()
    def metrics(self, outputs, targets) -> dict:
        """The error of the network, of returning the input unchanged (identity),
        and of predicting one constant, the batch's mean over the counted voxels
        (mean); the headline ``restoration_gain`` is 1 - error / identity error
        (0: no better than the identity, 1: exact)."""
        w = targets.weight
        err = self._weighted_mse(outputs, targets.target, w)
        ident = self._weighted_mse(targets.corrupted, targets.target, w)
        mean = (targets.target.float() * w).sum() / (w.sum() * targets.target.shape[1]).clamp_min(1.0)
        return {"restoration_gain": 1.0 - err / ident.clamp_min(1e-12), "mse": err, "identity_mse": ident,
                "mean_mse": self._weighted_mse(mean.expand_as(targets.target), targets.target, w)}

    def chance_levels(self) -> dict:
        """No accuracy here: the baselines are the identity and mean errors, measured per batch."""
        return {"restoration_gain": None}

    def metric_names(self) -> dict:
        return {"restoration_gain": "restoration gain"}
