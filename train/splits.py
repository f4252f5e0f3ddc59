"""How fine-tuning splits its cases: stratified test, validation and
label-fraction subsets fixed by the seed, and the cases a user names
(--test-cases, --val-cases), each reported by name."""
from __future__ import annotations

import os
import sys
from typing import Optional

import numpy as np

from common import UserError


def stratified_test_split(labels: np.ndarray, test_fraction: float, seed: int):
    """Stratified split fixed by the seed: (train indices, test indices)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, int(round(len(idx) * test_fraction)))
        test += idx[:k].tolist()
        train += idx[k:].tolist()
    return sorted(train), sorted(test)


def validation_split(train: list, labels: np.ndarray, fraction: float, seed: int):
    """Stratified validation cases carved from ``train`` (the non-test cases), fixed by the
    seed: (train, val).  Per class round(n * fraction) cases, at least one, and always at
    least one left for training (a class with a single case gives none)."""
    if fraction <= 0:
        return train, []
    rng = np.random.default_rng([seed, 2])
    val = []
    for c in np.unique(labels[train]):
        idx = [i for i in train if labels[i] == c]
        k = min(max(1, int(round(len(idx) * fraction))), len(idx) - 1)
        val += rng.permutation(idx)[:k].tolist()
    return sorted(set(train) - set(val)), sorted(val)


def label_subset(train: list, labels: np.ndarray, fraction: float, seed: int) -> list:
    """Stratified label fraction, at least one case per class."""
    if fraction >= 1.0:
        return train
    rng = np.random.default_rng(seed + 1)
    keep = []
    for c in np.unique(labels[train]):
        idx = [i for i in train if labels[i] == c]
        keep += rng.permutation(idx)[:max(1, int(round(len(idx) * fraction)))].tolist()
    return sorted(keep)


def _pick_cases(spec: Optional[str], names: list, flag: str) -> list:
    """Indices of the cases that ``spec`` names: 0-based indices into ``names``,
    or names (a file's base name or path)."""
    if not spec:
        return []
    picked = []
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        if token.lstrip("-").isdigit():
            i = int(token)
            if not 0 <= i < len(names):
                raise UserError(f"{flag}: index {i} is out of range for {len(names)} case(s) (0 to {len(names) - 1})")
        else:
            hits = [j for j, n in enumerate(names) if token in (n, os.path.basename(n))
                    or os.path.basename(token) == os.path.basename(n)]
            if not hits:
                raise UserError(f"{flag}: {token!r} names no case; the cases are {names}")
            i = hits[0]
        if i in picked:
            raise UserError(f"{flag}: case {names[i]!r} is named twice")
        picked.append(i)
    return picked


def choose_split(cfg, names: list, default_test) -> dict:
    """{"train", "val", "test"}: index lists.  --test-cases and --val-cases when
    given, else ``default_test()`` (chosen by the seed) for the test cases."""
    test = _pick_cases(cfg.test_cases, names, "--test-cases")
    val = _pick_cases(cfg.val_cases, names, "--val-cases")
    if not test:
        test = [i for i in default_test() if i not in val]
    both = sorted(set(test) & set(val))
    if both:
        raise UserError(f"--test-cases and --val-cases both name {[names[i] for i in both]}")
    train = [i for i in range(len(names)) if i not in test and i not in val]
    if not train:
        raise UserError(f"no training case is left out of {len(names)}: --test-cases and --val-cases take them all")
    if not test:
        raise UserError("no test case: name at least one with --test-cases")
    return {"train": train, "val": val, "test": test}


def describe_split(split: dict, names: list, chosen_by: str) -> dict:
    """The split as results.json records it and as printed: case names per part."""
    return {part: [names[i] for i in idx] for part, idx in split.items()} | {"chosen_by": chosen_by}


def print_split(named: dict) -> None:
    def part(k):
        cases = named[k]
        return f"{k} {len(cases)}" + (f" {cases}" if len(cases) <= 8 else "")
    print(f"split ({named['chosen_by']}): " + ", ".join(part(k) for k in ("train", "val", "test")), file=sys.stderr)


def split_source(cfg) -> str:
    if cfg.test_cases:
        return "--test-cases" + (" and --val-cases" if cfg.val_cases else "")
    return f"--seed {cfg.seed}" + (", --val-cases" if cfg.val_cases else "")
