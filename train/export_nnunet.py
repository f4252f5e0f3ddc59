"""Export a pretraining run of an nnunet: backbone to the file nnU-Net fine-tunes from.

    python train/pretrain.py --backbone nnunet:PlainConvUNet --nnunet-plans nnUNetPlans.json --out runs/pre
    python train/export_nnunet.py runs/pre --plans nnUNetPlans.json --out pretrained.pth
    nnUNetv2_train DATASET 3d_fullres FOLD -pretrained_weights pretrained.pth

RUN is a pretraining --out folder (its encoder.pt and encoder.json), an
encoder.pt, or a checkpoint (checkpoints/best.pt: the whole pretraining
model).  The network is the one --plans/--configuration describe (the plans
nnU-Net will train with), else the one the pretraining recorded.  Every
network tensor the pretraining saved is copied; the others (the decoder,
after an encoder-only pretext task) keep nnU-Net's own initialisation, and
the report says which.  The file holds {"network_weights": state_dict}
without the .seg_layers. tensors, which nnU-Net never transfers."""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import common  # noqa: E402
from common import UserError  # noqa: E402

from rubikops.data import atomic_path  # noqa: E402
from rubikops.data.nifti import path_problem  # noqa: E402
from rubikops.models.nnunet import NnUNetArchitecture, export_nnunet  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(prog="python train/export_nnunet.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="pretraining --out folder, encoder.pt or checkpoint")
    p.add_argument("--out", required=True, help="the .pth file to write (nnUNetv2_train -pretrained_weights)")
    p.add_argument("--plans", default="", help="nnU-Net plans file of the fine-tuning (default: the network the "
                                               "pretraining recorded)")
    p.add_argument("--configuration", default="3d_fullres", help="the plans' configuration")
    p.add_argument("--seed", type=int, default=0, help="seed of nnU-Net's initialisation of the tensors not pretrained")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p.parse_args(argv)


def _load(path: str):
    problem = path_problem(path)
    if problem is not None:
        raise UserError(f"{path}: {problem}")
    try:
        return common.load_tensors(path)
    except Exception as exc:
        raise UserError(f"{path}: not a readable state_dict or checkpoint ({type(exc).__name__})") from None


def _recorded(json_path: str):
    try:
        with open(json_path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return None
    return meta.get("nnunet") if isinstance(meta, dict) else None


def read_run(run: str) -> tuple:
    """(the saved tensors, the nnU-Net architecture the pretraining recorded or None)."""
    if os.path.isdir(run):
        run = os.path.join(run, "encoder.pt")
    saved = _load(run)
    candidates = [os.path.splitext(run)[0] + ".json"]
    if isinstance(saved, dict) and "model" in saved and "step" in saved:  # a checkpoint: the whole model
        saved = saved["model"]
        candidates.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(run))), "encoder.json"))
    if not (isinstance(saved, dict) and saved and all(isinstance(v, torch.Tensor) for v in saved.values())):
        raise UserError(f"{run}: holds no state_dict (expected what train/pretrain.py writes)")
    for c in candidates:
        recorded = _recorded(c)
        if recorded is not None:
            try:
                return saved, NnUNetArchitecture.from_json(recorded)
            except ValueError as exc:
                raise UserError(f"{c}: {exc}") from None
    return saved, None


def main(argv=None) -> int:
    args = parse(argv)
    if os.path.exists(args.out) and not args.overwrite:
        raise UserError(f"--out: {args.out} exists; pass --overwrite to replace it")
    saved, recorded = read_run(args.run)
    try:
        if args.plans:
            in_channels = recorded.in_channels if recorded is not None else 1
            target = NnUNetArchitecture.from_plans(args.plans, args.configuration, in_channels)
        elif recorded is not None:
            target = recorded
        else:
            raise UserError(f"{args.run}: no nnU-Net network recorded beside it (encoder.json 'nnunet'); pass "
                            "--plans of the network to export to")
        payload, report = export_nnunet(saved, target, seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if recorded is not None and args.plans:
        differ = sorted(k for k in set(recorded.arch_kwargs) | set(target.arch_kwargs)
                        if recorded.arch_kwargs.get(k) != target.arch_kwargs.get(k))
        if differ or recorded.network_class_name != target.network_class_name:
            print(f"note: the pretrained network differs from {args.plans}:{args.configuration} in "
                  f"{', '.join(differ) or 'its class'}; tensors of equal name and shape were copied")
    with atomic_path(args.out) as tmp:
        torch.save(payload, tmp)
    print(report.summary())
    weights = payload["network_weights"]
    aliases = sum(k.startswith("decoder.encoder.") for k in weights)
    print(f"wrote {args.out}: {len(weights)} tensors of {target.short_name} ({target.source})"
          + (f", {aliases} of them the decoder's references to the encoder" if aliases else "")
          + f"; fine-tune with nnUNetv2_train ... -pretrained_weights {args.out}")
    return 0


if __name__ == "__main__":
    common.exit_main(main)
