"""Augmentation that keeps every puzzle label valid, run on the batch's device.

Two pieces, each one job:

- :class:`CropAffine` draws, for each puzzle, the affine that reads its crop
  from the volume: a small rotation about each axis and an isotropic zoom
  around a random centre.  ``VolumeBank.puzzles(crop_transform=...)`` hands
  it to the task, whose one ``extract_cubes(affine=)`` call cuts the puzzle
  straight through it (no resampled crop is made); ``crops`` makes the
  resampled crops themselves, the two-pass form the fused cut equals.  The
  permutation and turn labels describe the augmented crop exactly (``solve``
  gives it back).
  No whole-crop flips or 90/180-degree turns: those are what the cube
  turns are, and would make the labels ambiguous.
- :class:`IntensityAugment` draws each cube's intensity change (contrast,
  gamma, a smooth multiplicative bias field and noise, each cube on its own
  draw, relative to its volume's mean and sd), which the same
  ``extract_cubes`` call executes (``cube_intensity=``).  Geometry and
  labels are untouched.

Both draw from the generator given, on its device, with a fixed number of
draws per call, so a run is reproducible and resumable.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ._constants import device_constant


def _uniform(n: int, lo: float, hi: float, generator, device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) * (hi - lo) + lo


# R = R_d @ R_h @ R_w written out: each entry a + b, a and b products of three entries of the table
# (cos a0..a3, sin a0..a3, -sin a0..a3, -cos a0..a3, where a3 = 0 gives the ones and zeros)
_COS, _SIN, _NEG_SIN, _NEG_COS, _ONE, _ZERO = 0, 4, 8, 12, 3, 7
_ROTATION_TERMS = (
    (_COS + 1, _COS + 2, _ONE), (_ZERO, _ZERO, _ZERO),                     # c1 c2
    (_COS + 1, _NEG_SIN + 2, _ONE), (_ZERO, _ZERO, _ZERO),                 # -c1 s2
    (_SIN + 1, _ONE, _ONE), (_ZERO, _ZERO, _ZERO),                         # s1
    (_COS, _SIN + 2, _ONE), (_SIN, _SIN + 1, _COS + 2),                    # c0 s2 + s0 s1 c2
    (_COS, _COS + 2, _ONE), (_NEG_SIN, _SIN + 1, _SIN + 2),                # c0 c2 - s0 s1 s2
    (_NEG_SIN, _COS + 1, _ONE), (_ZERO, _ZERO, _ZERO),                     # -s0 c1
    (_SIN, _SIN + 2, _ONE), (_NEG_COS, _SIN + 1, _COS + 2),                # s0 s2 - c0 s1 c2
    (_SIN, _COS + 2, _ONE), (_COS, _SIN + 1, _SIN + 2),                    # s0 c2 + c0 s1 s2
    (_COS, _COS + 1, _ONE), (_ZERO, _ZERO, _ZERO))                         # c0 c1


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles in radians about the D, H and W axes -> (B, 3, 3)
    rotation matrices acting on (d, h, w) coordinates: R = R_d @ R_h @ R_w,
    with R_d = [[1, 0, 0], [0, c, -s], [0, s, c]] (about D), R_h = [[c, 0, s],
    [0, 1, 0], [-s, 0, c]] and R_w = [[c, -s, 0], [s, c, 0], [0, 0, 1]].
    The product written out entry by entry over one table of cosines and
    sines: elementwise kernels only (a batched matmul after the training
    step's parallel regions cost more than the rest of the batch's draws)."""
    padded = torch.nn.functional.pad(angles, (0, 1))
    cosines, sines = torch.cos(padded), torch.sin(padded)
    table = torch.cat([cosines, sines, -sines, -cosines], -1)
    terms = table[:, device_constant(tuple(i for term in _ROTATION_TERMS for i in term), angles.device)]
    return terms.view(-1, 9, 2, 3).prod(-1).sum(-1).view(-1, 3, 3)


def resample_crops(storage: torch.Tensor, shapes: torch.Tensor, offsets: torch.Tensor, index: torch.Tensor,
                   centres: torch.Tensor, matrices: torch.Tensor, crop_size: Sequence[int],
                   scale: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Trilinear resampling of one crop per sample from a packed bank.

    storage: (1, C, D, H, W) any dtype; volume ``v`` occupies
    ``storage[0, :, o:o+d, :h, :w]`` with ``o = offsets[v, 0]`` and
    ``(d, h, w) = shapes[v]``.  Output voxel ``p`` of sample ``b`` reads
    volume ``index[b]`` at ``centres[b] + matrices[b] @ (p - (crop - 1) / 2)``
    (voxel units), clamped to the volume (edge values repeat), then
    ``value * scale[v] + shift[v]`` (quantised banks).  Returns (B, C, *crop)
    float32.  float32 banks go through one ``grid_sample`` call; other dtypes
    gather the eight corners by flat index, since ``grid_sample`` needs a
    floating input of the grid's dtype (no int16 banks, and bfloat16
    coordinates are off by whole voxels past 256)."""
    dev = storage.device
    B = index.shape[0]
    C = storage.shape[1]
    axes = [torch.arange(n, device=dev, dtype=torch.float32) - (n - 1) / 2 for n in crop_size]
    local = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).view(-1, 3)  # (P, 3)
    pos = torch.einsum("bij,pj->bpi", matrices.float(), local) + centres.float()[:, None, :]  # (B, P, 3)
    size = shapes[index].to(torch.float32)[:, None, :]
    pos = torch.minimum(pos.clamp_min(0.0), size - 1)
    # float32 normalised coordinates lose about 1e-7 of the axis length: up to 2048 voxels a
    # corner past a volume's edge gets a weight of at most ~1e-3 instead of 0.
    if storage.dtype == torch.float32 and 1 < min(storage.shape[2:]) and max(storage.shape[2:]) <= 2048 \
            and not _force_gather:
        out = _grid_sample_packed(storage, pos, offsets[index], B, crop_size)
    else:
        out = _gather_corners(storage, pos, shapes[index], offsets[index])
    if scale is not None:
        out = out * scale[index].float()[:, None, None] + shift[index].float()[:, None, None]
    return out.reshape(B, C, *crop_size)


# Tests set this to check the gather path against the grid_sample one on float32 banks.
_force_gather = False


def _grid_sample_packed(storage, pos, offsets, B, crop_size):
    """float32 banks: one ``grid_sample`` call over the whole packed storage.  Positions are
    already clamped inside each volume, so a corner past a volume's edge has weight 0.  Measured
    on the 2-core CPU at one thread (16 crops of 34^3, the default pretraining's): 136 ms against
    229 ms for gathering the eight corners one by one."""
    _, C, D, H, W = storage.shape
    z = pos[..., 0] + offsets[:, None, 0].to(pos.dtype)
    # align_corners=True: index i of an axis of n voxels sits at 2 i / (n - 1) - 1
    grid = torch.stack([pos[..., 2] * (2.0 / (W - 1)) - 1, pos[..., 1] * (2.0 / (H - 1)) - 1,
                        z * (2.0 / (D - 1)) - 1], -1)
    grid = grid.view(1, B * crop_size[0], crop_size[1], crop_size[2], 3)
    out = torch.nn.functional.grid_sample(storage, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.view(C, B, -1).permute(1, 0, 2)  # (B, C, P)


def _gather_corners(storage, pos, shapes, offsets):
    """Any bank dtype: the eight trilinear corners gathered by flat index."""
    C = storage.shape[1]
    B = pos.shape[0]
    base = pos.floor()
    frac = pos - base
    lo = base.long()
    hi = torch.minimum(lo + 1, shapes[:, None, :] - 1)
    _, _, _, SH, SW = storage.shape
    z0 = offsets[:, None, 0]
    flat = storage.reshape(C, -1)
    out = None
    for corner in range(8):
        pick = [(corner >> (2 - a)) & 1 for a in range(3)]
        idx = [hi[..., a] if pick[a] else lo[..., a] for a in range(3)]
        weight = None
        for a in range(3):
            w = frac[..., a] if pick[a] else 1.0 - frac[..., a]
            weight = w if weight is None else weight * w
        lin = ((idx[0] + z0) * SH + idx[1]) * SW + idx[2]  # (B, P)
        vals = flat.index_select(1, lin.reshape(-1)).float().view(C, B, -1) * weight
        out = vals if out is None else out + vals
    return out.permute(1, 0, 2)  # (B, C, P)


@dataclass
class CropAffine:
    """Each puzzle's crop read with a random rotation of up to ``max_angle``
    degrees about each axis and an isotropic zoom in ``zoom`` (log-uniform),
    around a centre drawn uniformly over the positions where the unturned crop
    fits.  ``draw(shapes, crop_size, index, generator)`` gives each sample's
    (B, 3, 4) affine (crop-frame voxel to volume voxel, what
    ``extract_cubes(affine=)`` reads through); ``crops(bank, crop_size,
    index, generator)`` the same draws as (B, C, *crop_size) float32
    resampled crops."""

    max_angle: float = 10.0
    zoom: tuple = (0.9, 1.1)

    def __post_init__(self):
        if not 0.0 <= float(self.max_angle) <= 45.0:
            raise ValueError(f"CropAffine: max_angle must be in [0, 45] degrees, got {self.max_angle!r}")
        lo, hi = (float(z) for z in self.zoom)
        if not 0.0 < lo <= hi:
            raise ValueError(f"CropAffine: zoom must be (lo, hi) with 0 < lo <= hi, got {self.zoom!r}")
        self.zoom = (lo, hi)

    def _centres_and_matrices(self, shapes: torch.Tensor, crop_size: Sequence[int], index: torch.Tensor,
                              generator: Optional[torch.Generator]) -> tuple:
        dev = index.device
        B = index.shape[0]
        u = torch.rand(B, 7, generator=generator, device=dev, dtype=torch.float64)
        half = device_constant(tuple((n - 1) / 2 for n in crop_size), dev, torch.float64)
        span = (shapes[index] - device_constant(tuple(crop_size), dev)).clamp_min(0).double()  # exact integers
        centres = half + u[:, :3] * span
        # angles (u * 2 - 1) * max_angle and log zoom, log(lo) + u * log(hi / lo), in two whole-tensor steps
        lo, hi = self.zoom
        w = u[:, 3:] * device_constant((2.0, 2.0, 2.0, math.log(hi) - math.log(lo)), dev, torch.float64) \
            + device_constant((-1.0, -1.0, -1.0, math.log(lo)), dev, torch.float64)
        angles = w[:, :3] * math.radians(self.max_angle)
        return centres, rotation_matrices(angles) * w[:, 3:].exp()[..., None], half

    def draw(self, shapes: torch.Tensor, crop_size: Sequence[int], index: torch.Tensor,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(B, 3, 4) float64: crop voxel ``p`` of sample ``b`` is volume voxel
        ``A[b, :, :3] @ p + A[b, :, 3]`` of volume ``index[b]`` (``shapes``: (N, 3) extents)."""
        centres, matrices, half = self._centres_and_matrices(shapes, crop_size, index, generator)
        return torch.cat([matrices, (centres - matrices @ half)[..., None]], -1)

    def crops(self, bank, crop_size: Sequence[int], index: torch.Tensor,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
        centres, matrices, _ = self._centres_and_matrices(bank.shapes, crop_size, index, generator)
        scale, shift = (bank.scale, bank.shift) if bank.quantised else (None, None)
        return resample_crops(bank.storage, bank.shapes, bank.offsets, index, centres, matrices, crop_size,
                              scale, shift)


@dataclass
class IntensityDraws:
    """One batch's per-cube intensity draws, relative to each volume's
    statistics: ``values`` (B, M, 7) float64, columns :attr:`FIELDS`
    (contrast factor, gamma exponent, noise in volume sds, three bias-field
    coefficients, the noise key), and the gamma ``window`` in sds.
    :meth:`in_units` turns them into the op's ``cube_intensity`` for volumes
    of given mean and sd (in the cut's output units); the task's cut does it
    (``PretextTask(..., cube_intensity=draws)``)."""

    FIELDS = ("contrast", "gamma", "noise", "bias_d", "bias_h", "bias_w", "noise_key")
    values: torch.Tensor
    window: float = 3.0

    def in_units(self, mean: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
        """(B, M, 10) float64 ``cube_intensity`` (rubikops._schema.CUBE_INTENSITY_FIELDS) for samples whose
        volumes have ``mean`` and ``sd`` ((B,), output units): contrast about the mean; gamma on the window
        mean +- window * sd after the contrast (values outside it pass unchanged); the bias field scales the
        distance from the mean; noise in sds after the contrast."""
        c, gamma, noise, bias_d, bias_h, bias_w, key = self.values.unbind(-1)
        mean = mean.to(c.dtype)[:, None]
        sd = sd.to(c.dtype).clamp_min(1e-6)[:, None]  # a constant volume still has a window
        spread = c * sd
        return torch.stack([c, (1 - c) * mean, gamma, mean - self.window * spread, 2 * self.window * spread,
                            noise * spread, bias_d, bias_h, bias_w, key], -1)


@dataclass
class IntensityAugment:
    """Per-cube intensity augmentation, executed by the cut itself
    (``extract_cubes(cube_intensity=)``, in the same pass as the read):
    each of contrast, gamma, bias field and noise applies to a cube with
    probability ``p``, on its own draw.  Contrast ``x -> mean + c (x -
    mean)`` about the volume's mean, c in ``contrast``; gamma with the
    exponent log-uniform in ``gamma`` on the window mean +- ``window`` sd
    (after the contrast; values outside the window pass unchanged); a smooth
    bias field ``exp(a . r)`` over the cube (r in [-1, 1]^3, each |a_i| <=
    ``bias_field``) scaling the distance from the mean; noise of
    ``noise`` volume sds (after the contrast), from a counter-based hash
    keyed per cube (Irwin-Hall, 4 terms: within 3.46 sd).  Means and sds are
    each volume's (a bank's ``stats``), in the cut's output units.  Geometry
    and labels are untouched, and drawing per cube stops the network from
    matching neighbours by their brightness instead of their anatomy.

    ``draw(batch, cubes, generator)`` gives the batch's
    :class:`IntensityDraws` (11 uniforms a cube from the generator, on its
    device); ``VolumeBank.puzzles(intensity_transform=...)`` draws and cuts
    in one call."""

    contrast: tuple = (0.75, 1.25)
    gamma: tuple = (0.7, 1.5)
    bias_field: float = 0.3
    noise: float = 0.05
    p: float = 0.8
    window: float = 3.0

    def __post_init__(self):
        for name in ("contrast", "gamma"):
            lo, hi = (float(v) for v in getattr(self, name))
            if not 0.0 < lo <= hi < math.inf:
                raise ValueError(f"IntensityAugment: {name} must be (lo, hi) with 0 < lo <= hi, got "
                                 f"{getattr(self, name)!r}")
            setattr(self, name, (lo, hi))
        for name in ("bias_field", "noise"):
            if not 0.0 <= float(getattr(self, name)) < math.inf:
                raise ValueError(f"IntensityAugment: {name} must be >= 0, got {getattr(self, name)!r}")
        if not 0.0 <= float(self.p) <= 1.0:
            raise ValueError(f"IntensityAugment: p must be in [0, 1], got {self.p!r}")
        if not 0.0 < float(self.window) < math.inf:
            raise ValueError(f"IntensityAugment: window must be > 0 (sds), got {self.window!r}")

    def draw(self, batch: int, cubes: int, generator: Optional[torch.Generator] = None,
             device=None) -> IntensityDraws:
        """The draws of ``batch`` samples of ``cubes`` cubes each, on ``device`` (default the generator's)."""
        dev = device if device is not None else (generator.device if generator is not None else "cpu")
        # u[..., :4]: whether contrast, gamma, bias field and noise apply to the cube (u < p); u[..., 4]:
        # the contrast, 5: log gamma, 6-8: the bias coefficients, 10: the noise key (9 is not used).
        # Column by column of FIELDS in a few whole-tensor steps (12 small kernels a batch, where one
        # step per field took 31): values = where(on, u * width + low, identity), gamma exponentiated and the
        # key floored in place, the bias coefficients scaled.
        u = torch.rand(batch, cubes, 11, generator=generator, device=dev, dtype=torch.float64)
        (c_lo, c_hi), (g_lo, g_hi) = self.contrast, self.gamma
        log_lo, log_hi = math.log(g_lo), math.log(g_hi)
        const = lambda values: device_constant(values, dev, torch.float64)  # noqa: E731
        values = u[..., device_constant((4, 5, 9, 6, 7, 8, 10), dev)] \
            * const((c_hi - c_lo, log_hi - log_lo, 0.0, 2.0, 2.0, 2.0, 2.0 ** 53)) \
            + const((c_lo, log_lo, float(self.noise), -1.0, -1.0, -1.0, 0.0))
        values[..., 1].exp_()
        values[..., 6].floor_()  # rand's float64 draws are multiples of 2**-53: the key is exact
        bias = float(self.bias_field)
        values = values * const((1.0, 1.0, 1.0, bias, bias, bias, 1.0))
        on = u[..., device_constant((0, 1, 3, 2, 2, 2, 0), dev)] < const((self.p,) * 6 + (2.0,))  # the key: always
        return IntensityDraws(torch.where(on, values, const((1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0))), float(self.window))
