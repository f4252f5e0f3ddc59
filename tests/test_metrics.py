"""Metrics against values computed by hand on tiny examples."""
import math

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
    assert dice[3] == 0.0 and iou[3] == 0.0  # predicted but absent from the truth
    rep = M.segmentation_report(pred, target, 4)
    assert math.isclose(rep["mean_dice"], (4 / 6 + 0) / 2)  # background and the empty class left out


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
