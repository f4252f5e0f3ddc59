"""Registration of the rubikops torch ops, their fake and autograd rules, and
backend choice.

``torch.ops.rubikops.extract_cubes`` is defined by the compiled library
(``csrc/extract_cubes.cpp``) with a CPU kernel and, where built, a CUDA kernel.
This module adds what every backend shares: the fake (meta) kernel for
torch.compile, the autograd formula, the Triton op, and the fallbacks used when
the compiled library or a device kernel is missing.
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
import warnings
from numbers import Integral, Real
from typing import Optional, Sequence

import torch

from . import reference
from .rotations import NUM_CODES, preserves_shape

# Keep in sync with csrc/extract_cubes.cpp (tests/test_ops.py checks it).
_ARGS = (
    "Tensor source, Tensor origins, int[] cube_size, Tensor? index, Tensor? rotations, Tensor? mask, "
    "float fill, float keep_prob, int seed, Tensor? scale, Tensor? shift, float scale_value, "
    "float shift_value, float? clamp_lo, float? clamp_hi, ScalarType? out_dtype"
)
EXTRACT_CUBES_SCHEMA = f"extract_cubes({_ARGS}) -> Tensor"
EXTRACT_CUBES_OUT_SCHEMA = f"extract_cubes.out({_ARGS}, *, Tensor(a!) out) -> Tensor(a!)"

BACKENDS = ("auto", "compiled", "triton", "torch")

# ---------------------------------------------------------------------------
# Loading the compiled library
# ---------------------------------------------------------------------------
_LOAD_ERROR: Optional[str] = None
try:
    from . import _C  # noqa: F401  (registers the ops with the dispatcher)
except ImportError as exc:  # pragma: no cover - exercised when the build is missing
    _LOAD_ERROR = f"{type(exc).__name__}: {exc}"

HAS_COMPILED = _LOAD_ERROR is None
_fallback_lib: Optional[torch.library.Library] = None


def _has_kernel(op: str, key: str) -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(op, key))
    except RuntimeError:
        return False


def _reference_from_schema(source, origins, cube_size, index, rotations, mask, fill, keep_prob, seed,
                           scale, shift, scale_value, shift_value, clamp_lo, clamp_hi, out_dtype):
    """Call the reference with the op's flat schema arguments."""
    if scale is None and scale_value != 1.0:
        scale = scale_value
    if shift is None and not reference.is_noop_shift(shift_value):
        shift = shift_value
    clamp = None if clamp_lo is None and clamp_hi is None else (clamp_lo, clamp_hi)
    return reference.extract_cubes(
        source, origins, cube_size, index=index, rotations=rotations, mask=mask, fill=fill,
        keep_prob=keep_prob, seed=seed, scale=scale, shift=shift, clamp=clamp, out_dtype=out_dtype)


if not HAS_COMPILED:
    warnings.warn(
        f"rubikops: the compiled library could not be loaded ({_LOAD_ERROR}); extract_cubes falls back "
        "to the slow plain-torch reference on CPU. Rebuild with `pip install --no-build-isolation -e .`.",
        RuntimeWarning, stacklevel=2)
    _fallback_lib = torch.library.Library("rubikops", "DEF")
    _fallback_lib.define(EXTRACT_CUBES_SCHEMA)
    _fallback_lib.define(EXTRACT_CUBES_OUT_SCHEMA)

    def _fallback_out(*args, out):
        return out.copy_(_reference_from_schema(*args))

    _fallback_lib.impl("extract_cubes", _reference_from_schema, "CompositeExplicitAutograd")
    _fallback_lib.impl("extract_cubes.out", _fallback_out, "CompositeExplicitAutograd")

HAS_CUDA_KERNEL = _has_kernel("rubikops::extract_cubes", "CUDA")

# ---------------------------------------------------------------------------
# Fake kernels (shapes only) for torch.compile / FakeTensor
# ---------------------------------------------------------------------------


def _out_shape(source, origins, cube_size):
    return (origins.shape[0], origins.shape[1], source.shape[1], *[int(s) for s in cube_size])


@torch.library.register_fake("rubikops::extract_cubes")
def _extract_cubes_fake(source, origins, cube_size, index, rotations, mask, fill, keep_prob, seed, scale,
                        shift, scale_value, shift_value, clamp_lo, clamp_hi, out_dtype):
    dtype = out_dtype or reference.default_out_dtype(source.dtype)
    return source.new_empty(_out_shape(source, origins, cube_size), dtype=dtype)


@torch.library.register_fake("rubikops::extract_cubes.out")
def _extract_cubes_out_fake(*args, out):
    return out


# ---------------------------------------------------------------------------
# Backward: scatter-add of grad_out * scale, zero where masked out or clamped
# ---------------------------------------------------------------------------


EXTRACT_CUBES_BACKWARD_SCHEMA = (
    "extract_cubes_backward(Tensor grad, Tensor source, Tensor origins, int[] cube_size, Tensor? index, "
    "Tensor? rotations, Tensor? mask, float keep_prob, int seed, Tensor? scale, Tensor? shift, "
    "float scale_value, float shift_value, float? clamp_lo, float? clamp_hi) -> Tensor")


def extract_cubes_backward_generic(
    grad: torch.Tensor, source: torch.Tensor, origins: torch.Tensor, cube_size: Sequence[int],
    index: Optional[torch.Tensor], rotations: Optional[torch.Tensor], mask: Optional[torch.Tensor],
    keep_prob: float, seed: int, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
    scale_value: float, shift_value: float, clamp_lo: Optional[float], clamp_hi: Optional[float],
) -> torch.Tensor:
    """Gradient of extract_cubes w.r.t. source in plain torch (any device):
    the implementation of ``rubikops::extract_cubes_backward`` wherever no
    backend kernel is registered (CUDA when built without its kernel, other
    devices), and the reference the kernels are tested against.

    Overlapping boxes and repeated indices accumulate (index_add_)."""
    compute = reference.opmath_dtype(source.dtype, grad.dtype)
    B, M = origins.shape[0], origins.shape[1]
    per_sample = (B, 1, 1, 1, 1, 1)
    g = grad.to(compute)
    g = g * (scale.to(compute).view(per_sample) if scale is not None else scale_value)
    if clamp_lo is not None or clamp_hi is not None:
        # Recompute the unclamped value: torch.clamp passes the gradient where lo <= v <= hi.
        v = torch.ops.rubikops.extract_cubes(source, origins, cube_size, index, rotations, None, 0.0, 0.0, 0,
                                             scale, shift, scale_value, shift_value, None, None, compute)
        inside = torch.ones_like(v, dtype=torch.bool)
        if clamp_lo is not None:
            inside &= v >= clamp_lo
        if clamp_hi is not None:
            inside &= v <= clamp_hi
        g = g * inside
    if mask is not None:
        dropped = mask.to(torch.bool).view(B, M, 1, 1, 1, 1).expand(g.shape)
        if keep_prob > 0:
            dropped = dropped & ~reference.keep_mask(g.numel(), keep_prob, seed, g.device).view(g.shape)
        g = g.masked_fill(dropped, 0)
    offs = reference.source_offsets(source.shape, origins, cube_size, index, rotations)
    flat = torch.zeros(source.numel(), dtype=compute, device=source.device)
    flat.index_add_(0, offs.reshape(-1), g.reshape(-1))
    return flat.view(source.shape).to(source.dtype)


def _library_defining(op: str, schema: str) -> torch.library.Library:
    """A library to register ``op``'s Python kernels with.  The schema comes
    from the compiled library; one that is missing, or was built before the
    op existed, lacks it: define it here then."""
    if _fallback_lib is not None or not hasattr(torch.ops.rubikops, op):
        lib = _fallback_lib or torch.library.Library("rubikops", "FRAGMENT")
        lib.define(schema)
        return lib
    return torch.library.Library("rubikops", "IMPL")


# The compiled library (csrc/extract_cubes.cpp) also registers the CPU and
# CUDA kernels; the generic implementation covers the rest.
_backward_lib = _library_defining("extract_cubes_backward", EXTRACT_CUBES_BACKWARD_SCHEMA)
_backward_lib.impl("extract_cubes_backward", extract_cubes_backward_generic, "CompositeExplicitAutograd")


@torch.library.register_fake("rubikops::extract_cubes_backward")
def _extract_cubes_backward_fake(grad, source, *args):
    return torch.empty_like(source, memory_format=torch.contiguous_format)


extract_cubes_backward = torch.ops.rubikops.extract_cubes_backward
HAS_CPU_BACKWARD_KERNEL = _has_kernel("rubikops::extract_cubes_backward", "CPU")
HAS_CUDA_BACKWARD_KERNEL = _has_kernel("rubikops::extract_cubes_backward", "CUDA")


# ---------------------------------------------------------------------------
# Puzzle sampler: uniforms -> origins, codes, permutation, rotation state, mask
# ---------------------------------------------------------------------------

# Keep in sync with csrc/sample_puzzle.cpp (tests/test_sample_puzzle.py checks it).
SAMPLE_PUZZLE_SCHEMA = (
    "sample_puzzle(Tensor uniforms, Tensor volume_shapes, Tensor index, Tensor cells, Tensor permutations, "
    "Tensor code_table, int[] crop_size, int jitter, float mask_prob) "
    "-> (Tensor origins, Tensor codes, Tensor permutation, Tensor state, Tensor mask)")


def sample_puzzle_row_size(n_cells: int, M: int, rotations: bool, draw_mask: bool) -> int:
    """Uniforms per sample: 3 crop starts, 3 jitters a cell, 1 permutation, M
    rotation states (when drawn), M mask draws (when mask_prob > 0); as
    csrc/sample_puzzle.h."""
    return 3 + 3 * n_cells + 1 + (M if rotations else 0) + (M if draw_mask else 0)


def _sampler_fail(cls, problem: str):
    raise cls(f"rubikops.sample_puzzle: {problem}")


def check_sample_puzzle(uniforms, volume_shapes, index, cells, permutations, code_table, crop_size, jitter,
                        mask_prob):
    """The sampler's argument checks for the paths without C++ ones (the
    reference and Triton): the same rules and messages as
    csrc/sample_puzzle_checks.h."""
    if not isinstance(uniforms, torch.Tensor) or uniforms.dtype != torch.float64:
        _sampler_fail(TypeError, f"uniforms must be float64, got {getattr(uniforms, 'dtype', type(uniforms))}")
    if uniforms.dim() != 2:
        _sampler_fail(ValueError, f"uniforms must be (B, n), got shape {list(uniforms.shape)}")
    for name, t, dim in (("volume_shapes", volume_shapes, 2), ("index", index, 1), ("cells", cells, 2),
                         ("permutations", permutations, 2), ("code_table", code_table, 1)):
        if not isinstance(t, torch.Tensor):
            _sampler_fail(TypeError, f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != dim:
            _sampler_fail(ValueError, f"{name} must be {dim}-D, got shape {list(t.shape)}")
        if t.dtype not in (torch.int32, torch.int64):
            _sampler_fail(TypeError, f"{name} must be int32 or int64, got {t.dtype}")
        if t.device != uniforms.device:
            _sampler_fail(ValueError, f"{name} is on {t.device} but uniforms is on {uniforms.device}")
    if len(crop_size) != 3:
        _sampler_fail(ValueError, f"crop_size must have 3 entries, got {len(crop_size)}")
    if jitter < 0:
        _sampler_fail(ValueError, f"jitter must be >= 0, got {jitter}")
    if not 0.0 <= mask_prob <= 1.0:
        _sampler_fail(ValueError, f"mask_prob must be in [0, 1], got {mask_prob}")
    B, (K, M), n_cells = uniforms.shape[0], permutations.shape, cells.shape[0]
    if volume_shapes.shape[1] != 3:
        _sampler_fail(ValueError, f"volume_shapes must be (N, 3), got shape {list(volume_shapes.shape)}")
    if cells.shape[1] != 3 or n_cells < 1:
        _sampler_fail(ValueError, f"cells must be (n_cells, 3) with n_cells >= 1, got shape {list(cells.shape)}")
    if index.shape[0] != B:
        _sampler_fail(ValueError, f"index must have shape ({B},) (one volume per row of uniforms), "
                                  f"got {list(index.shape)}")
    if K < 1 or M < 1 or (volume_shapes.shape[0] < 1 and B > 0):
        _sampler_fail(ValueError, "needs at least one permutation of at least one cube and one volume, got "
                                  f"permutations {list(permutations.shape)} and volume_shapes {list(volume_shapes.shape)}")
    R = code_table.numel()
    n = sample_puzzle_row_size(n_cells, M, R > 0, mask_prob > 0)
    if uniforms.shape[1] != n:
        parts = f"3 starts, {3 * n_cells} jitters, 1 permutation" + (", M rotation states" if R else "") + \
            (", M mask draws" if mask_prob > 0 else "")
        _sampler_fail(ValueError, f"uniforms must have {n} columns ({parts}), got {uniforms.shape[1]}")


def _sample_puzzle_generic(*args):
    check_sample_puzzle(*args)
    return reference.sample_puzzle(*args)


# Kernels: csrc/cpu and csrc/cuda (one dispatch for what the plain-torch
# sampler does in fifteen small ops), Triton on CUDA where those were not
# built; the reference covers every other device.
_sampler_lib = _library_defining("sample_puzzle", SAMPLE_PUZZLE_SCHEMA)
_sampler_lib.impl("sample_puzzle", _sample_puzzle_generic, "CompositeExplicitAutograd")


@torch.library.register_fake("rubikops::sample_puzzle")
def _sample_puzzle_fake(uniforms, volume_shapes, index, cells, permutations, code_table, crop_size, jitter,
                        mask_prob):
    B, M = uniforms.shape[0], permutations.shape[1]
    return (uniforms.new_empty((B, M, 3), dtype=torch.int64), uniforms.new_empty((B, M), dtype=torch.int64),
            uniforms.new_empty((B,), dtype=torch.int64), uniforms.new_empty((B, M), dtype=torch.int64),
            uniforms.new_empty((B, M), dtype=torch.bool))


HAS_CPU_SAMPLER_KERNEL = _has_kernel("rubikops::sample_puzzle", "CPU")
HAS_CUDA_SAMPLER_KERNEL = _has_kernel("rubikops::sample_puzzle", "CUDA")


def sample_puzzle(uniforms, volume_shapes, index, cells, permutations, code_table, crop_size, jitter, mask_prob,
                  *, backend: Optional[str] = None):
    """The puzzle's random choices from one row of uniforms per sample, in one
    dispatch (:func:`rubikops.reference.sample_puzzle` gives the rule).
    ``backend="torch"`` runs the plain-torch reference, ``"triton"`` the
    Triton kernel (on CPU tensors in the interpreter); anything else lets the
    dispatcher pick the device's kernel."""
    args = (uniforms, volume_shapes, index, cells, permutations, code_table, [int(c) for c in crop_size],
            int(jitter), float(mask_prob))
    name = backend or os.environ.get("RUBIKOPS_BACKEND")
    if name in ("torch", "reference"):
        return _sample_puzzle_generic(*args)
    if name == "triton":
        return _get_triton_sampler()(*args)
    return torch.ops.rubikops.sample_puzzle(*args)


_SAVED = ("origins", "index", "rotations", "mask", "scale", "shift")


def _setup_context(ctx, inputs, output):
    (source, origins, cube_size, index, rotations, mask, fill, keep_prob, seed, scale, shift,
     scale_value, shift_value, clamp_lo, clamp_hi, out_dtype) = inputs
    ctx.save_for_backward(source, origins, index, rotations, mask, scale, shift)
    ctx.scalars = (list(cube_size), keep_prob, seed, scale_value, shift_value, clamp_lo, clamp_hi)


def backward_via(backward_op):
    """The autograd formula of a forward op, with its gradient computed by
    ``backward_op`` (the generic scatter-add above, or a backend's kernel)."""
    def backward(ctx, grad):
        source, origins, index, rotations, mask, scale, shift = ctx.saved_tensors
        cube_size, keep_prob, seed, scale_value, shift_value, clamp_lo, clamp_hi = ctx.scalars
        grad_source = backward_op(grad, source, origins, cube_size, index, rotations, mask, keep_prob, seed, scale,
                                  shift, scale_value, shift_value, clamp_lo, clamp_hi)
        return (grad_source,) + (None,) * 15
    return backward


torch.library.register_autograd("rubikops::extract_cubes", backward_via(extract_cubes_backward),
                                setup_context=_setup_context)

# ---------------------------------------------------------------------------
# Triton backend (optional: registered at import where triton is installed)
# ---------------------------------------------------------------------------
_triton_op = None
_TRITON_ERROR: Optional[str] = None


# Looked up once: triton_available() runs inside torch.compile'd code, where
# dynamo refuses to trace importlib.
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    return _TRITON_INSTALLED and _TRITON_ERROR is None


def interpreter_enabled() -> bool:
    """Whether the Triton kernels run in the Triton interpreter: decided by
    TRITON_INTERPRET when they were loaded (at ``import rubikops``), not now."""
    module = sys.modules.get("rubikops.triton.extract_cubes")
    if module is not None:
        return module._INTERPRET
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _get_triton_op():
    global _triton_op
    if _TRITON_ERROR is not None:
        raise RuntimeError(f"rubikops: the Triton backend failed to load: {_TRITON_ERROR}")
    if _triton_op is None:
        from .triton.extract_cubes import register
        _triton_op = register()
    return _triton_op


def _register_triton_ops():
    """Register the Triton ops now (about 20 ms), not on first use: a first
    call inside torch.compile would otherwise define ops while dynamo traces,
    which it refuses."""
    global _TRITON_ERROR
    if not _TRITON_INSTALLED:
        return
    try:
        _get_triton_op()
    except Exception as exc:  # noqa: BLE001 - a broken triton must not break `import rubikops`
        _TRITON_ERROR = f"{type(exc).__name__}: {exc}"


_register_triton_ops()


def _register_triton_as_cuda_fallback():
    """With no compiled CUDA kernel, CUDA tensors go to the Triton kernel."""
    global _cuda_fallback_lib
    _cuda_fallback_lib = torch.library.Library("rubikops", "IMPL")

    def _cuda(*args):
        return _get_triton_op()(*args)

    def _cuda_out(*args, out):
        return _get_triton_op().out(*args, out=out)

    _cuda_fallback_lib.impl("extract_cubes", _cuda, "CUDA")
    _cuda_fallback_lib.impl("extract_cubes.out", _cuda_out, "CUDA")


_cuda_fallback_lib = None
if not HAS_CUDA_KERNEL and triton_available():
    _register_triton_as_cuda_fallback()

_triton_sampler = None


def _get_triton_sampler():
    """``rubikops::sample_puzzle_triton``: the Triton sampler as an opaque
    custom op (so opcheck and torch.compile see a fake kernel)."""
    global _triton_sampler
    if _triton_sampler is None:
        if not triton_available():
            raise RuntimeError("rubikops.sample_puzzle: backend='triton' needs a working triton package"
                               + (f" ({_TRITON_ERROR})" if _TRITON_ERROR else ""))
        from .triton.sample_puzzle import sample_puzzle as launch
        schema = SAMPLE_PUZZLE_SCHEMA.replace("sample_puzzle(", "(")
        _triton_sampler = torch.library.custom_op("rubikops::sample_puzzle_triton", launch, mutates_args=(),
                                                  schema=schema)
        _triton_sampler.register_fake(_sample_puzzle_fake)
    return _triton_sampler


if triton_available():
    try:
        _get_triton_sampler()  # at import, like the Triton extract_cubes ops (dynamo refuses later definitions)
        if not HAS_CUDA_SAMPLER_KERNEL:
            _sampler_lib.impl("sample_puzzle", lambda *args: _get_triton_sampler()(*args), "CUDA")
    except Exception as exc:  # noqa: BLE001 - a broken triton must not break `import rubikops`
        _TRITON_ERROR = f"{type(exc).__name__}: {exc}"

# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def _fail(cls, arg: str, problem: str):
    raise cls(f"rubikops.extract_cubes: {arg} {problem}")


def as_integers(value, count: int, label: str) -> tuple:
    """``value``, a sequence of ``count`` integers, as Python ints.  Integral
    floats (4.0) count as integers; a string ("444" would read as three 4s), a
    bool or a fractional number (2.7, which int() would truncate) is refused
    with an error that starts with ``label`` (the caller and the argument)."""
    words = {2: "two", 3: "three"}.get(count, str(count))
    try:
        n = None if isinstance(value, (str, bytes)) else len(value)
    except TypeError:  # no length: a number, a 0-d tensor
        n = None
    if n != count:
        raise TypeError(f"{label} must be {words} integers, got {value!r}")
    out = []
    for v in value:
        if isinstance(v, torch.SymInt) or (isinstance(v, torch.Tensor) and v.numel() == 1
                                           and not v.is_floating_point()):
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, Real):
            raise TypeError(f"{label} must be {words} integers, got {value!r}")
        if not isinstance(v, Integral) and not float(v).is_integer():
            raise ValueError(f"{label} must be {words} integers, got {value!r} ({v} is not an integer)")
        out.append(int(v))
    return tuple(out)


def _check_int_tensor(t, name, shape, device):
    if not isinstance(t, torch.Tensor):
        _fail(TypeError, name, f"must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in (torch.int32, torch.int64):
        _fail(TypeError, name, f"must be int32 or int64, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        _fail(ValueError, name, f"must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.device != device:
        _fail(ValueError, name, f"is on {t.device} but source is on {device}")


def _check_per_sample_tensor(v, name, B, device):
    if not v.dtype.is_floating_point:
        _fail(TypeError, name, f"as a tensor must be floating point, got {v.dtype}")
    if tuple(v.shape) != (B,):
        _fail(ValueError, name, f"as a tensor must have shape ({B},) (one value per sample), got {tuple(v.shape)}")
    if v.device != device:
        _fail(ValueError, name, f"is on {v.device} but source is on {device}")


def _check_per_sample(v, name):
    """A Python scale or shift (the tensor form is checked in check_tensors)."""
    if v is None or isinstance(v, torch.Tensor):
        return
    if isinstance(v, bool) or not isinstance(v, Real):
        _fail(TypeError, name, f"must be None, a float or a (B,) tensor, got {type(v).__name__}")
    if not math.isfinite(float(v)):
        _fail(ValueError, name, f"must be finite, got {v}")


# The values an integer output can hold (fill is stored as is: uint8 300 would wrap to 44).
_INT_RANGES = {torch.uint8: (0, 255), torch.int16: (-32768, 32767)}


def may_overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors may share a byte: their [first, last] byte ranges
    intersect (addresses, so aliases of another storage count too); as
    csrc/extract_cubes_checks.h.  Tensors without memory (fake or meta, while
    torch.compile traces) never overlap."""
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device or a.device.type == "meta":
        return False
    try:
        pa, pb = a.data_ptr(), b.data_ptr()
    except (RuntimeError, NotImplementedError):  # a FakeTensor has no data
        return False

    def end(t, p):
        return p + (sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) + 1) * t.element_size()

    return pa < end(b, pb) and pb < end(a, pa)


def check_out(out, shape, dtype, device, inputs=()):
    """The checks of an ``out=`` tensor: shape, dtype, device, contiguity, and
    no memory shared with ``inputs`` ((name, tensor or None) pairs: the
    kernels read them while they write out)."""
    if not isinstance(out, torch.Tensor):
        _fail(TypeError, "out", f"must be a torch.Tensor, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        _fail(ValueError, "out", f"must have shape {tuple(shape)}, got {tuple(out.shape)}")
    if out.dtype != dtype:
        _fail(TypeError, "out", f"must have dtype {dtype} (out_dtype), got {out.dtype}")
    if out.device != device:
        _fail(ValueError, "out", f"is on {out.device} but source is on {device}")
    if not out.is_contiguous():
        _fail(ValueError, "out", "must be contiguous")
    for name, t in inputs:
        if t is not None and may_overlap(out, t):
            _fail(ValueError, "out", f"overlaps {name} in memory")


def check_tensors(source, origins, cube_size, index, rotations, mask, scale, shift, fill, out_dtype, arithmetic,
                  out=None) -> tuple:
    """The checks every call makes, validate=False included: shapes, dtypes,
    devices, the fill of an integer output, out= (no device sync).  The same
    rules as csrc/extract_cubes_checks.h, for the paths without them (the
    reference and Triton), so that no input takes a kernel out of bounds.
    ``scale``/``shift``: the (B,) tensors or None.  Returns the cube size."""
    if not isinstance(source, torch.Tensor):
        _fail(TypeError, "source", f"must be a torch.Tensor, got {type(source).__name__}")
    if source.dim() != 5:
        _fail(ValueError, "source", f"must be 5-D (N, C, D, H, W), got shape {tuple(source.shape)}")
    if source.dtype not in reference.SOURCE_DTYPES:
        _fail(TypeError, "source", f"has unsupported dtype {source.dtype}; supported: "
              + ", ".join(str(d).replace('torch.', '') for d in reference.SOURCE_DTYPES))
    dev = source.device
    if not isinstance(origins, torch.Tensor):
        _fail(TypeError, "origins", f"must be a torch.Tensor, got {type(origins).__name__}")
    if origins.dim() != 3 or origins.shape[2] != 3:
        _fail(ValueError, "origins", f"must have shape (B, M, 3), got {tuple(origins.shape)}")
    B, M = origins.shape[0], origins.shape[1]
    _check_int_tensor(origins, "origins", (B, M, 3), dev)
    size = as_integers(cube_size, 3, "rubikops.extract_cubes: cube_size")
    N, C, D, H, W = source.shape
    for s, extent, axis in zip(size, (D, H, W), "DHW"):
        if s < 1:
            _fail(ValueError, "cube_size", f"must be positive, got {size}")
        if s > extent:
            _fail(ValueError, "cube_size", f"{size} does not fit in the source volume ({axis} = {extent})")
    if index is None:
        if N != B:
            _fail(ValueError, "index", f"is None, so source.shape[0] ({N}) must equal B = origins.shape[0] ({B})")
    else:
        _check_int_tensor(index, "index", (B,), dev)
        if N == 0 and B > 0:
            _fail(ValueError, "source", f"holds no volume (shape {tuple(source.shape)}) for B = {B} samples")
    if rotations is not None:
        _check_int_tensor(rotations, "rotations", (B, M), dev)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            _fail(TypeError, "mask", f"must be a bool tensor, got {getattr(mask, 'dtype', type(mask).__name__)}")
        if tuple(mask.shape) != (B, M):
            _fail(ValueError, "mask", f"must have shape ({B}, {M}), got {tuple(mask.shape)}")
        if mask.device != dev:
            _fail(ValueError, "mask", f"is on {mask.device} but source is on {dev}")
    for name, v in (("scale", scale), ("shift", shift)):
        if v is not None:
            _check_per_sample_tensor(v, name, B, dev)
    odt = out_dtype or reference.default_out_dtype(source.dtype)
    if not isinstance(odt, torch.dtype) or odt not in reference.SOURCE_DTYPES:
        _fail(TypeError, "out_dtype", f"is not a supported dtype: {out_dtype!r}")
    if not odt.is_floating_point:
        if odt != source.dtype or arithmetic:
            _fail(TypeError, "out_dtype", f"{odt} is integer; an integer output is only allowed as a plain copy "
                  "of a source of the same dtype (no scale, shift or clamp)")
        lo, hi = _INT_RANGES[odt]
        if not (lo <= fill <= hi and float(fill).is_integer()):
            _fail(ValueError, "fill", f"= {fill} is not a value of the {odt} output (an integer in [{lo}, {hi}])")
    if out is not None:
        check_out(out, (B, M, C, *size), odt, dev, (("source", source), ("origins", origins), ("index", index),
                                                   ("rotations", rotations), ("mask", mask), ("scale", scale),
                                                   ("shift", shift)))
    return size


def validate_extract_cubes(source, origins, cube_size, index, rotations, mask, fill, keep_prob, seed, scale,
                           shift, clamp, out_dtype, out, data_checks: bool = True):
    """Raise a ValueError/TypeError naming the argument for every bad input.

    Shape, dtype and device checks always run; ``data_checks`` adds the checks
    that read tensor values (origins and indices in range, valid codes, finite
    scale and shift), which cost a device sync on GPU."""
    if isinstance(fill, bool) or not isinstance(fill, Real):
        _fail(TypeError, "fill", f"must be a number, got {type(fill).__name__}")
    if isinstance(keep_prob, bool) or not isinstance(keep_prob, Real) or not 0.0 <= float(keep_prob) <= 1.0:
        _fail(ValueError, "keep_prob", f"must be a number in [0, 1], got {keep_prob!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or not -(1 << 63) <= int(seed) < (1 << 64):
        _fail(ValueError, "seed", f"must be an integer in [-2**63, 2**64), got {seed!r}")
    _check_per_sample(scale, "scale")
    _check_per_sample(shift, "shift")
    if clamp is not None:
        if not isinstance(clamp, (tuple, list)) or len(clamp) != 2:
            _fail(TypeError, "clamp", f"must be None or (lo, hi), got {clamp!r}")
        lo, hi = clamp
        for v in (lo, hi):
            if v is not None and (isinstance(v, bool) or not isinstance(v, Real) or math.isnan(v)):
                _fail(TypeError, "clamp", f"bounds must be numbers or None, got {clamp!r}")
        if lo is not None and hi is not None and lo > hi:
            _fail(ValueError, "clamp", f"has lo > hi: {clamp!r}")
    scale_t = scale if isinstance(scale, torch.Tensor) else None
    shift_t = shift if isinstance(shift, torch.Tensor) else None
    arithmetic = scale is not None or shift is not None or clamp is not None
    size = check_tensors(source, origins, cube_size, index, rotations, mask, scale_t, shift_t, fill, out_dtype,
                         arithmetic, out)
    B, M = origins.shape[0], origins.shape[1]
    if not data_checks or B * M == 0:
        return
    # Value checks (a device sync on GPU).  origins <= extent - size, not
    # origins + size <= extent: an origin near 2**63 would overflow the sum
    # into a negative number that passes.
    dev = source.device
    N, D, H, W = source.shape[0], *source.shape[2:]
    room = torch.tensor([D - size[0], H - size[1], W - size[2]], device=dev)
    outside = (origins < 0) | (origins > room)
    if bool(outside.any()):
        bad = outside.any(-1).nonzero()[0].tolist()
        _fail(ValueError, f"origins[{bad[0]}, {bad[1]}]", f"= {origins[bad[0], bad[1]].tolist()} puts a "
              f"{size} box outside the volume of shape {(D, H, W)}")
    if index is not None and B and not bool(((index >= 0) & (index < N)).all()):
        b = int(((index < 0) | (index >= N)).nonzero()[0, 0])
        _fail(ValueError, f"index[{b}]", f"= {int(index[b])} is out of range for source.shape[0] = {N}")
    for name, t in (("scale", scale_t), ("shift", shift_t)):
        if t is not None and not bool(torch.isfinite(t).all()):
            b = int((~torch.isfinite(t)).nonzero()[0, 0])
            _fail(ValueError, f"{name}[{b}]", f"= {float(t[b])} is not finite")
    if rotations is not None:
        if not bool(((rotations >= 0) & (rotations < NUM_CODES)).all()):
            bad = ((rotations < 0) | (rotations >= NUM_CODES)).nonzero()[0].tolist()
            _fail(ValueError, f"rotations[{bad[0]}, {bad[1]}]", f"= {int(rotations[bad[0], bad[1]])} is not a "
                  f"rotation code in [0, {NUM_CODES})")
        if len(set(size)) > 1:
            allowed = torch.tensor([preserves_shape(c, size) for c in range(NUM_CODES)], device=dev)
            ok_codes = allowed[rotations.long()]
            if not bool(ok_codes.all()):
                bad = (~ok_codes).nonzero()[0].tolist()
                _fail(ValueError, f"rotations[{bad[0]}, {bad[1]}]", f"= {int(rotations[bad[0], bad[1]])} "
                      f"reorders the axes of a non-cubic cube {size} (it would change its shape)")


# ---------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------


def resolve_backend(backend: Optional[str], device: torch.device) -> str:
    name = backend or os.environ.get("RUBIKOPS_BACKEND") or "auto"
    name = {"cpu": "compiled", "cuda": "compiled", "reference": "torch"}.get(name, name)
    if name not in BACKENDS:
        raise ValueError(f"rubikops.extract_cubes: backend must be one of {BACKENDS} (or cpu/cuda), got {name!r}")
    if name == "auto":
        return "compiled"  # the dispatcher picks the device kernel (Triton where CUDA was not built)
    if name == "triton":
        if not triton_available():
            raise RuntimeError("rubikops.extract_cubes: backend='triton' needs the triton package")
        if device.type == "cpu" and not interpreter_enabled():
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
    probability ``keep_prob`` (reproducible from ``seed``).  Differentiable with
    respect to a floating ``source``.  ``validate=False`` skips the checks that
    read tensor values (a device sync); the kernels still never leave the source.
    """
    validate_extract_cubes(source, origins, cube_size, index, rotations, mask, fill, keep_prob, seed, scale,
                           shift, clamp, out_dtype, out, data_checks=validate)
    return extract_cubes_unchecked(source, origins, cube_size, index=index, rotations=rotations, mask=mask,
                                   fill=fill, keep_prob=keep_prob, seed=seed, scale=scale, shift=shift, clamp=clamp,
                                   out_dtype=out_dtype, out=out, backend=backend)


def extract_cubes_unchecked(source, origins, cube_size, *, index=None, rotations=None, mask=None, fill=0.0,
                            keep_prob=0.0, seed=0, scale=None, shift=None, clamp=None, out_dtype=None, out=None,
                            backend=None) -> torch.Tensor:
    """:func:`extract_cubes` without the Python argument checks, for callers
    that built the arguments themselves (``RubikCube(validate=False)``; 2-core
    VM, 32 samples x 8 cubes of 4^3, out=: 62 -> 51 us a call, the bare
    torch op 47 us: host time is what a queued GPU batch waits on).  The kernels' own C++ shape
    checks (the same ones in Python for the Triton and reference backends:
    shapes, dtypes, devices, out=) and the clamping of indices, origins and
    codes still run, so a bad argument is an error or a clamped read, never an
    out-of-bounds access; only the messages are terser."""
    name = resolve_backend(backend, source.device)
    if name == "torch":
        # The reference has no C++ checks behind it: the metadata ones here
        # (no device sync; a plain-torch call is slow anyway).
        size = check_tensors(source, origins, cube_size, index, rotations, mask,
                             scale if isinstance(scale, torch.Tensor) else None,
                             shift if isinstance(shift, torch.Tensor) else None, fill, out_dtype,
                             scale is not None or shift is not None or clamp is not None, out)
        result = reference.extract_cubes(source, origins, size, index=index, rotations=rotations, mask=mask,
                                         fill=fill, keep_prob=keep_prob, seed=seed, scale=scale, shift=shift,
                                         clamp=clamp, out_dtype=out_dtype)
        return out.copy_(result) if out is not None else result
    # Checked, not int()-ed: "444" or 2.5 would be cut silently into another cube size.  Three
    # plain ints (RubikCube's own cube_size) skip the general check (8 us of host time a call).
    size = list(cube_size) if type(cube_size) is tuple and len(cube_size) == 3 and all(
        type(s) is int for s in cube_size) else list(as_integers(cube_size, 3, "rubikops.extract_cubes: cube_size"))
    seed = int(seed)
    seed = seed - (1 << 64) if seed >= (1 << 63) else seed
    scale_t = scale if isinstance(scale, torch.Tensor) else None
    shift_t = shift if isinstance(shift, torch.Tensor) else None
    scale_value = 1.0 if scale is None or scale_t is not None else float(scale)
    # -0.0 is the exact additive identity (x + -0.0 == x, also for x = -0.0).
    shift_value = -0.0 if shift is None or shift_t is not None else float(shift)
    lo, hi = clamp if clamp is not None else (None, None)
    args = (source, origins, size, index, rotations, mask, float(fill), float(keep_prob), seed, scale_t, shift_t,
            scale_value, shift_value, None if lo is None else float(lo), None if hi is None else float(hi),
            out_dtype)
    op = _get_triton_op() if name == "triton" else torch.ops.rubikops.extract_cubes
    if out is not None:
        if torch.is_grad_enabled() and source.requires_grad:
            raise RuntimeError("rubikops.extract_cubes: out= does not support autograd (source requires grad); "
                               "call without out=")
        return op.out(*args, out=out)
    return op(*args)


def available_backends() -> dict:
    """Which backends this installation has, and why one is missing."""
    return {
        "compiled_cpu": HAS_COMPILED and _has_kernel("rubikops::extract_cubes", "CPU"),
        "compiled_cpu_backward": HAS_CPU_BACKWARD_KERNEL,
        "compiled_cuda": HAS_CUDA_KERNEL,
        "compiled_cuda_backward": HAS_CUDA_BACKWARD_KERNEL,
        "compiled_cpu_sampler": HAS_CPU_SAMPLER_KERNEL,
        "compiled_cuda_sampler": HAS_CUDA_SAMPLER_KERNEL,
        "triton_sampler": _triton_sampler is not None,
        "triton": triton_available(),
        "torch_reference": True,
        "load_error": _LOAD_ERROR,
        "triton_error": _TRITON_ERROR,
    }
