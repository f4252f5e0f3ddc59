"""``python -m rubikops.data info PATH [--spacing S] [--intensity MODE] ...``:
what a folder of scans (NIfTI, NRRD, MetaImage, DICOM series) holds and
what preprocessing would make of it.
``python -m rubikops.data prepare SRC --out DIR --workers N``: preprocess
once, in parallel and resumably, into a folder that training ranks read
their share of (rubikops/data/prepared.py).
``python -m rubikops.data default``: where the offline default dataset is."""
from __future__ import annotations

import argparse
import sys

import numpy as np


def _num(v, nd: int) -> str:
    s = f"{v:.{nd}f}"
    return s.rstrip("0").rstrip(".") if "." in s else s


def _fmt(t, nd=2):
    return "x".join(_num(v, nd) for v in t)


def info(args) -> int:
    from . import DataError, Preprocessing, find_files, load_image, preprocess
    try:
        settings = Preprocessing(orientation="RAS", spacing=args.spacing, intensity=args.intensity,
                                 crop_foreground=args.crop_foreground, foreground_threshold=args.threshold,
                                 frames=args.frames)
        cases = find_files(args.path)
    except ValueError as exc:  # DataError included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(cases)} case(s) in {args.path}; preprocessing: {settings.key()}")
    head = f"{'file':40s} {'shape':>14s} {'spacing mm':>14s} {'orient':>6s} {'dtype':>8s} {'range':>20s}  -> preprocessed"
    print(head)
    bad = 0
    for case in cases:
        name = case if isinstance(case, str) else "+".join(case)
        try:
            vol = load_image(case, frames=settings.frames)
            pre = preprocess(vol, settings)
        except DataError as exc:
            bad += 1
            print(f"{name[-40:]:40s} ERROR {exc}")
            continue
        lo, hi = float(vol.data.min()), float(vol.data.max())
        print(f"{name[-40:]:40s} {_fmt(vol.shape, 0):>14s} {_fmt(vol.spacing):>14s} {vol.orientation:>6s} "
              f"{vol.meta.get('dtype', '?'):>8s} {f'[{lo:.4g}, {hi:.4g}]':>20s}  -> {_fmt(pre.shape, 0)} "
              f"@ {_fmt(pre.spacing)} mm {pre.orientation}, [{float(pre.data.min()):.3g}, {float(pre.data.max()):.3g}]"
              + (f", {vol.channels} ch" if vol.channels > 1 else "")
              + (f" [{vol.meta['format']}]" if vol.meta.get("format", "nifti") != "nifti" else ""))
        for note in vol.meta.get("skipped_files", []):
            print(f"    left out: {note}")
    if bad:
        print(f"{bad} file(s) could not be used (see ERROR lines)")
    return 1 if bad == len(cases) else 0


def prepare(args) -> int:
    from . import DataError, Preprocessing
    from .prepared import prepare as run_prepare
    try:
        settings = Preprocessing(orientation="RAS", spacing=args.spacing, intensity=args.intensity,
                                 window=tuple(args.window), crop_foreground=args.crop_foreground,
                                 foreground_threshold=args.threshold, frames=args.frames)
        report = run_prepare(args.src, args.out, settings, workers=args.workers, rank=args.rank,
                             world=args.world, progress=args.progress)
    except ValueError as exc:  # DataError included; Preprocessing names a bad --spacing or --window
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. an --out that cannot be created: the path the system names
        print(f"error: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if report.prepared or report.reused else 1


def _window(text: str) -> tuple:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected lo,hi in HU, got {text!r}") from None
    return lo, hi


def default(_args) -> int:
    from .default import INSTALL_HINT, PRETRAINING, SOURCES, available
    paths = available()
    for name, (pkg, _, what) in SOURCES.items():
        mark = "*" if name in PRETRAINING else " "
        print(f"{mark} {name:32s} {pkg:9s} {paths[name] or 'NOT INSTALLED'}\n    {what}")
    print("* = used by train/pretrain.py when no data is given")
    if not all(paths.values()):
        print(f"install the missing ones with: {INSTALL_HINT}")
        return 1
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m rubikops.data")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("info", help="describe an image file, DICOM series, folder or glob")
    i.add_argument("path")
    i.add_argument("--spacing", type=float, default=None, help="target spacing in mm")
    i.add_argument("--intensity", choices=("none", "window", "zscore"), default="none")
    i.add_argument("--crop-foreground", action="store_true")
    i.add_argument("--threshold", type=float, default=0.0, help="foreground threshold")
    i.add_argument("--frames", default=None, help="4-D files: an index or 'channels'")
    pr = sub.add_parser("prepare", help="preprocess SRC once into --out, in parallel and resumably")
    pr.add_argument("src", help="folder, glob, image file or DICOM series folder")
    pr.add_argument("--out", required=True, help="output folder (volumes/*.npy, manifest.json, report.json)")
    pr.add_argument("--workers", type=int, default=1, help="processes (1: this process)")
    pr.add_argument("--rank", type=int, default=0, help="this job's rank; it takes files rank, rank+world, ...")
    pr.add_argument("--world", type=int, default=1, help="number of ranks sharing the files")
    pr.add_argument("--no-progress", dest="progress", action="store_false")
    pr.add_argument("--spacing", type=float, default=None, help="target spacing in mm")
    pr.add_argument("--intensity", choices=("none", "window", "zscore"), default="none")
    pr.add_argument("--window", type=_window, default=(-1000.0, 1000.0), help="CT window lo,hi in HU")
    pr.add_argument("--crop-foreground", action="store_true")
    pr.add_argument("--threshold", type=float, default=0.0, help="foreground threshold")
    pr.add_argument("--frames", default=None, help="4-D files: an index or 'channels'")
    sub.add_parser("default", help="where the offline default dataset lives")
    args = p.parse_args(argv)
    if getattr(args, "frames", None) not in (None, "channels"):
        try:
            args.frames = int(args.frames)
        except ValueError:
            p.error(f"--frames takes an index or 'channels', got {args.frames!r}")
    np.set_printoptions(precision=3)
    return {"info": info, "prepare": prepare, "default": default}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
