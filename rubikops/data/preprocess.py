"""The preprocessing every medical imaging pipeline runs before training
(MONAI's Orientation/Spacing/ScaleIntensityRange/NormalizeIntensity/
CropForeground/SpatialPad set the expectations), applied to :class:`Volume`s.

Order: reorient to RAS -> resample to the target spacing -> crop to the
foreground -> intensity (CT window or foreground z-score) -> pad to a
minimum shape.  Label maps follow the same grid operations with nearest
neighbour resampling.  The affine is updated at every step, so world
coordinates of every voxel are preserved."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .nifti import DataError, Volume

INTENSITY_MODES = ("none", "window", "zscore")
# a resampled volume larger than this is refused, naming the file: 2^31 voxels are 8 GiB in float32, 8 times a
# 512 x 512 x 1000 CT (2.6e8 voxels), so only a broken spacing in the header or a mistyped --spacing gets there
MAX_RESAMPLED_VOXELS = 2**31 - 1


@dataclass(frozen=True)
class Preprocessing:
    """Settings (part of the cache key, so every field must be JSON-able).

    orientation: "RAS" (closest canonical) or None to keep the file's.
    spacing: target voxel size in mm (x, y, z) or one float, None = keep.
    intensity: "none"; "window" (CT: clip to ``window`` in HU and map to
      [0, 1]); "zscore" (MRI: zero mean, unit variance over the foreground).
    foreground_threshold: a voxel is foreground when channel 0 > threshold
      (in the file's units, before intensity), used by zscore and crop.
    crop_foreground: crop to the foreground's bounding box plus ``margin``.
    min_shape: pad (centred, with the volume's minimum) to at least this.
    frames: 4-D files: None (refuse), an int, or "channels".
    allow_nonfinite: set NaN/Inf to 0 instead of refusing the file."""

    orientation: Optional[str] = "RAS"
    spacing: Optional[tuple] = None
    intensity: str = "none"
    window: tuple = (-1000.0, 1000.0)
    foreground_threshold: float = 0.0
    crop_foreground: bool = False
    margin: int = 4
    min_shape: Optional[tuple] = None
    frames: object = None
    allow_nonfinite: bool = False

    def __post_init__(self):
        if self.orientation not in (None, "RAS"):
            raise ValueError(f"Preprocessing: orientation must be 'RAS' or None, got {self.orientation!r}")
        if self.spacing is not None:
            sp = (float(self.spacing),) * 3 if np.isscalar(self.spacing) else tuple(float(s) for s in self.spacing)
            if len(sp) != 3 or not all(np.isfinite(s) and s > 0 for s in sp):
                raise ValueError(f"Preprocessing: spacing must be a positive number or three, got {self.spacing!r}")
            object.__setattr__(self, "spacing", sp)
        if self.intensity not in INTENSITY_MODES:
            raise ValueError(f"Preprocessing: intensity must be one of {INTENSITY_MODES}, got {self.intensity!r}")
        lo, hi = (float(w) for w in self.window)
        if not lo < hi:
            raise ValueError(f"Preprocessing: window needs lo < hi, got {self.window!r}")
        object.__setattr__(self, "window", (lo, hi))
        if self.min_shape is not None:
            ms = (int(self.min_shape),) * 3 if np.isscalar(self.min_shape) else tuple(int(s) for s in self.min_shape)
            if len(ms) != 3 or min(ms) < 1:
                raise ValueError(f"Preprocessing: min_shape must be a positive int or three, got {self.min_shape!r}")
            object.__setattr__(self, "min_shape", ms)
        if int(self.margin) < 0:
            raise ValueError(f"Preprocessing: margin must be >= 0, got {self.margin!r}")

    def key(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def ct(cls, window=(-1000.0, 1000.0), spacing=None, **kw) -> "Preprocessing":
        """CT preset: HU window, foreground = tissue above -500 HU."""
        return cls(intensity="window", window=window, spacing=spacing, foreground_threshold=-500.0, **kw)

    @classmethod
    def mri(cls, spacing=None, **kw) -> "Preprocessing":
        """MRI preset: z-score over the foreground (voxels above 0)."""
        return cls(intensity="zscore", spacing=spacing, **kw)


# -- grid operations ------------------------------------------------------------------------
def reorient(vol: Volume, target: str = "RAS") -> Volume:
    """Closest canonical (RAS+) voxel order: permute and flip axes only (no
    interpolation), as nibabel's ``as_closest_canonical``."""
    import nibabel.orientations as nio
    ornt = nio.io_orientation(vol.affine)
    want = nio.axcodes2ornt(tuple(target))
    tr = nio.ornt_transform(ornt, want)
    if np.array_equal(tr, [[0, 1], [1, 1], [2, 1]]):
        return vol
    data = np.stack([nio.apply_orientation(c, tr) for c in vol.data])
    affine = vol.affine @ nio.inv_ornt_aff(tr, vol.shape)
    return dataclasses.replace(vol, data=np.ascontiguousarray(data), affine=affine)


def resample(vol: Volume, spacing: Sequence[float], label: bool = False) -> Volume:
    """Resample to ``spacing`` mm along each voxel axis (trilinear for images,
    nearest for labels), covering the same field of view.  New shape
    round(shape * old / new); the affine maps new voxel centres to their
    exact world positions (the half-voxel convention of align_corners=False)."""
    old = np.asarray(vol.spacing)
    extent = [n * o / s for n, o, s in zip(vol.shape, old, spacing)]  # voxels along each axis, as floats
    voxels = float(np.prod(extent)) * vol.channels
    if not np.isfinite(voxels) or voxels > MAX_RESAMPLED_VOXELS:
        raise DataError(f"{vol.name}: resampling {vol.shape} voxels of {tuple(round(float(o), 4) for o in old)} mm "
                        f"to {tuple(spacing)} mm would make {voxels:.3g} voxels (at most {MAX_RESAMPLED_VOXELS:.3g}); "
                        "its voxel spacing is implausible, or choose a coarser spacing")
    new_shape = tuple(max(1, int(round(e))) for e in extent)
    if new_shape == vol.shape:
        return vol
    x = torch.from_numpy(np.ascontiguousarray(vol.data))[None]
    if label:
        y = F.interpolate(x.double(), size=new_shape, mode="nearest-exact").round().to(x.dtype)
    else:
        y = F.interpolate(x.float(), size=new_shape, mode="trilinear", align_corners=False)
    ratio = np.asarray(vol.shape, dtype=np.float64) / np.asarray(new_shape)
    # old index = ratio * new + (ratio - 1) / 2  (centres of the new voxels)
    t = np.eye(4)
    t[:3, :3] = np.diag(ratio)
    t[:3, 3] = (ratio - 1) / 2
    return dataclasses.replace(vol, data=y[0].numpy(), affine=vol.affine @ t)


def resample_to(vol: Volume, affine: np.ndarray, shape: Sequence[int], label: bool = False,
                fill: float = 0.0) -> Volume:
    """Resample onto another grid through the affines (world coordinates),
    never by array index: for a label map on a grid of its own."""
    dst = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    src_from_dst = np.linalg.inv(vol.affine) @ affine
    idx = dst @ src_from_dst[:3, :3].T + src_from_dst[:3, 3]  # (X, Y, Z, 3) source voxel coordinates
    n = np.asarray(vol.shape, dtype=np.float64)
    grid = 2 * idx / np.maximum(n - 1, 1) - 1  # align_corners=True normalisation, in (x, y, z) = (D, H, W) order
    dtype = torch.float64 if label else torch.float32  # float64 keeps label ids exact
    grid = torch.from_numpy(grid[..., ::-1].copy()).to(dtype)[None]  # grid_sample wants (W, H, D) order
    x = torch.from_numpy(np.ascontiguousarray(vol.data)).to(dtype)[None]
    y = F.grid_sample(x, grid, mode="nearest" if label else "bilinear", padding_mode="zeros", align_corners=True)[0]
    outside = torch.from_numpy(((idx < -0.5) | (idx > n - 0.5)).any(-1))
    y[:, outside] = fill
    data = y.round().long().numpy() if label else y.numpy()
    return dataclasses.replace(vol, data=data.astype(vol.data.dtype), affine=np.asarray(affine, dtype=np.float64))


def foreground_box(vol: Volume, threshold: float, margin: int):
    fg = vol.data[0] > threshold
    if not fg.any():
        return None
    lo, hi = [], []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        nz = np.flatnonzero(fg.any(axis=other))
        lo.append(max(0, int(nz[0]) - margin))
        hi.append(min(vol.shape[ax], int(nz[-1]) + 1 + margin))
    return tuple(lo), tuple(hi)


def crop(vol: Volume, lo: Sequence[int], hi: Sequence[int]) -> Volume:
    data = vol.data[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    t = np.eye(4)
    t[:3, 3] = lo
    return dataclasses.replace(vol, data=np.ascontiguousarray(data), affine=vol.affine @ t)


def pad_to(vol: Volume, min_shape: Sequence[int], value: float) -> Volume:
    before = [max(0, m - n) // 2 for n, m in zip(vol.shape, min_shape)]
    after = [max(0, m - n) - b for n, m, b in zip(vol.shape, min_shape, before)]
    if not any(before) and not any(after):
        return vol
    data = np.pad(vol.data, [(0, 0)] + list(zip(before, after)), constant_values=value)
    t = np.eye(4)
    t[:3, 3] = -np.asarray(before)
    return dataclasses.replace(vol, data=data, affine=vol.affine @ t)


# -- intensity ------------------------------------------------------------------------------
def window(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return ((np.clip(data, lo, hi) - lo) / (hi - lo)).astype(np.float32)


def zscore(data: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Per channel: zero mean, unit variance over the foreground voxels."""
    out = np.empty_like(data, dtype=np.float32)
    for c in range(data.shape[0]):
        v = data[c][foreground] if foreground.any() else data[c].ravel()
        mean, std = float(v.mean()), float(v.std())
        out[c] = (data[c] - mean) / max(std, 1e-6)
    return out


def preprocess(vol: Volume, settings: Preprocessing = Preprocessing(), label: Optional[Volume] = None):
    """Apply ``settings``; with ``label`` (a label map on the same grid),
    return (image, label) transformed alike."""
    if settings.orientation:
        vol = reorient(vol, settings.orientation)
        label = reorient(label, settings.orientation) if label is not None else None
    if label is not None:  # after reorientation: an LAS atlas can match an RAS image
        check_same_grid(vol, label)
    if settings.spacing is not None:
        vol = resample(vol, settings.spacing)
        label = resample(label, settings.spacing, label=True) if label is not None else None
    thr = settings.foreground_threshold
    if settings.crop_foreground:
        box = foreground_box(vol, thr, int(settings.margin))
        if box is None:
            raise DataError(f"{vol.name}: no voxel above the foreground threshold {thr}; nothing to crop to")
        vol = crop(vol, *box)
        label = crop(label, *box) if label is not None else None
    fg = vol.data[0] > thr
    if settings.intensity == "window":
        vol = dataclasses.replace(vol, data=window(vol.data, *settings.window))
    elif settings.intensity == "zscore":
        vol = dataclasses.replace(vol, data=zscore(vol.data, fg))
    if settings.min_shape is not None:
        vol = pad_to(vol, settings.min_shape, float(vol.data.min()))
        label = pad_to(label, settings.min_shape, 0) if label is not None else None
    vol.meta["preprocessing"] = settings.key()
    return vol if label is None else (vol, label)


def check_same_grid(image: Volume, label: Volume) -> None:
    if image.shape != label.shape or not np.allclose(image.affine, label.affine, atol=1e-3):
        raise DataError(f"{label.paths[0] if label.paths else 'label'}: label grid {label.shape} "
                        f"{label.orientation} does not match image {image.name} grid {image.shape} "
                        f"{image.orientation} (shape and affine must agree; resample the label with "
                        "rubikops.data.resample_to if it is on another grid)")
