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

from . import ops, reference
from ._constants import device_constant
from .reference import rotation_matrices  # noqa: F401 (part of this module's API: CropAffine's rotations)


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

    def draw(self, shapes: torch.Tensor, crop_size: Sequence[int], index: torch.Tensor,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(B, 3, 4) float64: crop voxel ``p`` of sample ``b`` is volume voxel
        ``A[b, :, :3] @ p + A[b, :, 3]`` of volume ``index[b]`` (``shapes``: (N, 3) extents).  Seven
        uniforms a sample from ``generator`` (the centre, three angles, the zoom), turned into the affine
        by one op (``rubikops::draw_crop_affine``; :func:`rubikops.reference.draw_crop_affine` is the rule)."""
        u = torch.rand(index.shape[0], 7, generator=generator, device=index.device, dtype=torch.float64)
        return ops.draw_crop_affine(u, shapes, index, crop_size, self.max_angle, *self.zoom)

    def crops(self, bank, crop_size: Sequence[int], index: torch.Tensor,
              generator: Optional[torch.Generator] = None) -> torch.Tensor:
        affine = self.draw(bank.shapes, crop_size, index, generator)
        matrices = affine[..., :3]
        half = device_constant(tuple((n - 1) / 2 for n in crop_size), index.device, torch.float64)
        centres = affine[..., 3] + (matrices * half).sum(-1)  # the crop's centre: where A maps half
        scale, shift = (bank.scale, bank.shift) if bank.quantised else (None, None)
        return resample_crops(bank.storage, bank.shapes, bank.offsets, index, centres, matrices, crop_size,
                              scale, shift)


@dataclass
class IntensityDraws:
    """One batch's per-cube intensity draws: ``uniforms`` (B, M, 11) float64
    from the generator and the ``augment`` that draws from them.
    :attr:`values` (B, M, 7), columns :attr:`FIELDS` (contrast factor, gamma
    exponent, noise in volume sds, three bias-field coefficients, the noise
    key), are the draws relative to each volume's statistics;
    :meth:`in_units` turns them into the op's ``cube_intensity`` for volumes
    of given mean and sd (in the cut's output units), which the task's cut
    does (``PretextTask(..., cube_intensity=draws)``)."""

    FIELDS = ("contrast", "gamma", "noise", "bias_d", "bias_h", "bias_w", "noise_key")
    uniforms: torch.Tensor
    augment: "IntensityAugment"  # its settings as they are when the draws are read (values, in_units)

    def __post_init__(self):
        if not isinstance(self.augment, IntensityAugment):
            raise TypeError(f"IntensityDraws: augment must be the IntensityAugment that drew them, got "
                            f"{type(self.augment).__name__}")
        u = self.uniforms
        if not (isinstance(u, torch.Tensor) and u.dtype == torch.float64 and u.dim() == 3 and u.shape[-1] == 11):
            raise ValueError(f"IntensityDraws: uniforms must be a (B, M, 11) float64 tensor, got "
                             f"{getattr(u, 'dtype', type(u).__name__)} of shape {tuple(getattr(u, 'shape', ()))}")

    @property
    def window(self) -> float:
        """The gamma window's half width, in sds."""
        return float(self.augment.window)

    @property
    def values(self) -> torch.Tensor:
        """(B, M, 7) float64: the draws relative to each volume (:func:`rubikops.reference.cube_intensity_values`)."""
        a = self.augment
        return reference.cube_intensity_values(self.uniforms, *a.contrast, *a.gamma, float(a.bias_field),
                                               float(a.noise), float(a.p))

    def in_units(self, mean: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
        """(B, M, 10) float64 ``cube_intensity`` (rubikops._schema.CUBE_INTENSITY_FIELDS) for samples whose
        volumes have ``mean`` and ``sd`` ((B,), output units), in one op (``rubikops::draw_cube_intensity``):
        contrast about the mean; gamma on the window mean +- window * sd after the contrast (values outside it
        pass unchanged); the bias field scales the distance from the mean; noise in sds after the contrast."""
        a = self.augment
        return ops.draw_cube_intensity(self.uniforms, mean, sd, a.contrast, a.gamma, a.bias_field, a.noise, a.p,
                                       a.window)


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
        """The draws of ``batch`` samples of ``cubes`` cubes each, on ``device`` (default the generator's):
        11 uniforms a cube (whether contrast, gamma, the bias field and noise apply, and their values;
        :func:`rubikops.reference.cube_intensity_values` is the rule)."""
        dev = device if device is not None else (generator.device if generator is not None else "cpu")
        return IntensityDraws(torch.rand(batch, cubes, 11, generator=generator, device=dev, dtype=torch.float64),
                              self)
