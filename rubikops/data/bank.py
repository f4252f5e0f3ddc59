"""VolumeBank: N preprocessed volumes of different shapes in ONE allocation
on the training device, from which every puzzle batch is cut with one
``extract_cubes`` call and no per-step copies.

Layout (why, in docs/data.md): the volumes are packed one after another
along the first spatial axis into a (1, C, sum(D_i), max(H_i), max(W_i))
storage, each padded only in H and W.  A puzzle origin is volume-relative and
the sampler adds the volume's offset, so the kernel stays the dense gather it
is (no ragged variant of the op to keep in sync) while the padding waste is
that of two axes instead of three: for the default dataset at 1.5 mm, 28% of
the storage instead of 32% (docs/data.md).
Crops never straddle two volumes: each is drawn inside its own volume's
extent.

Storage dtype: float32, bfloat16, float16, or quantised int16/uint8 with a
per-volume (scale, shift) that the op fuses into its intensity scaling, so an
int16 bank holds CT in half the memory of float32 at no speed cost."""
from __future__ import annotations

import mmap
import os
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..volumes import VolumeSource
from .nifti import DataError, Volume

STORAGE_DTYPES = {
    "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
    "int16": torch.int16, "uint8": torch.uint8,
}


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def human_bytes(n: int) -> str:
    """``n`` bytes in the largest binary unit that leaves at least 1 (e.g. 196.0 KiB, 2.50 GiB)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}" if unit == "GiB" else f"{n / size:.1f} {unit}"
    return f"{n} B"


def _quantise(x: np.ndarray, dtype: torch.dtype):
    """Stored values and (scale, shift) with x ~= stored * scale + shift."""
    lo, hi = float(x.min()), float(x.max())
    if dtype == torch.int16:
        if np.array_equal(x, np.rint(x)) and lo >= -32768 and hi <= 32767:
            return x.astype(np.int16), 1.0, 0.0  # integer data (raw CT in HU): exact
        scale = max(hi - lo, 1e-12) / 65534.0
        shift = (hi + lo) / 2.0
        return np.rint((x - shift) / scale).clip(-32767, 32767).astype(np.int16), scale, shift
    if np.array_equal(x, np.rint(x)) and lo >= 0 and hi <= 255:
        return x.astype(np.uint8), 1.0, 0.0
    scale = max(hi - lo, 1e-12) / 255.0
    return np.rint((x - lo) / scale).clip(0, 255).astype(np.uint8), scale, lo


def check_fits(need: int, device: torch.device, headroom: float, what: str, advice: str) -> None:
    """MemoryError naming the numbers when ``need`` bytes exceed ``headroom`` of ``device``'s free memory."""
    have = _available_bytes(device)
    if need > headroom * have:
        raise MemoryError(f"{what} need {_gib(need)} on {device} but only {_gib(have)} is free "
                          f"({headroom:.0%} usable); {advice}")


def host_array(v, name: str, who: str) -> np.ndarray:
    """Volume ``v`` (a :class:`Volume`, array or tensor) as a (C, D, H, W) host array, without reading
    a memory-mapped one's pages."""
    a = v.data if isinstance(v, Volume) else v
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
    if a.ndim != 4:
        raise ValueError(f"{who}: {name} must be (C, D, H, W), got shape {a.shape}")
    return a


def release_pages(a: np.ndarray) -> None:
    """Drop the resident pages of a memory-mapped array (``load_prepared``'s volumes): they count in
    the process's RSS while mapped, and come back from the page cache if read again."""
    while a is not None and not isinstance(a, mmap.mmap):
        a = getattr(a, "_mmap", None) if isinstance(a, np.memmap) and getattr(a, "_mmap", None) is not None \
            else getattr(a, "base", None)
    if a is not None and hasattr(a, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        try:
            a.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # closed, or a platform that refuses: the pages just stay
            pass


def known_stats(v) -> Optional[dict]:
    """The statistics a prepared volume's manifest recorded (``load_prepared`` puts them in
    ``meta["stats"]``: float64 mean and std, which ``stored_volume`` verifies), while its data is still the
    memory map of that file (not a processed copy that kept the meta); else None."""
    stats = v.meta.get("stats") if isinstance(v, Volume) else None
    if not isinstance(stats, dict) or not {"mean", "std", "file"} <= set(stats):
        return None
    name = getattr(v.data, "filename", None)
    return stats if name is not None and os.path.abspath(name) == stats["file"] else None


def check_known_stats(stats: dict, mean: float, std: float, name: str, who: str) -> None:
    """DataError when a manifest's (mean, std) are not those of the content: a volume file or a
    manifest edited since prepare wrote them.  Tolerance: 1e-6 of the volume's scale (|mean| + std),
    far above the rounding of float64 sums in another order (1e-12 of it) and far below any edit
    that changes a z-score."""
    tol = 1e-6 * (abs(mean) + std) + 1e-30
    if not (abs(float(stats["mean"]) - mean) <= tol and abs(float(stats["std"]) - std) <= tol):
        raise DataError(f"{who}: {stats.get('file', name)}: the manifest's statistics (mean {stats['mean']:.6g}, "
                        f"std {stats['std']:.6g}) are not the file's (mean {mean:.6g}, std {std:.6g}); the volume or "
                        "the manifest was changed since prepare: run prepare again")


def stored_volume(a: np.ndarray, dtype: torch.dtype, name: str, who: str, stats: Optional[dict] = None) -> tuple:
    """One volume as the bank stores it: (host tensor in ``dtype``, scale, shift, mean, std) with
    physical = stored * scale + shift and the z-score statistics of the physical values.
    ``stats`` (``known_stats``, a manifest's): verified against the content (finite, same mean and std),
    then used."""
    quantised = dtype in (torch.int16, torch.uint8)
    if stats is not None and not quantised:
        # A prepared file is checked, not trusted: dtype at load_prepared; here finiteness and the
        # statistics, from one float64 sum and one dot product (a NaN or Inf makes either non-finite).
        # Measured on a prepared folder of six 128^3 volumes in the page cache (2-core VM): 0.83 ms per
        # volume for the copy alone, 5.4 ms with this check, 11.9 ms with two-pass mean and std; a
        # StreamingBank pays it once per swap, off the training thread.  The manifest's entry checks
        # took 0.5 ms for the six entries; the dtype check reads only the .npy header.
        x = np.array(a, dtype=np.float32 if a.dtype != np.float64 else np.float64)
        release_pages(a)
        flat = x.ravel().astype(np.float64)
        total, squares = float(flat.sum()), float(np.dot(flat, flat))
        if not (np.isfinite(total) and np.isfinite(squares)):
            raise DataError(f"{who}: {stats.get('file', name)} holds NaN or Inf")
        mean = total / flat.size
        std = float(np.sqrt(max(squares / flat.size - mean * mean, 0.0)))
        check_known_stats(stats, mean, std, name, who)
        return torch.from_numpy(x).to(dtype), 1.0, 0.0, float(stats["mean"]), float(stats["std"])
    # float storage reads the volume as float32 (0.17 against 0.29 ms for a 46k-voxel volume through
    # float64): the values are float32's, and the statistics accumulate in float64 either way
    phys = a.astype(np.float64 if quantised or a.dtype == np.float64 else np.float32)
    release_pages(a)
    if not np.isfinite(phys).all():
        raise DataError(f"{who}: {name} holds NaN or Inf")
    mean, std = float(phys.mean(dtype=np.float64)), float(phys.std(dtype=np.float64))
    if stats is not None:
        check_known_stats(stats, mean, std, name, who)
    if quantised:
        q, s, t = _quantise(phys, dtype)
        return torch.from_numpy(q), s, t, mean, std
    # from phys, a writable copy: torch refuses to wrap a read-only memory map (load_prepared) quietly
    return torch.from_numpy(phys).to(dtype), 1.0, 0.0, mean, std


def volume_names(volumes: Sequence) -> list:
    """Each volume's name: its file's for a :class:`Volume`, else ``volume <i>`` (its place in the list)."""
    return [v.name if isinstance(v, Volume) else f"volume {i}" for i, v in enumerate(volumes)]


def bank_device(device, who: str) -> torch.device:
    """``device`` as a torch.device the bank can allocate on; a ValueError naming ``who`` otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{who}: device {device!r} is not a device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{who}: device {device!r}: no CUDA device is available (torch {torch.__version__}, "
                         f"built {'with' if torch.backends.cuda.is_built() else 'without'} CUDA)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{who}: device {device!r}: a bank lives on 'cpu' or 'cuda'")
    if dev.type == "cuda" and dev.index is None:  # as its tensors report it: 'cuda' and 'cuda:0' compare unequal
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def storage_dtype(dtype: Union[str, torch.dtype], who: str) -> torch.dtype:
    """One of ``STORAGE_DTYPES`` by name or dtype; a ValueError naming ``who`` otherwise."""
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).replace("torch.", "")
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"{who}: dtype must be one of {sorted(STORAGE_DTYPES)}, got {dtype!r}")
    return STORAGE_DTYPES[dtype]


def packed_bytes(arrays: Sequence[np.ndarray], dtype: torch.dtype) -> int:
    """Bytes of (C, D, H, W) ``arrays`` packed along D into one (1, C, sum D, max H, max W) storage."""
    shapes = np.array([a.shape for a in arrays], dtype=np.int64)
    return int(shapes[0, 0] * shapes[:, 1].sum() * shapes[:, 2].max() * shapes[:, 3].max()
               * torch.empty((), dtype=dtype).element_size())


def bank_inputs(volumes: Sequence, shard: Optional[tuple], names: Optional[Sequence[str]], who: str) -> tuple:
    """What both banks start from: (names, host arrays, known statistics) of this shard's volumes,
    refusing an empty list, arrays that are not (C, D, H, W) and unequal channel counts."""
    vols = list(volumes)
    names = list(names) if names is not None else volume_names(vols)
    if len(names) != len(vols) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{who}: names must be one string per volume ({len(vols)}), got {len(names)} entries")
    if shard is not None:
        vols, names = take_shard(vols, shard, who), take_shard(names, shard, who)
    if not vols:
        raise ValueError(f"{who}: no volumes given")
    arrays = [host_array(v, names[i], who) for i, v in enumerate(vols)]
    C = arrays[0].shape[0]
    for name, a in zip(names, arrays):
        if a.shape[0] != C:
            raise ValueError(f"{who}: {name} has {a.shape[0]} channels, the first volume {C}")
    return names, arrays, [known_stats(v) for v in vols]


def take_shard(items: Sequence, shard: tuple, who: str) -> list:
    """Items rank, rank + world, ... of ``shard=(rank, world)``: the share
    of one DDP rank, the same for the bank and for ``load_prepared``."""
    rank, world = int(shard[0]), int(shard[1])
    if not 0 <= rank < world:
        raise ValueError(f"{who}: shard must be (rank, world_size) with 0 <= rank < world_size, got {shard!r}")
    if len(items) < world:
        raise ValueError(f"{who}: {len(items)} volumes cannot be sharded over {world} ranks "
                         "(each rank needs at least one)")
    return list(items[rank::world])


class BankPuzzles:
    """What both banks do with a task: refuse one whose crop does not fit a
    volume, and cut a batch of it.  Needs ``names`` and ``host_shapes()``."""

    def check_puzzle(self, puzzle) -> None:
        """Refuse (DataError) a task whose crop does not fit every volume."""
        shapes = self.host_shapes()
        small = (shapes < np.array(tuple(puzzle.crop_size))).any(1)
        if small.any():
            bad = small.nonzero()[0].tolist()
            raise DataError(f"{type(self).__name__}: {len(bad)} volume(s) are smaller than the puzzle's crop "
                            f"{puzzle.crop_size} ({puzzle.describe()}), "
                            f"e.g. {self.names[bad[0]]} of shape {shapes[bad[0]].tolist()}; use a smaller "
                            "cube_size or gap, or pad with Preprocessing(min_shape=...)")

    def close(self) -> None:
        """Release background resources (none for a resident bank)."""

    def puzzles(self, puzzle, batch: int, generator: Optional[torch.Generator] = None,
                index: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None, seed=None,
                crop_transform=None, intensity_transform=None):
        """One batch of ``puzzle`` (any pretext task, e.g. :class:`rubikops.RubikCube`), volumes drawn on
        the device: (cubes, targets).

        ``crop_transform`` (e.g. :class:`rubikops.augment.CropAffine`):
        ``crop_transform.draw(bank.shapes, puzzle.crop_size, index, generator)``
        gives each sample's affine, and the puzzle is cut through it in the
        same ``extract_cubes`` pass (the origins in ``targets`` are then
        positions in the crop frame).  ``intensity_transform`` (e.g.
        :class:`rubikops.augment.IntensityAugment`):
        ``intensity_transform.draw(batch, puzzle.num_cubes, generator)``
        gives each cube's intensity draws, after the task's sample (a
        puzzle's labels are those of the same batch without it; a dense
        task's corruptions draw after it), executed by the same call."""
        checked = self.__dict__.setdefault("_checked_puzzles", set())
        if id(puzzle) not in checked:
            self.check_puzzle(puzzle)
            checked.add(id(puzzle))
        if index is None:
            index = self.sample_index(batch, generator)
        affine = None if crop_transform is None else crop_transform.draw(self.shapes, puzzle.crop_size, index,
                                                                          generator)
        return puzzle(self, index, generator, out=out, seed=seed, affine=affine, cube_intensity=intensity_transform)


class VolumeBank(BankPuzzles, VolumeSource):
    """A device-resident bank of volumes, a :class:`rubikops.volumes.VolumeSource`.

    ``VolumeBank(volumes, device="cuda", dtype="int16")`` with ``volumes`` a
    list of :class:`Volume` or (C, D, H, W) arrays/tensors of equal C.
    ``shard=(rank, world_size)`` keeps volumes rank, rank + world, ... (DDP).
    Refuses, naming the numbers, a bank that does not fit the device
    (``headroom``: the fraction of free memory it may take)."""

    def __init__(self, volumes: Sequence[Union[Volume, np.ndarray, torch.Tensor]], device="cpu",
                 dtype: Union[str, torch.dtype] = "float32", *, shard: Optional[tuple] = None,
                 headroom: float = 0.8, names: Optional[Sequence[str]] = None):
        self.dtype = storage_dtype(dtype, "VolumeBank")
        self.device = bank_device(device, "VolumeBank")
        self.names, arrays, stats_known = bank_inputs(volumes, shard, names, "VolumeBank")
        mine = take_shard(list(volumes), shard, "VolumeBank") if shard is not None else list(volumes)
        # where each volume lies in the world (RAS, mm), for Volumes; None for bare arrays
        self.affines = [np.asarray(v.affine, dtype=np.float64) if isinstance(v, Volume) else None for v in mine]
        C = arrays[0].shape[0]
        shapes = np.array([a.shape[1:] for a in arrays], dtype=np.int64)
        total_d, max_h, max_w = int(shapes[:, 0].sum()), int(shapes[:, 1].max()), int(shapes[:, 2].max())
        check_fits(packed_bytes(arrays, self.dtype), self.device, headroom, f"VolumeBank: {len(arrays)} volumes",
                   "use dtype='int16' or 'bfloat16', a coarser spacing, foreground cropping, fewer volumes, "
                   "or a StreamingBank (pretrain.py --bank-budget)")
        self.storage = torch.zeros(1, C, total_d, max_h, max_w, dtype=self.dtype, device=self.device)
        scale, shift, mean, std = [], [], [], []
        z = 0
        offsets = []
        self.quantised = self.dtype in (torch.int16, torch.uint8)
        # one volume at a time: a memory-mapped volume's pages are dropped once copied, so building
        # the bank holds the storage plus one volume, not the storage plus every mapped volume
        for a, name, known, (d, h, w) in zip(arrays, self.names, stats_known, shapes):
            src, s, t, m, sd = stored_volume(a, self.dtype, name, "VolumeBank", known)
            self.storage[0, :, z:z + d, :h, :w] = src.to(self.device)
            scale.append(s), shift.append(t), mean.append(m), std.append(sd)
            offsets.append((z, 0, 0))
            z += int(d)
        f64 = dict(dtype=torch.float64, device=self.device)
        self.shapes = torch.as_tensor(shapes, device=self.device)
        self.offsets = torch.tensor(offsets, dtype=torch.int64, device=self.device)
        self.scale, self.shift = torch.tensor(scale, **f64), torch.tensor(shift, **f64)
        self.stats = (torch.tensor(mean, **f64), torch.tensor(std, **f64))
        self._voxels = int(np.prod(shapes, axis=1).sum()) * C

    @classmethod
    def from_monai(cls, items, key: str = "image", **kwargs) -> "VolumeBank":
        """A bank of a MONAI dataset (or list) of dictionaries of channel-first MetaTensors
        (``key``'s entry) or of MetaTensors; ``affines`` and ``spacings`` keep where they lie."""
        from .from_monai import volumes_from_monai
        return cls(volumes_from_monai(items, key), **kwargs)

    # -- facts ---------------------------------------------------------------------------
    @property
    def spacings(self) -> list:
        """Each volume's voxel size in mm (None for a bare array)."""
        return [None if a is None else tuple(float(s) for s in np.linalg.norm(a[:3, :3], axis=0))
                for a in self.affines]

    @property
    def nbytes(self) -> int:
        return self.storage.numel() * self.storage.element_size()

    @property
    def padding_fraction(self) -> float:
        """Share of the storage that is padding."""
        return 1.0 - self._voxels / self.storage.numel()

    def memory_report(self) -> str:
        return (f"VolumeBank: {len(self)} volumes x {self.channels} channel(s), {str(self.dtype).replace('torch.', '')}"
                f" on {self.device}: {_gib(self.nbytes)} ({self.padding_fraction:.0%} padding)")

    def __getitem__(self, i: int) -> torch.Tensor:
        """Volume i (C, D, H, W) in physical values (float32)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"VolumeBank: index {i} out of range for {len(self)} volumes")
        i = i % len(self)
        d, h, w = self.shapes[i].tolist()
        z = int(self.offsets[i, 0])
        x = self.storage[0, :, z:z + d, :h, :w].double()
        return (x * self.scale[i] + self.shift[i]).float()

    # -- as a volume source ------------------------------------------------------------------
    def value_map(self) -> Optional[tuple]:
        return (self.scale, self.shift) if self.quantised else None

    def host_shapes(self) -> np.ndarray:
        """(N, 3) true extents of the volumes, on the host."""
        return self.shapes.cpu().numpy()

    def state_dict(self) -> dict:
        return {"kind": "resident"}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore (every volume is resident); refuses another bank's state."""
        if state.get("kind") != "resident":
            raise ValueError(f"VolumeBank.load_state_dict: a {state.get('kind')!r} bank's state")

    def volume_stats(self) -> tuple:
        return self.stats
