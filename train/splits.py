"""How fine-tuning splits its cases: stratified test, validation and
label-fraction subsets fixed by the seed, the cases a user names
(--test-cases, --val-cases), each reported by name, and for a single labelled
volume the axial slices that validate and those that carry training labels."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
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


def cases_kept(n: int, fraction: float) -> int:
    """How many of ``n`` training cases (the first, in file order) a label fraction keeps: round(n * fraction),
    at least one."""
    return n if fraction >= 1 else max(1, int(round(n * fraction)))


def pick_cases(spec: Optional[str], names: list, flag: str) -> list:
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
    test = pick_cases(cfg.test_cases, names, "--test-cases")
    val = pick_cases(cfg.val_cases, names, "--val-cases")
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


# -- one labelled volume: validation and label fractions as sets of axial slices ------------------------------
# Validation slabs spread over the volume: on the offline atlas task (91 axial slices at 2 mm, lobes between
# slices 11 and 76) 4 slabs centred at 1/8, 3/8, 5/8 and 7/8 of the depth hold every lobe, where the most
# superior fifth held almost none of them (validation Dice 0.000 for every run).
VAL_SLABS = 4
# Slices left out on each side of a validation slab, labelled neither for training nor for validation: 2 slices
# (4 mm at 2 mm spacing), so that no validation slice has a training-labelled neighbour.
GUARD_SLICES = 2


@dataclass(frozen=True)
class AxialSplit:
    """Which axial slices (the last axis) of one labelled volume validate and which may train."""
    val: tuple          # validation slices
    candidates: tuple   # slices that may carry training labels (not validation, not a guard)

    def labelled(self, fraction: float) -> tuple:
        """The training slices at a label fraction: round(fraction * candidates), at least one, every k-th
        candidate slice (the way sparse annotation is done), so the labels spread over the whole volume."""
        n = len(self.candidates)
        k = n if fraction >= 1 else max(1, int(round(n * fraction)))
        return tuple(self.candidates[int((i + 0.5) * n / k)] for i in range(k))


def axial_split(depth: int, val_fraction: float) -> AxialSplit:
    """``VAL_SLABS`` validation slabs of equal thickness (ceil(val_fraction * depth / VAL_SLABS) slices),
    centred at (i + 1/2) / VAL_SLABS of the depth, each with ``GUARD_SLICES`` unused slices on either side;
    the rest may train.  val_fraction 0: no validation, every slice may train.  A UserError when no slice
    is left for training."""
    if val_fraction <= 0:
        return AxialSplit((), tuple(range(depth)))
    thick = max(1, math.ceil(val_fraction * depth / VAL_SLABS))
    val, used = set(), set()
    for i in range(VAL_SLABS):
        lo = min(max(0, int(round((i + 0.5) * depth / VAL_SLABS - thick / 2))), max(0, depth - thick))
        val.update(range(lo, min(depth, lo + thick)))
        used.update(range(max(0, lo - GUARD_SLICES), min(depth, lo + thick + GUARD_SLICES)))
    candidates = tuple(z for z in range(depth) if z not in used)
    if not candidates:
        raise UserError(f"--val-fraction {val_fraction:g}: {VAL_SLABS} validation slabs of {thick} axial slices "
                        f"and their {GUARD_SLICES}-slice guards leave none of {depth} slices for training")
    return AxialSplit(tuple(sorted(val)), candidates)


def slice_ranges(slices) -> str:
    """'3-7, 20-24' for the slices (3, 4, 5, 6, 7, 20, ..., 24)."""
    runs, start = [], None
    for i, z in enumerate(slices):
        if start is None:
            start = z
        if i + 1 == len(slices) or slices[i + 1] != z + 1:
            runs.append(f"{start}-{z}" if z > start else f"{z}")
            start = None
    return ", ".join(runs)
