"""Every tensor argument of extract_cubes (origins, index, rotations, mask,
scale, shift) as a strided, stride-0 or offset view gives the result of the
same values laid out contiguously, on every backend (Triton in its
interpreter on CPU).  The reproducers of issue 28 item 1: Triton read these
arguments as if contiguous."""
import pytest
import torch

import rubikops
from rubikops import ops
from rubikops.tasks import get

from .testing import argument_views

BACKEND_NAMES = ["compiled", "torch"] + (["triton"] if ops.triton_available() and ops.interpreter_enabled() else [])


def _case(seed):
    gen = torch.Generator().manual_seed(seed)
    B, M, cube = 3, 4, (3, 3, 3)
    source = torch.randn(5, 2, 7, 8, 9, generator=gen)
    args = dict(origins=torch.stack([torch.randint(0, d - c + 1, (B, M), generator=gen)
                                     for d, c in zip((7, 8, 9), cube)], -1),
                index=torch.randint(0, 5, (B,), generator=gen),
                rotations=torch.randint(0, 48, (B, M), generator=gen),
                mask=torch.rand(B, M, generator=gen) < 0.5,
                scale=torch.rand(B, generator=gen, dtype=torch.float64) + 0.5,
                shift=torch.randn(B, generator=gen, dtype=torch.float64))
    return source, cube, args


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("name", ["origins", "index", "rotations", "mask", "scale", "shift"])
@pytest.mark.parametrize("layout", ["offset", "strided", "expanded"])
def test_argument_views_read_as_their_values(backend, name, layout):
    source, cube, args = _case(7)
    view = argument_views(args[name])[layout]
    dense = dict(args, **{name: view.contiguous()})
    viewed = dict(args, **{name: view})
    origins = dense.pop("origins"), viewed.pop("origins")
    want = rubikops.extract_cubes(source, origins[0], cube, keep_prob=0.3, seed=11, backend="torch", **dense)
    for validate in (True, False):
        got = rubikops.extract_cubes(source, origins[1], cube, keep_prob=0.3, seed=11, validate=validate,
                                     backend=backend, **viewed)
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"{backend}, {name} {layout}")


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_stride0_origins_read_one_origin(backend):
    """origins = one (1, 3) row expanded to (512, 1, 3): 512 copies of one cube (Triton read 512 x 3 int64
    from the 3-element allocation and cut other cubes)."""
    source = torch.randn(1, 1, 9, 9, 9, generator=torch.Generator().manual_seed(3))
    origins = torch.tensor([[[1, 2, 3]]]).expand(512, 1, 3)
    cubes = rubikops.extract_cubes(source, origins, (4, 4, 4), index=torch.zeros(512, dtype=torch.int64),
                                   backend=backend)
    assert torch.equal(cubes, source[:, :, 1:5, 2:6, 3:7].expand(512, 1, 1, 4, 4, 4))


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_task_with_a_strided_index(backend):
    """The public-API reproducer: the rotation task given index[::2] cuts its crops from the volumes
    ``targets.index`` names."""
    gen = torch.Generator().manual_seed(5)
    volumes = torch.randn(3, 1, 10, 10, 10, generator=gen)
    index = torch.tensor([0, 0, 1, 1, 2, 2])[::2]
    cubes, targets = get("rotation")(cube_size=6, backend=backend)(volumes, index=index,
                                                                     generator=torch.Generator().manual_seed(1))
    want = rubikops.extract_cubes(volumes, targets.origins, (6, 6, 6), index=targets.index.contiguous(),
                                  rotations=targets.codes, backend="torch")
    assert torch.equal(targets.index, torch.tensor([0, 1, 2]))
    assert torch.equal(cubes, want)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("layout", ["offset", "strided", "expanded"])
def test_gradient_with_argument_views(backend, layout):
    source, cube, args = _case(9)
    viewed = {name: argument_views(t)[layout] for name, t in args.items()}
    weights = torch.randn(3, 4, 2, *cube, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def grad(backend, kw):
        x = source.double().requires_grad_()
        kw = dict(kw)
        cubes = rubikops.extract_cubes(x, kw.pop("origins"), cube, keep_prob=0.3, seed=11, clamp=(-1.0, 1.0),
                                       backend=backend, **kw)
        (cubes * weights).sum().backward()
        return x.grad

    want = grad("torch", {name: t.contiguous() for name, t in viewed.items()})
    torch.testing.assert_close(grad(backend, viewed), want, rtol=1e-12, atol=1e-12)
