"""Metrics against values computed by hand on tiny examples, and Dice against a
plain NumPy reference on random label maps."""
import math

import numpy as np
import pytest
import torch

from rubikops import metrics as M


def test_dice_and_iou_with_an_empty_class():
    target = torch.tensor([0, 0, 1, 1, 1, 0, 0, 0])
    pred = torch.tensor([0, 1, 1, 1, 0, 0, 3, 0])
    dice, iou = M.dice_iou(pred, target, 4)
    # class 0: |P|=4 (0,3,5,7), |T|=5 (0,1,5,6,7), inter 3 -> 6/9, 3/6
    assert math.isclose(dice[0], 6 / 9) and math.isclose(iou[0], 3 / 6)
    # class 1: P={1,2,3}, T={2,3,4}: inter 2 -> 4/6, 2/4
    assert math.isclose(dice[1], 4 / 6) and math.isclose(iou[1], 2 / 4)
    assert math.isnan(dice[2]) and math.isnan(iou[2])  # absent from both: no score
    assert math.isnan(dice[3]) and math.isnan(iou[3])  # predicted but absent from the truth: no score either
    rep = M.segmentation_report(pred, target, 4)
    assert math.isclose(rep["mean_dice"], 4 / 6)  # background and the classes absent from the truth left out


def _numpy_dice(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore=None) -> list:
    """Dice per class by its definition, 2|P & T| / (|P| + |T|), over the voxels not marked ``ignore``;
    None for a class with no voxel in the truth."""
    keep = target != ignore if ignore is not None else np.ones(target.shape, bool)
    out = []
    for c in range(num_classes):
        p, t = (pred == c) & keep, (target == c) & keep
        out.append(None if t.sum() == 0 else 2 * (p & t).sum() / (p.sum() + t.sum()))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_dice_matches_numpy_on_strided_sparse_label_maps(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 7))
    shape = tuple(int(s) for s in rng.integers(1, 9, size=3))
    # some classes absent from the truth (drawn from a subset), predictions from every class
    present = rng.choice(k, size=int(rng.integers(1, k + 1)), replace=False)
    target = rng.choice(present, size=(shape[0], 2 * shape[1], shape[2]))
    pred = rng.integers(0, k, size=(shape[2], shape[1], shape[0]))
    target[rng.random(target.shape) < 0.3] = -1  # unlabelled voxels
    t = torch.from_numpy(target)[:, ::2]  # a strided view
    p = torch.from_numpy(pred).permute(2, 1, 0)  # a permuted view
    dice, _ = M.dice_iou(p, t, k, ignore_index=-1)
    ref = _numpy_dice(p.numpy(), t.numpy(), k, ignore=-1)
    for c in range(k):
        if ref[c] is None:
            assert math.isnan(dice[c]), (c, dice)
        else:
            assert dice[c] == pytest.approx(ref[c], abs=1e-12), (c, dice, ref)
    rep = M.segmentation_report(p, t, k, ignore_index=-1)
    scored = [d for d in ref[1:] if d is not None]
    if scored:
        assert rep["mean_dice"] == pytest.approx(sum(scored) / len(scored), abs=1e-12)
    else:
        assert math.isnan(rep["mean_dice"])
    # a stride-0 (expanded) prediction: one class everywhere
    const = torch.tensor(int(present[0])).expand(t.shape)
    dice, _ = M.dice_iou(const, t, k, ignore_index=-1)
    ref = _numpy_dice(const.numpy(), t.numpy(), k, ignore=-1)
    assert [None if math.isnan(d) else pytest.approx(d) for d in dice] == ref


def test_auc_with_ties_and_an_absent_class():
    # class 0 positives score 0.9, 0.4; negatives 0.4, 0.1 -> pairs: (0.9>0.4, 0.9>0.1, 0.4=0.4 half, 0.4>0.1) = 3.5/4
    probs = torch.tensor([[0.9, 0.1, 0.0], [0.4, 0.6, 0.0], [0.4, 0.6, 0.0], [0.1, 0.9, 0.0]])
    target = torch.tensor([0, 0, 1, 1])
    aucs = M.auc_per_class(probs, target)
    assert math.isclose(aucs[0], 3.5 / 4)
    assert math.isclose(aucs[1], 3.5 / 4)
    assert math.isnan(aucs[2])  # class 2 has no positive case
    assert math.isclose(M.macro(aucs), 3.5 / 4)


def test_accuracy_and_balanced_accuracy():
    target = torch.tensor([0, 0, 0, 0, 1, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 0])
    assert math.isclose(M.accuracy(pred, target), 4 / 6)
    assert math.isclose(M.balanced_accuracy(pred, target, 3), (3 / 4 + 1 + 0) / 3)
    rep = M.classification_report(torch.log(torch.tensor([[0.7, 0.2, 0.1]] * 6)), target)
    assert math.isclose(rep["accuracy"], 4 / 6) and math.isclose(rep["auc_per_class"][0], 0.5)
