"""Fine-tune a (Rubik's-cube pretrained) encoder for classification or
segmentation, and evaluate it on a held-out split fixed by the seed.

    python train/finetune.py --task classification --pretrained runs/pretrain/encoder.pt
    python train/finetune.py --task segmentation --pretrained none --decoder duc
    python train/finetune.py --task classification --csv labels.csv --pretrained runs/pretrain
    python train/finetune.py --task segmentation --images "imgs/*.nii.gz" --labels "labs/*.nii.gz"

Default data: the offline tasks of rubikops.data.default (simulated lesion
types in real brain templates; Harvard-Oxford lobes, left hemisphere for
training, right for testing).  Outputs in --out: config.yaml, checkpoints/,
metrics.csv, tensorboard/, results.json (metrics + what the encoder load did)."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402
from common import UserError  # noqa: E402

from rubikops import metrics as M  # noqa: E402
from rubikops.data import Preprocessing  # noqa: E402
from rubikops.inference import sliding_window  # noqa: E402
from rubikops.models import BACKBONES, DUC3D, Classifier, UNet3D, build_encoder, load_encoder  # noqa: E402


_f = common.setting


@dataclass
class FinetuneConfig(common.RunSettings):
    task: str = _f("classification", "classification or segmentation")
    pretrained: str = _f("none", "encoder.pt (or the pretraining --out folder), or none (train from scratch)")
    # data
    csv: Optional[str] = _f(None, "classification: CSV with image,label columns (default: the offline lesion task)",
                            "str")
    images: Optional[str] = _f(None, "segmentation: images (glob/folder) (default: the offline atlas task)", "str")
    labels: Optional[str] = _f(None, "segmentation: label maps, in the same order as --images", "str")
    spacing: float = _f(0.0, "resample your data to this spacing in mm (0: keep)")
    num_cases: int = _f(120, "offline classification task: number of cases")
    test_fraction: float = _f(0.25, "classification: held-out share of cases (fixed by --seed)")
    label_fraction: float = _f(1.0, "share of the training labels used (cases; for one segmentation case, a slab)")
    # model
    backbone: str = _f("vgg", f"with --pretrained none: {sorted(BACKBONES)} (else read from encoder.json)")
    width: int = _f(8, "with --pretrained none: first-stage channels")
    norm: str = _f("batch", "with --pretrained none: batch, instance or group")
    decoder: str = _f("unet", "segmentation: unet or duc (the paper's light 3D DUC decoder)")
    dropout: float = _f(0.2, "classifier dropout")
    # optimisation
    steps: int = _f(150, "optimisation steps")
    batch_size: int = _f(8, "samples (or patches) per step")
    patch: tuple = _f((32, 32, 32), "segmentation training patch; evaluation by sliding window", "ints")
    overlap: float = _f(0.5, "sliding-window overlap")
    encoder_lr: float = _f(1e-3, "learning rate of the encoder")
    head_lr: float = _f(3e-3, "learning rate of the new layers")
    freeze_steps: int = _f(0, "keep the encoder frozen for this many steps, then unfreeze")
    weight_decay: float = _f(1e-4, "weight decay")
    class_weights: str = _f("none", "none, auto (inverse frequency) or comma-separated weights")
    out: str = _f("runs/finetune", "output folder")
    eval_every: int = _f(0, "steps between evaluations (0: only at the end)")
    checkpoint_every: int = _f(50, "steps between checkpoints")
    keep_checkpoints: int = _f(2, "checkpoints kept")

PRESETS = {"tiny": dict(num_cases=8, steps=4, batch_size=2, patch=(16, 16, 16), log_every=1, checkpoint_every=2,
                        width=4)}


def parse(argv=None):
    return common.parse_config(FinetuneConfig, PRESETS, "python train/finetune.py", __doc__, argv)


# -- data ----------------------------------------------------------------------------------------------
def _split(labels: np.ndarray, test_fraction: float, seed: int):
    """Stratified split fixed by the seed: (train indices, test indices)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, int(round(len(idx) * test_fraction)))
        test += idx[:k].tolist()
        train += idx[k:].tolist()
    return sorted(train), sorted(test)


def _subset(train: list, labels: np.ndarray, fraction: float, seed: int) -> list:
    """Stratified label fraction, at least one case per class."""
    if fraction >= 1.0:
        return train
    rng = np.random.default_rng(seed + 1)
    keep = []
    for c in np.unique(labels[train]):
        idx = [i for i in train if labels[i] == c]
        keep += rng.permutation(idx)[:max(1, int(round(len(idx) * fraction)))].tolist()
    return sorted(keep)


def load_classification(cfg):
    from rubikops.data import default
    if cfg.csv:
        cases, names = default.csv_classification(cfg.csv, Preprocessing.mri(spacing=cfg.spacing or None))
        shapes = {c.image.data.shape for c in cases}
        if len(shapes) > 1:
            raise UserError(f"{cfg.csv}: images have different shapes {sorted(shapes)}; resample/crop them to one "
                            "shape (e.g. --spacing) for classification")
    else:
        cases, names = default.lesion_classification_task(cfg.num_cases, seed=1000 + cfg.seed)
    x = torch.from_numpy(np.stack([c.image.data for c in cases])).float()
    y = np.array([c.label for c in cases])
    train, test = _split(y, cfg.test_fraction, cfg.seed)
    train = _subset(train, y, cfg.label_fraction, cfg.seed)
    return x, torch.from_numpy(y), train, test, names


def load_segmentation(cfg):
    from rubikops.data import default, find_files
    if cfg.images or cfg.labels:
        if not (cfg.images and cfg.labels):
            raise UserError("--images and --labels go together")
        ims, labs = find_files(cfg.images), find_files(cfg.labels)
        cases = default.paired_segmentation(ims, labs, Preprocessing.mri(spacing=cfg.spacing or None))
        names = tuple(f"class {i}" for i in range(int(max(c.label.data.max() for c in cases)) + 1))
        rng = np.random.default_rng(cfg.seed)
        order = rng.permutation(len(cases)).tolist()
        k = max(1, int(round(len(cases) * 0.25)))
        if len(cases) < 2:
            raise UserError("segmentation with your own data needs at least 2 cases (one is held out)")
        train, test = [cases[i] for i in order[k:]], [cases[i] for i in order[:k]]
    else:
        train, test, names = default.atlas_segmentation_task()
    pairs = lambda cs: [(torch.from_numpy(c.image.data).float(), torch.from_numpy(c.label.data[0]).long())  # noqa
                        for c in cs]
    train, test = pairs(train), pairs(test)
    if cfg.label_fraction < 1.0:
        if len(train) > 1:
            keep = max(1, int(round(len(train) * cfg.label_fraction)))
            train = train[:keep]
        else:  # one labelled volume: a slab of it along the last axis (axial in RAS)
            img, lab = train[0]
            n = max(cfg.patch[-1], int(round(img.shape[-1] * cfg.label_fraction)))
            z0 = (img.shape[-1] - n) // 2
            train = [(img[..., z0:z0 + n], lab[..., z0:z0 + n])]
    return train, test, names


# -- model -----------------------------------------------------------------------------------------------
def resolve_pretrained(path: str):
    if path in ("none", "", None):
        return None, None
    if os.path.isdir(path):
        path = os.path.join(path, "encoder.pt")
    if not os.path.exists(path):
        raise UserError(f"--pretrained: {path}: no such file")
    meta_path = os.path.splitext(path)[0] + ".json"
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"--pretrained: {path}: not a readable state_dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and "model" in state and "step" in state:  # a full pretraining checkpoint
        state = state["model"]
    return state, meta


def build_model(cfg, num_classes: int, in_channels: int):
    state, meta = resolve_pretrained(cfg.pretrained)
    if meta is not None:
        backbone, width, norm = meta["backbone"], int(meta["width"]), meta.get("norm", "batch")
        if int(meta.get("in_channels", 1)) != in_channels:
            raise UserError(f"--pretrained: encoder takes {meta['in_channels']} channel(s), data has {in_channels}")
    else:
        backbone, width, norm = cfg.backbone, cfg.width, cfg.norm
    if backbone not in BACKBONES:
        raise UserError(f"--backbone: unknown backbone {backbone!r}; choose one of {sorted(BACKBONES)}")
    encoder = build_encoder(backbone, in_channels, width, norm)
    report = load_encoder(encoder, state) if state is not None else None
    if cfg.task == "classification":
        model = Classifier(encoder, num_classes, cfg.dropout)
    elif cfg.decoder == "unet":
        model = UNet3D(encoder, num_classes, norm)
    elif cfg.decoder == "duc":
        model = DUC3D(encoder, num_classes)
    else:
        raise UserError(f"--decoder must be unet or duc, got {cfg.decoder!r}")
    return model, report


def class_weights(cfg, counts: np.ndarray) -> Optional[torch.Tensor]:
    if cfg.class_weights == "none":
        return None
    if cfg.class_weights == "auto":
        w = counts.sum() / np.maximum(counts, 1) / len(counts)
        return torch.tensor(w, dtype=torch.float32)
    try:
        w = [float(v) for v in cfg.class_weights.split(",")]
    except ValueError:
        raise UserError(f"--class-weights: {cfg.class_weights!r} is not none, auto or numbers") from None
    if len(w) != len(counts):
        raise UserError(f"--class-weights: {len(w)} weights for {len(counts)} classes")
    return torch.tensor(w)


# -- training ------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    cfg, args = parse(argv)
    if cfg.task not in ("classification", "segmentation"):
        raise UserError(f"--task must be classification or segmentation, got {cfg.task!r}")
    if not 0 < cfg.label_fraction <= 1:
        raise UserError(f"--label-fraction must be in (0, 1], got {cfg.label_fraction}")
    cfg, resume = common.open_run(FinetuneConfig, cfg, args)
    ckpts = common.Checkpoints(os.path.join(cfg.out, "checkpoints"), cfg.keep_checkpoints)
    dist = common.setup_distributed(cfg.device)
    return common.run_distributed(dist, run, cfg, dist, ckpts, resume)


def run(cfg, dist, ckpts, resume) -> int:
    dev = dist.device
    if cfg.amp == "fp16" and dev.type != "cuda":
        raise UserError("--amp fp16 needs a GPU; use --amp bf16 on CPU")
    common.seed_everything(cfg.seed)
    seg = cfg.task == "segmentation"
    if seg:
        train_cases, test_cases, names = load_segmentation(cfg)
        in_ch = train_cases[0][0].shape[0]
        counts = np.bincount(torch.cat([lab.flatten() for _, lab in train_cases]).numpy(), minlength=len(names))
        for img, _ in train_cases:
            if any(s < p for s, p in zip(img.shape[1:], cfg.patch)):
                raise UserError(f"--patch {tuple(cfg.patch)} does not fit a training volume of shape "
                                f"{tuple(img.shape[1:])}")
    else:
        x, y, train_idx, test_idx, names = load_classification(cfg)
        in_ch = x.shape[1]
        counts = np.bincount(y[train_idx].numpy(), minlength=len(names))
    common.seed_everything(cfg.seed)
    model, report = build_model(cfg, len(names), in_ch)
    model = model.to(dev)
    if dist.main:
        print(report.summary() if report is not None else "encoder: random initialisation (--pretrained none)",
              file=sys.stderr)
    enc_params = list(model.encoder.parameters())
    enc_ids = {id(p) for p in enc_params}
    head_params = [p for p in model.parameters() if id(p) not in enc_ids]
    opt = torch.optim.AdamW([{"params": enc_params, "lr": cfg.encoder_lr}, {"params": head_params, "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps))))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + dist.rank)
    step = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        step = int(resume["step"])
        rngs = resume["rng"]
        common.set_rng_state(rngs[dist.rank] if isinstance(rngs, list) else rngs, {"batches": gen})
    net = torch.nn.parallel.DistributedDataParallel(model) if dist.world > 1 else model
    fwd = torch.compile(net) if cfg.compile else net
    amp = common.autocast(dev, cfg.amp)
    weights = class_weights(cfg, counts)
    weights = weights.to(dev) if weights is not None else None
    if dist.main:
        os.makedirs(cfg.out, exist_ok=True)
        common.save_config(cfg, os.path.join(cfg.out, "config.yaml"))
    logger = common.Logger(cfg.out, dist.main, resume_step=step, tensorboard=cfg.tensorboard)
    bar = common.progress(cfg.steps, step, cfg.progress and dist.main, f"fine-tuning ({cfg.task})")

    def batch():
        if seg:
            imgs, labs = [], []
            for _ in range(cfg.batch_size):
                img, lab = train_cases[int(torch.randint(len(train_cases), (1,), generator=gen))]
                o = [int(torch.randint(s - p + 1, (1,), generator=gen)) for s, p in zip(img.shape[1:], cfg.patch)]
                sl = tuple(slice(a, a + p) for a, p in zip(o, cfg.patch))
                imgs.append(img[(slice(None),) + sl])
                labs.append(lab[sl])
            return torch.stack(imgs).to(dev), torch.stack(labs).to(dev)
        pick = torch.tensor(train_idx)[torch.randint(len(train_idx), (cfg.batch_size,), generator=gen)]
        xb = x[pick]
        flip = torch.rand(cfg.batch_size, generator=gen) < 0.5  # left-right flips
        xb[flip] = xb[flip].flip(2)
        return xb.to(dev), y[pick].to(dev)

    def loss_fn(out, target):
        ce = F.cross_entropy(out.float(), target, weight=weights)
        if not seg:
            return ce
        prob = torch.softmax(out.float(), 1)
        onehot = F.one_hot(target, prob.shape[1]).movedim(-1, 1).float()
        inter = (prob * onehot).sum((0, 2, 3, 4))
        dice = 1 - (2 * inter + 1) / (prob.sum((0, 2, 3, 4)) + onehot.sum((0, 2, 3, 4)) + 1)
        return ce + dice[1:].mean()

    t0 = time.perf_counter()
    results: dict = {}
    while step < cfg.steps:
        frozen = step < cfg.freeze_steps
        for p in enc_params:
            p.requires_grad_(not frozen)
        xb, yb = batch()
        with amp():
            out = fwd(xb)
        loss = loss_fn(out, yb)
        common.optimizer_step(loss, opt, sched, scaler)
        step += 1
        if bar is not None:
            bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            logger.log(step, dist.mean({"train/loss": float(loss.detach())}) | {"encoder_frozen": int(frozen)})
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            results = evaluate(model, cfg, seg, dev, amp, names, test_cases if seg else (x, y, test_idx))
            logger.log(step, {f"eval/{k}": v for k, v in results.items() if isinstance(v, float)})
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            rng = common.rng_state({"batches": gen})
            if dist.world > 1:
                rngs = [None] * dist.world
                torch.distributed.all_gather_object(rngs, rng)
                rng = rngs
            if dist.main:
                ckpts.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "step": step,
                            "rng": rng, "config": dataclasses.asdict(cfg), "metrics": results}, step)
            common.kill_point(step)
    if bar is not None:
        bar.close()
    logger.close()
    if dist.main:
        summary = {"task": cfg.task, "pretrained": cfg.pretrained, "label_fraction": cfg.label_fraction,
                   "seed": cfg.seed, "classes": list(names), "steps": step, "seconds": time.perf_counter() - t0,
                   "metrics": results,
                   "encoder_load": None if report is None else {
                       "loaded": len(report.loaded), "missing": report.missing, "unexpected": report.unexpected,
                       "mismatched": [list(m[:1]) + [list(m[1]), list(m[2])] for m in report.mismatched]}}
        common.write_json(os.path.join(cfg.out, "results.json"), summary)
        print_table(summary)
    return 0


@torch.no_grad()
def evaluate(model, cfg, seg, dev, amp, names, data) -> dict:
    was = model.training
    model.eval()
    try:
        if seg:
            preds, targets = [], []
            for img, lab in data:
                with amp():
                    logits = sliding_window(img[None].to(dev), cfg.patch, model, overlap=cfg.overlap)
                preds.append(logits.argmax(1)[0].cpu().flatten())
                targets.append(lab.flatten())
            return M.segmentation_report(torch.cat(preds), torch.cat(targets), len(names))
        x, y, idx = data
        logits = []
        for i in range(0, len(idx), cfg.batch_size):
            with amp():
                logits.append(model(x[idx[i:i + cfg.batch_size]].to(dev)).float().cpu())
        return M.classification_report(torch.cat(logits), y[idx])
    finally:
        model.train(was)


def print_table(summary: dict) -> None:
    m = summary["metrics"]
    print(f"\n{summary['task']} | pretrained: {summary['pretrained']} | label fraction {summary['label_fraction']} "
          f"| seed {summary['seed']} | {summary['steps']} steps in {summary['seconds']:.0f} s")
    if summary["task"] == "classification":
        print(f"accuracy {m['accuracy']:.3f}  balanced accuracy {m['balanced_accuracy']:.3f}  "
              f"macro AUC {m['macro_auc']:.3f}")
        for name, auc in zip(summary["classes"], m["auc_per_class"]):
            print(f"  {name:24s} AUC {auc:.3f}")
    else:
        print(f"mean Dice {m['mean_dice']:.3f}  mean IoU {m['mean_iou']:.3f} (foreground classes)")
        for name, d, i in zip(summary["classes"], m["dice_per_class"], m["iou_per_class"]):
            print(f"  {name:24s} Dice {d:.3f}  IoU {i:.3f}")


if __name__ == "__main__":
    common.exit_main(main)
