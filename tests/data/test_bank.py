"""The bank against per-volume extraction: a puzzle cut from the packed bank
must equal the same puzzle cut from each volume on its own."""
import numpy as np
import pytest
import torch

import rubikops
from rubikops.data import DataError, Volume, VolumeBank

from ..testing import BACKENDS

SHAPES = [(40, 37, 45), (52, 33, 41), (36, 44, 38)]  # awkward, different


def _volumes(seed=0, channels=1):
    rng = np.random.default_rng(seed)
    return [Volume((rng.normal(size=(channels,) + s) * 100 + 20).astype(np.float32), np.eye(4), (f"v{i}.nii",))
            for i, s in enumerate(SHAPES)]


def _per_volume(vols, puzzle, targets, **kw):
    """Reference: each sample's cubes cut from its own volume with the same origins/codes."""
    out = []
    for b in range(targets.index.shape[0]):
        v = torch.from_numpy(vols[int(targets.index[b])])[None]
        out.append(rubikops.extract_cubes(v, targets.origins[b:b + 1].cpu(), puzzle.cube_size,
                                          rotations=targets.codes[b:b + 1].cpu(), backend="reference", **kw)[0])
    return torch.stack(out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bank_puzzles_equal_per_volume_puzzles(backend):
    name, device = backend
    vols = _volumes()
    bank = VolumeBank(vols, device=device)
    assert bank.shapes.tolist() == [list(s) for s in SHAPES]
    assert bank.offsets[:, 0].tolist() == [0, 40, 92] and bank.storage.shape == (1, 1, 128, 44, 45)
    puzzle = rubikops.RubikCube(cube_size=(12, 10, 14), gap=(1, 5), num_permutations=24, backend=name)
    gen = torch.Generator(device).manual_seed(1)
    cubes, t = bank.puzzles(puzzle, 10, gen)
    assert cubes.shape == (10, 8, 1, 12, 10, 14) and cubes.device.type == device
    torch.testing.assert_close(cubes.cpu(), _per_volume([v.data for v in vols], puzzle, t.to("cpu")), rtol=0, atol=0)
    # every crop lies inside its own volume
    hi = (t.origins + torch.tensor(puzzle.cube_size, device=device)).amax(1)
    assert bool((hi <= bank.shapes[t.index]).all()) and bool((t.origins >= 0).all())
    assert set(t.index.tolist()) == {0, 1, 2}


def test_int16_bank_halves_memory_and_dequantises():
    vols = _volumes(1)
    f32 = VolumeBank(vols, dtype="float32")
    i16 = VolumeBank(vols, dtype="int16")
    assert i16.nbytes * 2 == f32.nbytes
    for i, v in enumerate(vols):
        span = v.data.max() - v.data.min()
        torch.testing.assert_close(i16[i], torch.from_numpy(v.data), rtol=0, atol=float(span) / 65534 * 0.51 + 1e-4)
        torch.testing.assert_close(f32[i], torch.from_numpy(v.data), rtol=0, atol=0)
    # the puzzle through the fused per-volume scale/shift equals the dequantised volumes' puzzle
    for normalize in (None, "zscore", ("window", -50.0, 150.0)):
        puzzle = rubikops.RubikCube(cube_size=10, gap=(0, 4), num_permutations=10, normalize=normalize)
        cubes, t = i16.puzzles(puzzle, 6, torch.Generator().manual_seed(2))
        deq = [i16[i].numpy() for i in range(len(i16))]
        ref = _per_volume(deq, puzzle, t)
        if normalize == "zscore":
            m, s = (x[t.index].view(-1, 1, 1, 1, 1, 1).float() for x in i16.stats)
            ref = (ref - m) / s
        elif normalize is not None:
            ref = ((ref + 50) / 200 * 2 - 1).clamp(-1, 1)
        torch.testing.assert_close(cubes, ref, rtol=1e-5, atol=1e-4)


def test_integer_ct_is_stored_exactly_in_int16():
    rng = np.random.default_rng(3)
    hu = [rng.integers(-1024, 3000, size=(1,) + s).astype(np.float32) for s in SHAPES]
    bank = VolumeBank(hu, dtype="int16")
    assert bank.scale.tolist() == [1.0] * 3 and bank.shift.tolist() == [0.0] * 3
    for i, v in enumerate(hu):
        assert torch.equal(bank[i], torch.from_numpy(v))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "uint8"])
def test_other_storage_dtypes(dtype):
    vols = _volumes(4)
    bank = VolumeBank(vols, dtype=dtype)
    tol = {"bfloat16": 2 ** -7, "float16": 2 ** -10, "uint8": None}[dtype]
    for i, v in enumerate(vols):
        x = torch.from_numpy(v.data)
        atol = (float(v.data.max() - v.data.min()) / 255 * 0.51) if tol is None else 0
        torch.testing.assert_close(bank[i], x, rtol=tol or 0, atol=atol + 1e-4)


def test_multichannel_shard_and_report():
    vols = _volumes(5, channels=2)
    bank = VolumeBank(vols, shard=(1, 2))
    assert len(bank) == 1 and bank.names == ["v1.nii"] and bank.channels == 2
    assert torch.equal(bank[0], torch.from_numpy(vols[1].data))
    full = VolumeBank(vols)
    assert abs(full.padding_fraction - (1 - sum(np.prod(s) for s in SHAPES) / (128 * 44 * 45))) < 1e-9
    assert "3 volumes x 2 channel(s), float32 on cpu" in full.memory_report()


def test_refusals():
    vols = _volumes(6)
    with pytest.raises(MemoryError, match=r"VolumeBank: 3 volumes need .* GiB on cpu but only .* free"):
        VolumeBank(vols, headroom=1e-9)
    with pytest.raises(ValueError, match="dtype must be one of"):
        VolumeBank(vols, dtype="int8")
    with pytest.raises(ValueError, match="cannot be sharded over 4 ranks"):
        VolumeBank(vols, shard=(0, 4))
    with pytest.raises(ValueError, match="v1.nii has 2 channels"):
        VolumeBank([vols[0], Volume(np.zeros((2, 8, 8, 8), np.float32), np.eye(4), ("v1.nii",))])
    bad = vols[0].data.copy()
    bad[0, 1, 1, 1] = np.nan
    with pytest.raises(DataError, match="holds NaN"):
        VolumeBank([bad])
    bank = VolumeBank(vols)
    too_big = rubikops.RubikCube(cube_size=20, gap=(0, 4))
    with pytest.raises(DataError, match=r"smaller than the puzzle's crop \(44, 44, 44\).*v0.nii"):
        bank.puzzles(too_big, 4)
    with pytest.raises(IndexError):
        bank[3]


@pytest.mark.parametrize("given,current,want", [("cuda", 0, "cuda:0"), ("cuda", 3, "cuda:3"), ("cuda:1", 3, "cuda:1"),
                                                (torch.device("cuda"), 2, "cuda:2"), ("cpu", 3, "cpu")])
def test_a_bank_names_its_device_as_its_tensors_do(monkeypatch, given, current, want):
    """'cuda' becomes the current device's index, as every tensor the bank makes reports it: tasks
    compare the puzzles' indices with the bank's device, and 'cuda' != 'cuda:0' refused every batch."""
    from rubikops.data.bank import bank_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    assert bank_device(given, "VolumeBank") == torch.device(want)
