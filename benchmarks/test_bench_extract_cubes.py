"""pytest-benchmark suite for the core op sizes (not part of the default
test run, which collects tests/ only):

    python -m pytest benchmarks/test_bench_extract_cubes.py --benchmark-only
    python -m pytest benchmarks/test_bench_extract_cubes.py --benchmark-only --benchmark-autosave  # then
    python -m pytest benchmarks/test_bench_extract_cubes.py --benchmark-only --benchmark-compare

On a GPU the CUDA rows run as well (synchronised inside the timed call)."""
import pytest
import torch

import rubikops
from rubikops.rotations import PAPER_ROTATIONS

SIZES = [(8, 32, 96), (16, 48, 128)]  # (batch, cube edge, volume edge), 8 cubes per sample
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _case(B, cube, vol, dtype, device):
    g = torch.Generator().manual_seed(0)
    src = (torch.randn(B, 1, vol, vol, vol, generator=g) * 100).to(dtype).to(device)
    org = torch.randint(0, vol - cube + 1, (B, 8, 3), generator=g).to(device)
    rot = torch.tensor(PAPER_ROTATIONS)[torch.randint(0, 3, (B, 8), generator=g)].to(device)
    out = torch.empty(B, 8, 1, cube, cube, cube, dtype=dtype, device=device)
    return src, org, rot, out


def _sync(device):
    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("B,cube,vol", SIZES, ids=[f"B{b}-{c}of{v}" for b, c, v in SIZES])
def test_extract_cubes_out(benchmark, device, dtype, B, cube, vol):
    src, org, rot, out = _case(B, cube, vol, dtype, device)
    sync = _sync(device)

    def run():
        rubikops.extract_cubes(src, org, (cube,) * 3, rotations=rot, out=out, validate=False)
        sync()

    benchmark.extra_info["bytes_moved"] = 2 * out.numel() * out.element_size()
    benchmark(run)
    ref = rubikops.extract_cubes(src.cpu(), org.cpu(), (cube,) * 3, rotations=rot.cpu(), backend="reference")
    assert torch.equal(out.cpu(), ref)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("B,cube,vol", SIZES, ids=[f"B{b}-{c}of{v}" for b, c, v in SIZES])
def test_copy_ceiling(benchmark, device, B, cube, vol):
    _, _, _, out = _case(B, cube, vol, torch.float32, device)
    other = torch.randn_like(out)
    sync = _sync(device)
    benchmark.extra_info["bytes_moved"] = 2 * out.numel() * out.element_size()
    benchmark(lambda: (out.copy_(other), sync()))


@pytest.mark.parametrize("device", DEVICES)
def test_whole_puzzle(benchmark, device):
    vols = torch.randn(16, 1, 128, 128, 128, device=device)
    puzzle = rubikops.RubikCube(cube_size=48, num_permutations=100, gap=(0, 10), validate=False)
    gen = torch.Generator(device).manual_seed(0)
    out = torch.empty(16, 8, 1, 48, 48, 48, device=device)
    sync = _sync(device)
    benchmark(lambda: (puzzle(vols, generator=gen, out=out), sync()))
