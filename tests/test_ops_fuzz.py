"""Property-based fuzzing of extract_cubes on every CPU backend (compiled,
Triton in the interpreter, the plain-torch reference) and every path
(validate=True, validate=False, extract_cubes_unchecked).

Each drawn call has one of two outcomes: the reference's result (the
reference clamps as the kernels do where validate=False), or a clean
ValueError/TypeError; never another exception, never a crash.  The source is
a view into a larger tensor padded with a sentinel, so a read outside the
view shows up as sentinel values in the result, and the padding is checked
unchanged afterwards.  Every other tensor argument (origins, index,
rotations, mask, scale, shift, affine, read_box) is drawn contiguous, as an offset view, with
doubled or reversed strides, or with stride 0 along one dim, inside a
storage of sentinels that name other volumes, boxes, codes and masks.

The number of examples is bounded for CI (RUBIKOPS_FUZZ_EXAMPLES, default
300, derandomized: about 15 s on the 2-core VM); set it higher, with
RUBIKOPS_FUZZ_RANDOM=1 for fresh draws, for a long run (2-core VM under
load: 3000 examples in 147 s before cube sizes were drawn, 10000 in 518 s
after; all passing).
"""
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import rubikops  # noqa: E402
from rubikops import ops, reference  # noqa: E402
from rubikops._schema import ExtractCubesParams  # noqa: E402

from .testing import ALL_DTYPES, Case, assert_matches  # noqa: E402

BACKEND_NAMES = ["compiled", "torch"] + (["triton"] if ops.triton_available() and ops.interpreter_enabled() else [])
PATHS = ["validate", "no-validate", "unchecked"]
CLEAN = (ValueError, TypeError)

FUZZ = settings(max_examples=int(os.environ.get("RUBIKOPS_FUZZ_EXAMPLES", "300")), deadline=None, database=None,
                derandomize=os.environ.get("RUBIKOPS_FUZZ_RANDOM", "0") in ("", "0"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])

# Out of range in every way a caller can get it wrong: negative, just past
# the end, beyond int32, near the int64 limits (where a sum would overflow).
WILD = st.sampled_from([-1, -2, 2**31, 2**31 + 5, -(2**31) - 1, 2**40 + 7, 2**62, -(2**62), 2**63 - 1, -(2**63)])


def _values(draw, n, lo, hi, dtype):
    """n integers, mostly in [lo, hi], some wild (int32 tensors get int32 values)."""
    vals = draw(st.lists(st.one_of(st.integers(lo, hi), st.integers(lo, hi), WILD), min_size=n, max_size=n))
    if dtype == torch.int32:
        vals = [max(min(v, 2**31 - 1), -(2**31)) for v in vals]
    return torch.tensor(vals, dtype=dtype) if n else torch.zeros(0, dtype=dtype)


def _wrong_shape(draw, shape):
    """Sometimes a shape that is not ``shape``: (1,), (1, 1) or one entry off."""
    return draw(st.sampled_from([shape] * 20 + [(1,), (1, 1), tuple(s + 1 for s in shape)]))


SENTINEL = {torch.uint8: 250, torch.int16: 31000}  # floats: 31000.0, outside the drawn values
# What surrounds an argument view in its storage: a kernel that reads past the view reads these,
# which name another volume, origin, code or mask than the view holds (or a value the draws never make).
ARG_SENTINEL = {torch.bool: True, torch.int32: 2**31 - 1, torch.int64: 2**40 + 7, torch.uint8: 250,
                torch.int16: 31000}


def _laid_out(draw, t):
    """``t`` (an argument tensor) as the caller may lay it out: contiguous, an
    offset view, every other element, dims reversed in memory, or stride 0
    along one dim (then every entry along it holds the first one's values);
    the views sit inside a sentinel-filled storage."""
    layout = draw(st.sampled_from(["contiguous", "contiguous", "offset", "strided", "reversed", "expanded"]))
    event(f"argument layout: {layout}")
    if layout == "contiguous" or t.dim() == 0 or t.numel() == 0:
        return t
    base, expand_dim = t, None
    if layout == "expanded":
        expand_dim = draw(st.integers(0, t.dim() - 1))
        base = t.narrow(expand_dim, 0, 1)
    step = 2 if layout == "strided" else 1
    order = list(range(t.dim()))[::-1] if layout == "reversed" else list(range(t.dim()))
    strides, extent = [0] * t.dim(), step
    for d in reversed(order):  # the last of `order` varies fastest
        strides[d] = extent
        extent *= base.shape[d]
    offset = draw(st.integers(1, 3))
    storage = torch.full((offset + extent + 2,), ARG_SENTINEL.get(t.dtype, 31000.0), dtype=t.dtype)
    view = storage.as_strided(base.shape, strides, offset)
    view.copy_(base)
    return view.expand(t.shape) if expand_dim is not None else view


@st.composite
def calls(draw):
    dtype = draw(st.sampled_from(ALL_DTYPES))
    B, M, C = draw(st.integers(0, 3)), draw(st.integers(0, 3)), draw(st.integers(1, 2))
    dims = tuple(draw(st.integers(1, 6)) for _ in range(3))
    N = draw(st.sampled_from([B, B, B, 0, 1, 3])) if B else draw(st.sampled_from([0, 1, 2]))
    cube = tuple(draw(st.integers(1, d + (1 if draw(st.integers(0, 15)) == 0 else 0))) for d in dims)

    # The source: a view into a sentinel-padded tensor, maybe transposed,
    # strided along W, or expanded along N (stride 0).
    layout = draw(st.sampled_from(["padded", "transposed", "strided", "expanded"]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    lo, hi = (0, 200) if dtype == torch.uint8 else (-100, 100)
    D, H, W = dims
    n_store = 1 if layout == "expanded" else N
    pad = 2
    if layout == "transposed":
        store = (n_store + 2, C, H + 2 * pad, D + 2 * pad, W + 2 * pad)
    elif layout == "strided":
        store = (n_store + 2, C, D + 2 * pad, H + 2 * pad, 2 * W + 2 * pad)
    else:
        store = (n_store + 2, C, D + 2 * pad, H + 2 * pad, W + 2 * pad)
    big = torch.full(store, SENTINEL.get(dtype, 31000), dtype=torch.float64).to(dtype)
    inner = (slice(1, 1 + n_store), slice(None), slice(pad, -pad), slice(pad, -pad), slice(pad, -pad))
    big[inner] = torch.randint(lo, hi + 1, big[inner].shape, generator=gen).to(dtype)
    view = big[inner]
    if layout == "transposed":
        view = view.transpose(2, 3)
    elif layout == "strided":
        view = view[..., ::2]
    elif layout == "expanded":
        view = view.expand(N, C, D, H, W)
    source = view

    int_dtype = draw(st.sampled_from([torch.int64, torch.int32]))
    origins = torch.stack([_values(draw, B * M, 0, max(d - c, 0) + 1, int_dtype) for d, c in zip(dims, cube)], -1)
    origins = _laid_out(draw, origins.view(B, M, 3))
    kw = {}
    if draw(st.booleans()):
        idx_dtype = draw(st.sampled_from([torch.int64, torch.int32] * 8 + [torch.float32]))
        shape = _wrong_shape(draw, (B,))
        t = _values(draw, B, -1, N, torch.int64)
        kw["index"] = (t if shape == (B,) else torch.zeros(shape, dtype=torch.int64)).to(idx_dtype)
    if draw(st.booleans()):
        shape = _wrong_shape(draw, (B, M))
        codes = _values(draw, B * M, 0, 47, torch.int64).view(B, M)
        kw["rotations"] = codes if shape == (B, M) else torch.zeros(shape, dtype=torch.int64)
        kw["rotations"] = kw["rotations"].to(draw(st.sampled_from([torch.int64] * 3 + [torch.int32])))
    if draw(st.booleans()):
        shape = _wrong_shape(draw, (B, M))
        mask = torch.rand(shape, generator=gen) < 0.5
        kw["mask"] = mask if draw(st.integers(0, 15)) else mask.to(torch.uint8)
        kw["keep_prob"] = draw(st.sampled_from([0.0, 0.0, 0.3, 1.0]))
        kw["seed"] = draw(st.sampled_from([0, 7, 2**62 + 3, 2**64 - 1, -5]))
    # Mostly what the source allows (an integer output only as a plain copy).
    out_dtype = draw(st.sampled_from([None] * 4 + [dtype] * 2 + ALL_DTYPES))
    odt = out_dtype or reference.default_out_dtype(dtype)
    if odt.is_floating_point:
        kw["fill"] = draw(st.sampled_from([0.0, -1.5, 7.0]))
    else:
        kw["fill"] = draw(st.sampled_from([0, 3, 255] * 4 + [300, -1, 2.5]))
    for name in ("scale", "shift"):
        form = draw(st.sampled_from([None, None, None, "float", "tensor"]))
        if form == "float":
            kw[name] = draw(st.sampled_from([0.5, -2.0, 3.25]))  # never 1.0 / -0.0, the op's "no arithmetic"
        elif form == "tensor":
            shape = _wrong_shape(draw, (B,))
            vals = torch.tensor(draw(st.lists(st.sampled_from([0.5, -1.0, 2.0, 0.25] * 4 + [float("nan"), float("inf")]),
                                              min_size=shape[0], max_size=shape[0])), dtype=torch.float64)
            t = vals.view(shape[0]) if len(shape) == 1 else torch.zeros(shape, dtype=torch.float64)
            kw[name] = t.to(draw(st.sampled_from([torch.float64, torch.float32] * 4 + [torch.int64])))
    if draw(st.integers(0, 3)) == 0:
        kw["clamp"] = draw(st.sampled_from([(-50.0, 50.0), (None, 10.0), (-10.0, None)]))
    if draw(st.integers(0, 5)) == 0:
        # The affine read: origins are crop-frame positions, reads clamp into the volume (NaN reads voxel 0).
        shape = _wrong_shape(draw, (B, 3, 4))
        A = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
        if A.numel() and draw(st.integers(0, 7)) == 0:
            A.view(-1)[draw(st.integers(0, A.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf")]))
        kw["affine"] = A.to(draw(st.sampled_from([torch.float64] * 3 + [torch.float32, torch.int64])))
    if draw(st.integers(0, 7)) == 0:
        # A read box per sample: mostly inside the source, sometimes past it or upside down (validate=False
        # clamps it as the reference does), now and then without an affine or of the wrong shape or dtype.
        shape = _wrong_shape(draw, (B, 2, 3))
        extent = torch.tensor(source.shape[2:] if source.dim() == 5 else (1, 1, 1))
        box = (torch.rand(shape, generator=gen) * (extent + 4) - 2).long() if len(shape) == 3 and shape[1:] == (2, 3) \
            else torch.zeros(shape, dtype=torch.int64)
        if len(shape) == 3 and shape[1:] == (2, 3) and draw(st.booleans()):
            box[:, 1] = torch.maximum(box[:, 1], box[:, 0])  # ordered boxes, the common case
        kw["read_box"] = box.to(draw(st.sampled_from([torch.int64] * 3 + [torch.int32, torch.float32])))
    for name in ("index", "rotations", "mask", "scale", "shift", "affine", "read_box"):
        if isinstance(kw.get(name), torch.Tensor):
            kw[name] = _laid_out(draw, kw[name])
    if out_dtype is not None:
        kw["out_dtype"] = out_dtype
    out_form = draw(st.sampled_from([None] * 6 + ["fresh"] * 4 + ["wrong-shape", "wrong-dtype", "overlap"]))
    shape = (B, M, C, *cube)
    numel = B * M * C * cube[0] * cube[1] * cube[2]
    if out_form == "fresh":
        kw["out"] = torch.full(shape, 3, dtype=odt)
    elif out_form == "wrong-shape":
        kw["out"] = torch.zeros((B + 1, M, C, *cube), dtype=odt)
    elif out_form == "wrong-dtype":
        kw["out"] = torch.zeros(shape, dtype=torch.float64 if odt != torch.float64 else torch.float32)
    elif out_form == "overlap" and odt == dtype and 0 < numel <= big.numel() - source.storage_offset() \
            and source.numel() > 0:
        start = source.storage_offset()  # the view's first element: out shares at least that one
        kw["out"] = big.view(-1)[start:start + numel].view(shape)
    # cube_size as the caller may write it: a list, integral floats, or what
    # int() would truncate (a fraction, a bool, a string of digits).
    form = draw(st.sampled_from(["tuple"] * 12 + ["list", "floats", "fraction", "bool", "string"]))
    cube_arg = {"tuple": cube, "list": list(cube), "floats": tuple(float(c) for c in cube),
                "fraction": (cube[0] + 0.5, *cube[1:]), "bool": (True, *cube[1:]),
                "string": "".join(str(c) for c in cube)}[form]
    return big, source, origins, cube, cube_arg, kw


def _outcome(fn):
    try:
        return fn(), None
    except CLEAN as exc:
        return None, exc


def _call(path, backend, source, origins, cube, kw):
    if path == "unchecked":
        return ops.extract_cubes_unchecked(source, origins, cube, backend=backend, **kw)
    return rubikops.extract_cubes(source, origins, cube, validate=path == "validate", backend=backend, **kw)


@FUZZ
@given(call=calls(), path=st.sampled_from(PATHS))
def test_every_backend_returns_the_reference_or_a_clean_error(call, path):
    big, source, origins, cube, cube_arg, kw = call
    big_before = big.clone()

    def checks(data):
        params = ExtractCubesParams(source, origins, cube_arg, **{k: v for k, v in kw.items() if k != "out"})
        return _outcome(lambda: ops.validate_extract_cubes(params, kw.get("out"), data_checks=data))[1]

    meta_error, data_error = checks(False), checks(True)
    must_refuse = data_error if path == "validate" else meta_error
    event(f"{path}: {'refused' if must_refuse else 'computed'}")
    case_kw = {k: v for k, v in kw.items() if k != "out"}
    for backend in BACKEND_NAMES:
        out = kw.get("out")
        if out is not None and must_refuse is None:
            out.fill_(3)
        where = f"{backend}/{path}"
        result, error = _outcome(lambda: _call(path, backend, source, origins, cube_arg, kw))
        if must_refuse is not None:
            assert error is not None, f"{where}: accepted what validation refuses ({must_refuse})"
        else:
            assert error is None, f"{where}: refused a valid call: {error}"
            if out is not None:
                assert result.data_ptr() == out.data_ptr(), where
            # The reference reads the view through torch indexing: a kernel
            # that reads past it returns sentinel values and differs here.
            assert_matches(result, Case(source, origins, cube, case_kw))
        # An out= inside the padded storage is always refused, so nothing
        # may have written there.
        assert torch.equal(big, big_before), f"{where}: wrote into the source's storage"
