"""Property-based fuzzing of every pretext task with views for each of its tensor arguments.

A task is given volumes (a batch or a packed storage, float32 or quantised int16), ``index``,
``volume_shapes``, ``volume_offsets``, ``intensity`` (scale, shift), ``stats`` (mean, std) and, a
quarter of the time, ``affine`` (each crop read through a rotation and zoom), each
drawn contiguous, strided (every other element of a larger tensor), offset (a slice starting past
element 0) or stride-0 (one row expanded) where its values allow.  Two checks per example:

- the same call on dense copies of every argument, with the same generator seed, gives the same
  cubes and targets bit for bit (a kernel or sampler that read a view as if it were dense differs);
- the cubes equal an independent reference cut from the targets with plain slicing,
  ``rotations.apply_code`` and the normalisation's formula in float64.  For the dense tasks
  (genesis, masked) that reference is the target, and the input is the task's corruption of it
  replayed from the same generator (masked: the chosen patches hold the fill, the rest the crop).
  With an affine the reference is the same call on the plain-torch backend.

Bounded for CI (RUBIKOPS_FUZZ_EXAMPLES, default 50, derandomized: about 50 s on the 2-core VM, most
of it in the Triton interpreter); set it higher, with RUBIKOPS_FUZZ_RANDOM=1, for a long run.
"""
import os

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rubikops import corruptions as K  # noqa: E402
from rubikops import ops  # noqa: E402
from rubikops.augment import CropAffine  # noqa: E402
from rubikops.rotations import apply_code  # noqa: E402
from rubikops.tasks import get  # noqa: E402

BACKENDS = ["compiled", "torch"] + (["triton"] if ops.triton_available() and ops.interpreter_enabled() else [])
FUZZ = settings(max_examples=int(os.environ.get("RUBIKOPS_FUZZ_EXAMPLES", "50")), deadline=None, database=None,
                derandomize=os.environ.get("RUBIKOPS_FUZZ_RANDOM", "0") in ("", "0"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TASKS = {  # small geometries, cubic cubes (the targets' codes then apply to a box as apply_code does)
    "rubik": lambda: get("rubik")(grid=(2, 2, 2), cube_size=2, num_permutations=4, gap=(0, 1), rotations="all"),
    "jigsaw": lambda: get("jigsaw")(cube_size=2, num_permutations=4, gap=(0, 1)),
    "rotation": lambda: get("rotation")(cube_size=3),
    "relative_location": lambda: get("relative_location")(cube_size=2, gap=(0, 1)),
    "genesis": lambda: get("genesis")(cube_size=4, shuffle_window=2),
    "masked": lambda: get("masked")(cube_size=4, patch=2, normalized_target=False),
    "masked_normalised": lambda: get("masked")(cube_size=4, patch=2, normalized_target=True),
}
DENSE = ("genesis", "masked", "masked_normalised")
VIEWS = ("dense", "strided", "offset", "stride0")


def view_of(t: torch.Tensor, kind: str) -> torch.Tensor:
    """``t``'s values as a view of the given kind (stride-0 only where every row is equal: else dense)."""
    if kind == "strided":  # every other element along the first axis of a twice-as-long tensor
        big = torch.zeros((2 * t.shape[0],) + tuple(t.shape[1:]), dtype=t.dtype)
        big[::2] = t
        return big[::2]
    if kind == "offset":
        big = torch.full((t.shape[0] + 3,) + tuple(t.shape[1:]), 7, dtype=t.dtype)
        big[3:] = t
        return big[3:]
    if kind == "stride0" and t.shape[0] > 0 and bool((t == t[:1]).all()):
        return t[:1].expand_as(t)
    return t.clone()


@st.composite
def calls(draw):
    name = draw(st.sampled_from(sorted(TASKS)))
    task = TASKS[name]()
    backend = draw(st.sampled_from(BACKENDS))
    task.backend = backend
    norm = draw(st.sampled_from([None, "zscore", ("window", -1.0, 2.0), "cube"]))
    task.normalize = norm
    crop = task.crop_size
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 2))
    same = draw(st.booleans())  # all volumes one extent (lets volume_shapes be a stride-0 view)
    extra = [tuple(draw(st.integers(0, 2)) for _ in range(3))] * n if same else \
        [tuple(draw(st.integers(0, 2)) for _ in range(3)) for _ in range(n)]
    shapes = torch.tensor([[cr + e for cr, e in zip(crop, ex)] for ex in extra], dtype=torch.int64)
    packed = draw(st.booleans())
    quantised = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    if packed:
        depth = int(shapes[:, 0].sum())
        storage = torch.zeros(1, c, depth, int(shapes[:, 1].max()), int(shapes[:, 2].max()))
        offsets = torch.zeros(n, 3, dtype=torch.int64)
        offsets[1:, 0] = shapes[:-1, 0].cumsum(0)
    else:
        storage = torch.zeros(n, c, *[int(v) for v in shapes.max(0).values])
        offsets = None
    for i, (d, h, w) in enumerate(shapes.tolist()):
        vals = torch.randn(c, d, h, w, generator=gen) * 40
        if packed:
            z = int(offsets[i, 0])
            storage[0, :, z:z + d, :h, :w] = vals
        else:
            storage[i, :, :d, :h, :w] = vals
    intensity = None
    if quantised:
        storage = storage.round().clamp(-32768, 32767).to(torch.int16)
        intensity = (torch.rand(n, generator=gen, dtype=torch.float64) + 0.5,
                     torch.randn(n, generator=gen, dtype=torch.float64))
    stats = None
    if norm == "zscore":
        stats = (torch.randn(n, generator=gen, dtype=torch.float64),
                 torch.rand(n, generator=gen, dtype=torch.float64) + 0.5)
    b = draw(st.integers(1, 4))
    index = torch.tensor(draw(st.lists(st.integers(0, n - 1), min_size=b, max_size=b)), dtype=torch.int64)
    give_shapes = packed or draw(st.booleans())
    kinds = {k: draw(st.sampled_from(VIEWS)) for k in ("volumes", "index", "shapes", "offsets", "scale", "shift",
                                                       "mean", "std", "affine")}
    if kinds["volumes"] == "stride0":  # every volume holds the first one's values: a stride-0 batch can show them
        storage = storage[:1].expand_as(storage).clone()
    args = dict(volumes=storage, index=index, volume_shapes=shapes if give_shapes else None, volume_offsets=offsets,
                intensity=intensity, stats=stats)
    if draw(st.integers(0, 3)) == 0:  # the crop read through an affine (CropAffine's), past the volumes' edges
        args["affine"] = CropAffine(max_angle=30, zoom=(0.75, 1.3)).draw(shapes, task.crop_size, index, gen)
    return name, task, args, kinds, seed


def as_views(args: dict, kinds: dict) -> dict:
    out = dict(args)
    v = args["volumes"]
    if kinds["volumes"] == "stride0" and v.shape[0] > 1:  # every volume the first one: volumes of a stride-0 batch
        out["volumes"] = v[:1].expand_as(v)
    elif kinds["volumes"] in ("strided", "offset"):
        big = torch.zeros(v.shape[0], v.shape[1] + 1, v.shape[2] + 2, v.shape[3], 2 * v.shape[4], dtype=v.dtype)
        region = big[:, 1:, 2:, :, ::2] if kinds["volumes"] == "strided" else big[:, 1:, 2:, :, :v.shape[4]]
        region.copy_(v)
        out["volumes"] = region
    out["index"] = view_of(args["index"], kinds["index"])
    for key, kind in (("volume_shapes", "shapes"), ("volume_offsets", "offsets")):
        if args[key] is not None:
            out[key] = view_of(args[key], kinds[kind])
    if args.get("affine") is not None:
        out["affine"] = view_of(args["affine"], kinds["affine"])
    for key, (k0, k1) in (("intensity", ("scale", "shift")), ("stats", ("mean", "std"))):
        if args[key] is not None:
            out[key] = (view_of(args[key][0], kinds[k0]), view_of(args[key][1], kinds[k1]))
    return out


def dense(args: dict) -> dict:
    out = {}
    for k, v in args.items():
        if isinstance(v, tuple):
            out[k] = tuple(t.contiguous().clone() for t in v)
        else:
            out[k] = v.contiguous().clone() if isinstance(v, torch.Tensor) else v
    return out


def reference_cubes(task, args: dict, targets) -> torch.Tensor:
    """Cubes cut from ``targets`` with plain slicing, in float64: physical values, the rotation code,
    then the normalisation."""
    vols, offsets = args["volumes"].double(), args["volume_offsets"]
    size = task.cube_size
    out = []
    for b, i in enumerate(targets.index.tolist()):
        row = []
        for m in range(targets.origins.shape[1]):
            o = targets.origins[b, m].tolist()
            if offsets is not None:
                z0, y0, x0 = (o[a] + int(offsets[i, a]) for a in range(3))
                box = vols[0, :, z0:z0 + size[0], y0:y0 + size[1], x0:x0 + size[2]]
            else:
                box = vols[i, :, o[0]:o[0] + size[0], o[1]:o[1] + size[1], o[2]:o[2] + size[2]]
            if args["intensity"] is not None:
                box = box * float(args["intensity"][0][i]) + float(args["intensity"][1][i])
            box = apply_code(box, int(targets.codes[b, m]))
            if task.normalize == "zscore":
                box = (box - float(args["stats"][0][i])) / max(float(args["stats"][1][i]), 1e-6)
            elif isinstance(task.normalize, tuple):
                _, lo, hi = task.normalize
                box = ((box - lo) * 2 / (hi - lo) - 1).clamp(-1, 1)
            elif task.normalize == "cube":
                lo, hi = box.min(), box.max()
                box = (box - lo) / ((hi - lo).clamp_min(1e-30) / 2) - 1
            row.append(box)
        out.append(torch.stack(row))
    return torch.stack(out)


def check_dense(task, args, seed, inputs, targets, crops):
    """A dense task's target is the untouched crop (or its per-patch normalised form), and its input
    is the task's corruption of that crop for the draws that follow the cut's on the same generator."""
    clean = crops.to(inputs.dtype)
    torch.testing.assert_close(clean.double(), crops, rtol=1e-5, atol=1e-4)
    if getattr(task, "normalized_target", False):
        torch.testing.assert_close(targets.target, K.normalised_patches(clean, task.patch), rtol=1e-5, atol=1e-4)
    else:
        torch.testing.assert_close(targets.target, clean, rtol=1e-5, atol=1e-4)
    gen = torch.Generator().manual_seed(seed)
    shapes = args["volume_shapes"] if args["volume_shapes"] is not None else \
        torch.tensor(args["volumes"].shape[2:]).expand(args["volumes"].shape[0], 3)
    task.sample(args["index"].shape[0], shapes, args["index"], gen)
    if hasattr(task, "draw"):  # genesis: the corruption chain replayed on the reference crops
        want = task.apply(clean, task.draw(clean, gen))
    else:  # masked: the chosen patches hold the fill, the others the crop
        masked = K.choose_patches(clean.shape[0], task.grid, task.mask_ratio, gen, clean.device)
        weight = K.patch_voxels(masked, task.patch).to(clean.dtype)
        torch.testing.assert_close(targets.weight, weight, rtol=0, atol=0)
        want = torch.where(weight.bool(), torch.full_like(clean, task.fill), clean)
    torch.testing.assert_close(inputs[:, 0], want, rtol=1e-5, atol=1e-4)


@FUZZ
@given(calls())
def test_every_task_argument_may_be_a_view(call):
    name, task, args, kinds, seed = call
    viewed = as_views(args, kinds)
    cubes, targets = task(viewed.pop("volumes"), viewed.pop("index"), torch.Generator().manual_seed(seed), **viewed)
    plain = dense(args)
    cubes_d, targets_d = task(plain.pop("volumes"), plain.pop("index"), torch.Generator().manual_seed(seed), **plain)
    assert torch.equal(cubes, cubes_d)
    for field in vars(targets):
        assert torch.equal(getattr(targets, field), getattr(targets_d, field)), field
    if args.get("affine") is not None:  # origins in the crop frame: the plain-torch backend is the reference
        task.backend = "torch"
        plain = dense(args)
        cubes_r, _ = task(plain.pop("volumes"), plain.pop("index"), torch.Generator().manual_seed(seed), **plain)
        torch.testing.assert_close(cubes, cubes_r, rtol=1e-5, atol=1e-4)
        return
    expected = reference_cubes(task, args, targets)
    if name in DENSE:
        check_dense(task, args, seed, cubes, targets, expected[:, 0])
    else:
        torch.testing.assert_close(cubes.double(), expected, rtol=1e-5, atol=1e-4)
    # every origin lies inside its own volume (the sampler read the right row of a viewed volume_shapes)
    extent = args["volume_shapes"] if args["volume_shapes"] is not None else \
        torch.tensor(args["volumes"].shape[2:]).expand(args["volumes"].shape[0], 3)
    far = targets.origins + torch.tensor(task.cube_size)
    assert bool((targets.origins >= 0).all()) and bool((far <= extent[targets.index][:, None, :]).all())
