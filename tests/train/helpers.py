"""Run the train/ scripts in-process or as subprocesses on small synthetic data."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN = os.path.join(ROOT, "train")


def script(name: str):
    """Import train/<name>.py as the module the scripts themselves import (``common``, ``pretrain``)."""
    if TRAIN not in sys.path:
        sys.path.insert(0, TRAIN)
    return importlib.import_module(name)


def smooth_volumes(folder, n=4, shape=(36, 40, 34), seed=0) -> str:
    """Smooth random volumes with a bright 'head' so crops have structure."""
    import nibabel as nib
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        x = rng.normal(size=shape).cumsum(0).cumsum(1).cumsum(2)
        x = (x - x.mean()) / x.std()
        zz, yy, xx = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
        x = x + 3 * (zz + 0.5 * yy) + 5 * ((zz ** 2 + yy ** 2 + xx ** 2) < 0.8)
        nib.save(nib.Nifti1Image((x * 50 + 200).astype(np.float32), np.eye(4)), os.path.join(folder, f"v{i}.nii.gz"))
    return str(folder)


def tiny_args(data, out, cache, *extra) -> list:
    return ["--preset", "tiny", "--data", str(data), "--out", str(out), "--cache-dir", str(cache), "--spacing", "1",
            "--no-progress", "--no-tensorboard", *extra]


def subprocess_env(env_extra=None) -> dict:
    env = dict(os.environ, **(env_extra or {}))
    env.pop("TRITON_INTERPRET", None)
    # the scripts import this checkout's rubikops, not whichever one the environment installed
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    return env


def run_subprocess(args, env_extra=None, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=subprocess_env(env_extra), capture_output=True,
                          text=True, timeout=timeout)


def start_subprocess(args, env_extra=None, **popen):
    """``python ARGS`` started in the background, in a session of its own so that
    ``os.killpg(p.pid, ...)`` ends it with every process it started."""
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=subprocess_env(env_extra), start_new_session=True,
                            **popen)
