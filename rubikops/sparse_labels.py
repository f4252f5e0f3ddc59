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


def patch_origins(label: torch.Tensor, patch) -> list:
    """Per axis, the patch origins (a 1-D int64 tensor, ascending) that fit the volume; along the last
    axis only those whose patch holds at least one labelled slice.  Labels spread over every k-th axial
    slice leave gaps wider than a patch (at 5% of 55 slices: 3 slices 27 apart), so the allowed origins
    need not be one range; a training patch drawn from them always carries loss."""
    shape = label.shape
    origins = [torch.arange(s - p + 1) for s, p in zip(shape[:-1], patch[:-1])]
    labelled = (label != UNLABELLED).flatten(0, -2).any(0)  # per slice of the last axis
    # origin z covers slices z .. z + patch - 1: a windowed "any" of the labelled slices
    covered = labelled.float()[None, None].unfold(-1, patch[-1], 1).amax(-1).flatten() > 0
    origins.append(covered.nonzero().flatten())
    return origins


def patch_origin_range(label: torch.Tensor, patch) -> tuple:
    """(lowest, highest) patch origin per axis among :func:`patch_origins`."""
    origins = patch_origins(label, patch)
    return [int(o[0]) for o in origins], [int(o[-1]) for o in origins]
