"""StreamingBank: puzzles equal to a resident bank's for the same volumes,
uniform visits over an epoch, exact resume, and clear refusals."""
import re

import numpy as np
import pytest
import scipy.stats
import torch

import rubikops
from rubikops.augment import CropAffine
from rubikops.data import DataError, StreamingBank, VolumeBank, bank_bytes, make_bank, parse_size
from rubikops.data.bank import known_stats, release_pages
from rubikops.data.streaming import slot_bytes


def volumes(n=17, lo=26, hi=37, channels=1, seed=0, integer=False):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        shape = (channels, *(int(s) for s in rng.integers(lo, hi, 3)))
        x = rng.normal(size=shape).cumsum(1) * 40 + rng.normal() * 100
        out.append(np.rint(x).astype(np.float32) if integer else x.astype(np.float32))
    return out


PUZZLE = rubikops.RubikCube(cube_size=(8, 8, 8), gap=(0, 2))


# marked cuda: benchmarks/gpu_check.sh runs these on the GPU machine (pytest -m cuda)
CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("device,dtype,refresh_every,augment", [
    ("cpu", "float32", 1, False), ("cpu", "int16", 3, False), ("cpu", "float32", 2, True),
    pytest.param("cuda", "float32", 1, False, marks=CUDA), pytest.param("cuda", "int16", 2, True, marks=CUDA)])
def test_puzzles_equal_a_resident_bank_on_the_same_volumes(device, dtype, refresh_every, augment):
    """On CUDA the slots are filled by non-blocking copies on a side stream: equal puzzles show the
    training stream waits for them, and that a slot is not overwritten while still read."""
    vols = volumes(integer=dtype == "int16")
    active = 5
    stream = StreamingBank(vols, device, dtype=dtype, budget=(active + 1) * slot_bytes(vols, getattr(torch, dtype)),
                           seed=3, refresh_every=refresh_every)
    assert stream.active == active
    resident = VolumeBank(vols, device, dtype=dtype)
    crop = CropAffine() if augment else None
    gen, ref_gen = (torch.Generator(device).manual_seed(11) for _ in range(2))
    for call in range(40):
        cubes, targets = stream.puzzles(PUZZLE, 6, gen, crop_transform=crop)
        # the reference draws the same slot numbers, then cuts from the volumes they hold
        drawn = torch.randint(stream.active, (6,), generator=ref_gen, device=device)
        slots = (drawn + stream.refreshes) % stream.slots
        if not augment:  # with crops, targets.index counts crops
            assert torch.equal(targets.index, slots)
        ref_cubes, ref_targets = resident.puzzles(PUZZLE, 6, ref_gen, index=stream.slot_volumes(slots).to(device),
                                                  crop_transform=crop)
        if augment:  # trilinear sampling normalises coordinates by the storage's extent, which differs
            torch.testing.assert_close(cubes, ref_cubes, rtol=1e-4, atol=1e-2)
        else:
            assert torch.equal(cubes, ref_cubes), call
        assert torch.equal(targets.permutation, ref_targets.permutation)
        assert torch.equal(targets.codes, ref_targets.codes) and torch.equal(targets.origins, ref_targets.origins)
    assert stream.refreshes == 39 // refresh_every
    stream.close()


class SlowSideStream(StreamingBank):
    """Each slot load's copy queued behind ~10 ms of spinning on the side stream."""

    def _load(self, position, v, wait_for):
        if self._cuda:
            with torch.cuda.stream(self._side):
                torch.cuda._sleep(20_000_000)
        return super()._load(position, v, wait_for)


class NoWaitStream(StreamingBank):
    """A broken bank whose side stream overwrites a slot without waiting for the cuts queued before:
    what the test below must catch."""

    def _load(self, position, v, wait_for):
        return super()._load(position, v, None)


@pytest.mark.parametrize("delayed,bank_type,broken", [
    pytest.param("side", SlowSideStream, False, marks=CUDA), pytest.param("training", StreamingBank, False, marks=CUDA),
    pytest.param("training", NoWaitStream, True, marks=CUDA)])
def test_a_delayed_stream_never_reads_a_stale_or_overwritten_slot(delayed, bank_type, broken):
    """A late side stream catches a missing wait of the training stream on a slot's copy (the cut would
    read the slot's previous volume); a late training stream catches a side stream that overwrites a
    slot a queued cut still reads (the broken bank shows the test fails then).  Nothing in the loop
    synchronises the host with the GPU (validate=False, the slots' volumes looked up on the host), so
    only the banks' events order the streams; the reference cuts come after the loop."""
    vols = volumes()
    puzzle = rubikops.RubikCube(cube_size=(8, 8, 8), gap=(0, 2), validate=False)
    stream = bank_type(vols, "cuda", budget=4 * slot_bytes(vols), seed=3, refresh_every=1)
    gen = torch.Generator("cuda").manual_seed(11)
    calls = []
    for _ in range(25):
        if delayed == "training":
            torch.cuda._sleep(20_000_000)  # the cut below is queued behind this; the next load is not
        cubes, _ = stream.puzzles(puzzle, 6, gen)
        first = stream.refreshes
        resident_now = {p % stream.slots: stream.volume_at(p) for p in range(first, first + stream.active)}
        calls.append((cubes, stream.refreshes, resident_now))
    torch.cuda.synchronize()
    resident = VolumeBank(vols, "cuda")
    ref_gen = torch.Generator("cuda").manual_seed(11)
    same = []
    for cubes, refreshes, resident_now in calls:
        drawn = torch.randint(stream.active, (6,), generator=ref_gen, device="cuda")
        slots = ((drawn + refreshes) % stream.slots).tolist()
        index = torch.tensor([resident_now[k] for k in slots], device="cuda")
        ref_cubes, _ = resident.puzzles(puzzle, 6, ref_gen, index=index)
        same.append(torch.equal(cubes, ref_cubes))
    stream.close()
    assert not all(same) if broken else all(same)


def test_every_volume_is_resident_equally_and_drawn_uniformly_over_each_epoch():
    vols = volumes(n=23, lo=26, hi=30)
    R, batch = 2, 32
    stream = StreamingBank(vols, budget=7 * slot_bytes(vols), seed=5, refresh_every=R)
    n, A = len(vols), stream.active
    gen = torch.Generator().manual_seed(0)
    epochs = 3
    for epoch in range(epochs):
        resident_calls = np.zeros(n, dtype=np.int64)
        drawn = np.zeros(n, dtype=np.int64)
        loaded = [stream.volume_at(p) for p in range(epoch * n, epoch * n + n)]
        assert sorted(loaded) == list(range(n))  # every volume once in each epoch's order
        for _ in range(n * R):
            _, targets = stream.puzzles(PUZZLE, batch, gen)
            for v in stream.resident():
                resident_calls[v] += 1
            drawn += np.bincount(stream.slot_volumes(targets.index).numpy(), minlength=n)
        assert (resident_calls == A * R).all(), (epoch, resident_calls)
        planes = stream.storage[0, :, stream.slot_shape[0]::stream.slot_shape[0] + 1]
        assert planes.shape[1] == stream.slots and not planes.any()  # the planes between slots stay zero
        # uniform in expectation: batch * R samples per volume and epoch
        assert drawn.sum() == n * R * batch
        assert scipy.stats.chisquare(drawn).pvalue > 1e-3, drawn
    assert stream.order(1)[:A - 1].tolist() == stream.order(2)[:A - 1].tolist()  # the head keeps its places
    assert stream.order(1)[A - 1:].tolist() != stream.order(2)[A - 1:].tolist()  # the rest is reshuffled
    stream.close()


@pytest.mark.parametrize("stop_at", [0, 7, 12])
def test_resume_from_state_continues_exactly(stop_at):
    vols = volumes(n=13)
    kwargs = dict(budget=5 * slot_bytes(vols), seed=2, refresh_every=3)
    straight = StreamingBank(vols, **kwargs)
    gen = torch.Generator().manual_seed(1)
    expected = [straight.puzzles(PUZZLE, 4, gen)[0] for _ in range(30)]
    first = StreamingBank(vols, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for _ in range(stop_at):
        first.puzzles(PUZZLE, 4, gen)
    state, gen_state = first.state_dict(), gen.get_state()
    first.close()
    resumed = StreamingBank(vols, **kwargs)
    resumed.load_state_dict(state)
    gen = torch.Generator()
    gen.set_state(gen_state)
    for call in range(stop_at, 30):
        assert torch.equal(resumed.puzzles(PUZZLE, 4, gen)[0], expected[call]), call
    for bank in (straight, resumed):
        bank.close()


def test_refusals_are_one_clear_line():
    vols = volumes(n=6)
    one = slot_bytes(vols)
    cases = [
        (dict(budget=one), "holds 1 slot(s)"),
        (dict(budget=one + 1), "holds 1 slot(s)"),
        (dict(budget=100 * one), "all 6 volumes fit the budget"),
        (dict(budget="lots"), "'lots' is not a size"),
        (dict(budget=-5), "must be positive"),
        (dict(budget=3 * one, refresh_every=0), "refresh_every must be an int >= 1"),
        (dict(budget=3 * one, dtype="float64"), "dtype must be one of"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            StreamingBank(vols, **kwargs)
    bank = StreamingBank(vols, budget=3 * one, seed=0)
    with pytest.raises(ValueError, match="the state's seed is 1, this bank's 0"):
        bank.load_state_dict(dict(bank.state_dict(), seed=1))
    other = StreamingBank(volumes(n=6), budget=3 * one, seed=0, names=[f"scan{i}" for i in range(6)])
    with pytest.raises(ValueError, match="the state's volumes_hash"):  # same count and budget, other volumes
        other.load_state_dict(bank.state_dict())
    other.close()
    with pytest.raises(DataError, match="smaller than the puzzle's crop"):
        bank.puzzles(rubikops.RubikCube(cube_size=(20, 20, 20)), 2)
    bank.close()
    bad = volumes(n=6)
    bad[4][0, 3, 3, 3] = np.nan
    bank = StreamingBank(bad, budget=3 * one, seed=0, refresh_every=1)
    with pytest.raises(DataError, match="volume 4 holds NaN or Inf"):
        for _ in range(10):
            bank.puzzles(PUZZLE, 2)
    # its slot holds stale data: every later call refuses instead of cutting from it
    with pytest.raises(DataError, match="volume 4 holds NaN or Inf"):
        bank.puzzles(PUZZLE, 2)
    bank.close()


def test_parse_size_units():
    assert parse_size("20GB") == 20 * 10**9
    assert parse_size("1.5GiB") == int(1.5 * 2**30) == parse_size("1.5g")
    assert parse_size("512 MB") == 512 * 10**6
    assert parse_size("1e9") == 10**9 == parse_size(10**9)
    for bad in ("", "GB", "1 parsec", "0", True):
        with pytest.raises(ValueError, match="size|positive"):
            parse_size(bad, "size")


def test_make_bank_streams_only_what_does_not_fit():
    vols = volumes(n=8)
    need = bank_bytes(vols)
    assert need == VolumeBank(vols).nbytes
    assert isinstance(make_bank(vols), VolumeBank)
    assert isinstance(make_bank(vols, budget=need), VolumeBank)
    small = make_bank(vols, budget=need // 3, shard=(1, 2))
    assert isinstance(small, StreamingBank) and len(small) == 4
    assert small.names == ["volume 1", "volume 3", "volume 5", "volume 7"]
    small.close()


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_release_pages_drops_a_memory_map_from_the_resident_set(tmp_path):
    np.save(tmp_path / "v.npy", np.ones((1, 128, 256, 256), dtype=np.float32))  # 32 MiB
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    assert float(mapped.sum(dtype=np.float64)) == 128 * 256 * 256  # every page read
    before = _rss()
    release_pages(mapped)
    assert before - _rss() > 24 * 2**20
    assert float(mapped[0, 5].sum()) == 256 * 256  # still readable: pages come back from the file


def test_resume_loads_the_resident_set_once_and_every_index_is_the_resident_slots():
    vols = volumes(n=9)
    bank = StreamingBank(vols, budget=4 * slot_bytes(vols), seed=0, refresh_every=1)
    assert bank.loads == 0  # loaded on the first call, not at construction
    bank.load_state_dict(dict(bank.state_dict(), calls=5))
    assert bank.loads == bank.active + 1  # the resident set and the spare slot's load, once
    assert bank.every_index().tolist() == [(5 + j) % bank.slots for j in range(bank.active)]
    cubes, targets = PUZZLE(bank)  # a task given no index cuts one puzzle per resident volume
    assert targets.index.tolist() == bank.every_index().tolist()
    bank.close()
    bank.close()  # closing twice is harmless


def test_prepared_statistics_are_trusted_only_for_the_files_own_memory_map(tmp_path):
    from rubikops.data import Preprocessing, load_prepared, prepare
    from tests.train.helpers import smooth_volumes
    prepare(smooth_volumes(tmp_path / "scans", n=2), tmp_path / "prepared", Preprocessing(), progress=False)
    vol = load_prepared(tmp_path / "prepared")[0]
    stats = known_stats(vol)
    assert stats is not None and stats["mean"] == pytest.approx(float(np.asarray(vol.data, np.float64).mean()))
    import dataclasses
    assert known_stats(dataclasses.replace(vol, data=np.asarray(vol.data) * 2)) is None  # processed copy
