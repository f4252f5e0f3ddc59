"""Pretrain a 3D encoder by solving Rubik's cubes (Zhuang et al., MICCAI 2019;
Rubik's Cube+ masking, Zhu et al., MedIA 2020) or another registered pretext
task (--task: jigsaw, rotation, relative_location; Taleb et al., NeurIPS 2020).

    python train/pretrain.py                      # the bundled MRI and CT volumes, 3-6 min on 2 idle CPU cores
    python train/pretrain.py --data scans/ --preset paper_sized --device cuda --amp bf16
    python train/pretrain.py --config my.yaml --steps 20000
    torchrun --nproc_per_node=4 train/pretrain.py --data scans/ ...
    python train/pretrain.py --resume                        # continue runs/pretrain-rubik exactly where it stopped
    python train/pretrain.py --task rotation               # any task in rubikops.tasks.TASKS

Every batch is cut on the training device from a VolumeBank with one
extract_cubes launch: no DataLoader workers.  Outputs in --out: config.yaml,
checkpoints/ (last few + best.pt), encoder.pt (a plain state_dict) and
encoder.json, metrics.csv, tensorboard/, puzzles.png, summary.json."""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import common  # noqa: E402
from common import UserError  # noqa: E402
from run_checks import FiniteLoss  # noqa: E402
from pretrain_report import draw_examples, evaluate, finish, fixed_puzzles  # noqa: E402

import rubikops  # noqa: E402
import rubikops.augment  # noqa: E402
from rubikops.tasks import ROTATION_AXES, TASKS, DenseTask  # noqa: E402
from rubikops.data import DataError, Preprocessing, VolumeBank, load_volumes, make_bank, parse_size  # noqa: E402
from rubikops.data.streaming import REFRESH_EVERY  # noqa: E402
from rubikops.data import load_prepared, prepare, read_manifest, settings_differences  # noqa: E402
from rubikops.models import BACKBONES, CUBE_LOSSES, POOLS, build_encoder  # noqa: E402
from rubikops.models.nnunet import stages_for  # noqa: E402


_f = common.setting


def _genesis_default(name: str) -> float:
    """A Models Genesis setting's default, as the task defines it (one place for the number)."""
    return inspect.signature(TASKS["genesis"].__init__).parameters[name].default


@dataclass
class PretrainConfig(common.RunSettings):
    # data
    data: Optional[str] = _f(None, "scans (NIfTI, NRRD, MHA, DICOM series): folder, glob, file or comma list; "
                                   "default: the bundled MRI and CT templates (requirements-data.txt)", "str")
    data_prepared: Optional[str] = _f(None, "a folder made by python -m rubikops.data prepare: each rank memory-maps "
                                            "only its share; the folder's preprocessing applies. With --data too: "
                                            "prepare --data into it first (each rank its slice of the files, "
                                            "resumable; the preprocessing flags here apply)", "str")
    prepare_workers: int = _f(1, "with --data and --data-prepared: processes per rank that prepare the files")
    spacing: float = _f(4.0, "resample to this spacing in mm (0: keep the files'); with 16^3 cubes, 4 mm makes "
                                  "64 mm cubes, the scale at which both tasks learn (docs/experiment.md)")
    intensity: str = _f("zscore", "zscore (MRI), window (CT, see --window) or none")
    window: tuple = _f((-1000.0, 1000.0), "CT window lo,hi in HU", "floats")
    crop_foreground: bool = _f(True, "crop each volume to its foreground")
    foreground_threshold: float = _f(0.0, "foreground: channel 0 above this (file units)")
    frames: Optional[str] = _f(None, "4-D files: an index or 'channels'", "str")
    skip_bad: bool = _f(False, "skip unreadable files (listed) instead of stopping")
    cache_dir: Optional[str] = _f(None, "preprocessing cache (default ~/.cache/rubikops)", "str")
    storage_dtype: str = _f("float32", "bank storage: float32, bfloat16, float16, int16 (half memory), uint8")
    bank_budget: str = _f("", "device memory for a rank's training bank, e.g. 20GB or 512MiB: a shard larger than "
                              "this streams through a resident working set of that size (rubikops.data.StreamingBank, "
                              "one volume swapped every --bank-refresh-every steps); empty: the whole shard resident")
    bank_refresh_every: int = _f(REFRESH_EVERY, "with --bank-budget: steps between two volume swaps of the streaming bank")
    holdout: int = _f(-1, "volumes held out for evaluation (-1: one when there are 3 or more)")
    # puzzle
    task: str = _f("rubik", f"pretext task: one of {', '.join(TASKS)}; the settings below that a task does not "
                            "take are ignored")
    grid: tuple = _f((2, 2, 2), "cubes per axis", "ints")
    cube_size: tuple = _f((16, 16, 16), "cube edge(s) in voxels", "ints")
    num_permutations: int = _f(24, "K, the permutation classes")
    gap: tuple = _f((0, 2), "gap between cubes lo,hi voxels", "ints")
    rotations: str = _f("paper", "paper (180 deg turns, 2 per cube), all (24 rotations), none")
    rotation_axis: str = _f("all", "rotation task: all (24 rotations) or d, h, w (the 4 about that axis)")
    patch: int = _f(4, "masked task: patch edge in voxels (the crop must be a multiple of it)")
    mask_ratio: float = _f(0.6, "masked task: share of the patches masked")
    normalized_target: bool = _f(False, "masked task: regress each patch normalised by its own mean and sd")
    shuffle_prob: float = _f(_genesis_default("shuffle_prob"), "genesis task: probability of local voxel shuffling")
    curve_prob: float = _f(_genesis_default("curve_prob"), "genesis task: probability of the monotone Bezier "
                                                           "intensity curve")
    paint_prob: float = _f(_genesis_default("paint_prob"), "genesis task: probability of in- or out-painting")
    outpaint_prob: float = _f(_genesis_default("outpaint_prob"), "genesis task: share of the painted crops that "
                                                                 "are out-painted")
    mask_prob: float = _f(0.0, "Rubik's Cube+: probability a cube is masked")
    mask_keep_prob: float = _f(0.0, "Rubik's Cube+: voxels kept inside a masked cube")
    normalize: str = _f("none", "none, cube (each cube to [-1, 1], the paper), zscore")
    augment: str = _f("all", "label-preserving augmentation: none, intensity (per cube: contrast, gamma, bias "
                             "field, noise), geometry (crop rotation and zoom before cutting) or all")
    augment_angle: float = _f(10.0, "geometry: largest crop rotation about each axis, degrees")
    augment_zoom: tuple = _f((0.9, 1.1), "geometry: crop zoom range lo,hi", "floats")
    # model
    backbone: str = _f("vgg", f"one of {sorted(BACKBONES)}, monai:<NetworkClass>, nnunet:PlainConvUNet or "
                              "nnunet:ResidualEncoderUNet")
    nnunet_plans: str = _f("", "nnunet: backbones: the nnU-Net plans file to build the network from (empty: "
                               "nnU-Net's defaults, --width features first, stages until the cube is 2 voxels)")
    nnunet_configuration: str = _f("3d_fullres", "nnunet: backbones: the plans' configuration")
    width: int = _f(8, "channels of the first encoder stage (doubled per stage)")
    norm: str = _f("batch", "batch, instance or group")
    hidden: int = _f(128, "hidden units of each head (one hidden layer; 0: linear)")
    dropout: float = _f(0.1, "dropout in the heads")
    pool: str = _f("grid", "cube features: avg (global average), grid (average per octant) or flatten")
    cube_heads: bool = _f(True, "rotation/mask heads shared by the cubes, each seeing its cube and the puzzle's "
                                "mean (false: the paper's joint heads over all cubes)")
    channels: int = _f(1, "input channels (modalities)")
    # optimisation
    batch_size: int = _f(16, "puzzles per step (per rank)")
    steps: int = _f(1500, "optimisation steps")
    lr: float = _f(2e-3, "peak learning rate")
    schedule: str = _f("cosine", "cosine, step (x0.1 at 60% and 85%) or constant, after warm-up")
    warmup_steps: int = _f(30, "linear warm-up steps")
    optimizer: str = _f("adamw", "adamw or sgd")
    weight_decay: float = _f(1e-4, "weight decay")
    momentum: float = _f(0.9, "SGD momentum")
    alpha: float = _f(1.0, "weight of the permutation loss")
    beta: float = _f(1.0, "weight of the rotation loss")
    mask_weight: float = _f(1.0, "weight of the mask loss (Rubik's Cube+)")
    rotation_warmup: float = _f(0.0, "fraction of the steps trained on turns (and masks) alone, before ordering "
                                      "joins")
    cube_loss: str = _f("sum", "per-cube losses: sum (each puzzle's log-likelihood: 3-way turn CE summed over "
                               "cubes) or mean (the paper: sigmoid BCE averaged over cubes)")
    out: str = _f("", "output folder (default: runs/pretrain-TASK, so runs of different tasks never collide)", "str")
    eval_every: int = _f(250, "steps between evaluations on the validation puzzles")
    eval_puzzles: int = _f(512, "fixed puzzles of the held-out (validation) volume")

PRESETS = {
    # The paper-sized workload of Zhuang et al. 2019 (a GPU run): 2x2x2 cubes, K = 100, gaps up to 8
    # voxels (10 would not fit the bundled CT atlas: 73 axial voxels at 2 mm), 180-degree turns, 3D VGG,
    # per-cube normalisation, SGD.  With this project's heads, loss, pooling and augmentation, so not the
    # paper's method.  32^3 cubes at 2 mm are 64 mm, where the pretext study found both tasks learn.
    "paper_sized": dict(grid=(2, 2, 2), num_permutations=100, gap=(0, 8), rotations="paper", backbone="vgg", width=32,
                  cube_size=(32, 32, 32), normalize="cube", batch_size=32, optimizer="sgd", lr=0.01, momentum=0.9,
                  weight_decay=5e-4, schedule="step", steps=20000, spacing=2.0, hidden=512, dropout=0.5),
    # Rubik's Cube+ (Zhu et al. 2020) sized likewise: the above plus cube masking and a 3D ResNet-18.
    "rubikcube_plus_sized": dict(grid=(2, 2, 2), num_permutations=100, gap=(0, 8), rotations="paper",
                           backbone="resnet18", width=32, cube_size=(32, 32, 32), normalize="cube", mask_prob=0.5,
                           mask_keep_prob=0.0, batch_size=32, optimizer="sgd", lr=0.01, schedule="step",
                           steps=20000, spacing=2.0, hidden=512, dropout=0.5),
    # a few-second smoke run (tests, CI)
    "tiny": dict(spacing=4.0, cube_size=(8, 8, 8), gap=(0, 2), width=4, hidden=32, batch_size=4, steps=6,
                 eval_every=3, checkpoint_every=3, log_every=1, eval_puzzles=8, num_permutations=8),
}


# Settings a task changes unless the user sets them.  The dense tasks restore crops at the scale of
# segmentation fine-tuning (finetune.py: 32^3 patches at 2 mm), with the U-Net fine-tuning uses; 600 steps
# of 8 crops take about 4 minutes on 2 CPU cores.  Their corruptions are intensity transforms, so the
# label-preserving intensity augmentation is off; geometry (a crop rotation and zoom) stays.
TASK_DEFAULTS = {
    "genesis": dict(spacing=2.0, cube_size=(32, 32, 32), batch_size=8, steps=600, lr=1e-3, augment="geometry",
                    eval_puzzles=64, eval_every=100),
    "masked": dict(spacing=2.0, cube_size=(32, 32, 32), batch_size=8, steps=600, lr=1e-3, augment="geometry",
                   eval_puzzles=64, eval_every=100),
}


def parse(argv=None):
    cfg, args = common.parse_config(PretrainConfig, PRESETS, "python train/pretrain.py", __doc__, argv)
    unset = {k: v for k, v in TASK_DEFAULTS.get(cfg.task, {}).items() if k not in args.given}
    return (dataclasses.replace(cfg, **unset) if unset else cfg), args


def check_config(cfg: PretrainConfig) -> None:
    need = common.require
    need(cfg.backbone in BACKBONES or cfg.backbone.startswith(("monai:", "nnunet:")),
         f"--backbone: unknown backbone {cfg.backbone!r}; choose one of {sorted(BACKBONES)}, monai:<NetworkClass> "
         "or nnunet:<PlainConvUNet|ResidualEncoderUNet>")
    need(cfg.task in TASKS, f"--task must be one of {', '.join(TASKS)}, got {cfg.task!r}")
    need(cfg.rotations in ("paper", "all", "none"), f"--rotations must be paper, all or none, got {cfg.rotations!r}")
    need(cfg.rotation_axis in ROTATION_AXES, f"--rotation-axis must be one of {', '.join(ROTATION_AXES)}, got "
                                             f"{cfg.rotation_axis!r}")
    if cfg.bank_budget:
        try:
            parse_size(cfg.bank_budget, "--bank-budget")
        except ValueError as exc:
            raise UserError(str(exc)) from None
    need(cfg.intensity in ("zscore", "window", "none"), f"--intensity must be zscore, window or none, got {cfg.intensity!r}")
    need(cfg.augment in AUGMENTS, f"--augment must be one of {', '.join(AUGMENTS)}, got {cfg.augment!r}")
    need(cfg.normalize in ("none", "cube", "zscore"), f"--normalize must be none, cube or zscore, got {cfg.normalize!r}")
    need(cfg.optimizer in ("adamw", "sgd"), f"--optimizer must be adamw or sgd, got {cfg.optimizer!r}")
    need(cfg.schedule in ("cosine", "step", "constant"), f"--schedule must be cosine, step or constant, got {cfg.schedule!r}")
    need(cfg.cube_loss in CUBE_LOSSES, f"--cube-loss must be one of {', '.join(CUBE_LOSSES)}, got {cfg.cube_loss!r}")
    need(cfg.pool in POOLS, f"--pool must be one of {', '.join(POOLS)}, got {cfg.pool!r}")
    need(cfg.norm in ("batch", "instance", "group"), f"--norm must be batch, instance or group, got {cfg.norm!r}")
    need(cfg.amp in ("none", "bf16", "fp16"), f"--amp must be none, bf16 or fp16, got {cfg.amp!r}")
    need(len(cfg.grid) in (1, 3) and len(cfg.cube_size) in (1, 3), "--grid and --cube-size take 1 or 3 ints")
    need(len(cfg.gap) in (1, 2), "--gap takes lo or lo,hi")
    need(len(cfg.window) == 2 and cfg.window[0] < cfg.window[1], f"--window takes lo,hi with lo < hi, got {cfg.window}")
    common.require_at_least(cfg, 1, "prepare_workers", "bank_refresh_every", "steps", "batch_size", "log_every",
                            "eval_every", "checkpoint_every",
                            "keep_checkpoints", "eval_puzzles", "width", "channels", "num_permutations")
    common.require_at_least(cfg, 0, "hidden", "warmup_steps")
    common.require_at_least(cfg, -1, "holdout")
    for name in ("spacing", "weight_decay", "alpha", "beta", "mask_weight"):
        common.require_range(cfg, name, 0, math.inf, hi_open=True)
    common.require_range(cfg, "lr", 0, math.inf, lo_open=True, hi_open=True)
    for name in ("momentum", "mask_prob", "mask_keep_prob", "shuffle_prob", "curve_prob", "paint_prob", "outpaint_prob"):
        common.require_range(cfg, name, 0, 1)
    common.require_range(cfg, "dropout", 0, 1, hi_open=True)
    common.require_range(cfg, "rotation_warmup", 0, 1, hi_open=True)
    common.require_at_least(cfg, 1, "patch")
    common.require_range(cfg, "mask_ratio", 0, 1, lo_open=True, hi_open=True)
    if cfg.task in TASKS and issubclass(TASKS[cfg.task], DenseTask):
        need(cfg.augment in ("none", "geometry"), f"--augment {cfg.augment}: the {cfg.task} task corrupts "
             "intensities itself; use --augment geometry or none")


def accepted(fn, options: dict) -> dict:
    """The options ``fn`` takes (tasks take different settings; the others do not apply to them)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in options.items() if k in params}


def make_puzzle(cfg: PretrainConfig) -> rubikops.tasks.PretextTask:
    """The pretext task of --task, from the settings it takes."""
    triple = lambda t: tuple(t) * 3 if len(t) == 1 else tuple(t)  # noqa: E731
    gap = (cfg.gap[0], cfg.gap[0]) if len(cfg.gap) == 1 else tuple(cfg.gap)
    task = rubikops.tasks.get(cfg.task)
    options = dict(grid=triple(cfg.grid), cube_size=triple(cfg.cube_size), num_permutations=cfg.num_permutations,
                   gap=gap, rotations=cfg.rotations, rotation_axis=cfg.rotation_axis, mask_prob=cfg.mask_prob,
                   mask_keep_prob=cfg.mask_keep_prob, normalize=None if cfg.normalize == "none" else cfg.normalize,
                   patch=cfg.patch, mask_ratio=cfg.mask_ratio, normalized_target=cfg.normalized_target,
                   shuffle_prob=cfg.shuffle_prob, curve_prob=cfg.curve_prob, paint_prob=cfg.paint_prob,
                   outpaint_prob=cfg.outpaint_prob, validate=False)
    try:
        return task(**accepted(task.__init__, options))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def loss_options(cfg: PretrainConfig, task, step: Optional[int] = None) -> dict:
    """The loss weights the task takes; before ``step`` passes --rotation-warmup the ordering weighs 0."""
    alpha = 0.0 if step is not None and step < cfg.rotation_warmup * cfg.steps else cfg.alpha
    return accepted(task.loss, dict(alpha=alpha, beta=cfg.beta, mask_weight=cfg.mask_weight, cube_loss=cfg.cube_loss))


AUGMENTS = ("none", "intensity", "geometry", "all")


def make_augment(cfg: PretrainConfig):
    """(crop transform or None, intensity augmentation or None) for --augment."""
    try:
        crop = (rubikops.augment.CropAffine(cfg.augment_angle, tuple(cfg.augment_zoom))
                if cfg.augment in ("geometry", "all") else None)
        intensity = rubikops.augment.IntensityAugment() if cfg.augment in ("intensity", "all") else None
    except ValueError as exc:
        raise UserError(f"--augment-*: {exc}") from None
    return crop, intensity


def make_batch(bank, puzzle, cfg, gen, augment, out=None):
    """One training batch in one cut: the crops read through their affines and each cube through its
    intensity draws, written into ``out`` where given (the previous step's cubes, which its step no
    longer needs: no allocation a step)."""
    crop, intensity = augment
    return bank.puzzles(puzzle, cfg.batch_size, gen, out=out, crop_transform=crop, intensity_transform=intensity)


def make_model(cfg: PretrainConfig, puzzle: rubikops.tasks.PretextTask) -> torch.nn.Module:
    nnunet = dict(plans=cfg.nnunet_plans or None, configuration=cfg.nnunet_configuration,
                  n_stages=stages_for(cfg.cube_size)) if cfg.backbone.startswith("nnunet:") else {}
    try:
        encoder = (build_encoder(cfg.backbone) if cfg.backbone.startswith("monai:")
                   else build_encoder(cfg.backbone, cfg.channels, cfg.width, cfg.norm, **nnunet))
        if nnunet:
            encoder.architecture.check_input(cfg.cube_size, "--cube-size")
    except (ValueError, TypeError) as exc:
        raise UserError(f"--backbone: {exc}") from None
    options = dict(in_channels=cfg.channels, hidden=cfg.hidden, dropout=cfg.dropout, pool=cfg.pool,
                   cube_heads=cfg.cube_heads, norm=cfg.norm)
    try:
        return puzzle.build_model(encoder, **accepted(puzzle.build_model, options))
    except ValueError as exc:  # e.g. a cube the backbone's pooling reduces to nothing
        raise UserError(f"--cube-size/--backbone: {exc}") from None


def load_prepared_data(cfg: PretrainConfig, dist: common.Dist):
    """--data-prepared: the training volumes of this rank's shard (the rule
    VolumeBank(shard=...) applies) and the held-out ones, memory-mapped."""
    try:
        n = len(read_manifest(cfg.data_prepared)["volumes"])
        differ = settings_differences(read_manifest(cfg.data_prepared).get("settings") or {}, preprocessing(cfg))
        if differ and dist.main:  # other cubes than the defaults were tuned for: both tasks can stay at chance
            print(f"warning: {cfg.data_prepared} was prepared with {', '.join(f'{k} {a!r}' for k, a, _ in differ)}; "
                  f"pretrain.py's are {', '.join(f'{k} {b!r}' for k, _, b in differ)}, and the folder's apply: prepare "
                  "it with --spacing 4 --intensity zscore --crop-foreground or match these flags", file=sys.stderr)
        holdout = cfg.holdout if cfg.holdout >= 0 else (1 if n >= 3 else 0)
        if holdout >= n:
            raise UserError(f"--holdout {holdout} leaves no training volume out of {n}")
        train_vols = load_prepared(cfg.data_prepared, shard=(dist.rank, dist.world) if dist.world > 1 else None,
                                   volumes=range(n - holdout))
        held_vols = load_prepared(cfg.data_prepared, volumes=range(n - holdout, n))
    except (DataError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if train_vols[0].channels != cfg.channels:
        raise UserError(f"--channels {cfg.channels}, but {train_vols[0].name} has {train_vols[0].channels} channel(s)")
    return train_vols, held_vols


def preprocessing(cfg: PretrainConfig) -> Preprocessing:
    frames = None if cfg.frames is None else (cfg.frames if cfg.frames == "channels" else int(cfg.frames))
    return Preprocessing(spacing=cfg.spacing or None, intensity=cfg.intensity, window=tuple(cfg.window),
                         crop_foreground=cfg.crop_foreground, foreground_threshold=cfg.foreground_threshold,
                         frames=frames)


def data_spec(cfg: PretrainConfig):
    if cfg.data:
        return [s for s in cfg.data.split(",") if s] if "," in cfg.data else cfg.data
    from rubikops.data import default
    return default.pretraining_files()


def prepare_data(cfg: PretrainConfig, dist: common.Dist) -> None:
    """--data with --data-prepared: every rank prepares its slice of the files (files rank, rank +
    world, ...) into the folder, rank 0 merges the manifest after a barrier."""
    try:
        report = prepare(data_spec(cfg), cfg.data_prepared, preprocessing(cfg), workers=cfg.prepare_workers,
                         rank=dist.rank, world=dist.world, progress=cfg.progress and dist.main)
    except (DataError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if dist.main:
        print(report.summary(), file=sys.stderr)


def load_data(cfg: PretrainConfig, dist: common.Dist):
    if cfg.data_prepared:
        if cfg.data:
            prepare_data(cfg, dist)
        return load_prepared_data(cfg, dist)
    settings = preprocessing(cfg)
    spec = data_spec(cfg)
    try:
        report = load_volumes(spec, settings, cache=cfg.cache_dir or True, skip_bad=cfg.skip_bad,
                              progress=cfg.progress and dist.main)
    except DataError as exc:  # a file's own error (exc.case): the user may skip such files
        raise (UserError(f"{exc} (--skip-bad skips unreadable files and lists them)") if hasattr(exc, "case")
               else exc) from None
    if report.skipped and dist.main:
        print(report.summary(), file=sys.stderr)
    vols = report.volumes
    if vols[0].channels != cfg.channels:
        raise UserError(f"--channels {cfg.channels}, but {vols[0].name} has {vols[0].channels} channel(s)")
    holdout = cfg.holdout if cfg.holdout >= 0 else (1 if len(vols) >= 3 else 0)
    if holdout >= len(vols):
        raise UserError(f"--holdout {holdout} leaves no training volume out of {len(vols)}")
    return vols[:len(vols) - holdout], vols[len(vols) - holdout:] if holdout else []


def lr_factor(cfg: PretrainConfig, step: int) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if cfg.schedule == "step":
        return 0.1 ** ((t >= 0.6) + (t >= 0.85))
    return 1.0


def main(argv=None) -> int:
    cfg, args = parse(argv)
    cfg = dataclasses.replace(cfg, out=cfg.out or os.path.join("runs", f"pretrain-{cfg.task}"))
    cfg, resume_state = common.open_run(PretrainConfig, cfg, args)
    check_config(cfg)
    dist = common.setup_distributed(cfg.device)
    return common.run_distributed(dist, train, cfg, dist, resume_state)


def train(cfg: PretrainConfig, dist: common.Dist, resume_state: Optional[dict]) -> int:
    dev = dist.device
    if cfg.amp == "fp16" and dev.type != "cuda":
        raise UserError("--amp fp16 needs a GPU; use --amp bf16 on CPU")
    puzzle = make_puzzle(cfg)
    augment = make_augment(cfg)
    train_vols, held_vols = load_data(cfg, dist)
    try:
        bank = make_bank(train_vols, dev, cfg.storage_dtype, budget=cfg.bank_budget or None, seed=cfg.seed,
                         refresh_every=cfg.bank_refresh_every,
                         shard=(dist.rank, dist.world) if dist.world > 1 and not cfg.data_prepared else None)
        # no held-out volume: evaluate on training volumes, as many as the streaming bank keeps resident
        held = VolumeBank(held_vols or train_vols[:getattr(bank, "active", len(train_vols))], dev, cfg.storage_dtype)
        bank.check_puzzle(puzzle)
        held.check_puzzle(puzzle)
    except (DataError, MemoryError, ValueError) as exc:
        raise UserError(str(exc)) from None
    common.seed_everything(cfg.seed)
    model = make_model(cfg, puzzle).to(dev)
    raw_model = model
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = (torch.optim.AdamW(groups, lr=cfg.lr) if cfg.optimizer == "adamw"
           else torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s))
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.amp == "fp16")
    gen = rubikops.make_generator(cfg.seed, rank=dist.rank, device=dev)
    step, best = 0, -1.0
    if resume_state is not None:
        raw_model.load_state_dict(resume_state["model"])
        opt.load_state_dict(resume_state["optimizer"])
        sched.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        step, best = int(resume_state["step"]), float(resume_state.get("best", -1.0))
        # nothing to train: refused, unless stopped between the last checkpoint and the summary (written below)
        if step > cfg.steps or (step == cfg.steps and os.path.exists(os.path.join(cfg.out, "summary.json"))):
            raise UserError(f"--resume: the checkpoint has {step} steps already, --steps is {cfg.steps}; pass a "
                            "larger --steps to continue training (nothing was changed)")
        rngs = resume_state["rng"]
        common.set_rng_state(rngs[dist.rank] if isinstance(rngs, list) else rngs, {"puzzle": gen})
        if "bank_state" in resume_state:
            try:
                bank.load_state_dict(resume_state["bank_state"][dist.rank])
            except ValueError as exc:
                raise UserError(f"--resume: {exc}") from None
        if "task_state" in resume_state:
            puzzle.load_state_dict(resume_state["task_state"][dist.rank])
        else:  # checkpoints written before tasks kept their own state: the keep-mask seed count
            puzzle.load_state_dict({"keep_seeds_drawn": int(resume_state["puzzle_calls"][dist.rank])})
    if dist.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    fwd = torch.compile(model) if cfg.compile else model
    amp_ctx = common.autocast(dev, cfg.amp)
    os.makedirs(cfg.out, exist_ok=True) if dist.main else None
    if dist.main:
        common.save_config(cfg, os.path.join(cfg.out, "config.yaml"))
        print(f"rubikops pretraining: {len(bank)} training volume(s) on rank 0 of {dist.world}, "
              f"{len(held_vols)} held out for validation ({', '.join(v.name for v in held_vols) or 'none'}); "
              f"{bank.memory_report()}", file=sys.stderr)
        print(f"task {puzzle.name} ({type(puzzle).__name__}): {puzzle.describe()}, crop {puzzle.crop_size}"
              + (f", K={puzzle.num_permutations}" if hasattr(puzzle, "num_permutations") else "")
              + (f", rotations {puzzle.rotation_mode}, mask {cfg.mask_prob}" if puzzle.name == "rubik" else "")
              + f"; model {cfg.backbone} width {cfg.width}: "
              f"{sum(p.numel() for p in raw_model.parameters()) / 1e6:.2f} M parameters on {dev}", file=sys.stderr)
    headline = next(iter(puzzle.chance_levels()))  # the metric that picks best.pt
    headline_word = puzzle.metric_names()[headline]
    eval_batches = fixed_puzzles(held, puzzle, cfg.eval_puzzles, cfg.seed + 7919, cfg.batch_size)
    logger = common.Logger(cfg.out, dist.main, resume_step=step, tensorboard=cfg.tensorboard)
    ckpts = common.Checkpoints(os.path.join(cfg.out, "checkpoints"), cfg.keep_checkpoints)
    bar = common.progress(cfg.steps, step, cfg.progress and dist.main, "pretraining")
    cuda = dev.type == "cuda"
    t_gen = t_timed = 0.0  # batch generation vs whole step, over the timed steps of a log window
    puzzles_done = 0
    run_start = window_start = time.perf_counter()
    # the evaluation the checkpoint was saved with: what the summary reports until the next one
    last_eval: dict = dict(resume_state.get("metrics") or {}) if resume_state is not None else {}
    acc: dict = {}  # running sums of this window's metrics, kept on the device (no host sync per step)
    window = 0
    finite_loss = FiniteLoss(dist, bank, augment, UserError)
    # The next batch is cut into the last one's cubes once its step is done.  A fresh 2 MB batch a step
    # (the default) came from newly mapped pages often enough that reusing it took the mean batch time
    # from 3.5 to 3.2 ms (2-core AMD VM).
    cubes_buffer = None
    model.train()
    while step < cfg.steps:
        # On CPU every step is timed (synchronising is free); on the GPU only the last step of each
        # log window, so the other steps keep the host running ahead of the device.
        timed = not cuda or (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps
        if timed and cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            cubes, targets = make_batch(bank, puzzle, cfg, gen, augment, cubes_buffer)
        except DataError as exc:  # a streaming bank's volume that turned out unreadable when due
            raise UserError(str(exc)) from None
        if timed and cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        with amp_ctx():
            out = fwd(cubes)
            loss, parts = puzzle.loss(out, targets, **loss_options(cfg, puzzle, step))
        finite_loss.before_step(loss, step, targets)
        common.optimizer_step(loss, opt, sched, scaler)
        if puzzle.cuts_into_out:
            cubes_buffer = cubes
        step += 1
        finite_loss.after_step(step, step % cfg.log_every == 0 or step % cfg.checkpoint_every == 0 or step == cfg.steps)
        if timed:
            if cuda:
                torch.cuda.synchronize()
            t_gen += t1 - t0
            t_timed += time.perf_counter() - t0
        puzzles_done += cfg.batch_size * dist.world
        window += 1
        metrics = puzzle.metrics(out, targets)
        metrics.update({f"loss_{k}": v.detach() for k, v in parts.items()}, loss=loss.detach())
        for k, v in metrics.items():
            acc[k] = acc.get(k, 0.0) + v.float()
        if bar is not None:
            bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            keys = sorted(acc)
            means = (torch.stack([acc[k] for k in keys]) / window).tolist()  # the window's one host sync
            row = dist.mean({f"train/{k}": v for k, v in zip(keys, means)})
            row.update({"lr": sched.get_last_lr()[0],
                        "puzzles_per_s": cfg.batch_size * dist.world * window / (time.perf_counter() - window_start),
                        "batch_gen_fraction": t_gen / t_timed})
            if bar is not None:
                bar.set_postfix(loss=f"{row['train/loss']:.3f}", **{headline_word: f"{row[f'train/{headline}']:.2f}"})
            if step % cfg.eval_every == 0 or step == cfg.steps:
                last_eval = evaluate(raw_model, eval_batches, puzzle, amp_ctx, loss_options(cfg, puzzle))
                row.update(last_eval)
                if dist.main:
                    draw_examples(raw_model, held, eval_batches, puzzle, os.path.join(cfg.out, "puzzles.png"),
                                  amp_ctx)
            logger.log(step, row)
            acc, window, t_gen, t_timed = {}, 0, 0.0, 0.0
            window_start = time.perf_counter()
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            score = last_eval.get(f"eval/{headline}", -1.0)
            is_best = score > best
            best = max(best, score)
            t_ckpt = time.perf_counter()
            save_checkpoint(ckpts, raw_model, opt, sched, scaler, step, best, gen, puzzle, bank, cfg, dist, is_best,
                            last_eval)
            window_start += time.perf_counter() - t_ckpt  # checkpointing is not training throughput
            common.kill_point(step)
    if bar is not None:
        bar.close()
    elapsed = time.perf_counter() - run_start
    bank.close()
    peak_rss = dist.gather(common.peak_host_rss())
    if dist.main:
        rate = puzzles_done / max(elapsed, 1e-9) if puzzles_done else None  # None: a resume that ran no step
        finish(cfg, puzzle, last_eval, step, rate, logger, peak_rss,
               [v.name for v in held_vols], loss_options(cfg, puzzle))
    logger.close()
    return 0


def save_checkpoint(ckpts, model, opt, sched, scaler, step, best, gen, puzzle, bank, cfg, dist, is_best,
                    metrics) -> None:
    # every rank's streams, task state and bank state, in one all_gather
    rng, task_state, bank_state = (list(x) for x in zip(*dist.gather(
        (common.rng_state({"puzzle": gen}), puzzle.state_dict(), bank.state_dict()))))
    if dist.world == 1:
        rng = rng[0]  # the single-process layout earlier checkpoints have
    if not dist.main:
        return
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "scaler": scaler.state_dict(), "step": step, "best": best, "rng": rng, "task_state": task_state,
             "bank_state": bank_state,
             "config": dataclasses.asdict(cfg), "metrics": metrics, "rubikops": rubikops.__version__}
    ckpts.save(state, step, best=is_best)
    save_encoder(model, cfg, os.path.join(cfg.out, "encoder.pt"), step, dense=isinstance(puzzle, DenseTask))


def save_encoder(model: torch.nn.Module, cfg: PretrainConfig, path: str, step: int, dense: bool = False) -> None:
    """encoder.pt is a plain state_dict (``encoder.load_state_dict(torch.load(path))``);
    encoder.json says how to build the encoder it belongs to.  A dense task
    pretrains the segmentation U-Net: its whole state_dict goes to network.pt
    beside it (module names of rubikops.models.UNet3D), and encoder.json names it."""
    from rubikops.data import atomic_path
    with atomic_path(path) as tmp:
        torch.save(model.encoder.state_dict(), tmp)
    network = {}
    if dense:
        network_path = os.path.join(os.path.dirname(path), "network.pt")
        with atomic_path(network_path) as tmp:
            torch.save(model.state_dict(), tmp)
        network = {"decoder": "unet", "network": os.path.basename(network_path)}
    common.write_json(os.path.splitext(path)[0] + ".json", {
        "backbone": cfg.backbone, "in_channels": cfg.channels, "width": cfg.width, "norm": cfg.norm,
        "cube_size": list(cfg.cube_size), "spacing": cfg.spacing, "intensity": cfg.intensity,
        "step": step, "task": cfg.task, **network, "source": "rubikops train/pretrain.py",
        **({"nnunet": model.encoder.architecture.to_json()} if hasattr(model.encoder, "architecture") else {})})


if __name__ == "__main__":
    common.exit_main(main)
