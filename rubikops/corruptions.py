"""Corruptions for the dense pretext tasks, on batches of crops (B, C, D, H, W)
on any device.

Each transformation is split into a *draw* (random numbers from the caller's
generator, on the batch's device) and a deterministic *apply* that takes the
drawn numbers: the tests check each apply against a plain NumPy version on
fixed draws, and a run that replays the generator replays the corruptions.

- :func:`intensity_curve`: Models Genesis' non-linear intensity transform, a
  monotone cubic Bezier curve through (0, 0) and (1, 1) applied to each crop's
  own [min, max] range (optionally mirrored: decreasing);
- :func:`shuffle_windows`: local voxel shuffling, the voxels of a random subset
  of the windows of a regular grid permuted within their window;
- :func:`fill_boxes`: in-painting (noise inside boxes) and out-painting (noise
  outside boxes), the noise uniform over the crop's own range;
- :func:`mask_patches`: masked-volume modelling, patches set to a fill value.

All run on the batch's device in a few tensor passes; why they are not fused
into ``extract_cubes`` is measured in :mod:`rubikops.tasks.dense`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

CURVE_SAMPLES = 256  # points on the Bezier curve, in t
# The curve is applied through a table evenly spaced in intensity: two gathers and a lerp per voxel,
# 9x faster than a binary search of the curve's points per voxel (2.0 against 18.6 ms for 8 crops of
# 32^3 on a 2-core CPU), within 6.3e-5 of the exact curve (relative to the crop's range).
CURVE_TABLE = 1025


def bezier_table(controls: torch.Tensor, samples: int = CURVE_SAMPLES) -> tuple:
    """(xs, ys), each (B, samples), float64: points of the cubic Bezier curve
    with control points (0, 0), (x1, y1), (x2, y2), (1, 1) per row of
    ``controls`` (B, 4) = (x1, y1, x2, y2) in [0, 1].  With every control
    coordinate in [0, 1], x(t) and y(t) never decrease (the derivative's
    Bernstein coefficients a = 3 x1, b = 3 (x2 - x1), c = 3 (1 - x2) satisfy
    b >= -sqrt(a c)), so the curve is the graph of a monotone map."""
    t = torch.linspace(0.0, 1.0, samples, dtype=torch.float64, device=controls.device)
    c = controls.double()
    b1, b2, b3 = 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3
    xs = b1 * c[:, :1] + b2 * c[:, 2:3] + b3
    ys = b1 * c[:, 1:2] + b2 * c[:, 3:4] + b3
    return torch.cummax(xs, dim=1).values, torch.cummax(ys, dim=1).values  # exact ties from rounding only


def interp(x: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Per row b, the piecewise-linear map through (xs[b], ys[b]) at x[b]
    (B, N), clamped to the ends; like ``numpy.interp`` row by row."""
    n = xs.shape[1]
    hi = torch.searchsorted(xs.to(x.dtype).contiguous(), x.contiguous(), right=True).clamp(1, n - 1)
    lo = hi - 1
    x0, x1 = xs.gather(1, lo), xs.gather(1, hi)
    y0, y1 = ys.gather(1, lo), ys.gather(1, hi)
    w = ((x.double() - x0) / (x1 - x0).clamp_min(1e-300)).clamp(0.0, 1.0)
    return (y0 + w * (y1 - y0)).to(x.dtype)


def curve_table(controls: torch.Tensor, mirrored: torch.Tensor, size: int = CURVE_TABLE) -> torch.Tensor:
    """(B, size) float32: the Bezier map of each row of ``controls`` (1 - it
    where ``mirrored``) at ``size`` evenly spaced inputs in [0, 1]."""
    xs, ys = bezier_table(controls)
    grid = torch.linspace(0.0, 1.0, size, dtype=torch.float64, device=controls.device).expand(xs.shape[0], size)
    table = interp(grid.contiguous(), xs, ys)
    return torch.where(mirrored[:, None], 1.0 - table, table).float()


def intensity_curve(x: torch.Tensor, controls: torch.Tensor, mirrored: torch.Tensor,
                    apply: torch.Tensor) -> torch.Tensor:
    """Models Genesis' non-linear transform: each crop b with ``apply[b]``
    has its values v mapped to lo + (hi - lo) * f((v - lo) / (hi - lo)),
    lo/hi its own min and max, f the Bezier curve of ``controls[b]`` (or
    1 - f when ``mirrored[b]``: a decreasing curve), read from
    :func:`curve_table` by linear interpolation.  A new tensor."""
    B = x.shape[0]
    flat = x.reshape(B, -1)
    lo, hi = torch.aminmax(flat, dim=1, keepdim=True)
    span = (hi - lo).clamp_min(torch.finfo(x.dtype).tiny)
    table = curve_table(controls, mirrored).to(x.dtype)
    pos = ((flat - lo) / span).clamp(0.0, 1.0) * (table.shape[1] - 1)
    left = pos.long().clamp_max(table.shape[1] - 2)
    frac = pos - left
    y0, y1 = table.gather(1, left), table.gather(1, left + 1)
    mapped = lo + span * torch.lerp(y0, y1, frac)
    return torch.where(apply[:, None], mapped, flat).view_as(x)


def window_grid(shape: Sequence[int], window: int) -> tuple:
    """Windows per axis of the regular grid at the crop's corner (the last partial windows are left alone)."""
    return tuple(s // window for s in shape)


def shuffle_windows(x: torch.Tensor, window: int, chosen: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Local voxel shuffling: the crop is tiled by ``window``^3 windows from its
    corner; window j of crop b (row-major over the grid) has its voxels put
    in the order ``argsort(keys[b, j])`` (the same for every channel) when
    ``chosen[b, j]``.  chosen (B, J) bool, keys (B, J, window^3).  A new tensor."""
    B, C = x.shape[:2]
    nd, nh, nw = window_grid(x.shape[2:], window)
    out = x.clone()
    if nd * nh * nw == 0:
        return out
    w = window
    region = out[:, :, :nd * w, :nh * w, :nw * w]
    tiles = region.reshape(B, C, nd, w, nh, w, nw, w).permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(B, C, nd * nh * nw, w ** 3)
    order = torch.argsort(keys, dim=-1)
    identity = torch.arange(w ** 3, device=x.device).expand_as(order)
    order = torch.where(chosen[..., None], order, identity)
    shuffled = tiles.gather(3, order[:, None].expand(B, C, -1, -1))
    region.copy_(shuffled.view(B, C, nd, nh, nw, w, w, w).permute(0, 1, 2, 5, 3, 6, 4, 7)
                 .reshape(B, C, nd * w, nh * w, nw * w))
    return out


def box_mask(shape: Sequence[int], corners: torch.Tensor, sizes: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """(B, 1, D, H, W) bool: voxels inside any active box; corners and sizes
    (B, K, 3) int64 (a box is [corner, corner + size) per axis), active (B, K) bool."""
    inside = None
    for axis, n in enumerate(shape):
        pos = torch.arange(n, device=corners.device)
        lo, hi = corners[..., axis, None], (corners[..., axis] + sizes[..., axis])[..., None]
        along = (pos >= lo) & (pos < hi)  # (B, K, n)
        view = [along.shape[0], along.shape[1], 1, 1, 1]
        view[2 + axis] = n
        along = along.view(view)
        inside = along if inside is None else inside & along
    return (inside & active[:, :, None, None, None]).any(dim=1, keepdim=True)


def fill_boxes(x: torch.Tensor, corners: torch.Tensor, sizes: torch.Tensor, active: torch.Tensor,
               noise: torch.Tensor, outside: torch.Tensor) -> torch.Tensor:
    """In-painting and out-painting: crop b's voxels inside its active boxes
    (``outside[b]`` False) or outside them (True: out-painting keeps only the
    boxes) become lo + noise * (hi - lo), lo/hi the crop's min and max,
    noise (B, C, D, H, W) in [0, 1).  Crops with no active box are kept.  A new tensor."""
    B = x.shape[0]
    inside = box_mask(x.shape[2:], corners, sizes, active)
    replace = torch.where(outside.view(B, 1, 1, 1, 1), ~inside, inside) & active.any(1).view(B, 1, 1, 1, 1)
    lo, hi = torch.aminmax(x.reshape(B, -1), dim=1)
    fill = lo.view(B, 1, 1, 1, 1) + noise * (hi - lo).view(B, 1, 1, 1, 1)
    return torch.where(replace, fill.to(x.dtype), x)


def patch_grid(shape: Sequence[int], patch: int) -> tuple:
    """Patches per axis; the crop must be a multiple of the patch along every axis."""
    if any(s % patch for s in shape):
        raise ValueError(f"patch {patch} does not tile a crop of {tuple(shape)}: each extent must be a multiple")
    return tuple(s // patch for s in shape)


def patch_voxels(masked: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, nd, nh, nw) per-patch flags -> (B, 1, D, H, W) per-voxel flags (a broadcast view, no copy)."""
    B, nd, nh, nw = masked.shape
    return (masked.view(B, 1, nd, 1, nh, 1, nw, 1)
            .expand(B, 1, nd, patch, nh, patch, nw, patch).reshape(B, 1, nd * patch, nh * patch, nw * patch))


def mask_patches(x: torch.Tensor, masked: torch.Tensor, patch: int, fill: float = 0.0) -> torch.Tensor:
    """Masked-volume modelling: the ``patch``^3 patches flagged in ``masked``
    (B, nd, nh, nw) are set to ``fill``.  A new tensor."""
    return x.masked_fill(patch_voxels(masked, patch), fill)


def normalised_patches(x: torch.Tensor, patch: int, eps: float = 1e-6) -> torch.Tensor:
    """Each patch minus its mean, over its standard deviation (MAE's
    per-patch normalised target; population variance, ``eps`` added)."""
    B, C = x.shape[:2]
    nd, nh, nw = patch_grid(x.shape[2:], patch)
    p = patch
    tiles = x.reshape(B, C, nd, p, nh, p, nw, p)
    mean = tiles.mean(dim=(3, 5, 7), keepdim=True)
    var = tiles.var(dim=(3, 5, 7), keepdim=True, unbiased=False)
    return ((tiles - mean) / (var + eps).sqrt()).view_as(x)


def choose_patches(batch: int, grid: Sequence[int], ratio: float, generator: Optional[torch.Generator],
                   device) -> torch.Tensor:
    """(B, *grid) bool with exactly round(ratio * patches) patches masked per
    crop, uniformly among the subsets of that size (MAE: argsort of noise)."""
    n = int(torch.tensor(grid).prod())
    k = int(round(ratio * n))
    rank = torch.argsort(torch.rand(batch, n, generator=generator, device=device), dim=1).argsort(dim=1)
    return (rank < k).view(batch, *grid)
