"""The public entry points of the rubikops ops: argument checks, backend
choice, and the call.

The ops live in the dispatcher (:mod:`rubikops._library` defines them); the
backends of :mod:`rubikops.backends` register their kernels when this module
is imported.  ``backend=`` (or ``RUBIKOPS_BACKEND``, read once at import)
chooses one: ``auto``/``compiled`` let the dispatcher pick the device's kernel
(Triton on CUDA where the compiled library has none, the reference on every
other device), ``triton`` and ``torch`` call those backends directly."""
from __future__ import annotations

import os
import warnings
from typing import Optional, Sequence

import torch

from . import _library, backends
from ._schema import ExtractCubesParams
from .checks import as_integers, check_out, sample_puzzle_row_size, validate_extract_cubes  # noqa: F401 (used by tasks)

backends.load_all()
if not backends.REGISTRY["compiled"].installed:
    warnings.warn("rubikops: the compiled library is not built; extract_cubes falls back to the slow plain-torch "
                  "reference on CPU. Rebuild with `pip install --no-build-isolation -e .`.", RuntimeWarning,
                  stacklevel=2)

_ALIASES = {"cpu": "compiled", "cuda": "compiled", "reference": "torch"}
# Read once: a per-call environment lookup is host time every queued GPU batch waits on.
DEFAULT_BACKEND = os.environ.get("RUBIKOPS_BACKEND") or "auto"
HAS_COMPILED = backends.REGISTRY["compiled"].loaded is not None
HAS_CUDA_KERNEL = HAS_COMPILED and backends.get("compiled").features()["cuda"]
_DISPATCHER_OP = torch.ops.rubikops.extract_cubes


def triton_available() -> bool:
    return backends.REGISTRY["triton"].loaded is not None


def interpreter_enabled() -> bool:
    """Whether the Triton kernels run in the Triton interpreter (TRITON_INTERPRET at ``import rubikops``)."""
    return triton_available() and backends.get("triton").interpreter_enabled()


def resolve_backend(backend: Optional[str], device: torch.device) -> str:
    name = backend or DEFAULT_BACKEND
    name = _ALIASES.get(name, name)
    if name != "auto" and name not in backends.REGISTRY:
        choices = ("auto", *backends.REGISTRY)
        raise ValueError(f"rubikops.extract_cubes: backend must be one of {choices} (or cpu/cuda), got {name!r}")
    if name == "auto":
        return "compiled"  # the dispatcher picks the device kernel
    if name not in ("compiled", "torch"):
        backends.get(name)  # loaded, or a RuntimeError that says why not
    if name == "triton" and device.type == "cpu" and not interpreter_enabled():
        raise RuntimeError("rubikops.extract_cubes: backend='triton' on CPU tensors runs in the Triton "
                           "interpreter; set TRITON_INTERPRET=1 before importing rubikops")
    return name


def extract_cubes(
    source: torch.Tensor,
    origins: torch.Tensor,
    cube_size: Sequence[int],
    *,
    index: Optional[torch.Tensor] = None,
    rotations: Optional[torch.Tensor] = None,
    mask: Optional[torch.Tensor] = None,
    fill: float = 0.0,
    keep_prob: float = 0.0,
    seed: int = 0,
    scale=None,
    shift=None,
    clamp: Optional[tuple] = None,
    out_dtype: Optional[torch.dtype] = None,
    affine: Optional[torch.Tensor] = None,
    read_box: Optional[torch.Tensor] = None,
    cube_intensity: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
    validate: bool = True,
    backend: Optional[str] = None,
) -> torch.Tensor:
    """Cut, reorder, turn, mask and scale cubes out of a batch of volumes in one pass.

    Returns a contiguous (B, M, C, d, h, w) tensor: cube ``m`` of sample ``b``
    is the box ``source[index[b], :, z:z+d, y:y+h, x:x+w]`` at ``origins[b, m]``,
    turned by rotation code ``rotations[b, m]`` (see :mod:`rubikops.rotations`),
    with intensity ``float(x) * scale + shift`` clamped to ``clamp`` and cast to
    ``out_dtype``; masked cubes hold ``fill`` except for voxels kept with
    probability ``keep_prob`` (reproducible from ``seed``).  With ``affine``
    ((B, 3, 4), voxel units, (d, h, w) order) the origins are positions in a
    crop frame and box voxel ``j`` is read at ``affine[b, :, :3] @ (origin +
    j) + affine[b, :, 3]``, clamped into the volume (``read_box[b]``, (2, 3):
    the lowest and highest voxel per axis it may touch, e.g. one volume of a
    packed storage; default the whole source) and interpolated trilinearly:
    the augmentation of a resampled crop, in the same pass, on every backend.
    ``cube_intensity`` ((B, M, 10), floating) gives each cube an intensity
    stage after the scale and shift: contrast, gamma on a window, a smooth
    bias field and noise from a counter-based hash (the rule:
    :data:`rubikops._schema.CUBE_INTENSITY_FIELDS`; draws:
    :class:`rubikops.augment.IntensityAugment`).  Differentiable with
    respect to a floating ``source``.  ``validate=False`` skips the checks that
    read tensor values (a device sync); the kernels still never leave the source.
    """
    params = ExtractCubesParams(source, origins, cube_size, index, rotations, mask, fill, keep_prob, seed, scale,
                                shift, clamp, out_dtype, affine, read_box, cube_intensity)
    validate_extract_cubes(params, out, data_checks=validate)
    return run(params, out=out, backend=backend)


def extract_cubes_unchecked(source, origins, cube_size, *, out=None, backend=None, **options) -> torch.Tensor:
    """:func:`extract_cubes` without the Python argument checks (``options``:
    its keyword arguments), for callers that built the arguments themselves
    (``RubikCube(validate=False)``): host time is what a queued GPU batch waits
    on, and on the 2-core VM (32 samples x 8 cubes of 4^3, out=) this takes
    51 us a call against 62 us for :func:`extract_cubes` and 47 us for the bare
    torch op.  The kernels' own C++ shape checks (the same ones in Python for
    the Triton and reference backends: shapes, dtypes, devices, out=) and the
    clamping of indices, origins and codes still run, so a bad argument is an
    error or a clamped read, never an out-of-bounds access; only the messages
    are terser."""
    # Checked, not int()-ed: "444" or 2.5 would be cut silently into another cube size.  Three
    # plain ints (RubikCube's own cube_size) skip the general check (8 us of host time a call).
    if not (type(cube_size) is tuple and len(cube_size) == 3 and all(type(s) is int for s in cube_size)):
        cube_size = as_integers(cube_size, 3, "rubikops.extract_cubes: cube_size")
    return run(ExtractCubesParams(source, origins, cube_size, **options), out=out, backend=backend)


def run(params: ExtractCubesParams, *, out: Optional[torch.Tensor] = None,
        backend: Optional[str] = None) -> torch.Tensor:
    """The op on arguments already gathered (and, unless the caller knows
    better, checked with :func:`validate_extract_cubes`): the backend's kernel
    into a new tensor or into ``out``."""
    name = resolve_backend(backend, params.source.device)
    args = params.schema_args()
    op = _DISPATCHER_OP if name == "compiled" else backends.get(name).extract_cubes
    if out is not None:
        if torch.is_grad_enabled() and params.source.requires_grad:
            raise RuntimeError("rubikops.extract_cubes: out= does not support autograd (source requires grad); "
                               "call without out=")
        return op.out(*args, out=out)
    return op(*args)


def sample_puzzle(uniforms, volume_shapes, index, cells, permutations, code_table, crop_size, jitter, mask_prob,
                  *, backend: Optional[str] = None):
    """The puzzle's random choices from one row of uniforms per sample, in one
    dispatch (:func:`rubikops.reference.sample_puzzle` gives the rule).
    ``backend="torch"`` runs the plain-torch reference, ``"triton"`` the
    Triton kernel (on CPU tensors in the interpreter); anything else lets the
    dispatcher pick the device's kernel."""
    args = (uniforms, volume_shapes, index, cells, permutations, code_table, [int(c) for c in crop_size],
            int(jitter), float(mask_prob))
    name = _ALIASES.get(backend or DEFAULT_BACKEND, backend or DEFAULT_BACKEND)
    if name not in ("auto", "compiled"):
        return backends.get(name).sample_puzzle(*args)
    return torch.ops.rubikops.sample_puzzle(*args)


def _draw_kernel(op: str, backend: Optional[str]):
    """The kernel of one of the augmentation's draw ops: the plain-torch reference for ``backend="torch"``,
    else the dispatcher's (C++ on CPU, CUDA C++ where built, the reference on every other device; the Triton
    backend has no kernel of its own for a few hundred rows of arithmetic)."""
    name = _ALIASES.get(backend or DEFAULT_BACKEND, backend or DEFAULT_BACKEND)
    if name != "auto" and name not in backends.REGISTRY:
        raise ValueError(f"rubikops.{op}: backend must be one of {('auto', *backends.REGISTRY)} (or cpu/cuda), "
                         f"got {name!r}")
    return getattr(_library, f"{op}_generic") if name == "torch" else getattr(torch.ops.rubikops, op)


def draw_crop_affine(uniforms, volume_shapes, index, crop_size, max_angle: float, zoom_low: float, zoom_high: float,
                     *, backend: Optional[str] = None) -> torch.Tensor:
    """Each sample's crop affine ((B, 3, 4) float64) from its row of 7
    uniforms, in one dispatch (:func:`rubikops.reference.draw_crop_affine`
    gives the rule; :class:`rubikops.augment.CropAffine` draws the uniforms)."""
    if not (type(crop_size) is tuple and len(crop_size) == 3 and all(type(c) is int for c in crop_size)):
        crop_size = as_integers(crop_size, 3, "rubikops.draw_crop_affine: crop_size")
    if not all(0 < c < 1 << 62 for c in crop_size):  # the schema's int64, with room for extent - crop
        raise ValueError(f"rubikops.draw_crop_affine: crop_size must be 3 positive ints, got {list(crop_size)}")
    return _draw_kernel("draw_crop_affine", backend)(uniforms, volume_shapes, index, list(crop_size),
                                                     float(max_angle), float(zoom_low), float(zoom_high))


def draw_cube_intensity(uniforms, mean, sd, contrast: Sequence[float], gamma: Sequence[float], bias_field: float,
                        noise: float, p: float, window: float, *, backend: Optional[str] = None) -> torch.Tensor:
    """Each cube's ``cube_intensity`` row ((B, M, 10) float64) from its 11
    uniforms and its volume's ``mean`` and ``sd`` ((B,), output units), in
    one dispatch (:func:`rubikops.reference.draw_cube_intensity` gives the
    rule; :class:`rubikops.augment.IntensityAugment` draws the uniforms)."""
    (contrast_low, contrast_high), (gamma_low, gamma_high) = contrast, gamma
    return _draw_kernel("draw_cube_intensity", backend)(
        uniforms, mean, sd, float(contrast_low), float(contrast_high), float(gamma_low), float(gamma_high),
        float(bias_field), float(noise), float(p), float(window))


def available_backends() -> dict:
    """Which backends this installation has, and why one is missing."""
    out = {}
    for b in backends.REGISTRY.values():
        out[b.name] = {"installed": b.installed, "loaded": b.loaded is not None, "error": b.error,
                       "description": b.description, **(b.loaded.features() if b.loaded is not None else {})}
    return out
