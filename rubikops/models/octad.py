"""The Siamese-Octad network of Zhuang et al. (MICCAI 2019): one encoder
shared by the M cubes (run once on the B*M cubes as one batch), each cube's
pooled feature vector concatenated in output order, and separate shallow
heads: K-way permutation logits, rotation logits (2 per cube, sigmoid, for
"paper" rotations; 24-way per cube for "all") and, for Rubik's Cube+, one
mask logit per cube."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _head(cin: int, cout: int, hidden: int, dropout: float) -> nn.Module:
    # One hidden layer: public reimplementations saw deep rotation heads
    # collapse (order accuracy 35% vs 95% with a single hidden layer).
    if hidden <= 0:
        return nn.Linear(cin, cout)
    return nn.Sequential(nn.Linear(cin, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, cout))


def feature_dim(encoder: nn.Module, in_channels: int, cube_size: Sequence[int], pool: str = "avg") -> int:
    """Width of one cube's feature vector, from one small forward pass in eval mode (batch statistics of
    one cube are not defined); a ValueError naming ``cube_size`` when the encoder's pooling reduces such
    a cube to nothing."""
    was = encoder.training
    encoder.eval()
    p = next(encoder.parameters(), None)
    try:
        with torch.no_grad():
            y = encoder(torch.zeros(1, in_channels, *cube_size, device=p.device if p is not None else "cpu"))
    except RuntimeError as exc:
        raise ValueError(f"cube_size {tuple(cube_size)} is too small for the {type(encoder).__name__} encoder "
                         f"({str(exc).splitlines()[0][:160]}); use larger cubes or another encoder") from None
    finally:
        encoder.train(was)
    if pool == "avg" and isinstance(getattr(encoder, "out_channels", None), int):
        return encoder.out_channels
    return _pool(y, pool).shape[1]


POOLS = ("avg", "grid", "flatten")


def _pool(y, pool: str = "avg") -> torch.Tensor:
    """(N, F, d, h, w) -> (N, F) by global average, (N, 8F) by averaging each
    octant ("grid": keeps which half of the cube a feature sits in along
    every axis, the least layout that still tells a turned cube from an
    upright one, since a 180-degree turn swaps octants), or (N, F*d*h*w) by
    flattening."""
    if isinstance(y, (list, tuple)):
        y = y[-1]
    if y.dim() == 5:
        if pool == "avg":
            return y.mean((2, 3, 4))
        if pool == "grid":
            return F.adaptive_avg_pool3d(y, 2).flatten(1)
        return y.flatten(1)
    if y.dim() == 2:
        return y
    raise ValueError(f"encoder output must be (N, F, d, h, w) or (N, F), got {tuple(y.shape)}")


@dataclass
class OctadOutput:
    permutation: torch.Tensor      # (B, K)
    rotation: torch.Tensor         # (B, M, 2) logits ("paper") or (B, M, 24) ("all")
    mask: Optional[torch.Tensor]   # (B, M) logits or None


class SiameseOctad(nn.Module):
    """``cube_heads=True`` (default): the rotation and mask heads are one
    small network shared by the M cubes, each seeing its own cube's feature
    beside the puzzle's mean feature (context, independent of the order).
    Turns and masks are properties of one cube, so a shared head learns
    from M examples per puzzle and needs no slot-by-slot mapping; the
    paper's joint heads (``cube_heads=False``) read all M features at once
    and must learn, for each output slot, which inputs belong to it
    (docs/experiment.md, the pretext study)."""

    def __init__(self, encoder: nn.Module, num_cubes: int, num_permutations: int, *, rotation_mode: str = "paper",
                 mask_head: bool = False, hidden: int = 256, dropout: float = 0.3, in_channels: int = 1,
                 cube_size: Sequence[int] = (32, 32, 32), pool: str = "avg", cube_heads: bool = True):
        super().__init__()
        if rotation_mode not in ("paper", "all", "none"):
            raise ValueError(f"rotation_mode must be 'paper', 'all' or 'none', got {rotation_mode!r}")
        self.encoder = encoder
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.num_cubes, self.rotation_mode, self.pool, self.cube_heads = num_cubes, rotation_mode, pool, cube_heads
        f = feature_dim(encoder, in_channels, cube_size, pool)
        self.permutation_head = _head(num_cubes * f, num_permutations, hidden, dropout)
        per_cube = {"paper": 2, "all": 24, "none": 0}[rotation_mode]
        if cube_heads:
            self.rotation_head = _head(2 * f, per_cube, hidden, dropout) if per_cube else None
            self.mask_head = _head(2 * f, 1, hidden, dropout) if mask_head else None
        else:
            self.rotation_head = _head(num_cubes * f, num_cubes * per_cube, hidden, dropout) if per_cube else None
            self.mask_head = _head(num_cubes * f, num_cubes, hidden, dropout) if mask_head else None

    def forward(self, cubes: torch.Tensor) -> OctadOutput:
        B, M = cubes.shape[:2]
        if M != self.num_cubes:
            raise ValueError(f"SiameseOctad: built for {self.num_cubes} cubes, got {M}")
        feats = _pool(self.encoder(cubes.flatten(0, 1)), self.pool).reshape(B, M, -1)  # cube features in output order
        flat = feats.flatten(1)
        if self.cube_heads:
            per_cube = torch.cat([feats, feats.mean(1, keepdim=True).expand_as(feats)], -1)
            rot = self.rotation_head(per_cube) if self.rotation_head is not None else None
            mask = self.mask_head(per_cube).squeeze(-1) if self.mask_head is not None else None
        else:
            rot = self.rotation_head(flat).view(B, M, -1) if self.rotation_head is not None else None
            mask = self.mask_head(flat) if self.mask_head is not None else None
        if rot is None:
            rot = feats.new_zeros(B, M, 2)
        return OctadOutput(self.permutation_head(flat), rot, mask)


CUBE_LOSSES = ("sum", "mean")


def puzzle_loss(out: OctadOutput, targets, rotation_mode: str = "paper", alpha: float = 1.0, beta: float = 1.0,
                mask_weight: float = 1.0, cube_loss: str = "sum") -> tuple:
    """alpha * permutation CE + beta * rotation loss (+ mask_weight * mask BCE).
    Returns (loss, parts dict of floats-as-tensors).

    ``cube_loss="sum"`` (default): each puzzle's negative log-likelihood of
    its labels.  A cube's turn is one categorical choice (none, horizontal,
    vertical: logits ``(0, h, v)``, or 24 ways for "all") and the M cubes'
    terms are summed, as are the mask terms, so every task weighs what it
    tells per puzzle.  ``"mean"``: the paper's form, two sigmoid
    cross-entropies averaged over cubes and axes; beside the K-way
    permutation CE (ln 24 = 3.2 at the start) it weighs the turns 16 times
    less for 8 cubes, and in the default run the rotation head stayed at
    chance (docs/experiment.md)."""
    if cube_loss not in CUBE_LOSSES:
        raise ValueError(f"cube_loss must be one of {CUBE_LOSSES}, got {cube_loss!r}")
    parts = {"permutation": F.cross_entropy(out.permutation.float(), targets.permutation)}
    summed = cube_loss == "sum"
    if rotation_mode == "paper":
        logits = out.rotation.float()
        if summed:
            state = (targets.rotation[..., 0] + 2 * targets.rotation[..., 1]).long()  # 0 none, 1 H, 2 V
            three = torch.cat([torch.zeros_like(logits[..., :1]), logits], -1)
            parts["rotation"] = F.cross_entropy(three.flatten(0, 1), state.flatten(), reduction="sum") / logits.shape[0]
        else:
            parts["rotation"] = F.binary_cross_entropy_with_logits(logits, targets.rotation)
    elif rotation_mode == "all":
        ce = F.cross_entropy(out.rotation.float().flatten(0, 1), targets.rotation.flatten(),
                             reduction="sum" if summed else "mean")
        parts["rotation"] = ce / out.rotation.shape[0] if summed else ce
    loss = alpha * parts["permutation"] + beta * parts.get("rotation", 0.0)
    if out.mask is not None:
        bce = F.binary_cross_entropy_with_logits(out.mask.float(), targets.mask, reduction="sum" if summed else "mean")
        parts["mask"] = bce / out.mask.shape[0] if summed else bce
        loss = loss + mask_weight * parts["mask"]
    return loss, parts


@torch.no_grad()
def puzzle_metrics(out: OctadOutput, targets, rotation_mode: str = "paper") -> dict:
    """Ordering accuracy (permutation exactly right), orientation accuracy
    (each cube's turn state right: none / horizontal / vertical), mask accuracy."""
    m = {"order_acc": (out.permutation.argmax(1) == targets.permutation).float().mean()}
    if rotation_mode == "paper":
        p = torch.sigmoid(out.rotation.float())
        pred = torch.where(p.max(-1).values > 0.5, p.argmax(-1) + 1, torch.zeros_like(p[..., 0], dtype=torch.long))
        true = (targets.rotation[..., 0] + 2 * targets.rotation[..., 1]).long()  # 0 none, 1 H, 2 V
        m["orient_acc"] = (pred == true).float().mean()
    elif rotation_mode == "all":
        m["orient_acc"] = (out.rotation.argmax(-1) == targets.rotation).float().mean()
    if out.mask is not None:
        m["mask_acc"] = ((out.mask > 0).float() == targets.mask).float().mean()
    return m
