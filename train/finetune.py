"""Fine-tune a (Rubik's-cube pretrained) encoder for classification or
segmentation, and evaluate it on held-out cases (chosen by --test-cases, or
by the seed).

    python train/finetune.py --task classification --pretrained runs/pretrain-rubik/encoder.pt
    python train/finetune.py --task segmentation --pretrained none --decoder duc
    python train/finetune.py --task classification --csv labels.csv --pretrained runs/pretrain-rubik
    python train/finetune.py --task segmentation --images "imgs/*.nii.gz" --labels "labs/*.nii.gz"
    python train/finetune.py --task segmentation --images imgs/ --labels labs/ --test-cases subject7.nii.gz

Default data: the offline tasks of rubikops.data.default (simulated lesion
types in real brain templates; Harvard-Oxford lobes, left hemisphere for
training, right for testing), each with a validation split (--val-fraction:
held-out cases, or axial slabs spread over the training hemisphere, which hold
every lobe) that never overlaps training or test data.  Outputs in --out:
config.yaml, checkpoints/, metrics.csv, tensorboard/, results.json (test
metrics, validation metrics, chance level, the split, what the encoder load
did)."""
from __future__ import annotations

import dataclasses
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
from splits import (GUARD_SLICES, VAL_SLABS, axial_split, cases_kept, choose_split, describe_split,  # noqa: E402
                    label_subset, print_split, slice_ranges, split_source, stratified_test_split, validation_split)
from common import UserError  # noqa: E402
from finetune_model import build_model, load_summary  # noqa: E402

from rubikops import metrics as M  # noqa: E402
from rubikops.data import Preprocessing  # noqa: E402
from rubikops.inference import sliding_window  # noqa: E402
from rubikops.models import BACKBONES  # noqa: E402
from rubikops.sparse_labels import UNLABELLED, patch_origins, segmentation_loss  # noqa: E402


_f = common.setting


@dataclass
class FinetuneConfig(common.RunSettings):
    task: str = _f("classification", "classification or segmentation")
    pretrained: str = _f("none", "encoder.pt, the pretraining --out folder or one of its checkpoints, or none "
                                 "(train from scratch)")
    allow_partial_load: bool = _f(False, "fine-tune even when only part of the encoder's weights fit (the rest "
                                         "stays randomly initialised); without it a partial load is an error")
    # data
    csv: Optional[str] = _f(None, "classification: CSV with image,label columns (default: the offline lesion task)",
                            "str")
    images: Optional[str] = _f(None, "segmentation: images (glob/folder) (default: the offline atlas task)", "str")
    labels: Optional[str] = _f(None, "segmentation: label maps, in the same order as --images", "str")
    spacing: float = _f(0.0, "resample your data to this spacing in mm (0: keep)")
    num_cases: int = _f(120, "offline classification task: number of cases")
    test_fraction: float = _f(0.25, "classification: held-out share of cases (fixed by --seed)")
    label_fraction: float = _f(1.0, "share of the training labels used (cases; for one segmentation case, every "
                                    "k-th of its training axial slices, the image kept whole), taken after the "
                                    "validation split")
    val_fraction: float = _f(0.2, "offline tasks: share of the training data held out for validation, fixed by "
                                  "--seed and independent of --label-fraction (classification: stratified cases "
                                  "from the non-test cases; segmentation: 4 axial slabs spread over the training "
                                  "volume, 2 unlabelled slices either side); 0: none.  Your data: --val-cases")
    test_cases: Optional[str] = _f(None, "your data (--images/--labels or --csv): the cases held out for testing, "
                                         "as 0-based indices in file order or file names, comma-separated "
                                         "(default: a share chosen by --seed)", "str")
    val_cases: Optional[str] = _f(None, "your data: cases held out for validation (evaluated and reported apart "
                                        "from the test cases; default: none)", "str")
    # model
    backbone: str = _f("vgg", f"with --pretrained none: {sorted(BACKBONES)}, nnunet:PlainConvUNet or "
                              "nnunet:ResidualEncoderUNet (else read from encoder.json)")
    nnunet_plans: str = _f("", "nnunet: backbones with --pretrained none: the nnU-Net plans file to build the "
                               "network from (empty: nnU-Net's defaults, as many stages as --patch halves to 2)")
    nnunet_configuration: str = _f("3d_fullres", "nnunet: backbones: the plans' configuration")
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
    pretrained_decoder_lr: float = _f(0.0, "segmentation: learning rate of the decoder tensors loaded from a "
                                           "dense pretraining (genesis, masked); 0: --encoder-lr, as the other "
                                           "pretrained layers")
    freeze_steps: int = _f(0, "keep the pretrained layers (the encoder, and a pretrained decoder) frozen for this many steps")
    weight_decay: float = _f(1e-4, "weight decay")
    class_weights: str = _f("none", "none, auto (inverse frequency) or comma-separated weights")
    out: str = _f("", "output folder (default: runs/finetune-TASK)", "str")
    eval_every: int = _f(0, "steps between evaluations (0: only at the end)")
    checkpoint_every: int = _f(50, "steps between checkpoints")
    keep_checkpoints: int = _f(2, "checkpoints kept")

PRESETS = {"tiny": dict(num_cases=12, steps=4, batch_size=2, patch=(16, 16, 16), log_every=1, checkpoint_every=2,
                        width=4)}


def parse(argv=None):
    return common.parse_config(FinetuneConfig, PRESETS, "python train/finetune.py", __doc__, argv)


# -- data ----------------------------------------------------------------------------------------------
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
    if len(np.unique(y)) < 2:
        raise UserError(f"{cfg.csv or 'classification'}: every case has the label {names[int(y[0])]!r}; "
                        "classification needs at least 2 classes")
    case_names = [c.name for c in cases]
    split = choose_split(cfg, case_names, lambda: stratified_test_split(y, cfg.test_fraction, cfg.seed)[1])
    source = split_source(cfg)
    if not cfg.csv and not cfg.val_cases and cfg.val_fraction > 0:
        split["train"], split["val"] = validation_split(split["train"], y, cfg.val_fraction, cfg.seed)
        if not split["val"]:
            raise UserError(f"--val-fraction {cfg.val_fraction:g}: no class has 2 training cases to hold one out "
                            f"for validation ({cfg.num_cases} cases); raise --num-cases or pass --val-fraction 0")
        source += f", --val-fraction {cfg.val_fraction:g}"
    split["train"] = label_subset(split["train"], y, cfg.label_fraction, cfg.seed)
    return x, torch.from_numpy(y), split, names, describe_split(split, case_names, source)


def load_segmentation(cfg):
    from rubikops.data import default, find_files
    if cfg.images or cfg.labels:
        if not (cfg.images and cfg.labels):
            raise UserError("--images and --labels go together")
        ims, labs = find_files(cfg.images), find_files(cfg.labels)
        cases = default.paired_segmentation(ims, labs, Preprocessing.mri(spacing=cfg.spacing or None))
        names = tuple(f"class {i}" for i in range(int(max(c.label.data.max() for c in cases)) + 1))
        if len(cases) < 2:
            raise UserError("segmentation with your own data needs at least 2 cases (one is held out)")

        def seeded_test():
            order = np.random.default_rng(cfg.seed).permutation(len(cases)).tolist()
            return order[:max(1, int(round(len(cases) * 0.25)))]
        case_names = [c.name for c in cases]
        split = choose_split(cfg, case_names, seeded_test)
        named = describe_split(split, case_names, split_source(cfg))
        train, val, test = ([cases[i] for i in split[k]] for k in ("train", "val", "test"))
    else:
        if cfg.test_cases or cfg.val_cases:
            raise UserError("--test-cases and --val-cases choose among your own cases (--images/--labels); the "
                            "offline atlas task has one split: left hemisphere for training, right for testing")
        train, test, names = default.atlas_segmentation_task()
        val = []
        named = {"train": [c.name for c in train], "val": [], "test": [c.name for c in test],
                 "chosen_by": "the offline task"}
    pairs = lambda cs: [(torch.from_numpy(c.image.data).float(), torch.from_numpy(c.label.data[0]).long())  # noqa
                        for c in cs]
    own = bool(cfg.images)
    train, val, test = pairs(train), pairs(val), pairs(test)
    if len(train) == 1 and (not own or cfg.label_fraction < 1):
        # one labelled volume: validation and training labels are sets of its axial slices
        (img, lab), name = train[0], named["train"][0]
        layout = axial_split(img.shape[-1], 0 if own else cfg.val_fraction)
        labelled = layout.labelled(cfg.label_fraction)
        # the image stays whole, as with sparsely annotated scans: only the labels are left out
        train = [(img, labels_on_slices(lab, labelled))]
        named["train"] = [f"{name}, axial slices 0-{img.shape[-1] - 1}, labelled {slice_ranges(labelled)}"]
        named["axial_slices"] = {"train": list(labelled)}
        if layout.val:
            val = [(img, labels_on_slices(lab, layout.val))]
            named["val"] = [f"{name}, axial slices {slice_ranges(layout.val)} ({VAL_SLABS} slabs spread over the "
                            f"volume, {GUARD_SLICES} unlabelled slices either side)"]
            named["axial_slices"]["val"] = list(layout.val)
            named["chosen_by"] += f", --val-fraction {cfg.val_fraction:g}"
    elif cfg.label_fraction < 1.0:
        train = train[:cases_kept(len(train), cfg.label_fraction)]
        named["train"] = named["train"][:len(train)]  # the cases whose labels trained
    return train, val, test, names, named


def labels_on_slices(label: torch.Tensor, slices) -> torch.Tensor:
    """``label`` on the given slices of its last axis, UNLABELLED elsewhere."""
    out = torch.full_like(label, UNLABELLED)
    idx = torch.tensor(list(slices), dtype=torch.long)
    out[..., idx] = label[..., idx]
    return out


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
    if not all(math.isfinite(v) and v >= 0 for v in w) or not any(w):
        raise UserError(f"--class-weights: weights must be finite, >= 0 and not all 0, got {cfg.class_weights!r}")
    return torch.tensor(w)


# -- training ------------------------------------------------------------------------------------------
def check_config(cfg: FinetuneConfig) -> None:
    need = common.require
    need(cfg.task in ("classification", "segmentation"),
         f"--task must be classification or segmentation, got {cfg.task!r}")
    need(cfg.decoder in ("unet", "duc"), f"--decoder must be unet or duc, got {cfg.decoder!r}")
    need(cfg.norm in ("batch", "instance", "group"), f"--norm must be batch, instance or group, got {cfg.norm!r}")
    need(cfg.amp in ("none", "bf16", "fp16"), f"--amp must be none, bf16 or fp16, got {cfg.amp!r}")
    need(len(cfg.patch) == 3 and min(cfg.patch) >= 1, f"--patch takes 3 positive ints, got {cfg.patch}")
    common.require_range(cfg, "label_fraction", 0, 1, lo_open=True)
    common.require_range(cfg, "test_fraction", 0, 1, lo_open=True, hi_open=True)
    common.require_range(cfg, "val_fraction", 0, 1, hi_open=True)
    common.require_at_least(cfg, 1, "steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
                            "width", "num_cases")
    common.require_at_least(cfg, 0, "eval_every", "freeze_steps")
    for name in ("encoder_lr", "head_lr"):
        common.require_range(cfg, name, 0, math.inf, lo_open=True, hi_open=True)
    common.require_range(cfg, "pretrained_decoder_lr", 0, math.inf, hi_open=True)
    if cfg.pretrained_decoder_lr and cfg.task != "segmentation":
        raise UserError("--pretrained-decoder-lr applies to --task segmentation only (classification loads no "
                        "decoder)")
    for name in ("spacing", "weight_decay"):
        common.require_range(cfg, name, 0, math.inf, hi_open=True)
    for name in ("overlap", "dropout"):
        common.require_range(cfg, name, 0, 1, hi_open=True)


def make_optimizer(cfg, model: torch.nn.Module, decoder_report) -> tuple[torch.optim.Optimizer, list]:
    """(AdamW, the pretrained parameters): the encoder learns at --encoder-lr, the decoder tensors loaded from
    a dense pretraining at --pretrained-decoder-lr (0: --encoder-lr), every new layer at --head-lr.  A
    pretrained decoder at the new layers' rate trains each layer at the rate it has from scratch, which is
    how the protocol compares a dense arm with scratch."""
    loaded = set(decoder_report.loaded if decoder_report is not None else ())
    encoder = list(model.encoder.parameters())
    decoder = [p for n, p in model.named_parameters() if n in loaded]
    pretrained_ids = {id(p) for p in encoder + decoder}
    new = [p for p in model.parameters() if id(p) not in pretrained_ids]
    groups = [{"params": encoder, "lr": cfg.encoder_lr}, {"params": new, "lr": cfg.head_lr}]
    if decoder and cfg.pretrained_decoder_lr:
        groups.append({"params": decoder, "lr": cfg.pretrained_decoder_lr})
    else:  # one group fewer keeps the optimizer state of runs made before the option resumable
        groups[0]["params"] = encoder + decoder
    return torch.optim.AdamW(groups, weight_decay=cfg.weight_decay), encoder + decoder


def main(argv=None) -> int:
    cfg, args = parse(argv)
    cfg = dataclasses.replace(cfg, out=cfg.out or os.path.join("runs", f"finetune-{cfg.task}"))
    check_config(cfg)
    cfg, resume = common.open_run(FinetuneConfig, cfg, args)
    if resume is not None and int(resume["step"]) >= cfg.steps and os.path.exists(os.path.join(cfg.out, "results.json")):
        raise UserError(f"--resume: the checkpoint has {int(resume['step'])} steps already, --steps is {cfg.steps}, "
                        f"and {os.path.join(cfg.out, 'results.json')} holds its results; pass a larger --steps to "
                        "continue training (nothing was changed)")
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
        train_cases, val_cases, test_cases, names, split = load_segmentation(cfg)
        in_ch = train_cases[0][0].shape[0]
        labelled = torch.cat([lab.flatten() for _, lab in train_cases])
        counts = np.bincount(labelled[labelled != UNLABELLED].numpy(), minlength=len(names))
        test_counts = np.bincount(torch.cat([lab.flatten() for _, lab in test_cases]).numpy(), minlength=len(names))
        val_data, test_data = val_cases, test_cases
        for img, _ in train_cases:
            if any(s < p for s, p in zip(img.shape[1:], cfg.patch)):
                raise UserError(f"--patch {tuple(cfg.patch)} does not fit a training volume of shape "
                                f"{tuple(img.shape[1:])}")
        origins = [patch_origins(lab, cfg.patch) for _, lab in train_cases]
    else:
        x, y, idx, names, split = load_classification(cfg)
        train_idx = idx["train"]
        in_ch = x.shape[1]
        counts = np.bincount(y[train_idx].numpy(), minlength=len(names))
        test_counts = np.bincount(y[idx["test"]].numpy(), minlength=len(names))
        val_data, test_data = (x, y, idx["val"]) if idx["val"] else [], (x, y, idx["test"])
    chance = chance_level(cfg.task, counts, test_counts)
    common.seed_everything(cfg.seed)
    model, report, decoder_report = build_model(cfg, len(names), in_ch)
    model = model.to(dev)
    if dist.main:
        print(report.summary() if report is not None else "encoder: random initialisation (--pretrained none)",
              file=sys.stderr)
        if decoder_report is not None:
            print(decoder_report.summary(), file=sys.stderr)
        elif report is not None and cfg.task == "segmentation":
            print("decoder: random initialisation (the pretraining trained an encoder only, or --decoder duc)",
                  file=sys.stderr)
        print_split(split)
    opt, pretrained_params = make_optimizer(cfg, model, decoder_report)
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
                k = int(torch.randint(len(train_cases), (1,), generator=gen))
                (img, lab), allowed = train_cases[k], origins[k]
                o = [int(a[int(torch.randint(len(a), (1,), generator=gen))]) for a in allowed]
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
        return segmentation_loss(out, target, weights) if seg else F.cross_entropy(out.float(), target, weight=weights)

    t0 = time.perf_counter()
    results: dict = {}
    val_results: dict = {}
    while step < cfg.steps:
        frozen = step < cfg.freeze_steps
        for p in pretrained_params:
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
            results = evaluate(model, cfg, seg, dev, amp, names, test_data)
            row = {f"eval/{k}": v for k, v in results.items() if isinstance(v, float)}
            if val_data:
                val_results = evaluate(model, cfg, seg, dev, amp, names, val_data)
                row.update({f"val/{k}": v for k, v in val_results.items() if isinstance(v, float)})
            logger.log(step, row)
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
    if not results:  # a run killed after its last checkpoint, resumed: evaluate what it trained
        results = evaluate(model, cfg, seg, dev, amp, names, test_data)
        val_results = evaluate(model, cfg, seg, dev, amp, names, val_data) if val_data else {}
    if bar is not None:
        bar.close()
    logger.close()
    if dist.main:
        summary = {"task": cfg.task, "pretrained": cfg.pretrained, "label_fraction": cfg.label_fraction,
                   "seed": cfg.seed, "classes": list(names), "steps": step, "seconds": time.perf_counter() - t0,
                   "metrics": results, "val_metrics": val_results or None, "chance": chance, "split": split,
                   "encoder_load": load_summary(report), "decoder_load": load_summary(decoder_report)}
        results_path = os.path.join(cfg.out, "results.json")
        common.write_json(results_path, summary)
        print_table(summary)
        print(f"results: {results_path}")
    return 0


def chance_level(task: str, train_counts: np.ndarray, test_counts: np.ndarray) -> dict:
    """What the metrics would be without learning anything from the images.
    Classification: always answering the most frequent test class (accuracy),
    1/K balanced accuracy, 0.5 AUC.  Segmentation: each voxel labelled at random
    with the training class frequencies q, against test frequencies p: class c's
    expected Dice is 2 p q / (p + q), averaged over the foreground classes."""
    if task == "classification":
        return {"accuracy": float(test_counts.max() / max(test_counts.sum(), 1)),
                "balanced_accuracy": 1.0 / len(test_counts), "macro_auc": 0.5}
    p = test_counts / max(test_counts.sum(), 1)
    q = train_counts / max(train_counts.sum(), 1)
    dice = np.where(p + q > 0, 2 * p * q / np.maximum(p + q, 1e-12), 0.0)[1:]
    return {"mean_dice": float(dice.mean()) if len(dice) else 0.0}


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
            return M.segmentation_report(torch.cat(preds), torch.cat(targets), len(names), ignore_index=UNLABELLED)
        x, y, idx = data
        logits = []
        for i in range(0, len(idx), cfg.batch_size):
            with amp():
                logits.append(model(x[idx[i:i + cfg.batch_size]].to(dev)).float().cpu())
        return M.classification_report(torch.cat(logits), y[idx])
    finally:
        model.train(was)


def print_table(summary: dict) -> None:
    m, c = summary["metrics"], summary["chance"]
    print(f"\n{summary['task']} | pretrained: {summary['pretrained']} | label fraction {summary['label_fraction']} "
          f"| seed {summary['seed']} | {summary['steps']} steps in {summary['seconds']:.0f} s | "
          f"test cases: {len(summary['split']['test'])}")
    if summary["task"] == "classification":
        print(f"accuracy {m['accuracy']:.3f}  balanced accuracy {m['balanced_accuracy']:.3f}  "
              f"macro AUC {m['macro_auc']:.3f}")
        print(f"chance:  accuracy {c['accuracy']:.3f} (always the most frequent class)  balanced accuracy "
              f"{c['balanced_accuracy']:.3f}  macro AUC {c['macro_auc']:.3f}")
        for name, auc in zip(summary["classes"], m["auc_per_class"]):
            print(f"  {name:24s} AUC {auc:.3f}")
    else:
        print(f"mean Dice {m['mean_dice']:.3f}  mean IoU {m['mean_iou']:.3f} (foreground classes); chance mean "
              f"Dice {c['mean_dice']:.3f} (voxels labelled at random with the training class frequencies)")
        for name, d, i in zip(summary["classes"], m["dice_per_class"], m["iou_per_class"]):
            print(f"  {name:24s} Dice {d:.3f}  IoU {i:.3f}")
    v = summary["val_metrics"]
    if v:
        key, label = ("macro_auc", "macro AUC") if summary["task"] == "classification" else ("mean_dice", "mean Dice")
        print(f"validation ({len(summary['split']['val'])} cases): {label} {v[key]:.3f}")


if __name__ == "__main__":
    common.exit_main(main)
