"""The backend registry, the one definition of each schema, the parameter
object, and the library's run-time configuration."""
import glob
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings, strategies as st

import rubikops
from rubikops import _schema, backends, ops, reference

from .testing import random_case

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_installed_backend_loaded():
    """An installed backend that fails to load fails the suite (it is not skipped)."""
    for b in backends.REGISTRY.values():
        if b.installed:
            assert b.loaded is not None, f"the {b.name} backend is installed but failed to load: {b.error}"
    assert backends.load_errors() == {}


@pytest.fixture
def scratch_registry(tmp_path, monkeypatch):
    """Backend modules written into tmp_path; registry entries removed afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    added = []

    def add(name, source):
        (tmp_path / f"{name}_backend.py").write_text(textwrap.dedent(source))
        added.append(name)
        return backends.register(name, f"{name}_backend", "json", f"test backend {name}")

    yield add
    for name in added:
        backends.REGISTRY.pop(name, None)


def test_a_broken_installed_backend_is_reported_not_dropped(scratch_registry):
    broken = scratch_registry("broken", "raise ImportError('libfoo.so: cannot open shared object file')\n")
    with pytest.warns(RuntimeWarning, match="broken backend is installed but failed to load"):
        backends.load(broken)
    assert broken.loaded is None and "libfoo.so" in broken.error
    assert backends.load_errors() == {"broken": broken.error}
    assert ops.available_backends()["broken"]["error"] == broken.error
    with pytest.raises(RuntimeError, match="the broken backend is not available: ImportError: libfoo.so"):
        backends.get("broken")
    with pytest.raises(RuntimeError, match="not available"):
        rubikops.extract_cubes(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 3, dtype=torch.long), (2, 2, 2),
                               backend="broken")


def test_a_backend_is_one_module_and_one_registry_entry(scratch_registry):
    """A backend that implements the op with its own code (here: slicing and torch.flip/rot90 through
    the reference's per-cube rule, the identity and flips only) is usable by name once registered."""
    toy = scratch_registry("toy", """
        import torch
        from rubikops import reference
        from rubikops._schema import ExtractCubesParams

        class ExtractCubes:
            calls = 0

            def __call__(self, *schema_args):
                type(self).calls += 1
                p = ExtractCubesParams.from_schema_args(*schema_args)
                return reference.extract_cubes(p.source, p.origins, p.cube_size, **p.reference_kwargs())

            def out(self, *schema_args, out):
                return out.copy_(self(*schema_args))

        extract_cubes = ExtractCubes()
        sample_puzzle = None

        def features():
            return {"toy": True}
        """)
    backends.load(toy)
    case = random_case(3, B=3, M=4, with_index=True, mask=0.5, keep_prob=0.25, scale="tensor", shift="float")
    got = rubikops.extract_cubes(case.source, case.origins, case.cube_size, backend="toy", **case.kwargs)
    assert toy.loaded.ExtractCubes.calls == 1
    torch.testing.assert_close(got, reference.extract_cubes(case.source, case.origins, case.cube_size, **case.kwargs))
    assert ops.available_backends()["toy"]["toy"] is True


def test_each_schema_is_defined_once_in_python():
    """C++ only registers kernels (TORCH_LIBRARY_IMPL); the schemas come from rubikops._schema."""
    sources = glob.glob(os.path.join(ROOT, "csrc", "**", "*.*"), recursive=True)
    assert sources
    for path in sources:
        text = open(path).read()
        assert not re.search(r"TORCH_LIBRARY(_FRAGMENT)?\s*\(", text), f"{path} defines a library"
        assert "m.def(" not in text, f"{path} defines a schema"
    assert str(torch.ops.rubikops.sample_puzzle.default._schema) == "rubikops::" + _schema.SAMPLE_PUZZLE_SCHEMA


def test_the_library_reads_its_environment_variables_once():
    """At run time the library reads RUBIKOPS_BACKEND (at import) and RUBIKOPS_CACHE (the data cache's
    folder, under the platform's XDG_CACHE_HOME by default), and Triton's own TRITON_INTERPRET at import;
    of the C++ sources only the CPU kernel reads one, RUBIKOPS_CPU_ISA (a cap on its vector versions),
    once, in the static initialiser of its choice."""
    seen = set()
    for path in glob.glob(os.path.join(ROOT, "rubikops", "**", "*.py"), recursive=True):
        text = open(path).read()
        seen |= set(re.findall(r"environ(?:\.get)?[\[(]\s*\"([A-Z_]+)\"", text))
        seen |= set(re.findall(r"getenv\(\s*\"([A-Z_]+)\"", text))
    assert seen <= {"RUBIKOPS_BACKEND", "RUBIKOPS_CACHE", "XDG_CACHE_HOME", "TRITON_INTERPRET"}, seen
    for path in glob.glob(os.path.join(ROOT, "csrc", "**", "*.*"), recursive=True):
        reads = re.findall(r"getenv\(\s*\"([A-Z_]+)\"", open(path).read())
        if path.endswith(os.path.join("cpu", "extract_cubes_cpu.cpp")):
            assert reads == ["RUBIKOPS_CPU_ISA"], reads
            kernel = open(path).read()
            assert "static const VectorIsa isa = [] {" in kernel.split("getenv", 1)[0][-400:], "read once"
        else:
            assert "getenv" not in open(path).read(), path
    ops_text = open(os.path.join(ROOT, "rubikops", "ops.py")).read()
    body = ops_text.split("def resolve_backend", 1)[1]
    assert "environ" not in body, "RUBIKOPS_BACKEND must be read at import, not per call"


def test_rubikops_backend_is_read_at_import():
    code = ("import torch, rubikops; from rubikops import ops; "
            "print(ops.resolve_backend(None, torch.device('cpu')))")
    env = dict(os.environ, RUBIKOPS_BACKEND="torch")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "torch"


# -- the parameter object ------------------------------------------------------------------------------
_scalars = st.one_of(st.none(), st.floats(-1e3, 1e3, allow_nan=False), st.just(-0.0), st.just(0.0))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(scale=_scalars, shift=_scalars, lo=st.one_of(st.none(), st.floats(-10, 0)),
       hi=st.one_of(st.none(), st.floats(0, 10)), seed=st.integers(-(1 << 63), (1 << 64) - 1),
       tensors=st.booleans(), extras=st.booleans(), fill=st.floats(-5, 5), keep_prob=st.floats(0, 1))
def test_params_survive_the_schema_round_trip(scale, shift, lo, hi, seed, tensors, extras, fill, keep_prob):
    src, origins = torch.zeros(2, 1, 4, 4, 4), torch.zeros(2, 1, 3, dtype=torch.long)
    if tensors:
        scale, shift = torch.tensor([1.0, 2.0]), torch.tensor([0.5, -0.5])
    clamp = None if lo is None and hi is None else (lo, hi)
    more = dict(index=torch.tensor([1, 0]), rotations=torch.zeros(2, 1, dtype=torch.long),
                mask=torch.tensor([[True], [False]]), fill=fill, keep_prob=keep_prob, out_dtype=torch.float64,
                affine=torch.zeros(2, 3, 4, dtype=torch.float64), read_box=torch.zeros(2, 2, 3, dtype=torch.long),
                cube_intensity=torch.zeros(2, 1, 10, dtype=torch.float64)) if extras else {}
    p = _schema.ExtractCubesParams(src, origins, (2, 2, 2), scale=scale, shift=shift, clamp=clamp, seed=seed, **more)
    args = p.schema_args()
    named = dict(zip(_schema.EXTRACT_CUBES_ARG_NAMES, args))
    for name, value in more.items():  # every argument in its own place, tensors as the very objects given
        assert named[name] is value if isinstance(value, torch.Tensor) else named[name] == value
        back_value = getattr(_schema.ExtractCubesParams.from_schema_args(*args), name)
        assert back_value is value if isinstance(value, torch.Tensor) else back_value == value
    assert len(args) == len(_schema.EXTRACT_CUBES_ARG_NAMES) == 19 and -(1 << 63) <= args[8] < (1 << 63)
    assert args[8] % (1 << 64) == seed % (1 << 64)  # the same 64 bits
    back = _schema.ExtractCubesParams.from_schema_args(*args)
    assert back.scale is scale or back.scale == scale or (scale == 1.0 and back.scale is None)
    # shift -0.0 is "no shift"; +0.0 is a real shift (it turns an -0.0 voxel into +0.0)
    if isinstance(shift, float) and shift == 0.0 and str(shift).startswith("-"):
        assert back.shift is None
    else:
        assert back.shift is shift or back.shift == shift
    assert back.clamp == clamp and back.schema_args()[2:] == args[2:]
    lo32, hi32 = _schema.seed_halves(args[8])
    assert ((hi32 % (1 << 32)) << 32 | (lo32 % (1 << 32))) == seed % (1 << 64)
