"""Run logs of the training scripts: TensorBoard scalars with a CSV beside
them, and progress (a tqdm bar on a terminal, a line every few steps
elsewhere)."""
from __future__ import annotations

import csv
import os
import sys
import time
from typing import Optional

from rubikops.data import atomic_path


class Logger:
    """TensorBoard scalars and a CSV alongside (rank 0 only).  On resume the
    CSV keeps only rows up to the resumed step, so no step appears twice."""

    def __init__(self, folder: str, enabled: bool, resume_step: int = 0, tensorboard: bool = True):
        self.enabled = enabled
        self.csv_path = os.path.join(folder, "metrics.csv")
        self.rows: list = []
        self.tb = None
        if not enabled:
            return
        os.makedirs(folder, exist_ok=True)
        if os.path.exists(self.csv_path):
            with open(self.csv_path, newline="") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(float(r["step"])) <= resume_step]
            self._rewrite()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(folder, "tensorboard"), purge_step=resume_step + 1
                                        if resume_step else None)
            except ImportError:
                print("note: tensorboard is not installed; logging to metrics.csv only", file=sys.stderr)

    def _rewrite(self) -> None:
        keys = []
        for r in self.rows:
            keys += [k for k in r if k not in keys]
        with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys)
            w.writeheader()
            w.writerows(self.rows)

    def log(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}}
        self.rows.append(row)
        self._rewrite()
        if self.tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class LineProgress:
    """The progress bar's stand-in when stderr is not a terminal (a log file, a
    pipe, a batch job), where tqdm draws nothing: one line every ``every`` steps
    and at the end, with the latest postfix (loss, accuracy)."""

    def __init__(self, total: int, initial: int, desc: str, every: int):
        self.total, self.n, self.desc, self.every = total, initial, desc, max(1, every)
        self.postfix: dict = {}
        self.start, self.start_n, self.printed = time.perf_counter(), initial, initial

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n % self.every == 0 or self.n >= self.total:
            self._print()

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def _print(self) -> None:
        if self.printed == self.n:
            return
        self.printed = self.n
        rate = (self.n - self.start_n) / max(time.perf_counter() - self.start, 1e-9)
        extra = "".join(f", {k} {v}" for k, v in self.postfix.items())
        print(f"{self.desc}: step {self.n}/{self.total} ({100 * self.n / max(self.total, 1):.0f}%), "
              f"{rate:.2f} steps/s{extra}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self._print()


def progress(total: int, initial: int, enabled: bool, desc: str, every: Optional[int] = None):
    """A tqdm bar on a terminal; elsewhere a LineProgress printing every ``every``
    steps (default: about 20 lines a run).  RUBIKOPS_PROGRESS=1 forces the bar."""
    if not enabled:
        return None
    if not sys.stderr.isatty() and os.environ.get("RUBIKOPS_PROGRESS") != "1":
        return LineProgress(total, initial, desc, every or max(1, total // 20))
    try:
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, mininterval=1.0)
    except ImportError:
        return LineProgress(total, initial, desc, every or max(1, total // 20))
