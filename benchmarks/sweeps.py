"""`python benchmarks/run.py --full`: how the op's cost grows with batch
size, cube edge, dtype and (CPU) thread count, each as a PNG under
benchmarks/results/ with the machine in its title."""
from __future__ import annotations

import os

import torch

import utils

import rubikops
from rubikops.baselines import numpy_puzzle_loop


def _workload(B, cube, dtype, dev, seed=0):
    vol = 2 * cube + 16
    return utils.make_workload(B, 8, cube, vol, dtype, dev, "paper", seed), vol


def _op_row(name, B, cube, dtype, dev, rep, out_dtype=None, window=False, with_numpy=False):
    (source, origins, rot), vol = _workload(B, cube, dtype, dev)
    odt = out_dtype or dtype
    out = torch.empty(B, 8, 1, cube, cube, cube, dtype=odt, device=dev)
    kw = dict(rotations=rot, validate=False, out=out)
    if window:
        kw.update(scale=1 / 200, shift=-0.2, clamp=(-1.0, 1.0), out_dtype=odt)
    t = utils.time_fn(lambda: rubikops.extract_cubes(source, origins, (cube,) * 3, **kw), dev, repeats=rep)
    src_buf = torch.empty_like(out)
    t_copy = utils.time_fn(lambda: out.copy_(src_buf), dev, repeats=rep)
    nbytes = out.numel() * (source.element_size() + out.element_size())
    ceiling = 2 * out.numel() * out.element_size() / t_copy.median_s / 1e9
    base = None
    if with_numpy and dev.type == "cpu" and dtype == torch.float32:
        args = (source.numpy(), origins.numpy(), rot.numpy(), cube)
        base = utils.time_fn(lambda: numpy_puzzle_loop(*args), dev, warmup=1, repeats=3).median_s
    return utils.Row(name, f"B={B} M=8 {cube}^3 from {vol}^3", t, nbytes, ceiling, base)


def _plot(path, title, xlabel, xs, series: dict, ylabel="GB/s (bytes read + written)"):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, ys in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xscale("log", base=2)
    ax.set_title(title, fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def run_sweeps(dev: torch.device, directory: str, stamp: str) -> list:
    info = utils.machine_info(dev)
    machine = (f"{info.get('gpu') or info['cpu']} ({info['cores']} cores), torch {info['torch']}, "
               f"triton {info['triton']}")
    rep = 5 if dev.type == "cpu" else 20
    rows, pngs = [], []
    batches = [1, 2, 4, 8, 16, 32, 64]
    cube_b = 32 if dev.type == "cpu" else 64
    r = [_op_row(f"sweep batch B={B}", B, cube_b, torch.float32, dev, rep) for B in batches]
    rows += r
    pngs.append(_plot(os.path.join(directory, f"{stamp}-{dev.type}-sweep-batch.png"),
                      f"extract_cubes out=, f32, 8 cubes of {cube_b}^3 - {machine}", "batch size", batches,
                      {"rubikops": [x.gbs for x in r], "copy_ ceiling": [x.ceiling_gbs for x in r]}))
    cubes = [16, 24, 32, 48, 64, 96]
    B = 8
    r = [_op_row(f"sweep cube {c}^3", B, c, torch.float32, dev, rep, with_numpy=True) for c in cubes]
    rows += r
    series = {"rubikops": [x.gbs for x in r], "copy_ ceiling": [x.ceiling_gbs for x in r]}
    if r[0].baseline_s:
        series["NumPy per-sample loop"] = [x.bytes_moved / x.baseline_s / 1e9 for x in r]
    pngs.append(_plot(os.path.join(directory, f"{stamp}-{dev.type}-sweep-cube.png"),
                      f"extract_cubes out=, f32, B={B} - {machine}", "cube edge (voxels)", cubes, series))
    dts = {"float32": dict(dtype=torch.float32), "bfloat16": dict(dtype=torch.bfloat16),
           "int16 -> f32 window": dict(dtype=torch.int16, out_dtype=torch.float32, window=True)}
    series = {}
    for label, kw in dts.items():
        r = [_op_row(f"sweep {label} {c}^3", B, c, dev=dev, rep=rep, **kw) for c in cubes]
        rows += r
        series[label] = [x.gbs for x in r]
    pngs.append(_plot(os.path.join(directory, f"{stamp}-{dev.type}-sweep-dtype.png"),
                      f"extract_cubes out=, B={B} - {machine}", "cube edge (voxels)", cubes, series))
    if dev.type == "cpu":
        before = torch.get_num_threads()
        threads = list(range(1, (os.cpu_count() or 1) + 1))
        r = []
        for n in threads:
            torch.set_num_threads(n)
            r.append(_op_row(f"sweep threads={n}", 16, 48, torch.float32, dev, rep))
        torch.set_num_threads(before)
        rows += r
        pngs.append(_plot(os.path.join(directory, f"{stamp}-cpu-sweep-threads.png"),
                          f"extract_cubes out=, f32, B=16 48^3 - {machine}", "threads", threads,
                          {"rubikops": [x.gbs for x in r], "copy_ ceiling": [x.ceiling_gbs for x in r]}))
    for p in pngs:
        if p:
            print(f"plot: {p}")
    return rows
