"""Segmentation training on sparsely labelled volumes: voxels marked
``UNLABELLED`` (e.g. outside the annotated slices of a partly labelled scan)
carry no loss, and training patches are placed where labels are."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# the label of a voxel without annotation: no loss, no Dice
UNLABELLED = -1


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weights=None) -> torch.Tensor:
    """Cross-entropy plus the soft Dice loss of the foreground classes, both over the labelled voxels only
    (``target != UNLABELLED``); logits (N, C, X, Y, Z), target (N, X, Y, Z)."""
    ce = F.cross_entropy(logits.float(), target, weight=weights, ignore_index=UNLABELLED)
    labelled = (target != UNLABELLED).unsqueeze(1).float()
    prob = torch.softmax(logits.float(), 1) * labelled
    onehot = F.one_hot(target.clamp(min=0), prob.shape[1]).movedim(-1, 1).float() * labelled
    inter = (prob * onehot).sum((0, 2, 3, 4))
    dice = 1 - (2 * inter + 1) / (prob.sum((0, 2, 3, 4)) + onehot.sum((0, 2, 3, 4)) + 1)
    return ce + dice[1:].mean()


def patch_origin_range(label: torch.Tensor, patch) -> tuple:
    """(lowest, highest) patch origin per axis such that every patch holds at least one labelled voxel
    along the last axis: the training patches of a sparsely labelled volume overlap its labelled slab."""
    shape = label.shape
    lo = [0] * len(shape)
    hi = [s - p for s, p in zip(shape, patch)]
    slices = (label != UNLABELLED).flatten(0, -2).any(0).nonzero().flatten()
    first, last = int(slices[0]), int(slices[-1])
    lo[-1] = max(0, first - patch[-1] + 1)
    hi[-1] = min(hi[-1], last)
    return lo, hi
