"""Plain-torch reference of ``extract_cubes``, written to be read.

This is the specification the kernels are tested against, and the fallback
when the compiled library is missing.  ``extract`` (``extract_cubes`` with
keyword arguments) is a per-cube loop of slicing,
:func:`rubikops.rotations.apply_code`, arithmetic and masking;
``source_offsets`` is an independent vectorised formulation (advanced
indexing) used by the backward pass and the benchmarks.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

# The op's dtype rules and keep threshold belong to its arguments' meaning: rubikops._schema owns them.
from ._schema import (FLOAT_DTYPES, INT_DTYPES, NOISE_CENTRE, NOISE_UNIT, SOURCE_DTYPES,  # noqa: F401
                      ExtractCubesParams, default_out_dtype, keep_threshold, opmath_dtype)
from ._constants import device_constant
from .rotations import AXIS_ORDERS, apply_code, kernel_code

# splitmix64 constants (Steele, Lea, Flood 2014), as signed int64 bit patterns.
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _lshr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's >> is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64(numel: int, seed: int, device=None) -> torch.Tensor:
    """splitmix64 of ``seed + (k+1) * golden`` for k = 0..numel-1, as int64 bit patterns (all arithmetic
    mod 2**64)."""
    seed = int(seed) & ((1 << 64) - 1)
    seed = seed - (1 << 64) if seed >= (1 << 63) else seed
    k = torch.arange(1, numel + 1, dtype=torch.int64, device=device)
    z = k * _GOLDEN + seed
    z = (z ^ _lshr(z, 30)) * _MIX1
    z = (z ^ _lshr(z, 27)) * _MIX2
    return z ^ _lshr(z, 31)


def keep_mask(numel: int, keep_prob: float, seed: int, device=None) -> torch.Tensor:
    """The Rubik's Cube+ keep decision for output voxels 0..numel-1 (bool):
    keep iff the top 24 bits of their splitmix64 hash are below ``floor(keep_prob * 2**24)``."""
    return _lshr(splitmix64(numel, seed, device), 40) < keep_threshold(keep_prob)


def noise_key(value) -> int:
    """A cube's noise_key field as the kernels read it: truncated to an integer, 0 unless in [0, 2**64)."""
    value = float(value)
    return int(value) if 0.0 <= value < 2.0 ** 64 else 0


def cube_noise(numel: int, key: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """The intensity stage's noise n of voxels 0..numel-1 of one cube: the four 16-bit fields of their
    splitmix64 hash (seeded ``key``) summed, centred and scaled to unit variance (Irwin-Hall, 4 terms)."""
    z = splitmix64(numel, key, device)
    total = sum(_lshr(z, 16 * f) & 0xFFFF for f in range(4))
    return (total - NOISE_CENTRE).to(dtype) * torch.tensor(NOISE_UNIT, dtype=dtype, device=device)


def intensity_stage(v: torch.Tensor, q: torch.Tensor, key: int) -> torch.Tensor:
    """One cube's intensity stage (rubikops._schema.CUBE_INTENSITY_FIELDS) on its (C, d, h, w) values ``v``
    (the arithmetic dtype), with ``q`` its row of ``cube_intensity`` in that dtype and ``key`` its noise key
    (:func:`noise_key` of the row as given: a float32 row would round it); differentiable in ``v``."""
    gain, offset, gamma, low, span, noise, *bias = (q[f] for f in range(q.shape[0] - 1))
    v = v * gain + offset
    if float(gamma) != 1.0:
        t = (v - low) / span
        inside = (t > 0) & (t < 1)
        # outside the window t is replaced by 1 before the power, so no 0 ** (gamma - 1) reaches the gradient
        v = torch.where(inside, low + span * torch.where(inside, t, torch.ones_like(t)) ** gamma, v)
    if any(float(c) != 0.0 for c in bias):
        factors = []
        for a, (c, n) in enumerate(zip(bias, v.shape[1:])):
            r = (torch.arange(n, dtype=v.dtype, device=v.device) * torch.tensor(2.0 / (n - 1), dtype=v.dtype,
                                                                                 device=v.device) - 1
                 if n > 1 else torch.zeros(1, dtype=v.dtype, device=v.device))
            factors.append(torch.exp(c * r).view([n if k == a else 1 for k in range(3)]))
        centre = low + span * 0.5
        v = centre + (v - centre) * (factors[0] * factors[1] * factors[2])
    if float(noise) != 0.0:
        v = v + noise * cube_noise(v.numel(), key, v.dtype, v.device).view(v.shape)
    return v


def _per_sample(value, b: int, dtype: torch.dtype):
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value[b].to(dtype)
    return torch.tensor(float(value), dtype=dtype)


def extract_cubes(source: torch.Tensor, origins: torch.Tensor, cube_size: Sequence[int], **options) -> torch.Tensor:
    """Reference semantics of :func:`rubikops.extract_cubes` (no validation);
    ``options``: the keyword arguments of :class:`rubikops._schema.ExtractCubesParams`."""
    return extract(ExtractCubesParams(source, origins, cube_size, **options))


def extract(p: ExtractCubesParams) -> torch.Tensor:
    """The cubes of one call, as a per-cube loop of slicing, turning, arithmetic and masking.

    Out-of-range values are clamped as the kernels clamp them with
    validate=False: index into [0, N - 1], each origin into [0, extent - size],
    codes as :func:`rubikops.rotations.kernel_code`."""
    source, origins, index, rotations = p.source, p.origins, p.index, p.rotations
    d, h, w = size = tuple(int(s) for s in p.cube_size)
    B, M = origins.shape[0], origins.shape[1]
    N, C = source.shape[0], source.shape[1]
    room = [e - s for e, s in zip(source.shape[2:], size)]
    out_dtype, compute = p.result_dtype, p.compute_dtype
    lo, hi = p.clamp_bounds
    if B * M == 0:
        return torch.empty((B, M, C, d, h, w), dtype=out_dtype, device=source.device)

    cubes = []
    for b in range(B):
        n = min(max(int(index[b]), 0), N - 1) if index is not None else b
        s, t = _per_sample(p.scale, b, compute), _per_sample(p.shift, b, compute)
        for m in range(M):
            q = None if p.cube_intensity is None else p.cube_intensity[b, m].to(compute)
            if p.affine is not None:
                box = affine_box(source[n], p.affine[b], origins[b, m], size,
                                 None if p.read_box is None else p.read_box[b])
            else:
                z, y, x = (min(max(int(v), 0), r) for v, r in zip(origins[b, m], room))
                box = source[n, :, z:z + d, y:y + h, x:x + w]
            if rotations is not None:
                box = apply_code(box, kernel_code(int(rotations[b, m]), size))
            if p.changes_values or box.dtype != out_dtype:
                v = box.to(compute)
                if s is not None:
                    v = v * s
                if t is not None:
                    v = v + t
                if q is not None:
                    v = intensity_stage(v, q, noise_key(p.cube_intensity[b, m, -1]))
                if lo is not None or hi is not None:
                    v = v.clamp(lo, hi)
                box = v.to(out_dtype)
            cubes.append(box)
    out = torch.stack(cubes).reshape(B, M, source.shape[1], d, h, w)

    if p.mask is not None:
        fill_t = torch.tensor(p.fill, dtype=out_dtype, device=out.device)
        masked = p.mask.to(torch.bool).view(B, M, 1, 1, 1, 1).expand_as(out)
        if p.keep_prob > 0:
            keep = keep_mask(out.numel(), p.keep_prob, p.seed, out.device).view(out.shape)
            masked = masked & ~keep
        out = torch.where(masked, fill_t, out)
    return out.contiguous()


def affine_box(volume: torch.Tensor, affine: torch.Tensor, origin: torch.Tensor, size: Sequence[int],
               read_box: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The (C, d, h, w) float64 box at crop-frame ``origin`` of one (C, D, H,
    W) volume read through ``affine`` (3 x 4, voxel units, (d, h, w) order):
    box voxel j sits at ``affine[:, :3] @ (origin + j) + affine[:, 3]``,
    clamped into ``read_box`` ((2, 3): lowest and highest voxel per axis,
    itself clamped into the volume; default the volume) so edge values
    repeat (NaN reads the lowest voxel), and interpolated trilinearly.  The augmentation in the cut: with the affine
    of a resampled crop, the box equals that crop's box at ``origin``."""
    dev = volume.device
    A = affine.to(torch.float64)
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, device=dev, dtype=torch.float64) for s in size],
                                      indexing="ij"), -1)
    pos = (grid + origin.to(torch.float64)) @ A[:, :3].T + A[:, 3]  # (d, h, w, 3)
    last = torch.tensor([e - 1 for e in volume.shape[1:]], device=dev)
    if read_box is None:
        bottom, top = torch.zeros_like(last), last
    else:  # clamped as the kernels clamp it with validate=False
        bottom = torch.minimum(read_box[0].to(dev, torch.int64).clamp_min(0), last)
        top = torch.maximum(torch.minimum(read_box[1].to(dev, torch.int64), last), bottom)
    bottom_f, top_f = bottom.to(torch.float64), top.to(torch.float64)
    pos = torch.where(pos > bottom_f, torch.minimum(pos, top_f), bottom_f.expand_as(pos))
    lo = pos.floor()
    frac = pos - lo
    lo = lo.long()
    hi = torch.minimum(lo + 1, top)
    vol = volume.to(torch.float64)
    box = 0
    for corner in range(8):
        pick = [(corner >> (2 - a)) & 1 for a in range(3)]
        at = [hi[..., a] if pick[a] else lo[..., a] for a in range(3)]
        weight = torch.ones_like(frac[..., 0])
        for a in range(3):
            weight = weight * (frac[..., a] if pick[a] else 1 - frac[..., a])
        box = box + weight * vol[:, at[0], at[1], at[2]]
    return box


def source_offsets(
    source_shape: Sequence[int],
    origins: torch.Tensor,
    cube_size: Sequence[int],
    index: Optional[torch.Tensor] = None,
    rotations: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Linear offsets into a *contiguous* source of every output voxel.

    Returns an int64 tensor of shape (B, M, C, d, h, w): output voxel
    ``out[b, m, c, i0, i1, i2]`` reads ``source.flatten()[offsets[b, m, c, i0, i1, i2]]``.
    Vectorised (no Python loop over cubes), so it also serves as the
    "advanced indexing" baseline in the benchmarks.
    """
    N, C, D, H, W = (int(s) for s in source_shape)
    size = [int(s) for s in cube_size]
    dev = origins.device
    B, M = origins.shape[0], origins.shape[1]
    # Clamped as in extract_cubes (validate=False), here vectorised.
    room = torch.tensor([D - size[0], H - size[1], W - size[2]], device=dev)
    origins = torch.minimum(origins.to(torch.int64).clamp_min(0), room)
    n = index.to(torch.int64).clamp(0, N - 1) if index is not None else torch.arange(B, device=dev)

    if rotations is None:
        codes = torch.zeros(B, M, dtype=torch.int64, device=dev)
    else:
        kernel = torch.tensor([kernel_code(c, size) for c in range(48)], device=dev)
        codes = kernel[rotations.to(torch.int64) % 48]
    orders = torch.tensor(AXIS_ORDERS, dtype=torch.int64, device=dev)[codes // 8]  # (B, M, 3)
    flips = torch.stack([(codes >> a) & 1 for a in range(3)], dim=-1)  # (B, M, 3)

    # Output grid coordinates, one (d, h, w) volume per output axis.
    grid = torch.meshgrid(*[torch.arange(s, device=dev) for s in size], indexing="ij")
    coords = [torch.zeros(B, M, *size, dtype=torch.int64, device=dev) for _ in range(3)]
    for a in range(3):  # output axis a reads source axis orders[..., a]
        i = grid[a].expand(B, M, *size)
        f = flips[..., a].view(B, M, 1, 1, 1)
        i = torch.where(f.bool(), size[a] - 1 - i, i)
        for s in range(3):
            sel = (orders[..., a] == s).view(B, M, 1, 1, 1)
            coords[s] = torch.where(sel, i, coords[s])
    z = coords[0] + origins[..., 0].view(B, M, 1, 1, 1)
    y = coords[1] + origins[..., 1].view(B, M, 1, 1, 1)
    x = coords[2] + origins[..., 2].view(B, M, 1, 1, 1)
    spatial = (z * H + y) * W + x  # (B, M, d, h, w)
    base = n.view(B, 1, 1, 1, 1, 1) * (C * D * H * W) + torch.arange(C, device=dev).view(1, 1, C, 1, 1, 1) * (D * H * W)
    return base + spatial.unsqueeze(2)


def extract_cubes_gather(source, origins, cube_size, *, index=None, rotations=None) -> torch.Tensor:
    """Pure data movement through advanced indexing (one gather)."""
    offs = source_offsets(source.shape, origins, cube_size, index, rotations)
    return source.contiguous().view(-1)[offs]


def sample_puzzle(
    uniforms: torch.Tensor,
    volume_shapes: torch.Tensor,
    index: torch.Tensor,
    cells: torch.Tensor,
    permutations: torch.Tensor,
    code_table: torch.Tensor,
    crop_size: Sequence[int],
    jitter: int,
    mask_prob: float,
):
    """Reference semantics of ``rubikops::sample_puzzle``: turn one row of
    uniforms per sample into the puzzle's parameters (see
    ``csrc/sample_puzzle.h`` for the normative rule).

    Row ``b`` of ``uniforms`` (float64 in [0, 1)) holds 3 crop starts,
    3 * n_cells jitters, 1 permutation, M rotation states (when ``code_table``
    is not empty) and M mask draws (when ``mask_prob > 0``).  Each integer
    choice with ``n`` possible values is ``trunc(u * n)`` in float64.
    Returns ``(origins (B, M, 3), codes (B, M), permutation (B,), state (B, M),
    mask (B, M) bool)``; indices read from tensors are clamped into range.
    """
    dev = uniforms.device
    B, n_cells = uniforms.shape[0], cells.shape[0]
    K, M = permutations.shape
    R = code_table.numel()
    u = uniforms.to(torch.float64)
    index = index.long().clamp(0, volume_shapes.shape[0] - 1)

    def draw(columns, count):  # trunc(u * count): every choice uniform over range(count)
        return (columns * count).long()

    extent = volume_shapes.long()[index]
    free = torch.stack([extent[:, a] - int(crop_size[a]) + 1 for a in range(3)], 1).to(torch.float64)  # crop starts
    start = draw(u[:, 0:3], free)
    jitters = draw(u[:, 3:3 + 3 * n_cells], float(jitter + 1)).view(B, n_cells, 3)
    permutation = draw(u[:, 3 + 3 * n_cells], float(K)).clamp(0, K - 1)
    cell = permutations.long()[permutation].clamp(0, n_cells - 1)  # (B, M): grid cell shown as cube m
    corner = start[:, None, :] + cells.long() + jitters  # (B, n_cells, 3) in grid-cell order
    origins = torch.gather(corner, 1, cell[..., None].expand(B, M, 3))
    column = 4 + 3 * n_cells
    if R > 0:
        state = draw(u[:, column:column + M], float(R)).clamp(0, R - 1)
        codes = code_table.long()[state]
        column += M
    else:
        state = torch.zeros(B, M, dtype=torch.int64, device=dev)
        codes = torch.zeros(B, M, dtype=torch.int64, device=dev)
    if mask_prob > 0:
        mask = u[:, column:column + M] < mask_prob
    else:
        mask = torch.zeros(B, M, dtype=torch.bool, device=dev)
    return origins, codes, permutation, state, mask


# -- the augmentation's draws (csrc/augment_draws.h has the normative rules) -----------------------------
def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles in radians about the D, H and W axes -> (B, 3, 3)
    rotation matrices acting on (d, h, w) coordinates: R = R_d @ R_h @ R_w,
    with R_d = [[1, 0, 0], [0, c, -s], [0, s, c]] (about D), R_h = [[c, 0, s],
    [0, 1, 0], [-s, 0, c]] and R_w = [[c, -s, 0], [s, c, 0], [0, 0, 1]]."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def matrix(*rows):
        return torch.stack([torch.stack(row, -1) for row in rows], -2)

    r_d = matrix((one, zero, zero), (zero, c[:, 0], -s[:, 0]), (zero, s[:, 0], c[:, 0]))
    r_h = matrix((c[:, 1], zero, s[:, 1]), (zero, one, zero), (-s[:, 1], zero, c[:, 1]))
    r_w = matrix((c[:, 2], -s[:, 2], zero), (s[:, 2], c[:, 2], zero), (zero, zero, one))
    return r_d @ r_h @ r_w


def draw_crop_affine(uniforms: torch.Tensor, volume_shapes: torch.Tensor, index: torch.Tensor,
                     crop_size: Sequence[int], max_angle: float, zoom_low: float, zoom_high: float) -> torch.Tensor:
    """Reference semantics of ``rubikops::draw_crop_affine``: row ``b`` of
    ``uniforms`` ((B, 7) float64: the centre, three angles, the zoom) as the
    (B, 3, 4) float64 affine that reads sample ``b``'s crop from volume
    ``index[b]`` (clamped into range): crop voxel ``p`` at
    ``A[:, :3] @ p + A[:, 3]``, a rotation of up to ``max_angle`` degrees about
    each axis and a log-uniform zoom in [zoom_low, zoom_high] about a centre
    uniform over where the unturned crop fits."""
    dev = uniforms.device
    index = index.long().clamp(0, max(volume_shapes.shape[0] - 1, 0))
    crop = device_constant(tuple(int(c) for c in crop_size), dev)  # no host-to-device copy a call
    half = (crop - 1).double() / 2
    span = (volume_shapes.long()[index] - crop).clamp_min(0).double()
    centres = half + uniforms[:, :3] * span
    angles = (uniforms[:, 3:6] * 2 - 1) * math.radians(max_angle)
    log_low = math.log(zoom_low)
    zoom = torch.exp(uniforms[:, 6] * (math.log(zoom_high) - log_low) + log_low)
    matrices = rotation_matrices(angles) * zoom[:, None, None]
    return torch.cat([matrices, (centres - (matrices * half).sum(-1))[..., None]], -1)


def cube_intensity_values(uniforms: torch.Tensor, contrast_low: float, contrast_high: float, gamma_low: float,
                          gamma_high: float, bias_field: float, noise: float, p: float) -> torch.Tensor:
    """Each cube's intensity draws relative to its volume, (B, M, 7) float64
    (rubikops.augment.IntensityDraws.FIELDS: contrast, gamma, noise in sds,
    the three bias coefficients, the noise key), from its 11 uniforms: u[0..3]
    < p switch contrast, gamma, the bias field and noise on; u[4], u[5] and
    u[6..8] draw them; u[10] the key (u[9] is not used)."""
    u = uniforms
    on = u[..., :4] < p
    contrast = torch.where(on[..., 0], u[..., 4] * (contrast_high - contrast_low) + contrast_low, 1.0)
    log_low = math.log(gamma_low)
    gamma = torch.where(on[..., 1], torch.exp(u[..., 5] * (math.log(gamma_high) - log_low) + log_low), 1.0)
    bias = torch.where(on[..., 2:3], (u[..., 6:9] * 2 - 1) * bias_field, 0.0)
    noise_sd = on[..., 3].to(torch.float64) * float(noise)  # noise or 0, exactly
    key = torch.floor(u[..., 10] * 2.0 ** 53)  # float64 uniforms are multiples of 2**-53: the key is exact
    return torch.cat([torch.stack([contrast, gamma, noise_sd], -1), bias, key[..., None]], -1)


def cube_intensity_in_units(values: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor, window: float) -> torch.Tensor:
    """Relative draws (B, M, 7) as the op's ``cube_intensity`` (B, M, 10) for
    samples whose volumes have ``mean`` and ``sd`` ((B,), output units):
    contrast about the mean; gamma on the window mean +- window * sd after the
    contrast; the bias field scales the distance from the mean; noise in sds
    after the contrast."""
    c, gamma, noise, bias_d, bias_h, bias_w, key = values.unbind(-1)
    mean = mean.to(torch.float64)[:, None]
    sd = sd.to(torch.float64).clamp_min(1e-6)[:, None]  # a constant volume still has a window
    spread = c * sd
    return torch.stack([c, (1 - c) * mean, gamma, mean - window * spread, (2 * window) * spread, noise * spread,
                        bias_d, bias_h, bias_w, key], -1)


def draw_cube_intensity(uniforms: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor, contrast_low: float,
                        contrast_high: float, gamma_low: float, gamma_high: float, bias_field: float, noise: float,
                        p: float, window: float) -> torch.Tensor:
    """Reference semantics of ``rubikops::draw_cube_intensity``: each cube's
    uniforms ((B, M, 11) float64) as its ``cube_intensity`` row (B, M, 10):
    :func:`cube_intensity_values` in the units of :func:`cube_intensity_in_units`."""
    values = cube_intensity_values(uniforms, contrast_low, contrast_high, gamma_low, gamma_high, bias_field, noise, p)
    return cube_intensity_in_units(values, mean, sd, window)
