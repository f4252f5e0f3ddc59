"""The argument checks of the rubikops ops, for the paths without C++ ones
(the plain-torch reference and Triton) and for the public API: the same
rules and messages as csrc/extract_cubes_checks.h,
csrc/sample_puzzle_checks.h and csrc/augment_draws_checks.h, so that no
input takes a kernel out of bounds and every bad input is one error that
names the argument."""
from __future__ import annotations

import math
from numbers import Integral, Real

import torch

from ._schema import CUBE_INTENSITY_FIELDS, CUBE_INTENSITY_WIDTH, SOURCE_DTYPES, ExtractCubesParams
from .rotations import NUM_CODES, preserves_shape


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


def check_tensors(p: ExtractCubesParams, out=None) -> tuple:
    """The checks every call makes, validate=False included: shapes, dtypes,
    devices, the fill of an integer output, out= (no device sync).  The same
    rules as csrc/extract_cubes_checks.h, for the paths without them (the
    reference and Triton), so that no input takes a kernel out of bounds.
    Returns the cube size."""
    source, origins, index, rotations, mask, fill = p.source, p.origins, p.index, p.rotations, p.mask, p.fill
    if not isinstance(source, torch.Tensor):
        _fail(TypeError, "source", f"must be a torch.Tensor, got {type(source).__name__}")
    if source.dim() != 5:
        _fail(ValueError, "source", f"must be 5-D (N, C, D, H, W), got shape {tuple(source.shape)}")
    if source.dtype not in SOURCE_DTYPES:
        _fail(TypeError, "source", f"has unsupported dtype {source.dtype}; supported: "
              + ", ".join(str(d).replace('torch.', '') for d in SOURCE_DTYPES))
    dev = source.device
    if not isinstance(origins, torch.Tensor):
        _fail(TypeError, "origins", f"must be a torch.Tensor, got {type(origins).__name__}")
    if origins.dim() != 3 or origins.shape[2] != 3:
        _fail(ValueError, "origins", f"must have shape (B, M, 3), got {tuple(origins.shape)}")
    B, M = origins.shape[0], origins.shape[1]
    _check_int_tensor(origins, "origins", (B, M, 3), dev)
    size = as_integers(p.cube_size, 3, "rubikops.extract_cubes: cube_size")
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
    for name, v in (("scale", p.scale_tensor), ("shift", p.shift_tensor)):
        if v is not None:
            _check_per_sample_tensor(v, name, B, dev)
    if p.affine is not None:
        if not isinstance(p.affine, torch.Tensor) or not p.affine.dtype.is_floating_point:
            _fail(TypeError, "affine", f"must be a floating tensor, got {getattr(p.affine, 'dtype', type(p.affine))}")
        if tuple(p.affine.shape) != (B, 3, 4):
            _fail(ValueError, "affine", f"must have shape ({B}, 3, 4) (one 3 x 4 matrix per sample), got "
                  f"{tuple(p.affine.shape)}")
        if p.affine.device != dev:
            _fail(ValueError, "affine", f"is on {p.affine.device} but source is on {dev}")
    if p.read_box is not None:
        if p.affine is None:
            _fail(ValueError, "read_box", "bounds the affine read: it needs affine")
        _check_int_tensor(p.read_box, "read_box", (B, 2, 3), dev)
    if p.cube_intensity is not None:
        q = p.cube_intensity
        if not isinstance(q, torch.Tensor) or not q.dtype.is_floating_point:
            _fail(TypeError, "cube_intensity", f"must be a floating tensor, got {getattr(q, 'dtype', type(q))}")
        if tuple(q.shape) != (B, M, CUBE_INTENSITY_WIDTH):
            _fail(ValueError, "cube_intensity", f"must have shape ({B}, {M}, {CUBE_INTENSITY_WIDTH}) (one row of "
                  f"{', '.join(CUBE_INTENSITY_FIELDS)} per cube), got {tuple(q.shape)}")
        if q.device != dev:
            _fail(ValueError, "cube_intensity", f"is on {q.device} but source is on {dev}")
    odt = p.result_dtype
    if not isinstance(odt, torch.dtype) or odt not in SOURCE_DTYPES:
        _fail(TypeError, "out_dtype", f"is not a supported dtype: {p.out_dtype!r}")
    if not odt.is_floating_point:
        if odt != source.dtype or p.changes_values:
            _fail(TypeError, "out_dtype", f"{odt} is integer; an integer output is only allowed as a plain copy "
                  "of a source of the same dtype (no scale, shift, clamp, affine or cube_intensity)")
        lo, hi = _INT_RANGES[odt]
        if not (lo <= fill <= hi and float(fill).is_integer()):
            _fail(ValueError, "fill", f"= {fill} is not a value of the {odt} output (an integer in [{lo}, {hi}])")
    if out is not None:
        check_out(out, (B, M, C, *size), odt, dev, (("source", source), *p.tensors().items()))
    return size


def validate_extract_cubes(p: ExtractCubesParams, out=None, data_checks: bool = True):
    """Raise a ValueError/TypeError naming the argument for every bad input.

    Shape, dtype and device checks always run; ``data_checks`` adds the checks
    that read tensor values (origins and indices in range, valid codes, finite
    scale and shift), which cost a device sync on GPU."""
    fill, keep_prob, seed, scale, shift, clamp = p.fill, p.keep_prob, p.seed, p.scale, p.shift, p.clamp
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
    size = check_tensors(p, out)
    source, origins, index, rotations = p.source, p.origins, p.index, p.rotations
    scale_t, shift_t = p.scale_tensor, p.shift_tensor
    B, M = origins.shape[0], origins.shape[1]
    if not data_checks or B * M == 0:
        return
    # Value checks (a device sync on GPU).  origins <= extent - size, not
    # origins + size <= extent: an origin near 2**63 would overflow the sum
    # into a negative number that passes.
    dev = source.device
    N, D, H, W = source.shape[0], *source.shape[2:]
    room = torch.tensor([D - size[0], H - size[1], W - size[2]], device=dev)
    # With an affine read the origins are crop-frame positions: where they land is the affine's choice,
    # and the read clamps into the volume.
    outside = ((origins < 0) | (origins > room)) if p.affine is None else torch.zeros(1, dtype=torch.bool)
    if bool(outside.any()):
        bad = outside.any(-1).nonzero()[0].tolist()
        _fail(ValueError, f"origins[{bad[0]}, {bad[1]}]", f"= {origins[bad[0], bad[1]].tolist()} puts a "
              f"{size} box outside the volume of shape {(D, H, W)}")
    if index is not None and B and not bool(((index >= 0) & (index < N)).all()):
        b = int(((index < 0) | (index >= N)).nonzero()[0, 0])
        _fail(ValueError, f"index[{b}]", f"= {int(index[b])} is out of range for source.shape[0] = {N}")
    if p.affine is not None and not bool(torch.isfinite(p.affine).all()):
        b = int((~torch.isfinite(p.affine)).flatten(1).any(1).nonzero()[0, 0])
        _fail(ValueError, f"affine[{b}]", "is not finite")
    if p.read_box is not None:
        top = torch.tensor([D - 1, H - 1, W - 1], device=dev)
        box_lo, box_hi = p.read_box[:, 0], p.read_box[:, 1]
        wrong = ((box_lo < 0) | (box_lo > box_hi) | (box_hi > top)).any(-1)
        if bool(wrong.any()):
            b = int(wrong.nonzero()[0, 0])
            _fail(ValueError, f"read_box[{b}]", f"= {p.read_box[b].tolist()} is not (lo, hi) with 0 <= lo <= hi <= "
                  f"{top.tolist()} (the source's last voxel)")
    for name, t in (("scale", scale_t), ("shift", shift_t)):
        if t is not None and not bool(torch.isfinite(t).all()):
            b = int((~torch.isfinite(t)).nonzero()[0, 0])
            _fail(ValueError, f"{name}[{b}]", f"= {float(t[b])} is not finite")
    if p.cube_intensity is not None:
        _check_cube_intensity(p.cube_intensity)
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


def _check_cube_intensity(q: torch.Tensor) -> None:
    """Each cube's intensity row holds finite numbers, a positive gamma and span, a noise >= 0 and a
    noise_key that is an integer in [0, 2**53) (exact in float64)."""
    field = {name: q[..., k].double() for k, name in enumerate(CUBE_INTENSITY_FIELDS)}
    key = field["noise_key"]
    rules = (("is not finite", ~torch.isfinite(q.double()).all(-1)),
             ("has gamma <= 0", ~(field["gamma"] > 0)), ("has span <= 0", ~(field["span"] > 0)),
             ("has noise < 0", ~(field["noise"] >= 0)),
             ("has a noise_key that is not an integer in [0, 2**53)", ~((key >= 0) & (key < 2.0 ** 53) &
                                                                       (key == key.floor()))))
    for problem, bad in rules:
        if bool(bad.any()):
            b, m = bad.nonzero()[0].tolist()
            _fail(ValueError, f"cube_intensity[{b}, {m}]", f"= {q[b, m].tolist()} {problem}")


def sample_puzzle_row_size(n_cells: int, M: int, rotations: bool, draw_mask: bool) -> int:
    """Uniforms per sample: 3 crop starts, 3 jitters a cell, 1 permutation, M
    rotation states (when drawn), M mask draws (when mask_prob > 0); as
    csrc/sample_puzzle.h."""
    return 3 + 3 * n_cells + 1 + (M if rotations else 0) + (M if draw_mask else 0)


def _op_fail(op: str, cls, problem: str):
    raise cls(f"rubikops.{op}: {problem}")


def _sampler_fail(cls, problem: str):
    _op_fail("sample_puzzle", cls, problem)


def _check_int_arguments(op: str, uniforms, named) -> None:
    """Each (name, tensor, dim) of ``named`` is a ``dim``-D int32 or int64 tensor on the uniforms' device
    (csrc/op_checks.h's check_int_argument)."""
    for name, t, dim in named:
        if not isinstance(t, torch.Tensor):
            _op_fail(op, TypeError, f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != dim:
            _op_fail(op, ValueError, f"{name} must be {dim}-D, got shape {list(t.shape)}")
        if t.dtype not in (torch.int32, torch.int64):
            _op_fail(op, TypeError, f"{name} must be int32 or int64, got {t.dtype}")
        if t.device != uniforms.device:
            _op_fail(op, ValueError, f"{name} is on {t.device} but uniforms is on {uniforms.device}")


def check_sample_puzzle(uniforms, volume_shapes, index, cells, permutations, code_table, crop_size, jitter,
                        mask_prob):
    """The sampler's argument checks for the paths without C++ ones (the
    reference and Triton): the same rules and messages as
    csrc/sample_puzzle_checks.h."""
    if not isinstance(uniforms, torch.Tensor) or uniforms.dtype != torch.float64:
        _sampler_fail(TypeError, f"uniforms must be float64, got {getattr(uniforms, 'dtype', type(uniforms))}")
    if uniforms.dim() != 2:
        _sampler_fail(ValueError, f"uniforms must be (B, n), got shape {list(uniforms.shape)}")
    _check_int_arguments("sample_puzzle", uniforms, (("volume_shapes", volume_shapes, 2), ("index", index, 1),
                                                     ("cells", cells, 2), ("permutations", permutations, 2),
                                                     ("code_table", code_table, 1)))
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


def _check_uniforms(op: str, uniforms, dim: int, last: int, layout: str):
    if not isinstance(uniforms, torch.Tensor) or uniforms.dtype != torch.float64:
        _op_fail(op, TypeError, f"uniforms must be float64, got {getattr(uniforms, 'dtype', type(uniforms))}")
    if uniforms.dim() != dim or uniforms.shape[-1] != last:
        _op_fail(op, ValueError, f"uniforms must be {layout}, got shape {list(uniforms.shape)}")


def _finite(*values) -> bool:
    return all(math.isfinite(v) for v in values)


def check_draw_crop_affine(uniforms, volume_shapes, index, crop_size, max_angle, zoom_low, zoom_high):
    """rubikops.draw_crop_affine's checks for the reference: the rules and messages of
    csrc/augment_draws_checks.h."""
    op = "draw_crop_affine"
    _check_uniforms(op, uniforms, 2, 7, "(B, 7)")
    _check_int_arguments(op, uniforms, (("volume_shapes", volume_shapes, 2), ("index", index, 1)))
    B = uniforms.shape[0]
    if volume_shapes.shape[1] != 3 or (volume_shapes.shape[0] < 1 and B > 0):
        _op_fail(op, ValueError, f"volume_shapes must be (N, 3) with N >= 1, got shape {list(volume_shapes.shape)}")
    if index.shape[0] != B:
        _op_fail(op, ValueError, f"index must have shape ({B},) (one volume per row of uniforms), "
                                   f"got {list(index.shape)}")
    if len(crop_size) != 3 or min(crop_size) < 1:
        _op_fail(op, ValueError, f"crop_size must be 3 positive ints, got {list(crop_size)}")
    if not (_finite(max_angle) and max_angle >= 0):
        _op_fail(op, ValueError, f"max_angle must be finite and >= 0 (degrees), got {max_angle}")
    if not (_finite(zoom_high) and 0 < zoom_low <= zoom_high):
        _op_fail(op, ValueError, f"zoom must be 0 < zoom_low <= zoom_high (finite), got {zoom_low}, {zoom_high}")


def check_draw_cube_intensity(uniforms, mean, sd, contrast_low, contrast_high, gamma_low, gamma_high, bias_field,
                              noise, p, window):
    """rubikops.draw_cube_intensity's checks for the reference: the rules and messages of
    csrc/augment_draws_checks.h."""
    op = "draw_cube_intensity"
    _check_uniforms(op, uniforms, 3, 11, "(B, M, 11)")
    B = uniforms.shape[0]
    for name, t in (("mean", mean), ("sd", sd)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            _op_fail(op, TypeError, f"{name} must be floating, got {getattr(t, 'dtype', type(t).__name__)}")
        if t.dim() != 1 or t.shape[0] != B:
            _op_fail(op, ValueError, f"{name} must have shape ({B},) (one value per sample), got {list(t.shape)}")
        if t.device != uniforms.device:
            _op_fail(op, ValueError, f"{name} is on {t.device} but uniforms is on {uniforms.device}")
    for name, low, high in (("contrast", contrast_low, contrast_high), ("gamma", gamma_low, gamma_high)):
        if not (_finite(high) and 0 < low <= high):
            _op_fail(op, ValueError, f"{name} must be 0 < low <= high (finite), got {low}, {high}")
    if not (_finite(bias_field, noise) and bias_field >= 0 and noise >= 0):
        _op_fail(op, ValueError, f"bias_field and noise must be finite and >= 0, got {bias_field}, {noise}")
    if not 0 <= p <= 1:
        _op_fail(op, ValueError, f"p must be in [0, 1], got {p}")
    if not (_finite(window) and window > 0):
        _op_fail(op, ValueError, f"window must be finite and > 0 (sds), got {window}")
