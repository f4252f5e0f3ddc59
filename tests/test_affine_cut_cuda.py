"""The CUDA kernel of the affine read (``affine=``), where a GPU is present
(benchmarks/gpu_check.sh runs these with -m cuda): against the plain-torch
reference (forward and gradient, contiguous and strided arguments), against
the CPU kernel on out-of-range inputs (validate=False), and opcheck.  Without
a GPU every test here is skipped; tests/test_affine_cut.py checks the same
rules on the CPU and Triton kernels."""
import pytest
import torch

import rubikops
from rubikops import ops, reference

from .test_affine_cut import _affines, _case

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
DEVICES = ["cuda"]


def _on(device, *tensors, layout="contiguous"):
    """The tensors (and the tensors among a dict's values) on `device`; as
    strided views at a storage offset (every other element of a longer last
    dimension) with layout="strided"."""
    def move(t):
        if not isinstance(t, torch.Tensor):
            return t
        if layout == "contiguous":
            return t.to(device)
        storage = torch.zeros(*t.shape[:-1], 2 * t.shape[-1] + 1, dtype=t.dtype, device=device)
        view = storage[..., 1::2]
        view.copy_(t)
        return view
    return [{k: move(v) for k, v in t.items()} if isinstance(t, dict) else move(t) for t in tensors]


def _compiled(device):
    """The compiled backend on `device`: on a GPU machine, only when the CUDA kernel was built."""
    if device == "cuda" and not ops.HAS_CUDA_KERNEL:
        pytest.skip("the CUDA kernel was not built (rubikops built without CUDA)")
    return dict(backend="compiled")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("cube", [(4, 4, 4), (3, 5, 2)])
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("device", DEVICES)
def test_compiled_matches_the_reference(seed, cube, layout, device):
    backend = _compiled(device)
    source, origins, cube, kw = _case(seed, cube=cube)
    kw.update(scale=torch.tensor([2.0, 0.5, -1.0]), shift=0.25, clamp=(-2.0, 2.5))
    if len(set(cube)) > 1:
        kw["rotations"] = kw["rotations"] % 8  # flips only: the cube is not cubic
    want = reference.extract_cubes(source, origins, cube, **kw)
    source, origins, kw = _on(device, source, origins, kw, layout=layout)
    for validate in (True, False):
        got = rubikops.extract_cubes(source, origins, cube, validate=validate, **backend, **kw)
        assert got.device.type == device
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.int16])
@pytest.mark.parametrize("device", DEVICES)
def test_dtypes(dtype, device):
    """float64 and float16 banks, and int16 banks through the value map (per-sample scale and shift)."""
    backend = _compiled(device)
    source, origins, cube, kw = _case(11, dtype=dtype)
    if dtype == torch.int16:
        kw.update(scale=torch.tensor([0.01, 0.02, 0.005], dtype=torch.float64),
                  shift=torch.tensor([-1.0, 0.5, 0.0], dtype=torch.float64))
    want = reference.extract_cubes(source, origins, cube, **kw)
    source, origins, kw = _on(device, source, origins, kw)
    got = rubikops.extract_cubes(source, origins, cube, **backend, **kw)
    assert got.dtype == want.dtype == (torch.float32 if dtype == torch.int16 else dtype)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-3 if dtype == torch.float16 else 0,
                               atol=1e-3 if dtype == torch.float16 else 1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("device", DEVICES)
def test_gradient_matches_the_reference_autograd(dtype, device):
    """float64 to 1e-12; float32 sums its eight-corner contributions in
    float (the reference in float64): 1e-5 on gradients of order 1."""
    backend = _compiled(device)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    source, origins, cube, kw = _case(5, dtype=dtype)
    kw.update(scale=torch.tensor([2.0, 0.5, -1.0], dtype=dtype), shift=0.25, clamp=(-1.5, 1.5))
    weights = torch.randn(3, 5, 2, *cube, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)

    def grad(fn, source, origins, kw, weights):
        x = source.detach().clone().requires_grad_()
        fn(x, origins, cube, **kw).backward(weights)
        return x.grad.cpu()

    want = grad(reference.extract_cubes, source, origins, kw, weights)
    assert want.abs().sum() > 0
    # The output gradient as autograd may hand it over: expanded (stride 0 along the channels).
    want_expanded = grad(reference.extract_cubes, source, origins, kw, weights[:, :, :1].expand(weights.shape))
    on_device = _on(device, source, origins, kw, weights)
    expanded = on_device[3][:, :, :1].expand(weights.shape)
    compiled = lambda *a, **k: rubikops.extract_cubes(*a, **backend, **k)  # noqa: E731
    torch.testing.assert_close(grad(compiled, *on_device), want, **tol)
    torch.testing.assert_close(grad(compiled, *on_device[:3], expanded), want_expanded, **tol)
    torch.testing.assert_close(grad(lambda *a, **k: rubikops.extract_cubes(*a, backend="torch", **k), *on_device),
                               want, **tol)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_equals_the_cpu_kernel_on_out_of_range_inputs(dtype):
    """validate=False with what only validation refuses: origins near the
    int64 limits, indices and codes out of range, NaN and infinite affine
    entries.  Both kernels clamp the reads into the volume, so the CUDA
    kernel must stay in bounds and give the CPU kernel's values (forward and
    gradient).  They run the same unfused operations in the same order; 2
    float ulps allow for a host compiler that fuses them (GCC on aarch64)."""
    _compiled("cuda")
    source, origins, cube, kw = _case(7, dtype=dtype, B=4, M=6)
    origins[0, :3] = torch.tensor([2**62, -2**62, 2**40])
    kw["index"] = torch.tensor([-5, 99, 2, 3])
    kw["rotations"][1] = torch.tensor([-7, 1000, 49, -48, 95, 3])
    kw["affine"] = _affines(torch.Generator().manual_seed(8), 4, move=40.0)
    kw["affine"][2, 0, 1] = float("nan")
    kw["affine"][3, 1, 3] = float("inf")
    kw["affine"][3, 2, 0] = -float("inf")
    kw.update(scale=torch.tensor([2.0, 0.5, -1.0, 3.0]), shift=0.25, clamp=(-2.0, 2.5))
    cpu = rubikops.extract_cubes(source, origins, cube, validate=False, backend="compiled", **kw)
    source_cuda, origins_cuda, kw_cuda = _on("cuda", source, origins, kw, layout="strided")
    got = rubikops.extract_cubes(source_cuda, origins_cuda, cube, validate=False, backend="compiled", **kw_cuda)
    torch.testing.assert_close(got.cpu(), cpu, rtol=2 * torch.finfo(dtype).eps, atol=1e-7)

    weights = torch.randn(cpu.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def grad(source, origins, kw):
        x = source.detach().double().requires_grad_()
        rubikops.extract_cubes(x, origins, cube, validate=False, backend="compiled", **kw).backward(
            weights.to(x.device))
        return x.grad.cpu()

    want = grad(source, origins, kw)
    assert want.abs().sum() > 0
    torch.testing.assert_close(grad(source_cuda, origins_cuda, kw_cuda), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_on_the_schema(device):
    _compiled(device)
    source, origins, cube, kw = _case(2)
    source, origins, kw = _on(device, source, origins, kw)
    params = rubikops._schema.ExtractCubesParams(source.requires_grad_(), origins, cube, **kw)
    torch.library.opcheck(torch.ops.rubikops.extract_cubes.default, params.schema_args())
