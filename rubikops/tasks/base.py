"""The pretext-task interface and its registry.

A task turns a batch of volumes into cubes and labels with ONE
``extract_cubes`` call, and knows how to learn from them:

- ``sample(batch, volume_shapes, index, generator)`` draws, on ``index``'s
  device and without host syncs, the op's arguments (a :class:`Cut`) and
  the targets (a dataclass on the same device, with at least ``origins``
  (B, M, 3), ``codes`` (B, M) and ``index`` (B,): what the op was given);
- ``task(volumes, index=None, generator=None)`` samples and cuts; volumes
  are a :class:`rubikops.volumes.VolumeSource` or a plain tensor, and the
  task never sees how they are stored;
- ``build_model(encoder, ...)`` the network with the heads the task needs;
- ``loss(outputs, targets)``, ``metrics(outputs, targets)`` and
  ``chance_levels()`` (the accuracy of always giving the most frequent
  label, per metric);
- ``state_dict()`` / ``load_state_dict()``: random state the task keeps
  beyond the caller's generator (exact resume).

Adding a task is one module with a subclass decorated ``@register("name")``
and one import line in ``rubikops/tasks/__init__.py``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from numbers import Real
from typing import Optional

import torch

from .. import ops
from .._constants import device_constant
from ..models.heads import SiameseClassifier
from ..volumes import TensorVolumes, VolumeSource

TASKS: dict = {}


def register(name: str):
    """Class decorator: make a task available as ``rubikops.tasks.get(name)`` (and ``pretrain.py --task name``)."""
    def add(cls):
        if name in TASKS and TASKS[name] is not cls:
            raise ValueError(f"register: a task named {name!r} exists already ({TASKS[name].__name__})")
        cls.name = name
        TASKS[name] = cls
        return cls
    return add


def get(name: str) -> type:
    """The task class registered as ``name``."""
    if not isinstance(name, str):
        raise TypeError(f"task: the name must be a string, one of {', '.join(sorted(TASKS))}; got {name!r}")
    if name not in TASKS:
        raise ValueError(f"task: unknown task {name!r}; choose one of {', '.join(sorted(TASKS))}")
    return TASKS[name]


@dataclass(kw_only=True)
class Targets:
    """Labels every task returns: the op's arguments."""

    origins: torch.Tensor  # (B, M, 3) int64 volume-relative box corners, in output order
    codes: torch.Tensor    # (B, M) int64 rotation codes (rubikops.rotations)
    index: torch.Tensor    # (B,) int64 volume of each sample

    def to(self, device):
        return type(self)(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass
class Cut:
    """What one ``extract_cubes`` call is given, volume-relative."""

    origins: torch.Tensor                 # (B, M, 3) int64
    codes: Optional[torch.Tensor] = None  # (B, M) int64, None: no rotation
    mask: Optional[torch.Tensor] = None   # (B, M) bool, None: nothing masked


def check_index(index: torch.Tensor, count: int, label: str, read_values: bool = True) -> None:
    """``index`` is a (B,) integer tensor; with ``read_values`` (a host sync on a GPU) also each entry
    is in [0, count)."""
    if index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{label}: index must be int32 or int64 (volume indices), got {index.dtype}")
    if index.dim() != 1:
        raise ValueError(f"{label}: index must be 1-D (one volume per sample), got shape {tuple(index.shape)}")
    if read_values and index.numel():
        lo, hi = (int(v) for v in torch.aminmax(index))
        if lo < 0 or hi >= count:
            raise ValueError(f"{label}: index holds {lo if lo < 0 else hi}, out of range for {count} volumes")


def as_ints(v, count: int, label: str) -> tuple:
    """An int (the same for all ``count`` entries) or ``count`` ints, checked
    as ops.as_integers (4.0 counts as 4; "444", 2.7 and True are refused)."""
    if isinstance(v, Real) and not isinstance(v, bool):
        v = (v,) * count
    return ops.as_integers(v, count, f"{label} (an int or {count} ints)")


def check_normalize(normalize, label: str):
    if normalize is None or normalize in ("cube", "zscore"):
        return normalize
    if isinstance(normalize, (tuple, list)) and len(normalize) == 3 and normalize[0] == "window":
        if not all(isinstance(v, Real) and not isinstance(v, bool) for v in normalize[1:]):
            raise ValueError(f"{label}: normalize window bounds must be numbers, got {normalize!r}")
        lo, hi = float(normalize[1]), float(normalize[2])
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"{label}: normalize window needs finite lo < hi, got {normalize!r}")
        return ("window", lo, hi)
    raise ValueError(f"{label}: normalize must be None, 'cube' (per cube to [-1, 1], as in the paper), "
                     f"'zscore' (per volume) or ('window', lo, hi) (e.g. a CT HU window), got {normalize!r}")


class PretextTask:
    """Base of every task: volume handling, intensity mapping and the op call.

    Subclasses set ``cube_size`` and ``crop_size`` (the extent one sample
    covers: every volume must be at least this big), ``num_cubes`` (M), and
    implement :meth:`sample` and the learning side.  ``normalize``: None,
    'cube' (each cube to [-1, 1]), 'zscore' (per volume) or ('window', lo, hi),
    fused into the op's scale/shift.  ``validate=False`` skips the op's
    Python checks (its C++ checks remain) and the per-volume size check that
    reads shapes back from the device."""

    name = "?"
    # __call__(out=) has the op write the cubes straight into out (a task that builds its inputs from the
    # cut, as the dense ones do, copies them there instead)
    cuts_into_out = True
    # tasks that mask cubes (RubikCube) set these: the op's fill value and share of voxels kept in a masked cube
    mask_fill = 0.0
    mask_keep_prob = 0.0
    cube_size: tuple
    crop_size: tuple
    num_cubes: int

    def __init__(self, *, normalize=None, validate: bool = True, backend: Optional[str] = None):
        self.normalize = check_normalize(normalize, type(self).__name__)
        self.validate = validate
        self.backend = backend
        self._device_cache: dict = {}

    @property
    def label(self) -> str:
        return type(self).__name__

    def describe(self) -> str:
        """The geometry in words, for errors and logs."""
        parts = [(n, getattr(self, n)) for n in ("grid", "cube_size", "gap") if hasattr(self, n)]
        return ", ".join(f"{n.replace('_size', '')} {v}" for n, v in parts)

    # -- sampling and cutting ------------------------------------------------------------
    def sample(self, batch: int, volume_shapes: torch.Tensor, index: torch.Tensor,
               generator: Optional[torch.Generator] = None) -> tuple:
        """``(Cut, targets)`` for ``batch`` samples of volumes ``index`` with extents ``volume_shapes`` (N, 3)."""
        raise NotImplementedError

    def source(self, volumes, volume_shapes=None, volume_offsets=None, intensity=None, stats=None) -> VolumeSource:
        """``volumes`` as a volume source: itself, or a tensor wrapped with its storage description."""
        if isinstance(volumes, VolumeSource):
            given = [n for n, v in (("volume_shapes", volume_shapes), ("volume_offsets", volume_offsets),
                                    ("intensity", intensity), ("stats", stats)) if v is not None]
            if given:
                raise ValueError(f"{self.label}: {', '.join(given)} describe a tensor's storage; a "
                                 f"{type(volumes).__name__} describes its own")
            return volumes
        return TensorVolumes(volumes, volume_shapes, volume_offsets, intensity, stats, label=self.label)

    def __call__(self, volumes, index: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                 out: Optional[torch.Tensor] = None, *, seed: Optional[int] = None,
                 volume_shapes: Optional[torch.Tensor] = None, volume_offsets: Optional[torch.Tensor] = None,
                 intensity: Optional[tuple] = None, stats: Optional[tuple] = None,
                 affine: Optional[torch.Tensor] = None, cube_intensity=None):
        """``cubes, targets = task(volumes, index=None, generator=None, out=None)``.

        volumes: a :class:`rubikops.volumes.VolumeSource` (e.g. a
        :class:`rubikops.data.VolumeBank`) or a (N, C, D, H, W) tensor on
        any device; index: (B,) volume per sample (None: one sample per
        volume).  For a tensor, ``volume_shapes``, ``volume_offsets``,
        ``intensity`` and ``stats`` describe its storage
        (:class:`rubikops.volumes.TensorVolumes`).  seed: the op's keep-mask
        seed.  affine: (B, 3, 4), each sample's crop read through it
        (crop-frame voxel to voxel of volume ``index[b]``, as
        :meth:`rubikops.augment.CropAffine.draw` gives it) in the same pass;
        the targets' origins are then crop-frame positions.
        cube_intensity: each cube's intensity stage, in the same pass: an
        augmentation with a ``draw(batch, cubes, generator, device)`` (e.g.
        :class:`rubikops.augment.IntensityAugment`, drawn after the task's
        sample, so a puzzle's labels are those of the same call without
        it), its
        :class:`rubikops.augment.IntensityDraws` (relative to each volume's
        mean and sd, which the cut puts in its output units), or the op's
        (B, M, 10) tensor as is.  Returns cubes (B, M, C, d, h, w) and the
        task's targets."""
        src = self.source(volumes, volume_shapes, volume_offsets, intensity, stats)
        dev = src.device
        if index is None:
            index = src.every_index()
        if not isinstance(index, torch.Tensor) or index.device != dev:
            raise ValueError(f"{self.label}: index must be a tensor on the volumes' device ({dev}), got "
                             f"{getattr(index, 'device', type(index).__name__)}")
        # reading the values syncs a GPU (validate=False skips it there) and breaks a compiled graph
        check_index(index, src.shapes.shape[0], self.label,
                    read_values=self.validate or (dev.type == "cpu" and not torch.compiler.is_compiling()))
        if src.static_shape is not None or self.validate:
            bad = src.smaller_than(self.crop_size)
            if bad is not None:
                what = (f"volumes of spatial shape {src.static_shape}" if src.static_shape is not None else
                        f"volume {bad} of shape {src.shapes[bad].tolist()}")
                raise ValueError(f"{self.label}: {what} {'are' if src.static_shape else 'is'} smaller than the "
                                 f"puzzle's crop {self.crop_size} ({self.describe()})")
        storage_extent = tuple(src.storage.shape[2:])  # no volume is larger: refused without reading the device
        if any(c > e for c, e in zip(self.crop_size, storage_extent)):
            raise ValueError(f"{self.label}: the puzzle's crop {self.crop_size} ({self.describe()}) is larger than "
                             f"the volumes' storage {storage_extent}")
        # an affine read cuts the puzzle from a crop-sized frame: every volume is one crop
        frame = src.shapes if affine is None else \
            device_constant(tuple(self.crop_size), dev).expand(src.shapes.shape[0], 3)
        cut, targets = self.sample(index.shape[0], frame, index, generator)
        if cube_intensity is not None and hasattr(cube_intensity, "draw"):
            cube_intensity = cube_intensity.draw(index.shape[0], self.num_cubes, generator, device=dev)
        return self.cut(src, index, cut, generator, out, seed, affine, cube_intensity), targets

    def op_seed(self, seed: Optional[int], generator: Optional[torch.Generator]) -> int:
        """The op's keep-mask seed (tasks that keep voxels of masked cubes draw one)."""
        return 0 if seed is None else seed

    def cut(self, src: VolumeSource, index: torch.Tensor, cut: Cut, generator=None, out=None, seed=None,
            affine: Optional[torch.Tensor] = None, cube_intensity=None):
        """One ``extract_cubes`` call: storage coordinates from the source, its
        value mapping fused with the normalisation into the op's scale/shift,
        and the cubes' intensity draws in the op's output units."""
        dev = src.device
        read = {}
        if affine is None:
            op_origins, op_index = src.locate(cut.origins, index)
        else:
            op_origins = cut.origins
            read["affine"], read["read_box"], op_index = src.locate_affine(affine, index)
        # value = stored * a + b maps stored values to physical ones (per sample)
        a = b = None
        value_map = src.value_map()
        if value_map is not None:
            a, b = value_map[0].double()[index], value_map[1].double()[index]
        scale = shift = clamp = None
        # output = physical * norm_scale + norm_shift (per sample or for all): the normalisation alone
        norm_scale, norm_shift = 1.0, 0.0
        if self.normalize == "zscore":
            stats = src.volume_stats()
            if stats is None:
                raise ValueError(f"{self.label}: normalize='zscore' on packed volumes needs stats=(mean, std)")
            mean, std = stats
            inv = 1.0 / std.double().clamp_min(1e-6)[index]
            m = mean.double()[index]
            norm_scale, norm_shift = inv, -m * inv
            scale, shift = (inv, -m * inv) if a is None else (a * inv, (b - m) * inv)
        elif isinstance(self.normalize, tuple):
            _, lo, hi = self.normalize
            scale, shift, clamp = 2.0 / (hi - lo), -1.0 - 2.0 * lo / (hi - lo), (-1.0, 1.0)
            norm_scale, norm_shift = scale, shift
            if a is not None:
                scale, shift = a * scale, b * scale + shift
        elif a is not None:
            scale, shift = a, b
        if cube_intensity is not None and not isinstance(cube_intensity, torch.Tensor):
            stats = src.volume_stats()
            if stats is None:
                raise ValueError(f"{self.label}: intensity draws on packed volumes need their stats=(mean, std)")
            mean, std = stats[0][index].double(), stats[1][index].double()
            if not (isinstance(norm_scale, float) and norm_scale == 1.0 and norm_shift == 0.0):
                mean, std = mean * norm_scale + norm_shift, std * abs(norm_scale)
            cube_intensity = cube_intensity.in_units(mean, std)
        volumes = src.storage
        out_dtype = None if volumes.dtype.is_floating_point else torch.float32
        # the op's per-sample arguments as dense tensors: B or B x M entries, copied only when the caller's
        # index or description (shapes, offsets, intensity, stats) was a strided, offset or stride-0 view
        dense = lambda t: t.contiguous() if isinstance(t, torch.Tensor) else t  # noqa: E731
        op_origins, op_index, scale, shift = dense(op_origins), dense(op_index), dense(scale), dense(shift)
        kwargs = dict(index=op_index, rotations=dense(cut.codes), mask=dense(cut.mask), fill=self.mask_fill,
                      keep_prob=self.mask_keep_prob, seed=self.op_seed(seed, generator),
                      scale=scale, shift=shift, clamp=clamp, out_dtype=out_dtype, out=out, backend=self.backend,
                      cube_intensity=dense(cube_intensity), **{k: dense(v) for k, v in read.items()})
        if self.validate:
            cubes = ops.extract_cubes(volumes, op_origins, self.cube_size, validate=True, **kwargs)
        else:
            # The arguments are ours: skip the op's Python checks (its C++ checks
            # remain), except on the caller's `out`.
            if out is not None:
                ops.check_out(out, (index.shape[0], self.num_cubes, volumes.shape[1], *self.cube_size),
                              out_dtype or volumes.dtype, dev)
            cubes = ops.extract_cubes_unchecked(volumes, op_origins, self.cube_size, **kwargs)
        if self.normalize == "cube":
            cubes = normalize_cubes(cubes)
        return cubes

    # -- learning ------------------------------------------------------------------------
    def build_model(self, encoder: torch.nn.Module, *, in_channels: int = 1, hidden: int = 256,
                    dropout: float = 0.3, pool: str = "avg") -> torch.nn.Module:
        """The network: ``encoder`` shared by the cubes, and the task's heads."""
        raise NotImplementedError

    def loss(self, outputs, targets) -> tuple:
        """(loss, parts: dict of named loss terms)."""
        raise NotImplementedError

    def metrics(self, outputs, targets) -> dict:
        """Named accuracies (0-d tensors, no host sync); the first is the task's headline."""
        raise NotImplementedError

    def chance_levels(self) -> dict:
        """Per metric, the accuracy of always giving the most frequent label (None: not measured)."""
        raise NotImplementedError

    def metric_names(self) -> dict:
        """Per metric, a word for it in reports."""
        return {k: k.replace("_acc", "") for k in self.chance_levels()}

    def trained_metrics(self, **loss_options) -> dict:
        """Per metric, whether the loss with these options trains it (a zero weight does not)."""
        return {k: True for k in self.chance_levels()}

    # -- random state --------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Random state kept by the task itself (the caller's generator is the caller's)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{self.label}: load_state_dict got unknown keys {sorted(state)}")


def make_generator(seed: int, rank: int = 0, device="cpu") -> torch.Generator:
    """A generator for data-parallel rank ``rank``: distinct, reproducible
    streams per rank from one base seed (splitmix64 of seed and rank)."""
    mask = (1 << 64) - 1
    z = (int(seed) + (int(rank) + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return torch.Generator(device=device).manual_seed(z & ((1 << 63) - 1))


def normalize_cubes(cubes: torch.Tensor) -> torch.Tensor:
    """Each cube to [-1, 1] by its own min and max (the paper's normalisation),
    in place: the op's fresh output (or the caller's ``out=``) is rewritten,
    one read for the min and max and three in-place passes, where the
    out-of-place formula read the batch six times and allocated four copies
    (2-core VM, 32 x 8 cubes of 32^3 in float32: 58.9 -> 14.7 ms, bit-identical).
    (x - lo) / (span / 2) - 1 equals (x - lo) / span * 2 - 1 bit for bit
    (halving is exact) and maps lo and hi to exactly -1 and 1."""
    flat = cubes.flatten(2)
    lo, hi = torch.aminmax(flat, dim=-1, keepdim=True)
    half_span = (hi - lo).clamp_min(torch.finfo(cubes.dtype).tiny) * 0.5
    if cubes.requires_grad:  # autograd needs the op's output as it was
        return ((flat - lo) / half_span - 1).view_as(cubes)
    flat.sub_(lo).div_(half_span).sub_(1)
    return cubes


class ClassificationTask(PretextTask):
    """A task whose label is one class per sample, ``targets.<label_field>``
    (B,) int64 in [0, num_classes): a :class:`rubikops.models.SiameseClassifier`
    over the M cubes, cross-entropy, accuracy ``metric`` (chance 1 / K:
    the classes are drawn uniformly)."""

    label_field: str
    metric: str
    metric_word: str
    num_classes: int

    def build_model(self, encoder, *, in_channels: int = 1, hidden: int = 256, dropout: float = 0.3,
                    pool: str = "avg"):
        return SiameseClassifier(encoder, self.num_cubes, self.num_classes, hidden=hidden, dropout=dropout,
                                 in_channels=in_channels, cube_size=self.cube_size, pool=pool)

    def loss(self, outputs, targets) -> tuple:
        ce = torch.nn.functional.cross_entropy(outputs.float(), getattr(targets, self.label_field))
        return ce, {self.label_field: ce}

    @torch.no_grad()
    def metrics(self, outputs, targets) -> dict:
        return {self.metric: (outputs.argmax(1) == getattr(targets, self.label_field)).float().mean()}

    def chance_levels(self) -> dict:
        return {self.metric: 1.0 / self.num_classes}

    def metric_names(self) -> dict:
        return {self.metric: self.metric_word}
