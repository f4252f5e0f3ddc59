"""A Siamese classifier for the pretext tasks whose label is one class per
sample (rotation, relative patch location): the encoder
runs once on the B*M cubes as one batch, each cube's pooled feature vector
is concatenated in output order, and one shallow head gives K logits."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .octad import POOLS, _head, _pool, feature_dim


class SiameseClassifier(nn.Module):
    """``logits = model(cubes)``: cubes (B, M, C, d, h, w) -> (B, num_classes)."""

    def __init__(self, encoder: nn.Module, num_cubes: int, num_classes: int, *, hidden: int = 256,
                 dropout: float = 0.3, in_channels: int = 1, cube_size: Sequence[int] = (32, 32, 32),
                 pool: str = "avg"):
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
        self.encoder, self.num_cubes, self.pool = encoder, num_cubes, pool
        f = feature_dim(encoder, in_channels, cube_size, pool)
        self.head = _head(num_cubes * f, num_classes, hidden, dropout)

    def forward(self, cubes: torch.Tensor) -> torch.Tensor:
        B, M = cubes.shape[:2]
        if M != self.num_cubes:
            raise ValueError(f"SiameseClassifier: built for {self.num_cubes} cubes, got {M}")
        feats = _pool(self.encoder(cubes.flatten(0, 1)), self.pool).reshape(B, -1)
        return self.head(feats)
