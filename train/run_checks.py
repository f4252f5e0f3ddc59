"""Checks a training run makes on what it is given and what it computes: a checkpoint to resume from
(complete, and of the script resuming it), and a loss that must stay finite.  Used by common.open_run
(the checkpoint) and pretrain.py (the loss); it imports nothing from train/, so common may import it."""
from __future__ import annotations

import dataclasses

from typing import Optional

import torch

# what both scripts' checkpoints hold, and resuming reads
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "rng", "config")


def checkpoint_problem(path: str, state: dict, cls) -> Optional[str]:
    """Why ``state`` cannot be resumed by the script whose settings are ``cls``, or None: it lacks an entry
    resuming reads, or another script wrote it: its settings differ from ``cls``'s in most names
    (pretrain.py's and finetune.py's in 59 of their 79), where one of an earlier version of the same
    script differs in the few added or renamed since."""
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing or not isinstance(state["config"], dict) or not isinstance(state["step"], int):
        return (f"{path}: an incomplete rubikops checkpoint (missing {', '.join(missing) or 'nothing'}; config must "
                "be a mapping and step an int); resume from another one")
    known = {f.name for f in dataclasses.fields(cls)}
    foreign = sorted(set(state["config"]) - known)
    if len(foreign) + len(known - set(state["config"])) > len(known) // 2:
        return (f"--resume: {path} was written by another script (its settings {', '.join(foreign[:3])} are not "
                "this script's); resume it with the script that wrote it, or choose another --out")
    return None


def nonfinite_loss(when: str, bank, targets, augment) -> str:
    """A loss NaN or Inf ``when`` ("step 12"), naming the batch's volumes where ``targets`` are that batch's
    and geometric augmentation is off (a sample's index then counts crops, not volumes)."""
    index = targets.index.cpu() if targets is not None and augment[0] is None else torch.zeros(0, dtype=torch.long)
    index = bank.slot_volumes(index) if hasattr(bank, "slot_volumes") and len(index) else index  # slots -> volumes
    names = sorted({bank.names[i] for i in index.tolist()})
    where = f" on a batch of {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}" if names else ""
    return (f"{when}: the loss is NaN or Inf{where}; nothing after the last checkpoint was saved. Check the data "
            "(python -m rubikops.data info) or lower --lr")


class FiniteLoss:
    """Stops a run at a NaN or Inf loss.  In one process on the CPU each step is checked before its optimizer
    step (reading the loss costs nothing there).  On a GPU, or across ranks, the first bad step is kept on the
    device and read where the loop syncs anyway (a log line, a checkpoint), with one all_reduce so every rank
    stops together and before a checkpoint is written: a check per step would sync the GPU every step, and a
    rank stopping alone would leave the others waiting in their next collective."""

    def __init__(self, dist, bank, augment, error: type):
        """``error``: the exception raised, with the message (the script's one-line error)."""
        self.dist, self.bank, self.augment, self.error = dist, bank, augment, error
        self.deferred = dist.device.type == "cuda" or dist.world > 1
        self.first = torch.full((), -1, dtype=torch.int64, device=dist.device)

    def before_step(self, loss: torch.Tensor, step: int, targets) -> None:
        """``loss`` of step ``step + 1`` (before its optimizer step)."""
        finite = torch.isfinite(loss.detach())
        if not self.deferred and not bool(finite):
            raise self.error(nonfinite_loss(f"step {step + 1}", self.bank, targets, self.augment))
        if self.deferred:
            self.first = torch.where(finite | (self.first >= 0), self.first, step + 1)

    def after_step(self, step: int, due: bool) -> None:
        """Read the deferred check where ``due`` (the same steps on every rank)."""
        if self.deferred and due and self.dist.mean({"nonfinite": float(self.first >= 0)})["nonfinite"] > 0:
            first = int(self.first)
            when = f"step {first}" if first >= 0 else f"another rank, by step {step}"
            raise self.error(nonfinite_loss(when, self.bank, None, self.augment))
