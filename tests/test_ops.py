"""Registration: schema, opcheck, gradcheck, torch.compile, backend choice, validation."""
import math
import os

import pytest
import torch

import rubikops
from rubikops import _library, _schema, backends, ops, reference

from .testing import BACKENDS, random_case


def test_the_registered_schemas_are_the_python_ones():
    if not ops.HAS_COMPILED:
        pytest.fail(f"compiled library missing: {backends.REGISTRY['compiled'].error}")
    assert str(torch.ops.rubikops.extract_cubes.default._schema) == "rubikops::" + _schema.EXTRACT_CUBES_SCHEMA
    assert str(torch.ops.rubikops.extract_cubes.out._schema) == "rubikops::" + _schema.EXTRACT_CUBES_OUT_SCHEMA
    assert str(torch.ops.rubikops.extract_cubes_backward.default._schema) == \
        "rubikops::" + _schema.EXTRACT_CUBES_BACKWARD_SCHEMA
    # the backward reads the forward's argument list as it is, after the gradient
    assert _schema.EXTRACT_CUBES_BACKWARD_SCHEMA == \
        f"extract_cubes_backward(Tensor grad, {_schema.EXTRACT_CUBES_ARGS}) -> Tensor"


def _op_args(case):
    kw = case.kwargs
    scale = kw.get("scale")
    shift = kw.get("shift")
    clamp = kw.get("clamp") or (None, None)
    return (case.source, case.origins, list(case.cube_size), kw.get("index"), kw.get("rotations"), kw.get("mask"),
            float(kw.get("fill", 0.0)), float(kw.get("keep_prob", 0.0)), int(kw.get("seed", 0)),
            scale if isinstance(scale, torch.Tensor) else None, shift if isinstance(shift, torch.Tensor) else None,
            float(scale) if isinstance(scale, float) else 1.0, float(shift) if isinstance(shift, float) else -0.0,
            clamp[0], clamp[1], kw.get("out_dtype"))


@pytest.mark.parametrize("scale,clamp,mask", [(None, None, None), ("tensor", (-20.0, 30.0), 0.5)])
def test_opcheck_compiled(scale, clamp, mask):
    case = random_case(20, dtype=torch.float64, scale=scale, clamp=clamp, mask=mask, keep_prob=0.4 if mask else 0.0,
                       with_index=True)
    case.source.requires_grad_(True)
    torch.library.opcheck(torch.ops.rubikops.extract_cubes.default, _op_args(case))


def test_opcheck_out_variant():
    case = random_case(21, dtype=torch.float32)
    out = torch.empty(2, 8, 1, 6, 6, 6)
    torch.library.opcheck(torch.ops.rubikops.extract_cubes.out, _op_args(case), {"out": out},
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.skipif(not ops.triton_available() or not ops.interpreter_enabled(), reason="needs the Triton interpreter")
def test_opcheck_triton_interpreter():
    case = random_case(22, dtype=torch.float64, scale="tensor", mask=0.5, keep_prob=0.3)
    case.source.requires_grad_(True)
    torch.library.opcheck(torch.ops.rubikops.extract_cubes_triton.default, _op_args(case))


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend):
    """Overlapping boxes, a repeated index, masking with kept voxels, per-sample
    scale and a clamp that bites: all in float64."""
    name, device = backend
    gen = torch.Generator().manual_seed(23)
    src = torch.randn(2, 2, 5, 6, 5, dtype=torch.float64, generator=gen).to(device).requires_grad_(True)
    origins = torch.randint(0, 3, (3, 4, 3), generator=gen).to(device)
    index = torch.tensor([1, 1, 0], device=device)
    rot = torch.randint(0, 48, (3, 4), generator=gen).to(device)
    mask = torch.tensor([[True, False, False, True]] * 3, device=device)
    scale = torch.tensor([0.5, -2.0, 1.5], dtype=torch.float64, device=device)

    def f(x):
        return rubikops.extract_cubes(x, origins, (3, 3, 3), index=index, rotations=rot, mask=mask, keep_prob=0.5,
                                      seed=7, scale=scale, shift=0.25, clamp=(-1.5, 2.0), backend=name)

    # Under the interpreter every forward costs ~100 ms: fast mode checks random
    # projections of the Jacobian instead of all 600 columns.
    # On CUDA the backward's index_add_ accumulates with atomics, so repeated
    # backward passes may differ in the last bits (nondet_tol).
    assert torch.autograd.gradcheck(f, (src,), eps=1e-6, atol=1e-8, fast_mode=name == "triton",
                                    nondet_tol=1e-12 if device == "cuda" else 0.0)


def test_gradient_equals_reference_autograd():
    case = random_case(24, dtype=torch.float32, with_index=True, N=2, B=4, scale="tensor", mask=0.5, keep_prob=0.5,
                       clamp=(-60.0, 60.0))
    src = case.source.clone().requires_grad_(True)
    ref_src = case.source.clone().requires_grad_(True)
    g = torch.randn(4, 8, 1, 6, 6, 6, generator=torch.Generator().manual_seed(0))
    (rubikops.extract_cubes(src, case.origins, case.cube_size, **case.kwargs) * g).sum().backward()
    (reference.extract_cubes(ref_src, case.origins, case.cube_size, **case.kwargs) * g).sum().backward()
    torch.testing.assert_close(src.grad, ref_src.grad, rtol=1e-5, atol=1e-5)


# The backward kernels under test: Triton (interpreter on CPU, or GPU) and the
# compiled C++ and CUDA kernels; each is compared with the generic scatter-add.
BACKWARD_KERNELS = BACKENDS


def _backward_args(grad, case):
    return (grad, *_op_args(case))


@pytest.mark.parametrize("backend", BACKWARD_KERNELS)
@pytest.mark.parametrize("dtype,grad_dtype,layout,cube,vol,extra", [
    (torch.float32, torch.float32, "contiguous", (4, 4, 4), (7, 6, 8),
     dict(scale="tensor", shift="float", clamp=(-60.0, 60.0))),
    (torch.float64, torch.float64, "strided", (4, 4, 4), (7, 6, 8), dict(scale="float", shift="tensor", clamp=(None, 50.0))),
    (torch.bfloat16, torch.bfloat16, "channels_last", (4, 4, 4), (7, 6, 8), dict(mask=0.5, keep_prob=0.4)),
    (torch.float32, torch.float32, "contiguous", (4, 4, 4), (7, 6, 8), dict(mask=0.5, grad_offset=1)),
    (torch.float32, torch.bfloat16, "strided", (13, 11, 13), (15, 14, 14),
     dict(clamp=(-50.0, None), out_dtype=torch.bfloat16, mask=0.3, keep_prob=0.7)),
    (torch.float16, torch.float16, "contiguous", (12, 12, 12), (14, 15, 13), dict(scale="tensor", mask=0.3)),
], ids=["f32-scale-clamp", "f64-strided-clamp-hi", "bf16-keep-mask", "f32-mask-unaligned-grad",
        "f32-bf16grad-odd-rows", "f16-big-cubes"])
def test_backward_kernels_equal_generic_backward(backend, dtype, grad_dtype, layout, cube, vol, extra):
    """The backend backward kernels (atomics) against the generic scatter-add
    (index_add_): overlapping boxes (small volume, many cubes), a repeated
    index, every shape-keeping code, masks with kept voxels, scale, shift and
    clamp; rows of 4 and 12 (the CUDA kernel's 4-wide path) and 13 (one voxel
    a thread), a gradient not 16-byte aligned, cubes larger than a block."""
    name, device = backend
    extra = dict(extra)
    grad_offset = extra.pop("grad_offset", 0)
    case = random_case(25, dtype=dtype, layout=layout, B=4, M=8, N=3, with_index=True, cube=cube, vol=vol,
                       **extra).to(device)
    gen = torch.Generator().manual_seed(1)
    shape = (4, 8, 1, *cube)
    flat = torch.randn(math.prod(shape) + grad_offset, generator=gen).to(grad_dtype).to(device)
    grad = flat[grad_offset:].view(shape)
    args = _backward_args(grad, case)
    if name == "triton":
        got = torch.ops.rubikops.extract_cubes_backward_triton(*args)
    else:
        if not _library.has_kernel("rubikops::extract_cubes_backward", device.upper()):
            pytest.fail(f"the compiled library has no {device} backward kernel")
        got = torch.ops.rubikops.extract_cubes_backward(*args)
    want = _library.extract_cubes_backward_generic(*args)
    assert got.shape == case.source.shape and got.dtype == dtype and got.is_contiguous()
    assert bool((want != 0).any()) and bool((want == 0).any())
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-3}[dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKWARD_KERNELS)
@pytest.mark.parametrize("layout", ["expanded", "transposed"])
def test_backward_with_a_strided_gradient(backend, layout):
    """Gradients as autograd hands them over: expanded (the gradient of a
    sum: stride 0) or transposed (a unit stride on no axis): the same result
    as the generic scatter-add (the CPU and Triton kernels read the strides,
    the CUDA kernel copies first)."""
    name, device = backend
    case = random_case(27, dtype=torch.float32, B=3, M=4, with_index=True, cube=(5, 5, 5), vol=(7, 8, 6),
                       mask=0.5, keep_prob=0.4, scale="tensor", clamp=(-60.0, 60.0)).to(device)
    gen = torch.Generator().manual_seed(4)
    # the layout is made on the device: .to() of an expanded tensor would hand a dense copy to the kernel
    if layout == "expanded":
        grad = torch.randn(3, 1, 1, 5, 1, 5, generator=gen).to(device).expand(3, 4, 1, 5, 5, 5)
    else:
        grad = torch.randn(3, 4, 1, 5, 5, 5, generator=gen).to(device).transpose(3, 5)
    assert not grad.is_contiguous()
    args = _backward_args(grad, case)
    op = torch.ops.rubikops.extract_cubes_backward_triton if name == "triton" else \
        torch.ops.rubikops.extract_cubes_backward
    want = _library.extract_cubes_backward_generic(*args)
    assert bool((want != 0).any())
    torch.testing.assert_close(op(*args), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("backend", BACKWARD_KERNELS)
def test_backward_takes_the_forward_arguments_and_ignores_fill_and_out_dtype(backend):
    """The backward op takes the forward's whole argument list: masked voxels get
    no gradient whatever the fill, and the gradient is in the output's dtype
    (out_dtype float64 beside a float32 gradient changes nothing).  Against
    autograd through the plain-torch reference, where fill is a constant."""
    name, device = backend
    case = random_case(33, dtype=torch.float32, B=3, M=4, with_index=True, cube=(5, 4, 5), vol=(8, 7, 9),
                       mask=0.5, keep_prob=0.3, scale="tensor", clamp=(-60.0, 60.0), layout="strided").to(device)
    grad = torch.randn(3, 4, 1, 5, 4, 5, generator=torch.Generator().manual_seed(6)).to(device)
    leaf = case.source.detach().clone().requires_grad_(True)
    options = {k: v for k, v in case.kwargs.items() if k != "validate"}
    cubes = reference.extract_cubes(leaf, case.origins, case.cube_size, **dict(options, fill=7.5))
    (want,) = torch.autograd.grad(cubes, leaf, grad)
    op = torch.ops.rubikops.extract_cubes_backward_triton if name == "triton" else \
        torch.ops.rubikops.extract_cubes_backward
    args = list(_backward_args(grad, case))
    for fill, out_dtype in [(0.0, None), (7.5, None), (-3.0, torch.float64)]:
        args[1 + _schema.EXTRACT_CUBES_ARG_NAMES.index("fill")] = fill
        args[1 + _schema.EXTRACT_CUBES_ARG_NAMES.index("out_dtype")] = out_dtype
        got = op(*args)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_cpu_backward_is_deterministic_across_thread_counts():
    """The CPU backward kernel splits work by volume, so every voxel receives
    its additions in one order: overlapping boxes and a volume shared by
    several samples give bit-identical gradients with 1 and 2 threads."""
    if not backends.get("compiled").features()["cpu_backward"]:
        pytest.fail("the compiled library has no CPU backward kernel")
    case = random_case(26, dtype=torch.float32, B=6, M=8, N=3, with_index=True, cube=(5, 5, 5), vol=(7, 8, 6),
                       scale="tensor")
    grad = torch.randn(6, 8, 1, 5, 5, 5, generator=torch.Generator().manual_seed(3)) * 1e3
    args = _backward_args(grad, case)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.rubikops.extract_cubes_backward(*args)
        torch.set_num_threads(2)
        two = torch.ops.rubikops.extract_cubes_backward(*args)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)
    torch.testing.assert_close(one, _library.extract_cubes_backward_generic(*args), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("bad,exc,match", [
    ("grad_shape", ValueError, "grad must have shape"),
    ("int_source", TypeError, "source and grad must be floating point"),
    ("cube_size", ValueError, "cube_size"),
])
def test_backward_op_errors_name_the_argument(bad, exc, match):
    """The backward op called directly (torch.ops) with bad arguments raises
    a clear error from its C++ checks, never reads out of bounds."""
    case = random_case(31, dtype=torch.float32, B=2, M=3)
    grad = torch.randn(2, 3, 1, 6, 6, 6)
    args = list(_backward_args(grad, case))
    if bad == "grad_shape":
        args[0] = torch.randn(2, 3, 1, 6, 6, 5)
    elif bad == "int_source":
        args[1] = case.source.to(torch.int16)
    else:
        args[3] = [6, 6, 99]
    with pytest.raises(exc, match=match):
        torch.ops.rubikops.extract_cubes_backward(*args)


def test_opcheck_backward_op():
    """The backward op's schema and fake kernel (generic implementation on CPU)."""
    case = random_case(28, dtype=torch.float32, scale="tensor", mask=0.5, keep_prob=0.3, clamp=(-40.0, 40.0),
                       with_index=True)
    grad = torch.randn(2, 8, 1, 6, 6, 6, generator=torch.Generator().manual_seed(2))
    torch.library.opcheck(torch.ops.rubikops.extract_cubes_backward.default, _backward_args(grad, case),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph_cpu():
    case = random_case(25, scale="tensor", mask=0.5, keep_prob=0.3, clamp=(-50.0, 50.0))

    @torch.compile(fullgraph=True)
    def step(src, origins, rot, mask, scale):
        cubes = rubikops.extract_cubes(src, origins, (6, 6, 6), rotations=rot, mask=mask, keep_prob=0.3,
                                       seed=case.kwargs["seed"], scale=scale, clamp=(-50.0, 50.0), validate=False)
        return cubes * 2

    kw = case.kwargs
    got = step(case.source, case.origins, kw["rotations"], kw["mask"], kw["scale"])
    torch.testing.assert_close(got, 2 * reference.extract_cubes(case.source, case.origins, case.cube_size, **kw))


@pytest.mark.skipif(not ops.triton_available() or not ops.interpreter_enabled(), reason="needs the Triton interpreter")
def test_torch_compile_fullgraph_triton_interpreter():
    """backend="triton" inside torch.compile(fullgraph=True): the backend
    choice must not call anything dynamo refuses to trace (it once called
    importlib.util.find_spec, which dynamo in torch 2.11 refuses; the torch
    here traces it, so the H100 run caught that one)."""
    case = random_case(29, cube=(4, 4, 4), vol=(6, 7, 6), B=1, M=2, scale="tensor")

    @torch.compile(fullgraph=True)
    def step(src, origins, rot, scale):
        return rubikops.extract_cubes(src, origins, (4, 4, 4), rotations=rot, scale=scale, validate=False,
                                      backend="triton") + 1

    kw = case.kwargs
    got = step(case.source, case.origins, kw["rotations"], kw["scale"])
    torch.testing.assert_close(got, 1 + reference.extract_cubes(case.source, case.origins, case.cube_size, **kw))


def test_torch_compile_fullgraph_backward_cpu():
    """Training through the op under torch.compile: AOTAutograd traces the
    backward op through its fake kernel; the gradient equals eager's."""
    case = random_case(30, scale="tensor", mask=0.5, keep_prob=0.3, clamp=(-80.0, 80.0), with_index=True)
    kw = dict(case.kwargs, validate=False)

    def loss(x):
        return (rubikops.extract_cubes(x, case.origins, case.cube_size, **kw) ** 2).sum()

    compiled_src = case.source.clone().requires_grad_(True)
    eager_src = case.source.clone().requires_grad_(True)
    torch.compile(loss, fullgraph=True)(compiled_src).backward()
    loss(eager_src).backward()
    assert bool((eager_src.grad != 0).any())
    torch.testing.assert_close(compiled_src.grad, eager_src.grad)


def test_out_with_autograd_is_refused():
    case = random_case(26)
    src = case.source.requires_grad_(True)
    out = torch.empty(2, 8, 1, 6, 6, 6)
    with pytest.raises(RuntimeError, match="out= does not support autograd"):
        rubikops.extract_cubes(src, case.origins, case.cube_size, out=out)


def test_backend_choice(monkeypatch):
    assert ops.resolve_backend("cpu", torch.device("cpu")) == "compiled"
    assert ops.resolve_backend("reference", torch.device("cpu")) == "torch"
    monkeypatch.setattr(ops, "DEFAULT_BACKEND", "torch")  # RUBIKOPS_BACKEND, as read at import
    assert ops.resolve_backend(None, torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.resolve_backend("opencl", torch.device("cpu"))
    if ops.triton_available():  # kernels loaded for a GPU: CPU tensors are refused
        from rubikops.triton_kernels import extract_cubes as triton_kernels
        monkeypatch.setattr(triton_kernels, "_INTERPRET", False)
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            ops.resolve_backend("triton", torch.device("cpu"))


def test_triton_ops_are_registered_at_import():
    """A first backend="triton" call inside torch.compile must find the ops
    already defined (dynamo refuses to run the registration while tracing)."""
    import subprocess
    import sys
    code = ("import torch, rubikops; "
            "print(hasattr(torch.ops.rubikops, 'extract_cubes_triton'), rubikops.available_backends()['triton']['loaded'])")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    want = ["True", "True"] if ops.triton_available() else ["False", "False"]
    assert res.stdout.split() == want


def test_interpreter_set_after_import_is_refused_clearly():
    """TRITON_INTERPRET set after `import rubikops` comes too late (the
    kernels were loaded for a GPU): backend="triton" on CPU tensors must say
    so, not fail inside Triton."""
    import subprocess
    import sys
    code = ("import os, torch, rubikops\n"
            "os.environ['TRITON_INTERPRET'] = '1'\n"
            "try:\n"
            "    rubikops.extract_cubes(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 3, dtype=torch.long), (2, 2, 2),"
            " backend='triton')\n"
            "except RuntimeError as exc:\n"
            "    print('refused:', exc)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    if ops.triton_available():
        assert "refused:" in res.stdout and "before importing rubikops" in res.stdout, res.stdout


def test_available_backends_reports_cpu():
    info = rubikops.available_backends()
    assert info["compiled"]["loaded"] and info["compiled"]["cpu"] is True and info["torch"]["loaded"]


# --- validation: every bad input names its argument ---------------------------------

def _good():
    return dict(source=torch.randn(2, 1, 8, 8, 8), origins=torch.zeros(2, 3, 3, dtype=torch.long), cube_size=(4, 4, 4))


def _call(**over):
    kw = _good()
    kw.update(over)
    return rubikops.extract_cubes(kw.pop("source"), kw.pop("origins"), kw.pop("cube_size"), **kw)


BAD = [
    (dict(source=torch.randn(2, 8, 8, 8)), ValueError, "source must be 5-D"),
    (dict(source=torch.randn(2, 1, 8, 8, 8).int()), TypeError, "source has unsupported dtype"),
    (dict(source=[1, 2]), TypeError, "source must be a torch.Tensor"),
    (dict(origins=torch.zeros(2, 3, dtype=torch.long)), ValueError, r"origins must have shape \(B, M, 3\)"),
    (dict(origins=torch.zeros(2, 3, 3)), TypeError, "origins must be int32 or int64"),
    (dict(origins=torch.full((2, 3, 3), 5, dtype=torch.long)), ValueError, "origins.*outside the volume"),
    (dict(origins=torch.full((2, 3, 3), -1, dtype=torch.long)), ValueError, "origins.*outside the volume"),
    (dict(origins=torch.zeros(3, 3, 3, dtype=torch.long)), ValueError, r"index is None, so source.shape\[0\]"),
    (dict(cube_size=(4, 4)), TypeError, "cube_size must be three integers"),
    (dict(cube_size=(4, 0, 4)), ValueError, "cube_size must be positive"),
    (dict(cube_size=(4, 9, 4)), ValueError, "cube_size .* does not fit"),
    (dict(index=torch.tensor([0, 2])), ValueError, r"index\[1\] = 2 is out of range"),
    (dict(index=torch.tensor([0])), ValueError, "index must have shape"),
    (dict(index=torch.tensor([0.0, 1.0])), TypeError, "index must be int32 or int64"),
    (dict(rotations=torch.full((2, 3), 48)), ValueError, "rotations.* is not a rotation code"),
    (dict(rotations=torch.zeros(2, 4, dtype=torch.long)), ValueError, "rotations must have shape"),
    (dict(cube_size=(2, 3, 4), rotations=torch.full((2, 3), 40)), ValueError, "reorders the axes of a non-cubic"),
    (dict(mask=torch.zeros(2, 3)), TypeError, "mask must be a bool tensor"),
    (dict(mask=torch.zeros(2, 2, dtype=torch.bool)), ValueError, "mask must have shape"),
    (dict(keep_prob=1.5), ValueError, "keep_prob must be a number in"),
    (dict(keep_prob=-0.1), ValueError, "keep_prob must be a number in"),
    (dict(seed=2**64), ValueError, "seed must be an integer"),
    (dict(seed=1.5), ValueError, "seed must be an integer"),
    (dict(fill="zero"), TypeError, "fill must be a number"),
    (dict(scale=torch.ones(3)), ValueError, r"scale as a tensor must have shape \(2,\)"),
    (dict(scale=torch.ones(2, dtype=torch.long)), TypeError, "scale as a tensor must be floating"),
    (dict(shift="a"), TypeError, "shift must be None, a float"),
    (dict(shift=float("nan")), ValueError, "shift must be finite"),
    (dict(clamp=(1.0, 0.0)), ValueError, "clamp has lo > hi"),
    (dict(clamp=1.0), TypeError, r"clamp must be None or \(lo, hi\)"),
    (dict(out_dtype=torch.int32), TypeError, "out_dtype is not a supported dtype"),
    (dict(source=torch.zeros(2, 1, 8, 8, 8, dtype=torch.int16), out_dtype=torch.int16, scale=2.0), TypeError,
     "out_dtype .* integer"),
    (dict(out=torch.empty(2, 3, 1, 4, 4)), ValueError, "out must have shape"),
    (dict(out=torch.empty(2, 3, 1, 4, 4, 4, dtype=torch.float64)), TypeError, "out must have dtype"),
    (dict(out=torch.empty(2, 3, 1, 4, 4, 8)[..., ::2]), ValueError, "out must be contiguous"),
    (dict(backend="vulkan"), ValueError, "backend must be one of"),
    # origins + size would overflow int64 into a negative sum that passes a naive check
    (dict(origins=torch.full((2, 3, 3), 2**63 - 2)), ValueError, "origins.*outside the volume"),
    (dict(scale=torch.tensor([1.0, float("nan")])), ValueError, r"scale\[1\] = nan is not finite"),
    (dict(shift=torch.tensor([float("-inf"), 0.0])), ValueError, r"shift\[0\] = -inf is not finite"),
    (dict(source=torch.zeros(2, 1, 8, 8, 8, dtype=torch.uint8), out_dtype=torch.uint8,
          mask=torch.ones(2, 3, dtype=torch.bool), fill=300), ValueError, r"fill = 300 is not a value of the torch.uint8"),
    (dict(source=torch.zeros(2, 1, 8, 8, 8, dtype=torch.int16), out_dtype=torch.int16, fill=0.5), ValueError,
     r"fill = 0.5 is not a value of the torch.int16 output \(an integer in \[-32768, 32767\]\)"),
    (dict(cube_size="444"), TypeError, "cube_size must be three integers, got '444'"),
    (dict(cube_size=(2.7, 4, 4)), ValueError, r"cube_size must be three integers, .* \(2.7 is not an integer\)"),
    (dict(cube_size=4.0), TypeError, "cube_size must be three integers, got 4.0"),
    (dict(index=torch.zeros(2, dtype=torch.long), source=torch.zeros(0, 1, 8, 8, 8)), ValueError, "source holds no volume"),
]


@pytest.mark.parametrize("over,exc,match", BAD, ids=[m for _, _, m in BAD])
def test_validation_errors(over, exc, match):
    with pytest.raises(exc, match=match):
        _call(**over)


def test_direct_op_call_checks_shapes_in_cpp():
    """torch.ops.rubikops.extract_cubes called directly still refuses what would leave the source."""
    src = torch.randn(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="cube_size"):
        torch.ops.rubikops.extract_cubes(src, torch.zeros(1, 1, 3, dtype=torch.long), [5, 4, 4], None, None, None,
                                         0.0, 0.0, 0, None, None, 1.0, -0.0, None, None, None)
    with pytest.raises(ValueError, match="index"):
        torch.ops.rubikops.extract_cubes(src, torch.zeros(2, 1, 3, dtype=torch.long), [4, 4, 4], None, None, None,
                                         0.0, 0.0, 0, None, None, 1.0, -0.0, None, None, None)


def test_integral_float_cube_size_counts_as_integers():
    out = _call(cube_size=(4.0, 4, 4))
    assert out.shape == (2, 3, 1, 4, 4, 4)
    kw = _good()
    want = reference.extract_cubes(kw["source"], kw["origins"], (4, 4, 4))
    for name, _ in CPU_BACKENDS:  # the unchecked path too, in every sequence form
        for size in ((4.0, 4, 4), [4, 4, 4], torch.Size([4, 4, 4]), (torch.tensor(4), 4, 4)):
            assert torch.equal(ops.extract_cubes_unchecked(kw["source"], kw["origins"], size, backend=name), want)


def test_out_overlapping_the_source_is_refused_on_every_path():
    """The kernels read the source while writing out: a shared byte would make
    the result depend on the write order."""
    storage = torch.zeros(2 * 512 + 384)
    src = storage[:1024].view(2, 1, 8, 8, 8)
    out = storage[1000:1384].view(2, 3, 1, 4, 4, 4)  # shares elements 1000..1023
    origins = torch.zeros(2, 3, 3, dtype=torch.long)
    for name, _ in CPU_BACKENDS:
        for validate in (True, False):
            with pytest.raises(ValueError, match="out overlaps source in memory"):
                rubikops.extract_cubes(src, origins, (4, 4, 4), out=out, validate=validate, backend=name)
        with pytest.raises(ValueError, match="out overlaps source in memory"):
            ops.extract_cubes_unchecked(src, origins, (4, 4, 4), out=out, backend=name)
    # Adjacent, not overlapping: accepted.
    rubikops.extract_cubes(src, origins, (4, 4, 4), out=storage[1024:].view(2, 3, 1, 4, 4, 4))
    words = torch.zeros(400, dtype=torch.long)
    origins = words[:18].view(2, 3, 3)
    out = words.view(torch.float32)[:384].view(2, 3, 1, 4, 4, 4)
    for name, _ in CPU_BACKENDS:
        with pytest.raises(ValueError, match="out overlaps origins in memory"):
            ops.extract_cubes_unchecked(src, origins, (4, 4, 4), out=out, backend=name)


# What the unchecked path (validate=False, RubikCube(validate=False), direct
# torch.ops calls) must still refuse on every backend: shapes, dtypes, devices
# and out=; the Triton kernel used to run off its tensors (double free) here.
UNCHECKED_BAD = [
    (dict(out=torch.zeros(1, 1, 1, 4, 4, 4)), ValueError, "out must have shape"),
    (dict(out=torch.zeros(2, 3, 1, 4, 4, 4, dtype=torch.float64)), TypeError, "out must have dtype"),
    (dict(out=torch.zeros(2, 3, 1, 4, 4, 8)[..., ::2]), ValueError, "out must be contiguous"),
    (dict(index=torch.zeros(2, dtype=torch.float32)), TypeError, "index must be int32 or int64"),
    (dict(rotations=torch.zeros(2, 3, dtype=torch.float32)), TypeError, "rotations must be int32 or int64"),
    (dict(mask=torch.zeros(2, 3)), TypeError, "mask must be a bool tensor"),
    (dict(scale=torch.ones(2, dtype=torch.long)), TypeError, "scale as a tensor must be floating point"),
    (dict(shift=torch.ones(2, dtype=torch.long)), TypeError, "shift as a tensor must be floating point"),
    (dict(source=torch.zeros(2, 1, 8, 8, 8, dtype=torch.uint8), out_dtype=torch.uint8,
          mask=torch.ones(2, 3, dtype=torch.bool), fill=300.0), ValueError, "fill = 300"),
    (dict(source=torch.zeros(2, 1, 8, 8, 8, dtype=torch.uint8), out_dtype=torch.uint8, scale=2.0), TypeError,
     "integer"),
    (dict(cube_size=(9, 4, 4)), ValueError, "cube_size"),
    # Issue 16, item 12, on the unchecked path: int() read "444" as (4, 4, 4)
    # and cut (2.5, 4, 4) or (True, 4, 4) as (2, 4, 4) or (1, 4, 4) cubes.
    (dict(cube_size="444"), TypeError, "cube_size must be three integers, got '444'"),
    (dict(cube_size=(2.5, 4, 4)), ValueError, r"cube_size must be three integers, got \(2.5, 4, 4\) \(2.5 is not"),
    (dict(cube_size=(True, 4, 4)), TypeError, r"cube_size must be three integers, got \(True, 4, 4\)"),
    (dict(cube_size=4.0), TypeError, "cube_size must be three integers, got 4.0"),
] + [(dict(**{name: torch.zeros(shape, dtype=dtype)}), ValueError, f"{name} (as a tensor )?must have shape")
     for name, dtype in (("mask", torch.bool), ("index", torch.long), ("scale", torch.float32),
                         ("shift", torch.float32), ("rotations", torch.long))
     for shape in ((1,), (1, 1))]

CPU_BACKENDS = [b.values[0] for b in BACKENDS if b.values[0][1] == "cpu"] + [("torch", "cpu")]


@pytest.mark.parametrize("backend", CPU_BACKENDS, ids=lambda b: b[0])
@pytest.mark.parametrize("over,exc,match", UNCHECKED_BAD, ids=[m for _, _, m in UNCHECKED_BAD])
def test_unchecked_path_refuses_bad_metadata_on_every_backend(backend, over, exc, match):
    kw = dict(_good(), **over)
    source, origins, cube = kw.pop("source"), kw.pop("origins"), kw.pop("cube_size")
    with pytest.raises(exc, match=match):
        ops.extract_cubes_unchecked(source, origins, cube, backend=backend[0], **kw)
    with pytest.raises(exc, match=match):
        rubikops.extract_cubes(source, origins, cube, backend=backend[0], validate=False, **kw)


@pytest.mark.parametrize("op", ["compiled", "triton"])
def test_direct_out_op_calls_refuse_a_wrong_out(op):
    """The reproducer of the Triton double free, through the registered ops."""
    if op == "triton" and not (ops.triton_available() and ops.interpreter_enabled()):
        pytest.skip("needs the Triton interpreter")
    src, origins = torch.zeros(2, 1, 8, 8, 8), torch.zeros(2, 3, 3, dtype=torch.long)
    args = (src, origins, [4, 4, 4], None, None, None, 0.0, 0.0, 0, None, None, 1.0, -0.0, None, None, None)
    fn = torch.ops.rubikops.extract_cubes.out if op == "compiled" else torch.ops.rubikops.extract_cubes_triton_out
    with pytest.raises(ValueError, match="out must have shape"):
        fn(*args, out=torch.zeros(1, 1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="mask must have shape"):
        fn(*args[:5], torch.zeros(1, dtype=torch.bool), *args[6:], out=torch.zeros(2, 3, 1, 4, 4, 4))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["compiled", "triton"])
def test_cuda_opcheck_and_compile(name):
    case = random_case(27, dtype=torch.float32, scale="tensor", mask=0.5, keep_prob=0.3, with_index=True).to("cuda")
    args = _op_args(case)
    op = torch.ops.rubikops.extract_cubes.default if name == "compiled" else \
        torch.ops.rubikops.extract_cubes_triton.default
    torch.library.opcheck(op, args)
    kw = case.kwargs

    @torch.compile(fullgraph=True)
    def step(src, origins, rot, mask, scale, index):
        return rubikops.extract_cubes(src, origins, (6, 6, 6), index=index, rotations=rot, mask=mask, keep_prob=0.3,
                                      seed=kw["seed"], scale=scale, validate=False, backend=name) + 1

    got = step(case.source, case.origins, kw["rotations"], kw["mask"], kw["scale"], kw["index"])
    expect = reference.extract_cubes(case.source.cpu(), case.origins.cpu(), case.cube_size,
                                     **{k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    torch.testing.assert_close(got.cpu(), expect + 1)


def test_without_the_compiled_library_everything_falls_back_to_the_reference():
    """A missing or broken build must not break `import rubikops`: the ops are
    defined from Python with the plain-torch reference behind them (a warning
    says so), and a whole puzzle still comes out right."""
    import subprocess
    import sys
    script = """
import importlib.abc, sys, warnings
class NoCompiled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "rubikops._C":
            raise ImportError("blocked by the test")
sys.meta_path.insert(0, NoCompiled())
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import rubikops
assert any("compiled library is not built" in str(w.message) for w in caught), caught
import torch
from rubikops import ops, reference
assert not ops.HAS_COMPILED and not ops.available_backends()["compiled"]["loaded"]
vol = torch.randn(2, 1, 30, 31, 32, generator=torch.Generator().manual_seed(0))
puzzle = rubikops.RubikCube(cube_size=8, gap=(0, 4), mask_prob=0.5)
cubes, t = puzzle(vol, generator=torch.Generator().manual_seed(1))
expect = reference.extract_cubes(vol, t.origins, (8, 8, 8), index=t.index, rotations=t.codes, mask=t.mask.bool())
assert torch.equal(cubes, expect)
print("fallback ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "fallback ok" in done.stdout, done.stderr[-3000:]
