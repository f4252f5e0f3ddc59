"""rubikops::sample_puzzle (the puzzle sampler's op): every kernel against the
plain-torch reference, bit for bit, on random inputs and awkward layouts;
its schema, fake kernel, torch.compile, and errors that name the argument."""
import zlib

import pytest
import torch

from rubikops import _library, _schema, ops, reference
from rubikops.rotations import PAPER_ROTATIONS, PROPER_ROTATIONS

DEVICES = [pytest.param("cpu", id="cpu")]
if torch.cuda.is_available():
    DEVICES.append(pytest.param("cuda", id="cuda", marks=pytest.mark.cuda))

# (backend, device): the dispatcher's kernel (C++ on CPU, CUDA C++ or Triton
# on CUDA), the Triton kernel (interpreter on CPU), and the reference's own
# path (its Python checks).
BACKENDS = [pytest.param(("compiled", "cpu"), id="cpu-compiled")]
if ops.triton_available() and ops.interpreter_enabled():
    BACKENDS.append(pytest.param(("triton", "cpu"), id="cpu-triton-interpreter"))
if torch.cuda.is_available():
    BACKENDS.append(pytest.param(("compiled", "cuda"), id="cuda-default", marks=pytest.mark.cuda))
    if ops.triton_available():
        BACKENDS.append(pytest.param(("triton", "cuda"), id="cuda-triton", marks=pytest.mark.cuda))


def sample(args, name):
    return ops.sample_puzzle(*args, backend=None if name == "compiled" else name)

CODE_TABLES = {"none": (), "paper": PAPER_ROTATIONS, "all": PROPER_ROTATIONS}


def make_inputs(seed, *, grid=(2, 2, 2), B=13, N=4, K=7, rotations="paper", mask_prob=0.3, jitter=4,
                cube=(5, 6, 7), expanded_shapes=False, index_dtype=torch.int64, device="cpu"):
    """Random sampler inputs: permutations of the grid's cells, cell corners
    on a pitch of cube + jitter, volumes at least as big as the crop."""
    gen = torch.Generator().manual_seed(seed)
    n_cells = grid[0] * grid[1] * grid[2]
    cells = torch.stack(torch.meshgrid(*[torch.arange(g) for g in grid], indexing="ij"), -1).view(-1, 3)
    pitch = torch.tensor(cube) + jitter
    crop = [int((g - 1) * p + c + jitter) for g, p, c in zip(grid, pitch.tolist(), cube)]
    perms = torch.stack([torch.randperm(n_cells, generator=gen) for _ in range(K)])
    table = torch.tensor(CODE_TABLES[rotations], dtype=torch.int64)
    if expanded_shapes:  # one shape for all volumes, as RubikCube passes it for an unpadded batch
        shapes = (torch.tensor(crop) + torch.randint(0, 9, (3,), generator=gen)).expand(N, 3)
    else:
        shapes = torch.tensor(crop) + torch.randint(0, 30, (N, 3), generator=gen)
    index = torch.randint(0, N, (B,), generator=gen).to(index_dtype)
    M = n_cells
    n = 3 + 3 * n_cells + 1 + (M if table.numel() else 0) + (M if mask_prob > 0 else 0)
    u = torch.rand(B, n, generator=gen, dtype=torch.float64)
    args = [u, shapes, index, cells * pitch, perms, table, crop, jitter, mask_prob]
    return [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]


def assert_same(got, expect):
    names = ("origins", "codes", "permutation", "state", "mask")
    for name, g, e in zip(names, got, expect):
        assert g.dtype == e.dtype, name
        assert torch.equal(g.cpu(), e.cpu()), name


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("grid", [(2, 2, 2), (3, 2, 1), (1, 1, 2), (3, 3, 3)])
@pytest.mark.parametrize("rotations", ["none", "paper", "all"])
@pytest.mark.parametrize("mask_prob", [0.0, 0.3, 1.0])
def test_kernel_equals_reference(backend, grid, rotations, mask_prob):
    name, device = backend
    seed = zlib.crc32(repr((grid, rotations, mask_prob)).encode())
    args = make_inputs(seed, grid=grid, rotations=rotations, mask_prob=mask_prob, device=device)
    assert_same(sample(args, name), reference.sample_puzzle(*args))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["expanded shapes", "int32 index", "no jitter", "jitter 1", "one sample",
                                    "one permutation", "no sample", "transposed uniforms"])
def test_awkward_inputs(backend, layout):
    name, device = backend
    kw = {"expanded shapes": dict(expanded_shapes=True), "int32 index": dict(index_dtype=torch.int32),
          "no jitter": dict(jitter=0), "jitter 1": dict(jitter=1), "one sample": dict(B=1, N=1),
          "one permutation": dict(K=1), "no sample": dict(B=0), "transposed uniforms": {}}[layout]
    args = make_inputs(31, device=device, **kw)
    if layout == "transposed uniforms":
        args[0] = args[0].t().contiguous().t()
        assert not args[0].is_contiguous()
    assert_same(sample(args, name), reference.sample_puzzle(*args))


def test_mask_threshold_is_compared_in_float64():
    """Draws between float32(mask_prob) and mask_prob: a kernel that took the
    probability as float32 would flip them."""
    args = make_inputs(38, B=4, rotations="none", mask_prob=0.3)
    below = torch.nextafter(torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64))
    between = torch.tensor(0.3000000005, dtype=torch.float64)  # float32(0.3) = 0.30000001192...
    args[0][:, -8:] = torch.stack([below, between] * 4)
    names = ["compiled"] + (["triton"] if ops.triton_available() and ops.interpreter_enabled() else [])
    for name in names:
        mask = sample(args, name)[4]
        assert mask[:, 0::2].all() and not mask[:, 1::2].any(), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_indices_are_clamped_like_the_reference(backend):
    name, device = backend
    """validate=False callers may pass anything: out-of-range volume indices,
    permutation entries and uniforms outside [0, 1) must stay in bounds, the
    same way on every backend."""
    u, shapes, index, cells, perms, table, crop, jitter, mask_prob = make_inputs(32, rotations="all", device=device)
    index = torch.tensor([-3, 0, 4, 99] + [1] * (index.numel() - 4), device=device)
    perms = perms.clone()
    perms[0, 0], perms[1, 3] = -1, 8
    u = u.clone()
    u[0, 3 + 3 * 8] = 1.0  # permutation draw at the top end
    u[1, 4 + 3 * 8:4 + 3 * 8 + 8] = 1.5  # rotation states past the end
    u[2, :] = -0.25
    args = [u, shapes, index, cells, perms, table, crop, jitter, mask_prob]
    got = sample(args, name)
    assert_same(got, reference.sample_puzzle(*args))
    origins, codes, perm, state, mask = got
    assert int(perm.min()) >= 0 and int(perm.max()) < perms.shape[0]
    assert int(state.min()) >= 0 and int(state.max()) < table.numel()


def test_choices_cover_their_ranges_uniformly():
    """Each integer choice is uniform over its range (chi-square-free check:
    every value appears, and the most and least frequent are within 25%)."""
    u, shapes, index, cells, perms, table, crop, jitter, mask_prob = make_inputs(33, B=1, rotations="all")
    u = torch.rand(20000, u.shape[1], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    index = torch.zeros(20000, dtype=torch.int64)
    origins, codes, perm, state, mask = torch.ops.rubikops.sample_puzzle(
        u, shapes, index, cells, perms, table, crop, jitter, mask_prob)
    for values, count in ((perm, perms.shape[0]), (state.flatten(), table.numel())):
        freq = torch.bincount(values, minlength=count)
        assert freq.numel() == count and int(freq.min()) > 0.8 * int(freq.max())
    assert abs(float(mask.float().mean()) - mask_prob) < 0.01
    free = shapes[0] - torch.tensor(crop) + 1
    start = origins[:, 0, :] - cells[perms[perm, 0]]  # crop start plus cube 0's jitter
    assert int(start.min()) >= 0 and bool((start <= free - 1 + jitter).all())


def test_schema_matches_python():
    assert str(torch.ops.rubikops.sample_puzzle.default._schema) == "rubikops::" + _schema.SAMPLE_PUZZLE_SCHEMA


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    args = make_inputs(34, device=device)
    torch.library.opcheck(torch.ops.rubikops.sample_puzzle.default, args)


@pytest.mark.skipif(not ops.triton_available() or (not torch.cuda.is_available() and not ops.interpreter_enabled()),
                    reason="needs Triton (the interpreter on CPU)")
def test_opcheck_triton():
    args = make_inputs(34, device="cuda" if torch.cuda.is_available() else "cpu")
    torch.library.opcheck(torch.ops.rubikops.sample_puzzle_triton.default, args)


def test_torch_compile_fullgraph():
    args = make_inputs(35)

    @torch.compile(fullgraph=True)
    def step(u, shapes, index, cells, perms, table):
        origins, codes, perm, state, mask = torch.ops.rubikops.sample_puzzle(u, shapes, index, cells, perms, table,
                                                                            *args[6:])
        return origins + 1, codes, perm, state, mask

    got = step(*args[:6])
    expect = list(reference.sample_puzzle(*args))
    expect[0] = expect[0] + 1
    assert_same(got, expect)


def test_backend_torch_runs_the_reference(monkeypatch):
    args = make_inputs(36)
    calls = []
    monkeypatch.setattr(reference, "sample_puzzle", lambda *a: calls.append(a) or "reference")
    assert ops.sample_puzzle(*args, backend="torch") == "reference"
    monkeypatch.setattr(ops, "DEFAULT_BACKEND", "torch")  # RUBIKOPS_BACKEND, as read at import
    assert ops.sample_puzzle(*args) == "reference"
    assert len(calls) == 2


def test_compiled_kernels_are_reported():
    backends = ops.available_backends()
    assert backends["compiled"]["cpu_sampler"] is True
    assert backends["compiled"]["cuda_sampler"] == _library.has_kernel("rubikops::sample_puzzle", "CUDA") or \
        backends["triton"]["cuda_fallback"]["sample_puzzle"]
    assert hasattr(torch.ops.rubikops, "sample_puzzle_triton") == ops.triton_available()


def _with(args, i, value):
    args = list(args)
    args[i] = value
    return args


@pytest.mark.parametrize("change,exc,match", [
    (lambda a: _with(a, 0, a[0].float()), TypeError, "uniforms must be float64"),
    (lambda a: _with(a, 0, a[0][:, :-1]), ValueError, "uniforms must have 44 columns"),
    (lambda a: _with(a, 0, a[0][0]), ValueError, r"uniforms must be \(B, n\)"),
    (lambda a: _with(a, 1, a[1][:, :2]), ValueError, r"volume_shapes must be \(N, 3\)"),
    (lambda a: _with(a, 1, a[1].float()), TypeError, "volume_shapes must be int32 or int64"),
    (lambda a: _with(a, 2, a[2][:-1]), ValueError, "index must have shape"),
    (lambda a: _with(a, 3, a[3][:, :2]), ValueError, r"cells must be \(n_cells, 3\)"),
    (lambda a: _with(a, 4, a[4][:0]), ValueError, "needs at least one permutation"),
    (lambda a: _with(a, 5, a[5].view(1, -1)), ValueError, "code_table must be 1-D"),
    (lambda a: _with(a, 6, [1, 2]), ValueError, "crop_size must have 3 entries"),
    (lambda a: _with(a, 7, -1), ValueError, "jitter must be >= 0"),
    (lambda a: _with(a, 8, 1.5), ValueError, r"mask_prob must be in \[0, 1\]"),
])
@pytest.mark.parametrize("path", ["compiled", "torch", "triton"])
def test_errors_name_the_argument(change, exc, match, path):
    """The C++ checks (compiled kernels) and the Python ones (reference,
    Triton) give the same error for the same mistake."""
    if path == "triton" and not (ops.triton_available() and ops.interpreter_enabled()):
        pytest.skip("needs the Triton interpreter")
    args = change(make_inputs(37))
    with pytest.raises(exc, match="rubikops.sample_puzzle: " + match):
        sample(args, path)
