"""What pretrain.py and finetune.py share: configs (flags + YAML/TOML files +
presets), atomic checkpoints that resume exactly, logging (TensorBoard + CSV
+ progress bar), torchrun/DDP set-up, and one-line errors for bad input.

Scripts in train/ are self-contained over the library: the library never
imports from here."""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import difflib
import glob
import json
import os
import random
import re
import shutil
import sys
from typing import Any, Optional

import numpy as np
import torch

from rubikops.data import atomic_path


class UserError(Exception):
    """Bad input from the user: printed as one line, no traceback."""


def run_main(main, argv=None) -> int:
    """Run ``main(argv)``; user errors become ``error: ...`` on stderr and exit code 2."""
    from rubikops.data import DataError
    try:
        return main(argv) or 0
    except (UserError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is intact; rerun with --resume", file=sys.stderr)
        return 130


def exit_main(main) -> None:
    """The scripts' entry point: ``run_main(main)``, then exit with its code.

    Under torchrun (WORLD_SIZE > 1) the process ends with os._exit after
    flushing its streams: it skips the interpreter's finalisation, where
    gloo's worker threads can still hold tensors and abort the process
    ("terminate called without an active exception", SIGABRT) after a run
    whose results and checkpoints are already on disk (pytorch/pytorch#179291
    describes the mechanism)."""
    code = run_main(main)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


# -- configs -------------------------------------------------------------------------------------
def setting(default, help_, typ=None):
    """A config field: its default, its --help text, and its type when the default does not say it."""
    return dataclasses.field(default=default, metadata={"help": help_, "type": typ})


@dataclasses.dataclass
class RunSettings:
    """Settings every training script has (subclasses change defaults by redeclaring)."""
    amp: str = setting("none", "mixed precision: none, bf16 or fp16 (fp16 on GPU only)")
    compile: bool = setting(False, "torch.compile the network")
    seed: int = setting(0, "seed of everything (weights, data order, puzzles)")
    device: str = setting("auto", "auto, cpu, cuda")
    out: str = setting("runs/run", "output folder")
    log_every: int = setting(10, "steps between log lines")
    eval_every: int = setting(250, "steps between evaluations")
    checkpoint_every: int = setting(250, "steps between checkpoints")
    keep_checkpoints: int = setting(3, "checkpoints kept")
    progress: bool = setting(True, "progress bar")
    tensorboard: bool = setting(True, "TensorBoard logs (metrics.csv is always written)")


def parse_config(cls, presets: dict, prog: str, doc: str, argv=None):
    """--config FILE, --preset NAME, --resume [PATH] and one flag per setting: (config, args)."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML or TOML file of settings (flags override it)")
    p.add_argument("--preset", help=f"start from a preset: {sorted(presets)}")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from --out's latest checkpoint, or from the checkpoint PATH given")
    add_config_flags(p, cls)
    args = p.parse_args(argv)
    return build_config(cls, args, presets, args.preset, args.config), args


def _parse_tuple(text: str, kind=int) -> tuple:
    return tuple(kind(x) for x in re.split(r"[,x ]+", text.strip()) if x)


def _coerce(name: str, value: Any, default: Any, typ: Optional[str]):
    """Convert a flag string or a config-file value to the field's type."""
    if value is None:
        return None
    kind = typ or type(default).__name__
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if kind in ("tuple", "ints", "floats"):
            elem = float if kind == "floats" else int
            if isinstance(value, str):
                return _parse_tuple(value, elem)
            if isinstance(value, (int, float)):
                return (elem(value),)
            return tuple(elem(v) for v in value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "str":
            return str(value)
    except (TypeError, ValueError):
        raise UserError(f"config: {name} = {value!r} is not a valid {kind}") from None
    return value


def add_config_flags(parser: argparse.ArgumentParser, cls) -> None:
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.metadata.get("type") is None and isinstance(default, bool):
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_} (default: {default})")
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.metadata.get("metavar", "V"),
                                help=f"{help_} (default: {default})")


def read_config_file(path: str) -> dict:
    if not os.path.exists(path):
        raise UserError(f"{path}: no such config file")
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml
            with open(path) as fh:
                data = yaml.safe_load(fh) or {}
        elif path.endswith(".toml"):
            import tomllib
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        elif path.endswith(".json"):
            with open(path) as fh:
                data = json.load(fh)
        else:
            raise UserError(f"{path}: config files must be .yaml, .yml, .toml or .json")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"{path}: cannot parse ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: must hold a mapping of settings, got {type(data).__name__}")
    return data


def check_keys(cls, data: dict, where: str) -> None:
    known = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key.replace("-", "_") not in known:
            near = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise UserError(f"{where}: unknown setting {key!r}{hint}")


def build_config(cls, args: argparse.Namespace, presets: dict, preset: Optional[str] = None,
                 config_file: Optional[str] = None):
    """defaults < preset < config file < command-line flags."""
    values: dict = {}
    if preset:
        if preset not in presets:
            raise UserError(f"--preset: unknown preset {preset!r}; choose from {sorted(presets)}")
        values.update(presets[preset])
    if config_file:
        data = read_config_file(config_file)
        check_keys(cls, data, config_file)
        values.update({k.replace("-", "_"): v for k, v in data.items()})
    for f in dataclasses.fields(cls):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name in values:
            out[f.name] = _coerce(f.name, values[f.name], default, f.metadata.get("type"))
    return cls(**out)


def save_config(cfg, path: str) -> None:
    import yaml
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)


def open_run(cls, cfg, args) -> tuple:
    """Fresh run or --resume: (config, checkpoint state or None).  On resume the saved
    run's settings win, except those that may change between sessions when given as
    flags; a fresh run refuses an --out that already holds checkpoints."""
    folder = os.path.join(cfg.out, "checkpoints")
    if not args.resume:
        if Checkpoints(folder).latest() is not None:
            raise UserError(f"{cfg.out} already holds a run ({Checkpoints(folder).latest()}); pass --resume to "
                            "continue it or choose another --out (nothing was overwritten)")
        return cfg, None
    path = args.resume if args.resume != "latest" else Checkpoints(folder).latest()
    if path is None:
        raise UserError(f"--resume: no checkpoint in {folder}")
    state = Checkpoints.load(path)
    saved = dict(state["config"])
    for k in ("steps", "out", "device", "progress", "tensorboard", "log_every", "eval_every",
              "checkpoint_every", "keep_checkpoints"):
        if getattr(args, k, None) is not None:
            saved[k] = getattr(cfg, k)
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in known}), state


# -- checkpoints -----------------------------------------------------------------------------------
class Checkpoints:
    """``step_0000100.pt`` files in ``folder``, written atomically; keeps the
    last ``keep`` and ``best.pt``.  A corrupt file given to resume is a
    UserError, and nothing is ever overwritten by a fresh run."""

    def __init__(self, folder: str, keep: int = 3):
        self.folder, self.keep = folder, max(1, int(keep))

    def paths(self) -> list:
        return sorted(glob.glob(os.path.join(self.folder, "step_*.pt")))

    def latest(self) -> Optional[str]:
        p = self.paths()
        return p[-1] if p else None

    def save(self, state: dict, step: int, best: bool = False) -> str:
        path = os.path.join(self.folder, f"step_{step:07d}.pt")
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        if best:  # a byte copy of the file just written, not a second serialisation
            with atomic_path(os.path.join(self.folder, "best.pt")) as tmp:
                shutil.copyfile(path, tmp)
        for old in self.paths()[:-self.keep]:
            with contextlib.suppress(OSError):
                os.unlink(old)
        return path

    @staticmethod
    def load(path: str) -> dict:
        if not os.path.exists(path):
            raise UserError(f"{path}: no such checkpoint")
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise UserError(f"{path}: not a readable checkpoint, corrupt or truncated "
                            f"({type(exc).__name__}); no file was changed") from None
        if not isinstance(state, dict) or "model" not in state or "step" not in state:
            raise UserError(f"{path}: not a rubikops checkpoint (no model/step entries)")
        return state


def rng_state(generators: dict) -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "generators": {k: g.get_state() for k, g in generators.items()}}


def set_rng_state(state: dict, generators: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in generators.items():
        g.set_state(state["generators"][k])


def autocast(device: torch.device, amp: str):
    """A factory of the mixed-precision context for --amp none|bf16|fp16."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    return lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def kill_point(step: int) -> None:
    """Tests of exact resume: SIGKILL this process right after the checkpoint of the step
    named by RUBIKOPS_TEST_KILL_AT_STEP (no cleanup, as a crash or an OOM killer would)."""
    if step and step == int(os.environ.get("RUBIKOPS_TEST_KILL_AT_STEP", "0")):
        import signal
        os.kill(os.getpid(), signal.SIGKILL)


def optimizer_step(loss, opt, sched, scaler) -> None:
    """Backward (through the fp16 grad scaler when enabled), step, schedule."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    sched.step()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# -- distributed -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, values: dict) -> dict:
        """Average scalars across ranks (one all_reduce)."""
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        if self.world > 1:
            torch.distributed.all_reduce(t)
            t /= self.world
        return dict(zip(keys, t.tolist()))


def setup_distributed(device_flag: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK: then DDP with NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_flag == "auto":
        device_flag = "cuda" if torch.cuda.is_available() else "cpu"
    if device_flag.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    device = torch.device(f"cuda:{local}" if device_flag == "cuda" else device_flag)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local, device)


def cleanup_distributed(dist: Dist, finished: bool = True) -> None:
    """Tear the process group down.  After a normal finish every rank first
    meets at a barrier: a rank that destroyed its gloo group while rank 0 was
    still writing the summary aborted now and then ("terminate called without
    an active exception", exit -6: 2 of 3 full test-suite runs on the 2-core
    machine).  After an error there is no barrier (the other ranks may never
    reach it)."""
    if dist.world > 1 and torch.distributed.is_initialized():
        if finished:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def run_distributed(dist: Dist, fn, *args) -> int:
    """``fn(*args)`` between setup and cleanup of the process group."""
    finished = False
    try:
        result = fn(*args)
        finished = True
        return result
    finally:
        cleanup_distributed(dist, finished)


# -- logging -------------------------------------------------------------------------------------------
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


def progress(total: int, initial: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                    disable=not sys.stderr.isatty() and os.environ.get("RUBIKOPS_PROGRESS") != "1", mininterval=1.0)
    except ImportError:
        return None


def write_json(path: str, data: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(data, fh, indent=2)
