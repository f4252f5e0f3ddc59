"""The Rubik's cube puzzle (Zhuang et al., MICCAI 2019) and Rubik's Cube+
(Zhu et al., MedIA 2020), sampled on the batch's device and cut with one
``extract_cubes`` call.

Conventions (normative, so labels can be checked):

- grid cell ``j = (jz * gy + jy) * gx + jx``;
- ``puzzle.permutations`` is (K, M) int64 and output cube ``m`` of sample ``b``
  is grid cell ``permutations[targets.permutation[b], m]``;
- ``rotations="paper"``: ``targets.rotation`` is (B, M, 2) float, (horizontal,
  vertical): cube m is ``ROT180_H`` of its box when ``rotation[b, m, 0] == 1``,
  ``ROT180_W`` when ``rotation[b, m, 1] == 1``, never both;
  ``rotations="all"``: (B, M) int64 index into ``rubikops.PROPER_ROTATIONS``;
- ``targets.mask[b, m] == 1`` marks a masked cube;
- ``targets.origins`` is the (B, M, 3) tensor given to ``extract_cubes``.

Geometry: along each axis, cells have pitch ``cube + lo + J`` with
``J = (hi - lo) // 2``; each cube sits at a uniform offset in [0, J] inside its
cell, so the gap between neighbouring cubes is in [lo, hi] (the paper: about
10 voxels).  The whole crop lands uniformly over the valid positions.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from numbers import Real
from typing import Optional, Sequence, Union

import torch

from . import ops
from .permutations import check_permutation_set, load_permutation_set, permutation_set
from .rotations import PAPER_ROTATIONS, PROPER_ROTATIONS, apply_code, inverse

ROTATION_MODES = ("paper", "all", "none")


@dataclass
class PuzzleTargets:
    """Labels of a batch of puzzles (all on the batch's device)."""

    permutation: torch.Tensor  # (B,) int64 index into puzzle.permutations
    rotation: torch.Tensor     # (B, M, 2) float for "paper"/"none", (B, M) int64 for "all"
    mask: torch.Tensor         # (B, M) float, 1 = masked
    origins: torch.Tensor      # (B, M, 3) int64, box corners in output order
    codes: torch.Tensor        # (B, M) int64 rotation codes applied (rubikops.rotations)
    index: torch.Tensor        # (B,) int64 volume of each sample

    def to(self, device) -> "PuzzleTargets":
        return PuzzleTargets(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def _ints(v, count: int, name: str) -> tuple:
    """An int (the same for all ``count`` entries) or ``count`` ints, checked
    as ops.as_integers (4.0 counts as 4; "444", 2.7 and True are refused)."""
    if isinstance(v, Real) and not isinstance(v, bool):
        v = (v,) * count
    return ops.as_integers(v, count, f"RubikCube: {name} (an int or {count} ints)")


class RubikCube:
    """Sample Rubik's cube puzzles from a batch (or bank) of volumes.

    ``cubes, targets = puzzle(volumes, index=None, generator=None, out=None)``
    returns the cubes (B, M, C, d, h, w) and :class:`PuzzleTargets`.

    Sampling never syncs with the device.  ``validate=True`` (default) also
    checks indices and per-volume shapes against the puzzle, which reads them
    back (one sync per call on GPU); training loops pass ``validate=False``
    once their data is known good (the kernels still never read out of bounds).
    """

    def __init__(
        self,
        grid: Sequence[int] = (2, 2, 2),
        cube_size: Union[int, Sequence[int]] = 32,
        num_permutations: int = 100,
        *,
        permutations: Union[None, str, torch.Tensor] = None,
        permutation_method: str = "maxmin",
        permutation_seed: int = 0,
        gap: Union[int, Sequence[int]] = (0, 10),
        rotations: str = "paper",
        mask_prob: float = 0.0,
        mask_keep_prob: float = 0.0,
        mask_fill: float = 0.0,
        normalize=None,
        validate: bool = True,
        backend: Optional[str] = None,
    ):
        self.grid = _ints(grid, 3, "grid")
        if min(self.grid) < 1 or self.num_cells < 2:
            raise ValueError(f"RubikCube: grid needs at least two cells, got {self.grid}")
        self.cube_size = _ints(cube_size, 3, "cube_size")
        if min(self.cube_size) < 1:
            raise ValueError(f"RubikCube: cube_size must be positive, got {self.cube_size}")
        lo, hi = _ints(gap, 2, "gap")
        if not 0 <= lo <= hi:
            raise ValueError(f"RubikCube: gap must be an int >= 0 or (lo, hi) with 0 <= lo <= hi, got {gap!r}")
        self.gap = (lo, hi)
        if rotations not in ROTATION_MODES:
            raise ValueError(f"RubikCube: rotations must be one of {ROTATION_MODES}, got {rotations!r}")
        if rotations == "all" and len(set(self.cube_size)) != 1:
            raise ValueError(f"RubikCube: rotations='all' needs cubic cubes, got cube_size {self.cube_size}")
        self.rotation_mode = rotations
        for name, p in (("mask_prob", mask_prob), ("mask_keep_prob", mask_keep_prob)):
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"RubikCube: {name} must be in [0, 1], got {p!r}")
        self.mask_prob, self.mask_keep_prob, self.mask_fill = float(mask_prob), float(mask_keep_prob), float(mask_fill)
        self.normalize = self._check_normalize(normalize)
        if isinstance(permutations, torch.Tensor):
            perms = check_permutation_set(permutations, self.num_cells, "RubikCube: permutations")
        elif isinstance(permutations, str):
            perms = load_permutation_set(permutations, self.num_cells)
        elif permutations is None:
            perms = permutation_set(self.num_cells, int(num_permutations), permutation_method, permutation_seed)
        else:
            raise TypeError(f"RubikCube: permutations must be None, a .npy path or a tensor, got {type(permutations)}")
        self.permutations = perms
        self.validate = validate
        self.backend = backend
        self._device_cache: dict = {}
        self._calls = 0  # feeds the keep-mask seed (see __call__)

    # -- configuration -------------------------------------------------------------------
    @property
    def num_cells(self) -> int:
        return self.grid[0] * self.grid[1] * self.grid[2]

    @property
    def num_permutations(self) -> int:
        return self.permutations.shape[0]

    @property
    def jitter(self) -> int:
        return (self.gap[1] - self.gap[0]) // 2

    @property
    def pitch(self) -> tuple[int, int, int]:
        return tuple(c + self.gap[0] + self.jitter for c in self.cube_size)

    @property
    def crop_size(self) -> tuple[int, int, int]:
        """Extent of the region one puzzle covers (the volume must be at least this big)."""
        return tuple((g - 1) * p + c + self.jitter for g, p, c in zip(self.grid, self.pitch, self.cube_size))

    @staticmethod
    def _check_normalize(normalize):
        if normalize is None or normalize in ("cube", "zscore"):
            return normalize
        if isinstance(normalize, (tuple, list)) and len(normalize) == 3 and normalize[0] == "window":
            lo, hi = float(normalize[1]), float(normalize[2])
            if not lo < hi:
                raise ValueError(f"RubikCube: normalize window needs lo < hi, got {normalize!r}")
            return ("window", lo, hi)
        raise ValueError("RubikCube: normalize must be None, 'cube' (per cube to [-1, 1], as in the paper), "
                         f"'zscore' (per volume) or ('window', lo, hi) (e.g. a CT HU window), got {normalize!r}")

    def _on(self, device):
        key = str(device)
        if key not in self._device_cache:
            cells = torch.stack(torch.meshgrid(*[torch.arange(g) for g in self.grid], indexing="ij"), -1).view(-1, 3)
            codes = {"paper": PAPER_ROTATIONS, "all": PROPER_ROTATIONS, "none": ()}[self.rotation_mode]
            self._device_cache[key] = dict(
                perms=self.permutations.to(device),
                cells=(cells * torch.tensor(self.pitch)).to(device),  # (n_cells, 3) cell corner in the crop
                # rotation code of each drawn state (none drawn for "none")
                code_table=torch.tensor(codes, dtype=torch.int64, device=device),
                # rotation target per paper state: 0 none, 1 horizontal, 2 vertical
                paper_targets=torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], device=device),
            )
        return self._device_cache[key]

    # -- sampling ------------------------------------------------------------------------
    def sample(self, batch: int, volume_shapes: torch.Tensor, index: torch.Tensor,
               generator: Optional[torch.Generator] = None):
        """Draw puzzle parameters on ``index``'s device (no host sync).

        ``volume_shapes``: (N, 3) spatial extents of the volumes (same device).
        Returns ``(origins, codes, mask, targets)``.

        One uniform draw per batch and one ``rubikops::sample_puzzle`` call
        turn it into every choice (crop start, jitter, permutation, rotation
        state, mask), and two more shape the labels: four small launches
        where the plain-torch sampler took fifteen, which is what a GPU batch
        waited on (docs/performance.md)."""
        dev = index.device
        c = self._on(dev)
        M = self.permutations.shape[1]
        n = ops.sample_puzzle_row_size(self.num_cells, M, c["code_table"].numel() > 0, self.mask_prob > 0)
        u = torch.rand(batch, n, generator=generator, device=dev, dtype=torch.float64)
        origins, codes, perm, state, mask = ops.sample_puzzle(
            u, volume_shapes, index, c["cells"], c["perms"], c["code_table"], self.crop_size, self.jitter,
            self.mask_prob, backend=self.backend)
        if self.rotation_mode == "paper":
            rotation = c["paper_targets"][state]
        elif self.rotation_mode == "all":
            rotation = state
        else:
            rotation = torch.zeros(batch, M, 2, device=dev)
        targets = PuzzleTargets(permutation=perm, rotation=rotation, mask=mask.float(), origins=origins,
                                codes=codes, index=index)
        return origins, codes, mask, targets

    def __call__(self, volumes: torch.Tensor, index: Optional[torch.Tensor] = None,
                 generator: Optional[torch.Generator] = None, out: Optional[torch.Tensor] = None, *,
                 volume_shapes: Optional[torch.Tensor] = None, volume_offsets: Optional[torch.Tensor] = None,
                 intensity: Optional[tuple] = None, seed: Optional[int] = None, stats: Optional[tuple] = None):
        """Cut a batch of puzzles.

        volumes: (N, C, D, H, W) on any device.  index: (B,) volume per sample
        (None: B = N, one puzzle per volume).  volume_shapes: (N, 3) true
        extents when volumes are zero-padded to a common shape (a bank).
        volume_offsets: (N, 3) where each volume starts inside ``volumes``
        when they are packed into one (1, C, D, H, W) storage (a
        :class:`rubikops.data.VolumeBank`); then ``index`` and
        ``volume_shapes`` still count volumes and targets keep volume-relative
        origins.  intensity: per-volume (scale, shift), each (N,), mapping
        stored values to physical ones (quantised int16 banks); fused with
        the normalisation into the op's scale/shift.
        seed: the keep-mask seed (default: drawn from ``generator``).
        stats: per-volume (mean, std) of physical values, each (N,), for
        normalize='zscore'."""
        if not isinstance(volumes, torch.Tensor) or volumes.dim() != 5:
            raise ValueError(f"RubikCube: volumes must be a 5-D tensor (N, C, D, H, W), got "
                             f"{getattr(volumes, 'shape', type(volumes))}")
        dev = volumes.device
        packed = volume_offsets is not None
        if packed and (volume_shapes is None or volumes.shape[0] != 1):
            raise ValueError("RubikCube: volume_offsets needs volume_shapes and a packed (1, C, D, H, W) storage")
        N = volume_shapes.shape[0] if packed else volumes.shape[0]
        if index is None:
            index = torch.arange(N, device=dev)
        for name, t in (("index", index), ("volume_shapes", volume_shapes), ("volume_offsets", volume_offsets)):
            if t is not None and (not isinstance(t, torch.Tensor) or t.device != dev):
                raise ValueError(f"RubikCube: {name} must be a tensor on the volumes' device ({dev}), got "
                                 f"{getattr(t, 'device', type(t).__name__)}")
        B = index.shape[0]
        if volume_shapes is None:
            if any(v < c for v, c in zip(volumes.shape[2:], self.crop_size)):
                raise ValueError(f"RubikCube: volumes of spatial shape {tuple(volumes.shape[2:])} are smaller than "
                                 f"the puzzle's crop {self.crop_size} (grid {self.grid}, cube {self.cube_size}, "
                                 f"gap {self.gap})")
            # Cached per device and shape: a fresh host-to-device tensor would
            # be a blocking copy (a stream sync on CUDA) in every batch.
            cache, key = self._on(dev), ("shape", tuple(volumes.shape[2:]))
            if key not in cache:
                cache[key] = torch.tensor(key[1], device=dev)
            volume_shapes = cache[key].expand(N, 3)
        elif self.validate and bool((volume_shapes < torch.tensor(self.crop_size, device=dev)).any()):
            bad = int((volume_shapes < torch.tensor(self.crop_size, device=dev)).any(1).nonzero()[0, 0])
            raise ValueError(f"RubikCube: volume {bad} of shape {volume_shapes[bad].tolist()} is smaller than the "
                             f"puzzle's crop {self.crop_size}")
        origins, codes, mask, targets = self.sample(B, volume_shapes, index, generator)
        op_origins, op_index = origins, index
        if packed:
            op_origins = origins + volume_offsets[index][:, None, :]
            op_index = torch.zeros_like(index)
        # value = stored * a + b maps stored values to physical ones (per sample)
        a = b = None
        if intensity is not None:
            a, b = intensity[0].double()[index], intensity[1].double()[index]
        scale = shift = clamp = None
        if self.normalize == "zscore":
            if stats is None and packed:
                raise ValueError("RubikCube: normalize='zscore' on packed volumes needs stats=(mean, std)")
            mean, std = stats if stats is not None else _volume_stats(volumes)
            inv = 1.0 / std.double().clamp_min(1e-6)[index]
            m = mean.double()[index]
            scale, shift = (inv, -m * inv) if a is None else (a * inv, (b - m) * inv)
        elif isinstance(self.normalize, tuple):
            _, lo, hi = self.normalize
            scale, shift, clamp = 2.0 / (hi - lo), -1.0 - 2.0 * lo / (hi - lo), (-1.0, 1.0)
            if a is not None:
                scale, shift = a * scale, b * scale + shift
        elif a is not None:
            scale, shift = a, b
        out_dtype = None if volumes.dtype.is_floating_point else torch.float32
        if seed is None and self.mask_keep_prob > 0:
            # Host-side, so no device sync: the generator's seed and this
            # puzzle's call count, mixed (reproducible for the same seed and calls).
            base = generator.initial_seed() if generator is not None else torch.initial_seed()
            self._calls += 1
            seed = make_generator(base, rank=self._calls).initial_seed()
        seed = 0 if seed is None else seed
        kwargs = dict(index=op_index, rotations=codes if self.rotation_mode != "none" else None,
                      mask=mask if self.mask_prob > 0 else None, fill=self.mask_fill, keep_prob=self.mask_keep_prob,
                      seed=seed, scale=scale, shift=shift, clamp=clamp, out_dtype=out_dtype, out=out,
                      backend=self.backend)
        if self.validate:
            cubes = ops.extract_cubes(volumes, op_origins, self.cube_size, validate=True, **kwargs)
        else:
            # The arguments are ours: skip the op's Python checks (its C++ checks
            # remain), except on the caller's `out`.
            if out is not None:
                ops.check_out(out, (B, self.num_cells, volumes.shape[1], *self.cube_size),
                              out_dtype or volumes.dtype, dev)
            cubes = ops.extract_cubes_unchecked(volumes, op_origins, self.cube_size, **kwargs)
        if self.normalize == "cube":
            cubes = normalize_cubes(cubes)
        return cubes, targets


def make_generator(seed: int, rank: int = 0, device="cpu") -> torch.Generator:
    """A generator for data-parallel rank ``rank``: distinct, reproducible
    streams per rank from one base seed (splitmix64 of seed and rank)."""
    mask = (1 << 64) - 1
    z = (int(seed) + (int(rank) + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return torch.Generator(device=device).manual_seed(z & ((1 << 63) - 1))


def _volume_stats(volumes: torch.Tensor):
    v = volumes.float().flatten(1)
    return v.mean(1), v.std(1)


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


def solve(cubes: torch.Tensor, targets: PuzzleTargets, permutations: torch.Tensor) -> torch.Tensor:
    """Undo rotations and permutation: returns (B, n_cells, C, d, h, w) with each
    cube back in its grid cell (cell j = (jz * gy + jy) * gx + jx)."""
    B, M = cubes.shape[:2]
    order = permutations.to(cubes.device)[targets.permutation]  # (B, M)
    solved = torch.empty_like(cubes)
    codes = targets.codes.tolist()
    for b in range(B):
        for m in range(M):
            solved[b, int(order[b, m])] = apply_code(cubes[b, m], inverse(codes[b][m]))
    return solved


def assemble(solved: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Tile solved cells (B, n_cells, C, d, h, w) into (B, C, gz*d, gy*h, gx*w) without gaps."""
    B, n, C, d, h, w = solved.shape
    gz, gy, gx = grid
    x = solved.view(B, gz, gy, gx, C, d, h, w).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return x.reshape(B, C, gz * d, gy * h, gx * w)
