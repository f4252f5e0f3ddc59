"""What pretrain.py and finetune.py share: configs (flags + YAML/TOML files +
presets), atomic checkpoints that resume exactly, logging (logs.py: TensorBoard
+ CSV + progress bar), torchrun/DDP set-up, and one-line errors for bad input.

Scripts in train/ are self-contained over the library: the library never
imports from here."""
from __future__ import annotations

import argparse
import contextlib
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
from run_checks import checkpoint_problem
from logs import LineProgress, Logger, progress  # noqa: F401  (the scripts use them as common.*)


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
    progress: bool = setting(True, "progress bar on a terminal; elsewhere (a log file, a pipe) a line every "
                                   "few steps")
    tensorboard: bool = setting(True, "TensorBoard logs (metrics.csv is always written)")


def parse_config(cls, presets: dict, prog: str, doc: str, argv=None):
    """--config FILE, --preset NAME, --resume [PATH] and one flag per setting: (config, args)."""
    p = ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    p.add_argument("--config", help="YAML or TOML file of settings (flags override it)")
    p.add_argument("--preset", help=f"start from a preset: {sorted(presets)}")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help=help_text("continue from --out's latest checkpoint, or from the checkpoint PATH given; "
                                  f"of the settings, only {', '.join(flag_name(k) for k in resumable(cls))} may "
                                  "change"))
    add_config_flags(p, cls)
    args = p.parse_args(argv)
    cfg, args.given = build_config(cls, args, presets, args.preset, args.config, return_given=True)
    return cfg, args


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage mistake (unknown flag, missing value) reported
    like every other bad input: one ``error:`` line and exit code 2."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def parse_list(text: str, kind, flag: str) -> list:
    """A comma-separated list of ints or floats from a flag, or a UserError naming the flag."""
    try:
        values = [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag}: {text!r} is not a comma-separated list of {kind.__name__}s") from None
    if not values:
        raise UserError(f"{flag}: empty list")
    return values


def help_text(text: str) -> str:
    """argparse %-formats help strings: a literal % (e.g. "60%") must be doubled."""
    return text.replace("%", "%%")


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _parse_tuple(text: str, kind=int) -> tuple:
    return tuple(kind(x) for x in re.split(r"[,x ]+", text.strip()) if x)


def _coerce(name: str, value: Any, default: Any, typ: Optional[str]):
    """Convert a flag string or a config-file value to the field's type."""
    if value is None and default is not None:
        raise UserError(f"config: {name} = null; give it a value or leave it out (default: {default!r})")
    if value is None:
        return None
    kind = typ or type(default).__name__
    if kind == "int" and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
        raise UserError(f"config: {name} = {value!r} is not a valid int")
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
    """One flag per field; the defaults shown are the fields' (the flags' own default is None, meaning unset)."""
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f.metadata.get("help", "")
        if "default" not in help_:  # some texts say what the default means ("default: the bundled templates")
            shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else default
            help_ += f" (default: {'unset' if default is None else shown})"
        help_ = help_text(help_)
        if f.metadata.get("type") is None and isinstance(default, bool):
            parser.add_argument(flag_name(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_)
        else:
            parser.add_argument(flag_name(f.name), dest=f.name, default=None, metavar=f.metadata.get("metavar", "V"),
                                help=help_)


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
                 config_file: Optional[str] = None, return_given: bool = False):
    """defaults < preset < config file < command-line flags.  ``return_given``:
    also the names of the settings the user set (by any of the three)."""
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
    return (cls(**out), set(out)) if return_given else cls(**out)


def save_config(cfg, path: str) -> None:
    import yaml
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        yaml.safe_dump(data, fh, sort_keys=False)


# Settings a resumed run may change: they decide when to log, evaluate and save, and where, not what is
# learned.  "steps" stretches the schedule's remaining part but keeps every step taken so far.
RESUMABLE = ("steps", "out", "device", "progress", "tensorboard", "log_every", "eval_every", "checkpoint_every",
             "keep_checkpoints", "cache_dir")


def resumable(cls) -> list:
    """The settings of RESUMABLE that the script's config has (finetune.py has no --cache-dir)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return [k for k in RESUMABLE if k in fields]


def open_run(cls, cfg, args) -> tuple:
    """Fresh run or --resume: (config, checkpoint state or None).  On resume the saved
    run's settings hold; the user's settings (flags, --preset, --config) may change only
    those in RESUMABLE, which are applied and reported; any other difference is refused,
    listed.  A fresh run refuses an --out that already holds checkpoints."""
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
    known = {f.name for f in dataclasses.fields(cls)}
    problem = checkpoint_problem(path, state, cls)
    if problem is not None:
        raise UserError(problem)
    saved = cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["config"].items() if k in known})
    given = getattr(args, "given", set())
    changed = {k: (getattr(saved, k), getattr(cfg, k)) for k in sorted(given) if getattr(saved, k) != getattr(cfg, k)}
    fixed = [k for k in changed if k not in RESUMABLE]
    describe = lambda ks: "; ".join(f"{flag_name(k)} {changed[k][0]!r} -> {changed[k][1]!r}" for k in ks)  # noqa
    if fixed:
        raise UserError(f"--resume: {path} was trained with other settings ({describe(fixed)}); only "
                        f"{', '.join(flag_name(k) for k in resumable(cls))} may change when resuming. Drop the others "
                        "to continue the run, or start a new one with another --out (nothing was changed)")
    if changed:
        print(f"resuming {path} with changed settings: {describe(changed)}", file=sys.stderr)
    return dataclasses.replace(saved, **{k: new for k, (_, new) in changed.items()}), state


def require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def require_at_least(cfg, minimum, *names: str) -> None:
    """Each named int setting is >= minimum (e.g. 1 for step counts used as a modulus, 0 for "off")."""
    for name in names:
        value = getattr(cfg, name)
        require(value >= minimum, f"{flag_name(name)} must be {'a positive integer' if minimum == 1 else f'>= {minimum}'}"
                f", got {value}")


def require_range(cfg, name: str, lo: float, hi: float, lo_open: bool = False, hi_open: bool = False) -> None:
    """A float setting within [lo, hi] (ends open on request); NaN is refused."""
    value = getattr(cfg, name)
    ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    require(ok, f"{flag_name(name)} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}, "
            f"got {value}")


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
            state = load_tensors(path)
        except Exception as exc:
            raise UserError(f"{path}: not a readable checkpoint, corrupt or truncated "
                            f"({type(exc).__name__}); no file was changed") from None
        if not isinstance(state, dict) or "model" not in state or "step" not in state:
            raise UserError(f"{path}: not a rubikops checkpoint (no model/step entries)")
        return state


def load_tensors(path: str):
    """torch.load with weights_only=True: tensors and plain Python values, never
    arbitrary objects.  Checkpoints from before the RNG state was stored as
    tensors hold numpy's MT19937 state as an ndarray: numpy's array
    reconstruction is allowlisted for them, nothing else."""
    core = getattr(np, "_core", None) or np.core
    legacy_numpy = [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    with torch.serialization.safe_globals(legacy_numpy):
        return torch.load(path, map_location="cpu", weights_only=True)


def rng_state(generators: dict) -> dict:
    """Every random stream, as tensors and plain values (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "generators": {k: g.get_state() for k, g in generators.items()}}


def set_rng_state(state: dict, generators: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((kind, keys.astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(tuple(tuple(v) if isinstance(v, list) else v for v in state["python"]))
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

    def gather(self, value) -> list:
        """Every rank's ``value`` (a picklable object), in rank order (one all_gather)."""
        if self.world == 1:
            return [value]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out

    def mean(self, values: dict) -> dict:
        """Average scalars across ranks (one all_reduce)."""
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                         device=self.device if self.device.type == "cuda" else "cpu")
        if self.world > 1:
            torch.distributed.all_reduce(t)
            t /= self.world
        return dict(zip(keys, t.tolist()))


def peak_host_rss() -> int:
    """This process's peak resident set in bytes (Linux ``ru_maxrss`` is in KiB),
    file-backed pages of memory maps included."""
    import resource
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


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


def write_json(path: str, data: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        json.dump(data, fh, indent=2)


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write(text)
