"""rubikops::draw_crop_affine and rubikops::draw_cube_intensity (the
augmentation's draws as ops): every kernel against an independent NumPy
rule and against the plain-torch reference, on random inputs and awkward
layouts (strided, stride-0 and offset views of every tensor argument); their
schemas, fake kernels, torch.compile, and errors that name the argument."""
import math
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rubikops import _library, _schema, ops, reference

DEVICES = [pytest.param("cpu", id="cpu")]
if torch.cuda.is_available():
    DEVICES.append(pytest.param("cuda", id="cuda", marks=pytest.mark.cuda))
# the dispatcher's kernel on each device, and the reference's own path (its Python checks)
PATHS = [pytest.param(("compiled", d.values[0]), id=f"{d.values[0]}-compiled", marks=d.marks) for d in DEVICES] + \
    [pytest.param(("torch", "cpu"), id="cpu-reference")]

CROP_ARGS = dict(crop_size=(34, 30, 21), max_angle=10.0, zoom_low=0.9, zoom_high=1.1)
INTENSITY_ARGS = dict(contrast=(0.75, 1.25), gamma=(0.7, 1.5), bias_field=0.3, noise=0.05, p=0.8, window=3.0)


def crop_inputs(seed, B=13, N=4, device="cpu", crop_size=CROP_ARGS["crop_size"]):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(B, 7, generator=g, dtype=torch.float64)
    # some volumes smaller than the crop along an axis: their centre stays at the crop's middle there
    shapes = torch.tensor(crop_size) + torch.randint(-3, 40, (N, 3), generator=g)
    index = torch.randint(0, N, (B,), generator=g)
    return u.to(device), shapes.to(device), index.to(device)


def intensity_inputs(seed, B=5, M=8, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(B, M, 11, generator=g, dtype=torch.float64)
    mean = torch.randn(B, generator=g, dtype=torch.float64) * 50
    sd = torch.rand(B, generator=g, dtype=torch.float64) * 20
    return u.to(device), mean.to(device), sd.to(device)


def crop_affine(path, u, shapes, index, crop_size=CROP_ARGS["crop_size"], max_angle=10.0, zoom=(0.9, 1.1)):
    return ops.draw_crop_affine(u, shapes, index, crop_size, max_angle, *zoom, backend=path)


def cube_intensity(path, u, mean, sd, **kw):
    a = dict(INTENSITY_ARGS, **kw)
    return ops.draw_cube_intensity(u, mean, sd, a["contrast"], a["gamma"], a["bias_field"], a["noise"], a["p"],
                                   a["window"], backend=path)


def crop_affine_numpy(u, shapes, index, crop_size, max_angle, zoom_low, zoom_high):
    """The rule of csrc/augment_draws.h, one sample at a time in NumPy: the
    three elementary rotations multiplied, the centre mapped back."""
    u, shapes, index = u.cpu().numpy(), shapes.cpu().numpy(), index.cpu().numpy()
    out = np.empty((len(u), 3, 4))
    for b in range(len(u)):
        n = min(max(int(index[b]), 0), len(shapes) - 1)
        half = (np.array(crop_size, dtype=np.float64) - 1) / 2
        centre = half + u[b, :3] * np.maximum(shapes[n] - np.array(crop_size), 0)
        a = (2 * u[b, 3:6] - 1) * np.deg2rad(max_angle)
        c, s = np.cos(a), np.sin(a)
        r_d = np.array([[1, 0, 0], [0, c[0], -s[0]], [0, s[0], c[0]]])
        r_h = np.array([[c[1], 0, s[1]], [0, 1, 0], [-s[1], 0, c[1]]])
        r_w = np.array([[c[2], -s[2], 0], [s[2], c[2], 0], [0, 0, 1]])
        zoom = math.exp(math.log(zoom_low) + u[b, 6] * (math.log(zoom_high) - math.log(zoom_low)))
        m = r_d @ r_h @ r_w * zoom
        out[b] = np.concatenate([m, (centre - m @ half)[:, None]], 1)
    return out


def cube_intensity_numpy(u, mean, sd, contrast, gamma, bias_field, noise, p, window):
    """The rule of csrc/augment_draws.h written out per cube with Python floats."""
    u, mean, sd = u.cpu().numpy(), mean.cpu().double().numpy(), sd.cpu().double().numpy()
    B, M = u.shape[:2]
    out = np.empty((B, M, 10))
    for b in range(B):
        s = max(float(sd[b]), 1e-6)
        for m in range(M):
            v = u[b, m]
            c = contrast[0] + v[4] * (contrast[1] - contrast[0]) if v[0] < p else 1.0
            g = math.exp(math.log(gamma[0]) + v[5] * (math.log(gamma[1]) - math.log(gamma[0]))) if v[1] < p else 1.0
            bias = [(2 * v[6 + i] - 1) * bias_field if v[2] < p else 0.0 for i in range(3)]
            nu = noise if v[3] < p else 0.0
            mu = float(mean[b])
            out[b, m] = [c, (1 - c) * mu, g, mu - window * c * s, 2 * window * c * s, nu * c * s, *bias,
                         math.floor(v[10] * 2.0 ** 53)]
    return out


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_crop_affine_follows_its_rule(path, seed):
    name, device = path
    u, shapes, index = crop_inputs(seed, device=device)
    max_angle, zoom = [10.0, 45.0, 0.0][seed], [(0.9, 1.1), (0.5, 2.0), (1.0, 1.0)][seed]
    got = crop_affine(name, u, shapes, index, max_angle=max_angle, zoom=zoom)
    assert got.dtype == torch.float64 and got.shape == (13, 3, 4) and got.device.type == device
    want = crop_affine_numpy(u, shapes, index, CROP_ARGS["crop_size"], max_angle, *zoom)
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_cube_intensity_follows_its_rule(path, p):
    name, device = path
    u, mean, sd = intensity_inputs(int(p * 10), device=device)
    sd[0] = 0.0  # a constant volume: its window is 1e-6 sds wide
    got = cube_intensity(name, u, mean, sd, p=p)
    assert got.dtype == torch.float64 and got.shape == (5, 8, _schema.CUBE_INTENSITY_WIDTH)
    want = cube_intensity_numpy(u, mean, sd, **dict(INTENSITY_ARGS, p=p))
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-14, atol=1e-12)
    assert np.array_equal(got[..., 9].cpu().numpy(), want[..., 9])  # the noise key exactly


@pytest.mark.parametrize("device", DEVICES)
def test_kernels_equal_the_reference(device):
    """The compiled kernels compute the reference's float64 arithmetic: the same values to the last bits."""
    u, shapes, index = crop_inputs(3, B=64, device=device)
    torch.testing.assert_close(crop_affine("compiled", u, shapes, index), crop_affine("torch", u, shapes, index),
                               rtol=1e-15, atol=1e-13)
    u, mean, sd = intensity_inputs(4, B=16, M=27, device=device)
    torch.testing.assert_close(cube_intensity("compiled", u, mean, sd), cube_intensity("torch", u, mean, sd),
                               rtol=1e-15, atol=1e-13)


def _views(t, kind):
    """``t``'s values as a view of another layout: strided (every other row of a bigger tensor), offset
    (a slice past the storage's start), transposed (for a 1-D tensor: every third entry from the second),
    or stride-0 (an expanded row, values made equal)."""
    if kind == "transposed" and t.dim() == 1:
        big = torch.empty(3 * t.shape[0] + 1, dtype=t.dtype, device=t.device)
        big[1::3] = t
        return big[1::3]
    if kind == "strided":
        big = torch.empty((t.shape[0] * 2,) + t.shape[1:], dtype=t.dtype, device=t.device)
        big[::2] = t
        return big[::2]
    if kind == "offset":
        big = torch.empty((t.shape[0] + 3,) + t.shape[1:], dtype=t.dtype, device=t.device)
        big[3:] = t
        return big[3:]
    if kind == "transposed":
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    return t[:1].expand(t.shape)  # stride 0


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["strided", "offset", "transposed", "stride-0"])
@pytest.mark.parametrize("argument", [0, 1, 2])
def test_any_view_of_any_argument(path, kind, argument):
    name, device = path
    seed = zlib.crc32(repr((kind, argument)).encode())
    crop = list(crop_inputs(seed, device=device))
    crop[argument] = _views(crop[argument], kind)
    want = crop_affine_numpy(*[t.contiguous() for t in crop], CROP_ARGS["crop_size"], 10.0, 0.9, 1.1)
    np.testing.assert_allclose(crop_affine(name, *crop).cpu().numpy(), want, rtol=0, atol=1e-12)
    intensity = list(intensity_inputs(seed, device=device))
    intensity[argument] = _views(intensity[argument], kind)
    want = cube_intensity_numpy(*[t.contiguous() for t in intensity], **INTENSITY_ARGS)
    np.testing.assert_allclose(cube_intensity(name, *intensity).cpu().numpy(), want, rtol=1e-14, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_other_dtypes_and_sizes(path):
    """int32 shapes and index, float32 statistics, no sample, one cube."""
    name, device = path
    u, shapes, index = crop_inputs(7, device=device)
    want = crop_affine_numpy(u, shapes, index, CROP_ARGS["crop_size"], 10.0, 0.9, 1.1)
    got = crop_affine(name, u, shapes.int(), index.int())
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=0, atol=1e-12)
    assert crop_affine(name, u[:0], shapes, index[:0]).shape == (0, 3, 4)
    u, mean, sd = intensity_inputs(8, M=1, device=device)
    got = cube_intensity(name, u, mean.float(), sd.float())
    want = cube_intensity_numpy(u, mean.float(), sd.float(), **INTENSITY_ARGS)
    np.testing.assert_allclose(got.cpu().numpy(), want, rtol=1e-14, atol=1e-12)
    assert cube_intensity(name, u[:0], mean[:0], sd[:0]).shape == (0, 1, 10)


@pytest.mark.parametrize("path", PATHS)
def test_out_of_range_volume_indices_are_clamped(path):
    """validate=False callers may pass anything: an index past either end reads the nearest volume's
    extents (as sample_puzzle and extract_cubes clamp), never memory past the shapes."""
    name, device = path
    u, shapes, index = crop_inputs(9, B=4, device=device)
    bad = torch.tensor([-5, 0, 3, 99], device=device)
    clamped = torch.tensor([0, 0, 3, 3], device=device)
    torch.testing.assert_close(crop_affine(name, u, shapes, bad), crop_affine(name, u, shapes, clamped), rtol=0,
                               atol=0)


@pytest.mark.parametrize("path", PATHS)
def test_nan_and_inf_pass_through_like_the_reference(path):
    """Statistics and uniforms that are NaN or infinite give the reference's rows (NaN where it has NaN), and
    a NaN or huge key stays a float the cut reads as key 0; nothing reads out of bounds."""
    name, device = path
    u, mean, sd = intensity_inputs(12, B=4, device=device)
    mean[0], sd[1], sd[2], mean[3] = math.nan, math.nan, math.inf, -math.inf
    u[0, 0, 4], u[1, 1, 10], u[2, 2, 5] = math.nan, math.inf, -math.inf
    got, want = cube_intensity(name, u, mean, sd, p=1.0), cube_intensity("torch", u, mean, sd, p=1.0)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-11, equal_nan=True)
    u, shapes, index = crop_inputs(13, B=3, device=device)
    u[0, 0], u[1, 4], u[2, 6] = math.nan, math.inf, -math.inf
    torch.testing.assert_close(crop_affine(name, u, shapes, index), crop_affine("torch", u, shapes, index),
                               rtol=1e-14, atol=1e-11, equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), B=st.integers(0, 9), M=st.integers(1, 30), N=st.integers(1, 5),
       crop=st.tuples(*[st.integers(1, 40)] * 3), max_angle=st.floats(0, 180), zoom_low=st.floats(0.1, 3),
       zoom_ratio=st.floats(1, 4), contrast_low=st.floats(0.01, 3), gamma_low=st.floats(0.01, 3),
       p=st.floats(0, 1), window=st.floats(0.01, 10))
def test_kernels_equal_the_reference_on_any_settings(seed, B, M, N, crop, max_angle, zoom_low, zoom_ratio,
                                                     contrast_low, gamma_low, p, window):
    u, shapes, index = crop_inputs(seed, B=B, N=N, crop_size=crop)
    args = (u, shapes, index, crop, max_angle, (zoom_low, zoom_low * zoom_ratio))
    torch.testing.assert_close(crop_affine("compiled", *args), crop_affine("torch", *args), rtol=1e-14, atol=1e-11)
    u, mean, sd = intensity_inputs(seed, B=B, M=M)
    kw = dict(contrast=(contrast_low, contrast_low * zoom_ratio), gamma=(gamma_low, gamma_low * zoom_ratio), p=p,
              window=window)
    torch.testing.assert_close(cube_intensity("compiled", u, mean, sd, **kw), cube_intensity("torch", u, mean, sd, **kw),
                               rtol=1e-14, atol=1e-11)


def _schema_args(device):
    u, shapes, index = crop_inputs(10, device=device)
    crop = (u, shapes, index, list(CROP_ARGS["crop_size"]), 10.0, 0.9, 1.1)
    u, mean, sd = intensity_inputs(11, device=device)
    intensity = (u, mean, sd, 0.75, 1.25, 0.7, 1.5, 0.3, 0.05, 0.8, 3.0)
    return crop, intensity


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    crop, intensity = _schema_args(device)
    torch.library.opcheck(torch.ops.rubikops.draw_crop_affine.default, crop)
    torch.library.opcheck(torch.ops.rubikops.draw_cube_intensity.default, intensity)


def test_torch_compile_fullgraph():
    crop, intensity = _schema_args("cpu")

    @torch.compile(fullgraph=True)
    def draws(u, shapes, index, v, mean, sd):
        affine = torch.ops.rubikops.draw_crop_affine(u, shapes, index, *crop[3:])
        rows = torch.ops.rubikops.draw_cube_intensity(v, mean, sd, *intensity[3:])
        return affine * 2, rows + 1

    affine, rows = draws(*crop[:3], *intensity[:3])
    torch.testing.assert_close(affine, 2 * reference.draw_crop_affine(*crop), rtol=1e-15, atol=1e-13)
    torch.testing.assert_close(rows, 1 + reference.draw_cube_intensity(*intensity), rtol=1e-15, atol=1e-13)


def test_public_crop_size_is_checked_before_the_schema():
    """A crop_size the schema's int64 cannot hold, or one that is not integers, names crop_size."""
    crop, _ = _schema_args("cpu")
    for bad, exc in (((2 ** 63, 4, 4), ValueError), ((4, 4, 2.5), ValueError), ("444", TypeError), ((4, 4), TypeError)):
        with pytest.raises(exc, match="rubikops.draw_crop_affine: crop_size"):
            crop_affine("compiled", *crop[:3], crop_size=bad)


def test_backend_torch_runs_the_reference(monkeypatch):
    crop, intensity = _schema_args("cpu")
    calls = []
    monkeypatch.setattr(reference, "draw_crop_affine", lambda *a: calls.append("crop") or "reference")
    monkeypatch.setattr(reference, "draw_cube_intensity", lambda *a: calls.append("intensity") or "reference")
    assert crop_affine("torch", *crop[:3]) == "reference"
    assert cube_intensity("torch", *intensity[:3]) == "reference"
    monkeypatch.setattr(ops, "DEFAULT_BACKEND", "torch")  # RUBIKOPS_BACKEND, as read at import
    assert crop_affine(None, *crop[:3]) == "reference"
    assert calls == ["crop", "intensity", "crop"]
    assert not isinstance(crop_affine("compiled", *crop[:3]), str)
    with pytest.raises(ValueError, match="rubikops.draw_crop_affine: backend must be one of"):
        crop_affine("nope", *crop[:3])


def test_compiled_kernels_are_reported():
    compiled = ops.available_backends()["compiled"]
    assert compiled["cpu_draws"] is True
    assert compiled["cuda_draws"] == compiled["cuda"]  # a CUDA build has the draws' kernels too


def _with(args, i, value):
    args = list(args)
    args[i] = value
    return args


CROP_ERRORS = [
    (lambda a: _with(a, 0, a[0].float()), TypeError, "uniforms must be float64"),
    (lambda a: _with(a, 0, a[0][:, :6]), ValueError, r"uniforms must be \(B, 7\)"),
    (lambda a: _with(a, 1, a[1][:, :2]), ValueError, r"volume_shapes must be \(N, 3\) with N >= 1"),
    (lambda a: _with(a, 1, a[1][:0]), ValueError, r"volume_shapes must be \(N, 3\) with N >= 1"),
    (lambda a: _with(a, 1, a[1].float()), TypeError, "volume_shapes must be int32 or int64"),
    (lambda a: _with(a, 2, a[2][:-1]), ValueError, "index must have shape"),
    (lambda a: _with(a, 2, a[2][:, None]), ValueError, "index must be 1-D"),
    (lambda a: _with(a, 0, a[0][0, 0]), ValueError, r"uniforms must be \(B, 7\)"),
    (lambda a: _with(a, 2, a[2] > 0), TypeError, "index must be int32 or int64"),
    (lambda a: _with(a, 3, [1, 2]), ValueError, "crop_size must be 3 positive ints"),
    (lambda a: _with(a, 3, [4, 0, 4]), ValueError, "crop_size must be 3 positive ints"),
    (lambda a: _with(a, 4, -1.0), ValueError, "max_angle must be finite and >= 0"),
    (lambda a: _with(a, 4, math.nan), ValueError, "max_angle must be finite and >= 0"),
    (lambda a: _with(a, 5, 0.0), ValueError, "zoom must be 0 < zoom_low <= zoom_high"),
    (lambda a: _with(a, 6, 0.5), ValueError, "zoom must be 0 < zoom_low <= zoom_high"),
    (lambda a: _with(a, 6, math.inf), ValueError, "zoom must be 0 < zoom_low <= zoom_high"),
]
INTENSITY_ERRORS = [
    (lambda a: _with(a, 0, a[0].float()), TypeError, "uniforms must be float64"),
    (lambda a: _with(a, 0, a[0][..., :10]), ValueError, r"uniforms must be \(B, M, 11\)"),
    (lambda a: _with(a, 0, a[0][0]), ValueError, r"uniforms must be \(B, M, 11\)"),
    (lambda a: _with(a, 1, a[1].long()), TypeError, "mean must be floating"),
    (lambda a: _with(a, 1, a[1] > 0), TypeError, "mean must be floating"),
    (lambda a: _with(a, 2, a[2][0]), ValueError, r"sd must have shape \(5,\)"),
    (lambda a: _with(a, 2, a[2][:-1]), ValueError, r"sd must have shape \(5,\)"),
    (lambda a: _with(a, 3, 0.0), ValueError, "contrast must be 0 < low <= high"),
    (lambda a: _with(a, 5, 2.0), ValueError, "gamma must be 0 < low <= high"),
    (lambda a: _with(a, 7, -0.1), ValueError, "bias_field and noise must be finite and >= 0"),
    (lambda a: _with(a, 8, math.inf), ValueError, "bias_field and noise must be finite and >= 0"),
    (lambda a: _with(a, 9, 1.5), ValueError, r"p must be in \[0, 1\]"),
    (lambda a: _with(a, 9, math.nan), ValueError, r"p must be in \[0, 1\]"),
    (lambda a: _with(a, 10, 0.0), ValueError, "window must be finite and > 0"),
]


@pytest.mark.parametrize("path", ["compiled", "torch"])
@pytest.mark.parametrize("op,change,exc,match", [("draw_crop_affine", *e) for e in CROP_ERRORS]
                         + [("draw_cube_intensity", *e) for e in INTENSITY_ERRORS])
def test_errors_name_the_argument(path, op, change, exc, match):
    """The C++ checks (compiled kernels) and the Python ones (reference) give the same error type and
    message for the same mistake (up to how each spells a dtype or a float)."""
    crop, intensity = _schema_args("cpu")
    args = change(crop if op == "draw_crop_affine" else intensity)
    kernel = getattr(torch.ops.rubikops, op) if path == "compiled" else getattr(_library, f"{op}_generic")
    with pytest.raises(exc, match=f"rubikops.{op}: {match}"):
        kernel(*args)


def test_intensity_draws_refuse_what_is_not_their_uniforms():
    """The old IntensityDraws(values, window) call, or uniforms of another layout, fail where they are made."""
    from rubikops.augment import IntensityAugment, IntensityDraws

    draws = IntensityAugment().draw(2, 3, torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="IntensityDraws: augment must be the IntensityAugment"):
        IntensityDraws(draws.values, 3.0)
    with pytest.raises(ValueError, match=r"IntensityDraws: uniforms must be a \(B, M, 11\) float64 tensor"):
        IntensityDraws(draws.values, draws.augment)
