"""Sliding-window inference for volumes larger than the training patch."""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def _starts(n: int, p: int, step: int) -> list:
    if n <= p:
        return [0]
    s = list(range(0, n - p + 1, step))
    if s[-1] != n - p:
        s.append(n - p)  # the last window ends at the border
    return s


@torch.no_grad()
def sliding_window(volume: torch.Tensor, patch: Sequence[int], predict: Callable[[torch.Tensor], torch.Tensor],
                   overlap: float = 0.5, batch: int = 4) -> torch.Tensor:
    """Run ``predict`` on overlapping windows of ``volume`` (N, C, D, H, W)
    and average the outputs where windows overlap (uniform weights).  Volumes
    smaller than the patch along an axis are zero-padded for the window and
    cropped back.  Returns (N, K, D, H, W)."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"sliding_window: overlap must be in [0, 1), got {overlap}")
    N, C, *size = volume.shape
    patch = [min(int(p), n) for p, n in zip(patch, size)]
    steps = [max(1, int(round(p * (1 - overlap)))) for p in patch]
    corners = [(z, y, x) for z in _starts(size[0], patch[0], steps[0]) for y in _starts(size[1], patch[1], steps[1])
               for x in _starts(size[2], patch[2], steps[2])]
    out = count = None
    for i in range(0, len(corners), batch):
        group = corners[i:i + batch]
        windows = torch.cat([volume[:, :, z:z + patch[0], y:y + patch[1], x:x + patch[2]] for z, y, x in group])
        pred = predict(windows).float()
        if out is None:
            out = volume.new_zeros((N, pred.shape[1], *size), dtype=torch.float32)
            count = volume.new_zeros((1, 1, *size), dtype=torch.float32)
        for j, (z, y, x) in enumerate(group):
            out[:, :, z:z + patch[0], y:y + patch[1], x:x + patch[2]] += pred[j * N:(j + 1) * N]
            count[:, :, z:z + patch[0], y:y + patch[1], x:x + patch[2]] += 1
    return out / count
