"""The fine-tuning network of train/finetune.py and what it loads: the
pretrained encoder (encoder.pt with encoder.json, a pretraining folder or
checkpoint), a dense pretraining's U-Net decoder (network.pt), or an nnU-Net
network, each load reported and a partial fit refused unless asked for."""
from __future__ import annotations

import json
import os
from typing import Optional

import torch

import common
from common import UserError
from rubikops.data.nifti import path_problem
from rubikops.models import BACKBONES, DUC3D, Classifier, UNet3D, build_encoder, load_decoder, load_encoder


def read_encoder_json(path: str) -> dict:
    """encoder.json: how to build the encoder its encoder.pt belongs to."""
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UserError(f"--pretrained: {path}: not a readable encoder.json ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise UserError(f"--pretrained: {path}: holds a {type(meta).__name__}, expected a JSON object")
    for key, kind in (("backbone", str), ("width", int), ("norm", str), ("in_channels", int)):
        if key == "backbone" or key in meta:
            if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
                raise UserError(f"--pretrained: {path}: {key!r} must be a {kind.__name__}, got {meta.get(key)!r}")
    return meta


def resolve_pretrained(path: str):
    """(encoder state_dict, how to build the encoder or None) from encoder.pt
    (+ encoder.json beside it), a pretraining --out folder, or one of its
    checkpoints (step_*.pt, best.pt: their config says how).  Read with
    weights_only=True: a file that is not tensors and plain values is refused."""
    if path in ("none", "", None):
        return None, None
    if os.path.isdir(path):
        path = os.path.join(path, "encoder.pt")
    state = read_tensors(path)
    meta = None
    if isinstance(state, dict) and "model" in state and "step" in state:  # a full pretraining checkpoint
        run = state.get("config")
        if isinstance(run, dict) and isinstance(run.get("backbone"), str):
            meta = {"backbone": run["backbone"], "width": run.get("width"), "norm": run.get("norm", "batch"),
                    "in_channels": run.get("channels", 1)}
            beside = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(path))), "encoder.json")
            if run["backbone"].startswith("nnunet:") and os.path.exists(beside):  # the network it pretrained
                meta["nnunet"] = read_encoder_json(beside).get("nnunet")
        state = state["model"]
        if isinstance(state, dict) and any(isinstance(k, str) and k.startswith(("up.", "dec.")) for k in state):
            meta = dict(meta or {}, network_state=state)  # a dense task's checkpoint: the whole U-Net
    elif os.path.exists(os.path.splitext(path)[0] + ".json"):
        meta = read_encoder_json(os.path.splitext(path)[0] + ".json")
        if meta.get("network") is not None:
            # network.pt of a dense pretraining: the whole U-Net
            meta["network_state"] = read_tensors(os.path.join(os.path.dirname(path), str(meta["network"])))
            check_state_dict(meta["network_state"], os.path.join(os.path.dirname(path), str(meta["network"])),
                             "a U-Net")
    check_state_dict(state, path, "an encoder")
    spoilt = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if spoilt:
        raise UserError(f"--pretrained: {path}: {len(spoilt)} tensor(s) hold NaN or Inf (e.g. {spoilt[0]}): the "
                        "pretraining diverged; use an earlier checkpoint")
    return state, meta


def read_tensors(path: str):
    """A file of tensors and plain values (weights_only), or a UserError naming it."""
    problem = path_problem(path)
    if problem is not None:
        raise UserError(f"--pretrained: {path}: {problem}")
    try:
        return common.load_tensors(path)
    except Exception as exc:
        raise UserError(f"--pretrained: {path}: not a readable state_dict ({type(exc).__name__})") from None


def check_state_dict(state, path: str, kind: str) -> None:
    if not (isinstance(state, dict) and state and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in state.items())):
        what = f"a {type(state).__name__}" if not isinstance(state, dict) else "a dict that is not name -> tensor"
        raise UserError(f"--pretrained: {path}: holds {what}, not {kind} state_dict (expected the encoder.pt, "
                        "network.pt or a checkpoint that train/pretrain.py writes)")


def build_model(cfg, num_classes: int, in_channels: int):
    """(model, encoder load report or None, decoder load report or None).  A dense
    pretraining's decoder is loaded for segmentation with --decoder unet;
    classification and the DUC decoder take the encoder alone."""
    state, meta = resolve_pretrained(cfg.pretrained)
    if meta is not None:
        backbone, width, norm = meta["backbone"], int(meta.get("width") or cfg.width), meta.get("norm", "batch")
        if int(meta.get("in_channels", 1)) != in_channels:
            raise UserError(f"--pretrained: encoder takes {meta['in_channels']} channel(s), data has {in_channels}")
    else:
        backbone, width, norm = cfg.backbone, cfg.width, cfg.norm
    if backbone.startswith("nnunet:"):
        return build_nnunet_model(cfg, meta, state, backbone, num_classes, in_channels)
    if backbone not in BACKBONES:
        raise UserError(f"--backbone: unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)} or "
                        "nnunet:<PlainConvUNet|ResidualEncoderUNet>")
    encoder = build_encoder(backbone, in_channels, width, norm)
    report = check_load(cfg, encoder, state, f"a {backbone} encoder of width {width}")
    if cfg.task == "classification":
        model = Classifier(encoder, num_classes, cfg.dropout)
    elif cfg.decoder == "unet":
        model = UNet3D(encoder, num_classes, norm)
    elif cfg.decoder == "duc":
        model = DUC3D(encoder, num_classes)
    else:
        raise UserError(f"--decoder must be unet or duc, got {cfg.decoder!r}")
    decoder_report = None
    network = (meta or {}).get("network_state")
    if network is not None and isinstance(model, UNet3D):
        decoder_report = load_decoder(model, network)
        if (decoder_report.missing or decoder_report.mismatched) and not cfg.allow_partial_load:
            counts = decoder_report.summary().splitlines()[0].removeprefix("decoder weights: ")
            raise UserError(f"--pretrained: {cfg.pretrained}: its U-Net decoder does not fit ({counts}); "
                            "--allow-partial-load fine-tunes with the rest randomly initialised")
    return model, report, decoder_report


def build_nnunet_model(cfg, meta, state, backbone: str, num_classes: int, in_channels: int):
    """The nnU-Net network itself (segmentation; its own decoder) or its encoder under a classifier, with
    the pretrained encoder loaded; the network is the one the pretraining recorded, else --nnunet-plans or
    nnU-Net's defaults."""
    from rubikops.models.nnunet import NnUNetArchitecture, NnUNetEncoder, NnUNetSegmenter, nnunet_architecture, \
        stages_for
    try:
        if meta is not None and meta.get("nnunet"):
            arch = NnUNetArchitecture.from_json(meta["nnunet"])
        else:
            width = int(meta.get("width") or cfg.width) if meta else cfg.width
            arch = nnunet_architecture(backbone.split(":", 1)[1], in_channels, width,
                                       meta.get("norm", "batch") if meta else cfg.norm, cfg.nnunet_plans or None,
                                       cfg.nnunet_configuration, stages_for(cfg.patch))
        if cfg.task == "segmentation":
            arch.check_input(cfg.patch, "--patch")
        if cfg.task == "classification":
            encoder = NnUNetEncoder(arch)
            model = Classifier(encoder, num_classes, cfg.dropout)
        else:
            model = NnUNetSegmenter(arch, num_classes)
            encoder = model.encoder
    except ValueError as exc:
        raise UserError(f"--backbone {backbone}: {exc}") from None
    return model, check_load(cfg, encoder, state, f"the {arch.short_name} of {arch.source}"), None


def check_load(cfg, encoder, state, what: str):
    """Load the pretrained ``state`` into ``encoder``: a partial fit is refused unless --allow-partial-load."""
    report = load_encoder(encoder, state) if state is not None else None
    partial = report is not None and (report.missing or report.unexpected or report.mismatched)
    if partial and cfg.allow_partial_load and not report.loaded:  # a partial load means some weights, not none
        raise UserError(f"--pretrained: {cfg.pretrained}: none of its {len(state)} tensors fit {what}, so "
                        "--allow-partial-load would train from scratch; pass the --backbone and --width it was "
                        "pretrained with, or --pretrained none")
    if partial and not cfg.allow_partial_load:
        counts = report.summary().splitlines()[0].removeprefix("encoder weights: ")
        raise UserError(f"--pretrained: {cfg.pretrained}: does not fit {what} "
                        f"({counts}); pass the --backbone and --width it was pretrained with (or keep its "
                        "encoder.json beside it), or --allow-partial-load to fine-tune with the rest randomly "
                        "initialised")
    return report


def load_summary(report) -> Optional[dict]:
    if report is None:
        return None
    return {"loaded": len(report.loaded), "missing": report.missing, "unexpected": report.unexpected,
            "mismatched": [list(m[:1]) + [list(m[1]), list(m[2])] for m in report.mismatched]}
