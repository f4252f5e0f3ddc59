"""The protocol's statistics: each arm's learning rate chosen on validation data alone, then every arm
against scratch at its chosen rate, paired by seed (train/experiment.py writes the tables from them)."""
from __future__ import annotations

import itertools
import math

from common import UserError
from reporting import mean_sd, wilcoxon_exact

#: per task, the metric the protocol chooses and compares on: (results.json key, its name in tables)
METRIC = {"classification": ("macro_auc", "macro AUC"), "segmentation": ("mean_dice", "mean Dice")}


def choose_lr(runs: list, task: str, arm: str, fraction: float, lrs) -> tuple:
    """(learning rate, its mean validation metric) with the best mean VALIDATION metric over the seeds
    among ``runs`` of (task, arm, fraction).  Test metrics are never looked at.  (None, nan) when no run
    has a validation metric; a UserError when the best mean is shared by two rates of the grid (a tie
    leaves nothing to choose on: the choice would be the grid's order, not the data)."""
    means = {}
    for lr in lrs:
        m, _ = mean_sd([r["val"] for r in runs if (r["task"], r["arm"], r["fraction"], r["lr"]) ==
                        (task, arm, fraction, lr)])
        if not math.isnan(m):
            means[lr] = m
    if not means:
        return None, math.nan
    best = max(means.values())
    tied = [lr for lr, m in means.items() if m == best]
    if len(tied) > 1:
        shown = ", ".join(f"{lr:g}: {m:.4f}" for lr, m in means.items())
        raise UserError(f"{task}, arm {arm}, label fraction {fraction:g}: the mean validation {METRIC[task][1]} "
                        f"ties across learning rates {[f'{lr:g}' for lr in tied]} ({shown}); nothing to choose a "
                        "rate on (a validation split without the classes, or runs too short to learn)")
    return tied[0], best


def compare(runs: list, tasks, arms, fractions, lrs, seeds) -> list:
    """One row per (task, label fraction): every arm at its chosen rate (mean ± sd of the test metric over the
    seeds), each pretrained arm against scratch paired by seed, the winner and the best pretrained arm."""
    rows = []
    for task, f in itertools.product(tasks, fractions):
        chosen = {}
        for arm in arms:
            lr, val = choose_lr(runs, task, arm, f, lrs)
            tests = {r["seed"]: r["test"] for r in runs
                     if (r["task"], r["arm"], r["fraction"], r["lr"]) == (task, arm, f, lr)
                     and r["test"] is not None and not math.isnan(r["test"])}
            m, sd = mean_sd([tests[s] for s in seeds if s in tests])
            chosen[arm] = {"lr": lr, "val": val, "mean": m, "sd": sd, "test": tests}
        base = chosen["scratch"]
        versus = {}
        for arm in arms:
            if arm == "scratch":
                continue
            pairs = [s for s in seeds if s in base["test"] and s in chosen[arm]["test"]]
            m0, sd0 = mean_sd([base["test"][s] for s in pairs])
            m1, _ = mean_sd([chosen[arm]["test"][s] for s in pairs])
            stat, p, n = wilcoxon_exact([chosen[arm]["test"][s] - base["test"][s] for s in pairs]) if pairs else \
                (math.nan, math.nan, 0)
            versus[arm] = {"seeds": pairs, "difference": m1 - m0 if pairs else math.nan,
                           "wilcoxon": {"statistic": stat, "p": p, "n": n},
                           # one pair has no spread: an unfinished grid must not read as a win
                           "beats_by_one_sd": len(pairs) >= 2 and m1 - m0 > sd0}
        ranked = [a for a in arms if not math.isnan(chosen[a]["mean"])]
        winner = max(ranked, key=lambda a: chosen[a]["mean"]) if ranked else None
        pretrained = [a for a in ranked if a != "scratch"]
        best = max(pretrained, key=lambda a: chosen[a]["mean"]) if pretrained else None
        rows.append({"task": task, "fraction": f, "arms": chosen, "versus_scratch": versus, "winner": winner,
                     "best_pretrained": best})
    return rows
