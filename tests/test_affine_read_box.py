"""``read_box`` bounds the affine read of ``extract_cubes`` per sample: a
read past the box repeats the box's edge values, as a read past the volume
repeats the volume's.  That is what lets a packed bank (volumes stacked in one
storage) be read through an affine without one volume bleeding into the next.

Checked against independent references: the volume cut out on its own and
read through the same affine (the box is then the whole volume), and the
plain-torch reference; forward, gradient, views of every argument, bad input."""
import math

import pytest
import torch

import rubikops
from rubikops import ops, reference
from rubikops.augment import rotation_matrices

BACKENDS = ["compiled", "torch"] + (["triton"] if ops.triton_available() and ops.interpreter_enabled() else [])


def _affines(gen, B, move):
    angles = (torch.rand(B, 3, generator=gen, dtype=torch.float64) * 2 - 1) * math.radians(20.0)
    zoom = torch.exp((torch.rand(B, generator=gen, dtype=torch.float64) * 2 - 1) * 0.25)
    shift = (torch.rand(B, 3, 1, generator=gen, dtype=torch.float64) * 2 - 1) * move
    return torch.cat([rotation_matrices(angles) * zoom[:, None, None], shift], -1)


def _packed(seed, dtype=torch.float32):
    """Three volumes of different shapes packed along D (padding past each one's H and W), as a bank
    packs them: (storage, volumes, offsets)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(5, 7, 6), (6, 5, 8), (4, 8, 7)]
    vols = [torch.randn(2, *s, generator=gen, dtype=torch.float64).mul(50).to(dtype) for s in shapes]
    storage = torch.full((1, 2, sum(s[0] for s in shapes), 8, 8), 1000, dtype=dtype)  # loud padding
    offsets, z = [], 0
    for v, s in zip(vols, shapes):
        storage[0, :, z:z + s[0], :s[1], :s[2]] = v
        offsets.append(z)
        z += s[0]
    return storage, vols, offsets, gen


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_packed_volume_reads_as_the_volume_alone(seed, backend):
    storage, vols, offsets, gen = _packed(seed)
    B, M, cube = 4, 3, (3, 4, 2)
    which = torch.randint(0, len(vols), (B,), generator=gen)
    affine = _affines(gen, B, move=5.0)  # reads land well past every volume's edges
    origins = torch.randint(-2, 5, (B, M, 3), generator=gen)
    rotations = torch.randint(0, 8, (B, M), generator=gen)  # flips: the cube is not cubic
    box, shifted = torch.zeros(B, 2, 3, dtype=torch.int64), affine.clone()
    for b, v in enumerate(which.tolist()):
        box[b, 0] = torch.tensor([offsets[v], 0, 0])
        box[b, 1] = torch.tensor([offsets[v] + vols[v].shape[1] - 1, vols[v].shape[2] - 1, vols[v].shape[3] - 1])
        shifted[b, 0, 3] += offsets[v]  # the volume's frame to the storage's
    got = rubikops.extract_cubes(storage, origins, cube, index=torch.zeros(B, dtype=torch.int64),
                                 rotations=rotations, affine=shifted, read_box=box, backend=backend)
    for b, v in enumerate(which.tolist()):
        alone = rubikops.extract_cubes(vols[v][None], origins[b:b + 1], cube, rotations=rotations[b:b + 1],
                                       affine=affine[b:b + 1], backend="torch")
        torch.testing.assert_close(got[b:b + 1], alone, rtol=0, atol=2e-4)  # 1e-5 of values up to ~200
    assert bool((got.abs() < 1000).all())  # never the padding


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_kernels_match_the_reference_with_any_box(seed, backend):
    """Boxes anywhere inside the source (and, with validate=False, past it: clamped as the reference
    clamps them), masks, a value map and clamp."""
    storage, _, _, gen = _packed(seed)
    B, M, cube = 3, 4, (3, 3, 3)
    extent = torch.tensor(storage.shape[2:])
    lo = (torch.rand(B, 3, generator=gen) * extent).long()
    hi = lo + (torch.rand(B, 3, generator=gen) * (extent - lo)).long()
    kw = dict(index=torch.zeros(B, dtype=torch.int64), rotations=torch.randint(0, 24, (B, M), generator=gen),
              mask=torch.rand(B, M, generator=gen) < 0.3, keep_prob=0.4, seed=seed,
              scale=torch.tensor([0.5, -2.0, 1.0]), shift=0.25, clamp=(-150.0, 900.0),
              affine=_affines(gen, B, move=8.0), read_box=torch.stack([lo, hi], 1))
    origins = torch.randint(-2, 6, (B, M, 3), generator=gen)
    want = reference.extract_cubes(storage, origins, cube, **kw)
    got = rubikops.extract_cubes(storage, origins, cube, backend=backend, **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    wild = kw["read_box"].clone()
    wild[0, 0, 1], wild[1, 1, 2], wild[2, 0] = -7, 99, wild[2, 1] + 3  # below, above, lo > hi
    kw["read_box"] = wild
    want = reference.extract_cubes(storage, origins, cube, **kw)
    got = rubikops.extract_cubes(storage, origins, cube, backend=backend, validate=False, **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_gradient_matches_the_reference_autograd(backend):
    """Reads clamped at every face of each box (affines that throw them well past it): the gradient
    lands inside the boxes only, on their faces too, as the reference's autograd puts it."""
    storage, _, _, gen = _packed(7, torch.float64)
    B, M, cube = 3, 4, (2, 3, 2)
    box = torch.tensor([[[0, 0, 0], [4, 6, 5]], [[5, 1, 2], [10, 4, 6]], [[11, 0, 0], [14, 7, 6]]])
    kw = dict(index=torch.zeros(B, dtype=torch.int64), rotations=torch.randint(0, 8, (B, M), generator=gen),
              affine=_affines(gen, B, move=12.0), read_box=box, scale=torch.tensor([1.5, -0.5, 2.0]))
    kw["affine"][:, :, :3] *= 3  # spread each cube's reads over more than its box
    origins = torch.randint(-3, 4, (B, M, 3), generator=gen)
    grad = torch.randn(B, M, 2, *cube, generator=gen, dtype=torch.float64)
    x = storage.clone().requires_grad_()
    rubikops.extract_cubes(x, origins, cube, backend=backend, **kw).backward(grad)
    y = storage.clone().requires_grad_()
    reference.extract_cubes(y, origins, cube, **kw).backward(grad)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-9, atol=1e-9)
    inside = torch.zeros(storage.shape[2:], dtype=torch.bool)
    top_face = torch.zeros_like(inside)
    for (lo, hi) in box.tolist():
        inside[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = True
        top_face[hi[0], lo[1]:hi[1] + 1, lo[2]:hi[2] + 1] = True  # the box's far faces along D, H and W
        top_face[lo[0]:hi[0] + 1, hi[1], lo[2]:hi[2] + 1] = True
        top_face[lo[0]:hi[0] + 1, lo[1]:hi[1] + 1, hi[2]] = True
    touched = (x.grad[0] != 0).any(0)
    assert not bool((touched & ~inside).any())  # nothing read outside the boxes
    assert bool((touched & top_face).any())  # and reads were clamped onto a box's far face


@pytest.mark.parametrize("view", ["strided", "offset", "stride0", "transposed"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_argument_may_be_a_view(view, backend):
    storage, _, _, gen = _packed(3)
    B, M, cube = 4, 2, (2, 2, 2)
    box = torch.tensor([[2, 1, 0], [9, 6, 7]]).expand(B, 2, 3)  # stride-0 over samples
    affine = _affines(gen, 1, move=3.0).expand(B, 3, 4)
    origins = torch.randint(0, 4, (B, M, 3), generator=gen)
    dense = dict(index=torch.zeros(B, dtype=torch.int64), affine=affine.contiguous(), read_box=box.contiguous())

    def as_view(t):
        if view == "stride0":
            return t
        if view == "strided":
            big = torch.zeros((2 * t.shape[0],) + tuple(t.shape[1:]), dtype=t.dtype)
            big[::2] = t
            return big[::2]
        if view == "offset":
            big = torch.zeros((t.shape[0] + 2,) + tuple(t.shape[1:]), dtype=t.dtype)
            big[2:] = t
            return big[2:]
        return t.transpose(-1, -2).contiguous().transpose(-1, -2) if t.dim() > 1 else t

    viewed = dict(index=as_view(dense["index"]), affine=as_view(affine), read_box=as_view(box))
    want = rubikops.extract_cubes(storage, origins.contiguous(), cube, backend=backend, **dense)
    got = rubikops.extract_cubes(storage, as_view(origins), cube, backend=backend, **viewed)
    assert torch.equal(got, want)


@pytest.mark.parametrize("bad, error, match", [
    (dict(read_box=torch.zeros(2, 2, 3, dtype=torch.int64), affine=None), ValueError, "read_box.*needs affine"),
    (dict(read_box=torch.zeros(2, 3, dtype=torch.int64)), ValueError, r"read_box.*shape \(2, 2, 3\)"),
    (dict(read_box=torch.zeros(2, 2, 3)), TypeError, "read_box.*int32 or int64"),
    (dict(read_box=torch.tensor([[[0, 0, 0], [3, 3, 3]], [[0, 0, 0], [3, 9, 3]]])), ValueError, r"read_box\[1\]"),
    (dict(read_box=torch.tensor([[[0, 0, 0], [3, 3, 3]], [[2, 0, 0], [1, 3, 3]]])), ValueError, r"read_box\[1\]"),
    (dict(read_box=torch.tensor([[[-1, 0, 0], [3, 3, 3]], [[0, 0, 0], [1, 3, 3]]])), ValueError, r"read_box\[0\]"),
])
def test_bad_read_box_is_a_clear_error(bad, error, match):
    gen = torch.Generator().manual_seed(0)
    kw = dict(affine=_affines(gen, 2, move=1.0))
    kw.update(bad)
    with pytest.raises(error, match=match):
        rubikops.extract_cubes(torch.zeros(2, 1, 6, 6, 6), torch.zeros(2, 1, 3, dtype=torch.int64), (2, 2, 2), **kw)


def test_opcheck_with_a_read_box():
    storage, _, _, gen = _packed(5)
    B = 2
    args = rubikops._schema.ExtractCubesParams(
        storage.requires_grad_(), torch.randint(0, 3, (B, 2, 3), generator=gen), (2, 2, 2), index=torch.zeros(B, dtype=torch.int64),
        affine=_affines(gen, B, move=2.0), read_box=torch.tensor([[[0, 0, 0], [4, 6, 5]], [[5, 0, 0], [10, 4, 7]]]),
    ).schema_args()
    torch.library.opcheck(torch.ops.rubikops.extract_cubes.default, args)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or not ops.HAS_CUDA_KERNEL, reason="needs a CUDA GPU and kernel")
def test_cuda_equals_the_cpu_kernel_with_read_boxes():
    """The CUDA kernel's reads stay in each sample's box as the CPU kernel's do (forward and gradient),
    boxes past the source included (validate=False clamps them)."""
    storage, _, _, gen = _packed(11, torch.float64)
    B, M, cube = 4, 3, (3, 2, 4)
    box = torch.tensor([[[0, 0, 0], [4, 6, 5]], [[5, -3, 1], [10, 4, 7]], [[11, 0, 0], [99, 7, 6]],
                        [[6, 6, 6], [2, 7, 7]]])
    kw = dict(index=torch.zeros(B, dtype=torch.int64), rotations=torch.randint(0, 8, (B, M), generator=gen),
              affine=_affines(gen, B, move=6.0), read_box=box, scale=torch.tensor([1.5, -0.5, 2.0, 1.0]))
    origins = torch.randint(-2, 5, (B, M, 3), generator=gen)
    grad = torch.randn(B, M, 2, *cube, generator=gen, dtype=torch.float64)

    def run(device):
        x = storage.detach().to(device).requires_grad_()  # a leaf on each device (.to('cpu') is storage itself)
        args = {k: v.to(device) for k, v in kw.items()}
        out = rubikops.extract_cubes(x, origins.to(device), cube, validate=False, backend="compiled", **args)
        out.backward(grad.to(device))
        return out.detach().cpu(), x.grad.cpu()

    (want, want_grad), (got, got_grad) = run("cpu"), run("cuda")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("value", [float("inf"), -float("inf"), float("nan")])
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch"])
def test_non_finite_affine_entries_read_as_the_reference(backend, value):
    """validate=False with an infinite or NaN entry anywhere in the affine: each read clamps where
    the reference's product A @ (origin + j) + t puts it (inf past an edge, NaN at the box's lowest
    voxel), also along a row, where 0 * inf is NaN but the next voxel's inf * 1 is not."""
    gen = torch.Generator().manual_seed(13)
    source = torch.randn(1, 1, 6, 7, 5, generator=gen, dtype=torch.float64)
    codes = torch.tensor([[0, 1, 2, 4, 5, 7]] * 12)  # flips along every axis: rows run forwards and backwards
    affine = torch.eye(3, 4, dtype=torch.float64).repeat(12, 1, 1)
    for k in range(12):
        affine[k].view(-1)[k] = value
    origins = torch.tensor([[0, 0, 0], [0, 0, -1], [1, 1, 1], [2, -2, 0], [0, 3, 1], [-1, 0, 2]]).expand(12, 6, 3)
    kw = dict(index=torch.zeros(12, dtype=torch.int64), rotations=codes, affine=affine,
              read_box=torch.tensor([[1, 0, 1], [4, 6, 3]]).expand(12, 2, 3))
    want = reference.extract_cubes(source, origins, (2, 2, 3), **kw)
    got = rubikops.extract_cubes(source, origins, (2, 2, 3), validate=False, backend=backend, **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
