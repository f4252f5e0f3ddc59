"""Models Genesis (Zhou et al., MICCAI 2019; MedIA 2021): restore a crop
from a corrupted copy.  Each transformation is applied to a crop with its own
probability, in Models Genesis' order: local voxel shuffling, the non-linear
intensity curve, then in-painting or out-painting.  The target is the
untouched crop and the loss the mean squared error over every voxel.

Probabilities and sizes follow Models Genesis' defaults: shuffling 0.5,
intensity curve 0.9, painting 0.9 of which out-painting 0.8; in-painting
fills up to 5 boxes of 1/6 to 1/3 of the crop per axis with noise (each
further box with probability 0.95), out-painting keeps up to 5 boxes of 3/7
to 4/7 of the crop and fills the rest.  Where they differ: shuffling permutes
the voxels of ``shuffle_fraction`` of the windows of a regular grid of
``shuffle_window``^3 windows (Models Genesis: 10,000 overlapping blocks of
random size up to 1/10 of the crop), which vectorises over the batch.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .. import corruptions as K
from .base import register
from .dense import DenseTask

MAX_BOXES = 5
NEXT_BOX_PROB = 0.95


@register("genesis")
class ModelsGenesis(DenseTask):
    """``inputs, targets = ModelsGenesis(cube_size=32)(volumes, generator=gen)``:
    inputs (B, 1, C, d, h, w) corrupted crops, targets a
    :class:`rubikops.tasks.dense.DenseTargets` with the untouched crop."""

    def __init__(self, cube_size: Union[int, Sequence[int]] = 32, *, shuffle_prob: float = 0.5,
                 curve_prob: float = 0.9, paint_prob: float = 0.9, outpaint_prob: float = 0.8,
                 shuffle_window: int = 4, shuffle_fraction: float = 0.5, normalize=None, validate: bool = True,
                 backend: Optional[str] = None):
        super().__init__(cube_size, normalize=normalize, validate=validate, backend=backend)
        for name, p in (("shuffle_prob", shuffle_prob), ("curve_prob", curve_prob), ("paint_prob", paint_prob),
                        ("outpaint_prob", outpaint_prob), ("shuffle_fraction", shuffle_fraction)):
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                raise ValueError(f"{self.label}: {name} must be a number in [0, 1], got {p!r}")
        if isinstance(shuffle_window, bool) or not isinstance(shuffle_window, int) or shuffle_window < 1:
            raise ValueError(f"{self.label}: shuffle_window must be a positive int, got {shuffle_window!r}")
        self.shuffle_prob, self.curve_prob, self.paint_prob = float(shuffle_prob), float(curve_prob), float(paint_prob)
        self.outpaint_prob, self.shuffle_fraction = float(outpaint_prob), float(shuffle_fraction)
        self.shuffle_window = shuffle_window

    def describe(self) -> str:
        return (f"shuffle {self.shuffle_prob:g} (windows {self.shuffle_window}^3, "
                f"{self.shuffle_fraction:g} of them), curve {self.curve_prob:g}, paint {self.paint_prob:g} "
                f"(out-paint {self.outpaint_prob:g})")

    def draw(self, clean: torch.Tensor, generator: Optional[torch.Generator]) -> dict:
        """Every random number one batch's corruption uses, from ``generator`` on the batch's device."""
        B, dev = clean.shape[0], clean.device
        rand = lambda *shape: torch.rand(*shape, generator=generator, device=dev)  # noqa: E731
        grid = K.window_grid(clean.shape[2:], self.shuffle_window)
        windows = grid[0] * grid[1] * grid[2]
        u = rand(B, 5)
        size = torch.tensor(self.cube_size, device=dev)
        outside = u[:, 4] < self.outpaint_prob
        # in-painting boxes of [s/6, s/3], out-painting keeps boxes of [3s/7, 4s/7] (integer division, as MG)
        lo = torch.where(outside[:, None], size * 3 // 7, size // 6).clamp_min(1)
        hi = torch.maximum(torch.where(outside[:, None], size * 4 // 7, size // 3), lo)
        lo, hi = lo[:, None, :], hi[:, None, :]
        sizes = lo + (rand(B, MAX_BOXES, 3) * (hi - lo + 1)).long().clamp_max(hi - lo)
        corners = (rand(B, MAX_BOXES, 3) * (size - sizes + 1)).long().clamp_max(size - sizes)
        chain = torch.cumprod((rand(B, MAX_BOXES) < NEXT_BOX_PROB).long(), dim=1).bool()
        chain[:, 0] = True
        paint = u[:, 3] < self.paint_prob
        return dict(shuffle=u[:, 0] < self.shuffle_prob, chosen=rand(B, windows) < self.shuffle_fraction,
                    keys=rand(B, windows, self.shuffle_window ** 3),
                    curve=u[:, 1] < self.curve_prob, controls=rand(B, 4), mirrored=u[:, 2] < 0.5,
                    corners=corners, sizes=sizes, active=chain & paint[:, None], outside=outside,
                    noise=rand(*clean.shape))

    def apply(self, clean: torch.Tensor, d: dict) -> torch.Tensor:
        """The corrupted crops for the draws ``d`` (deterministic)."""
        x = K.shuffle_windows(clean, self.shuffle_window, d["chosen"] & d["shuffle"][:, None], d["keys"])
        x = K.intensity_curve(x, d["controls"], d["mirrored"], d["curve"])
        return K.fill_boxes(x, d["corners"], d["sizes"], d["active"], d["noise"], d["outside"])

    def corrupt(self, clean: torch.Tensor, generator: Optional[torch.Generator]) -> tuple:
        weight = torch.ones(1, 1, 1, 1, 1, device=clean.device).expand(clean.shape[0], 1, *clean.shape[2:])
        return self.apply(clean, self.draw(clean, generator)), clean, weight
