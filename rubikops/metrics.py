"""Evaluation metrics for the downstream tasks, in plain torch.

Conventions (so results are comparable): AUC is one-vs-rest per class from
the rank-sum (Mann-Whitney U) with ties counted half; a class with no
positive or no negative case has no AUC (NaN) and is left out of the macro
mean.  Dice and IoU per class over the whole evaluation set; a class absent
from the truth has no score (NaN) and is left out of the mean, predicted or
not (MONAI's ``DiceMetric(ignore_empty=True)`` convention): a validation split
that holds 3 of 5 foreground classes is scored on those 3, not dragged to 0.6
of its value by two zeros.  Its false positives still cost the classes whose
voxels they took.  Voxels labelled ``ignore_index`` (the unlabelled voxels of a
sparsely labelled volume) are left out of every count."""
from __future__ import annotations

import math

import torch


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float((pred == target).double().mean())


def balanced_accuracy(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    recalls = [float((pred[target == c] == c).double().mean()) for c in range(num_classes) if (target == c).any()]
    return sum(recalls) / len(recalls)


def binary_auc(score: torch.Tensor, positive: torch.Tensor) -> float:
    pos, neg = int(positive.sum()), int((~positive).sum())
    if pos == 0 or neg == 0:
        return math.nan
    order = torch.argsort(score.double())
    s = score.double()[order]
    ranks = torch.empty_like(s)
    i = 0
    n = len(s)
    while i < n:  # average ranks over ties
        j = i
        while j + 1 < n and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    r = torch.empty_like(ranks)
    r[order] = ranks
    return float((r[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def auc_per_class(probs: torch.Tensor, target: torch.Tensor) -> list:
    return [binary_auc(probs[:, c], target == c) for c in range(probs.shape[1])]


def macro(values: list) -> float:
    ok = [v for v in values if not math.isnan(v)]
    return sum(ok) / len(ok) if ok else math.nan


def dice_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index=None):
    """Per-class Dice and IoU over the voxels given (those whose target is not
    ``ignore_index``); lists of floats (NaN as documented)."""
    if ignore_index is not None:
        keep = target != ignore_index
        pred, target = pred[keep], target[keep]
    dice, iou = [], []
    for c in range(num_classes):
        p, t = pred == c, target == c
        inter = int((p & t).sum())
        ps, ts = int(p.sum()), int(t.sum())
        if ts == 0:
            dice.append(math.nan)
            iou.append(math.nan)
            continue
        dice.append(2 * inter / (ps + ts))
        iou.append(inter / (ps + ts - inter))
    return dice, iou


def classification_report(logits: torch.Tensor, target: torch.Tensor) -> dict:
    probs = torch.softmax(logits.float(), 1)
    pred = probs.argmax(1)
    k = logits.shape[1]
    aucs = auc_per_class(probs, target)
    return {"accuracy": accuracy(pred, target), "balanced_accuracy": balanced_accuracy(pred, target, k),
            "auc_per_class": aucs, "macro_auc": macro(aucs)}


def segmentation_report(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_background=True,
                        ignore_index=None) -> dict:
    dice, iou = dice_iou(pred, target, num_classes, ignore_index)
    first = 1 if ignore_background else 0
    return {"dice_per_class": dice, "iou_per_class": iou, "mean_dice": macro(dice[first:]),
            "mean_iou": macro(iou[first:])}
