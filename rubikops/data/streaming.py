"""StreamingBank: puzzles from a shard larger than the device can hold.

A resident working set of ``A`` volumes lives on the device in ``A + 1``
equal slots (each as large as the shard's largest volume), packed along the
first spatial axis exactly as in :class:`rubikops.data.VolumeBank`, so every
task and :class:`rubikops.augment.CropAffine` read it unchanged.  ``A``
slots are active; the spare one is being filled with the next volume in the
background: a worker thread reads it from its (memory-mapped) host array,
quantises it, stages it in pinned memory and copies it on a side CUDA
stream with a non-blocking copy; the training stream waits on that copy's
event only when the slot turns active, so the copy overlaps the steps
before it.  On the CPU the worker writes the spare slot directly.

Schedule (``refresh_every`` = R calls of :meth:`puzzles` per refresh):
volumes are visited in a stream of positions ``p = 0, 1, 2, ...``; epoch
``e`` covers positions ``eN .. eN + N - 1`` and visits every volume of the
shard once, in an order drawn from ``seed`` and ``e``.  At refresh ``r``
(calls ``rR .. rR + R - 1``) positions ``r .. r + A - 1`` are resident, in
slots ``p mod (A + 1)``, and each sample's volume is drawn uniformly from
them.  So each position is resident for ``A`` refreshes (the first ``A - 1``
positions of the run for fewer), and every volume is resident for exactly
``A·R`` calls in every epoch of ``N·R`` calls, with ``batch·R`` expected samples.  What makes that count exact
across epoch seams: the first ``A - 1`` volumes keep their places at the
start of every epoch (they are resident at the seam for the end of one
epoch and the start of the next); the other ``N - A + 1`` are reshuffled
each epoch.

Every part of the schedule is a function of ``seed`` and the number of
calls, and a slot is only read after its load has finished, so the puzzles
do not depend on the worker's timing and :meth:`state_dict` (the call
count) restores a run exactly.  Slots are one plane deeper than the largest
volume and that plane is never written: trilinear crops
(:class:`rubikops.augment.CropAffine`) that touch a volume's last plane
read zeros there, not the neighbouring slot while it is being refilled.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import re
from typing import Optional, Sequence, Union

import numpy as np
import torch

from ..volumes import VolumeSource
from .bank import (BankPuzzles, VolumeBank, bank_device, bank_inputs, check_fits, host_array, human_bytes, packed_bytes,
                   storage_dtype, stored_volume, take_shard, volume_names)
from .nifti import Volume

# calls of puzzles() per volume swap: on the 2-core CPU (benchmarks/run.py --scale corpus, 8 cubes of
# 10^3, batch 32, budget 10%, 6 alternated rounds) streaming made 0.92x and 1.02x the resident bank's
# batches/s at 4 and 8 (1.15x with no loads): a load costs about half of such a small batch
REFRESH_EVERY = 8

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: Union[str, int], what: str = "size") -> int:
    """Bytes in ``text``: ``"20GB"`` (10^9), ``"20GiB"`` or ``"20G"`` (2^30), ``"512MB"``, ``"1e9"``."""
    if isinstance(text, (int, np.integer)) and not isinstance(text, bool):
        n = int(text)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
        if m is None or m.group(2).lower() not in _UNITS:
            raise ValueError(f"{what}: {text!r} is not a size (e.g. 20GB, 512MiB, 1e9)")
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
        if not np.isfinite(value) or value >= 2**63:
            raise ValueError(f"{what}: {text!r} is beyond any memory (at most 2^63 bytes)")
        n = int(value)
    if n <= 0:
        raise ValueError(f"{what}: must be positive, got {text!r}")
    return n


def slot_bytes(volumes: Sequence, dtype: Union[str, torch.dtype] = "float32") -> int:
    """Bytes of one :class:`StreamingBank` slot for ``volumes``: the largest extent on each axis,
    one plane deeper (the plane that separates slots)."""
    shapes = np.array([host_array(v, f"volume {i}", "slot_bytes").shape for i, v in enumerate(volumes)])
    c, d, h, w = (int(x) for x in shapes.max(0))
    return c * (d + 1) * h * w * torch.empty((), dtype=storage_dtype(dtype, "slot_bytes")).element_size()


def bank_bytes(volumes: Sequence, dtype: Union[str, torch.dtype] = "float32") -> int:
    """Bytes a :class:`VolumeBank` of ``volumes`` would take (read from their shapes only)."""
    arrays = [host_array(v, f"volume {i}", "bank_bytes") for i, v in enumerate(volumes)]
    return packed_bytes(arrays, storage_dtype(dtype, "bank_bytes"))


def contents_hash(arrays: Sequence[np.ndarray], names: Sequence[str]) -> str:
    """The identity of ``arrays`` in their order, from their names and what they hold (an array's
    default name is only its place in the list): a memory-mapped file by its path, size and
    modification time (a prepared volume's file name holds its content hash), an in-memory array by
    its bytes."""
    h = hashlib.blake2b("\n".join(names).encode(), digest_size=8)
    for a in arrays:
        h.update(repr((a.shape, str(a.dtype))).encode())
        mapped = getattr(a, "filename", None)
        if mapped is not None:
            st = os.stat(mapped)
            h.update(f"{os.path.abspath(mapped)}|{st.st_size}|{st.st_mtime_ns}".encode())
        else:
            h.update(np.ascontiguousarray(a).data)
    return h.hexdigest()


def _zero_outside(slot, d: int, h: int, w: int) -> None:
    """Zero a (C, D, H, W) slot (tensor or array) outside the box (d, h, w) its next volume fills:
    the padding then holds zeros whatever the slot held before (as a VolumeBank's does), at the cost
    of the padding, not of the whole slot."""
    slot[:, d:] = 0
    slot[:, :d, h:] = 0
    slot[:, :d, :h, w:] = 0


class StreamingBank(BankPuzzles, VolumeSource):
    """A working set of a large shard on the device, refreshed in the background.

    ``StreamingBank(volumes, device="cuda", dtype="int16", budget=20e9)``:
    ``volumes`` as for :class:`VolumeBank` (memory-mapped ones from
    ``load_prepared`` are read one at a time, when due); ``budget``: device
    bytes for the slots (``parse_size`` strings accepted); ``seed``: the
    visiting order; ``refresh_every``: calls of :meth:`puzzles` between two
    volume swaps.  Schedule and guarantees: the module docstring."""

    def __init__(self, volumes: Sequence[Union[Volume, np.ndarray, torch.Tensor]], device="cpu",
                 dtype: Union[str, torch.dtype] = "float32", *, budget: Union[int, str], shard: Optional[tuple] = None,
                 seed: int = 0, refresh_every: int = REFRESH_EVERY, names: Optional[Sequence[str]] = None,
                 headroom: float = 0.8):
        self.dtype, self.device = storage_dtype(dtype, "StreamingBank"), bank_device(device, "StreamingBank")
        if isinstance(refresh_every, bool) or not isinstance(refresh_every, int) or refresh_every < 1:
            raise ValueError(f"StreamingBank: refresh_every must be an int >= 1, got {refresh_every!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"StreamingBank: seed must be an int >= 0 (it seeds NumPy's visiting order), got {seed!r}")
        budget = parse_size(budget, "StreamingBank: budget")
        self.quantised = self.dtype in (torch.int16, torch.uint8)
        self.names, self._host, self._stats = bank_inputs(volumes, shard, names, "StreamingBank")
        C = self._host[0].shape[0]
        self.volume_shapes = np.array([a.shape[1:] for a in self._host], dtype=np.int64)
        n = len(self._host)
        slot_shape = tuple(int(x) for x in self.volume_shapes.max(0))
        one_slot = slot_bytes(self._host, self.dtype)
        slots = budget // one_slot
        if slots < 2:
            raise ValueError(f"StreamingBank: budget {human_bytes(budget)} holds {slots} slot(s) of "
                             f"{human_bytes(one_slot)} (the largest volume, {slot_shape}, and a plane); it needs "
                             "at least 2")
        if slots - 1 >= n:
            raise ValueError(f"StreamingBank: all {n} volumes fit the budget {human_bytes(budget)}; use VolumeBank "
                             "(make_bank picks the right one)")
        check_fits(slots * one_slot, self.device, headroom, f"StreamingBank: {slots} slots", "use a smaller budget")
        self.slots, self.active = int(slots), int(slots) - 1
        self.seed, self.refresh_every = int(seed), refresh_every
        self.slot_shape = slot_shape
        d = self._slot_stride = slot_shape[0] + 1  # slot k starts at plane k * (D + 1): the separating plane
        dev = self.device
        self.storage = torch.zeros(1, C, self.slots * d, slot_shape[1], slot_shape[2], dtype=self.dtype, device=dev)
        self.offsets = torch.tensor([(k * d, 0, 0) for k in range(self.slots)], dtype=torch.int64, device=dev)
        self.shapes = torch.zeros(self.slots, 3, dtype=torch.int64, device=dev)
        self._storage_np = self.storage.numpy() if dev.type == "cpu" and self.dtype != torch.bfloat16 else None
        # per slot: scale, shift, mean, std of the volume it holds (physical = stored * scale + shift)
        self._slot_meta = torch.zeros(4, self.slots, dtype=torch.float64, device=dev)
        self.scale, self.shift, mean, std = self._slot_meta.unbind(0)
        self.stats = (mean, std)
        self._orders: dict = {}
        self._cuda = dev.type == "cuda"
        # on CUDA the worker is bound to the bank's device: left on device 0 it would open a context there
        self._pool = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="rubikops-stream", initializer=torch.cuda.set_device if self._cuda else None,
            initargs=(dev,) if self._cuda else ())
        self._pending: Optional[tuple] = None  # (position, future) of the load into the spare slot
        self._failed: Optional[BaseException] = None  # a failed load: every later call raises it again
        self._filled = False  # the resident set is loaded on the first call (or after load_state_dict)
        if self._cuda:
            self._side = torch.cuda.Stream(dev)
            # two staging buffers: the worker fills one while the other's copy may still run
            self._staging = [torch.empty(C * int(np.prod(slot_shape)), dtype=self.dtype).pin_memory()
                             for _ in range(2)]
            self._staging_free = [None, None]  # the event after which each may be overwritten
            self._meta_staging = [torch.empty(4, dtype=torch.float64).pin_memory() for _ in range(2)]
            self._shape_staging = [torch.empty(3, dtype=torch.int64).pin_memory() for _ in range(2)]
        self.calls = 0
        self.refreshes = 0
        self.loads = 0  # volumes read from the host so far
        self._volumes_hash = contents_hash(self._host, self.names)

    # -- schedule --------------------------------------------------------------------------------
    def order(self, epoch: int) -> np.ndarray:
        """The volumes of epoch ``epoch`` in visiting order."""
        if epoch not in self._orders:
            n, head = len(self._host), self.active - 1
            first = np.random.default_rng([self.seed, 0]).permutation(n)
            if epoch == 0:
                order = first
            else:
                rest = np.random.default_rng([self.seed, epoch]).permutation(first[head:])
                order = np.concatenate([first[:head], rest])
            if len(self._orders) > 4:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = order
        return self._orders[epoch]

    def volume_at(self, position: int) -> int:
        n = len(self._host)
        return int(self.order(position // n)[position % n])

    def resident(self) -> list:
        """The volumes resident now (active slots), oldest first."""
        return [self.volume_at(p) for p in range(self.refreshes, self.refreshes + self.active)]

    def slot_volumes(self, slot_index: torch.Tensor) -> torch.Tensor:
        """The shard's volume index of each slot in ``slot_index`` (as ``targets.index`` of a
        puzzle drawn now holds), on the CPU."""
        r, s = self.refreshes, self.slots
        slot_to_volume = {(p % s): self.volume_at(p) for p in range(r, r + self.active)}
        return torch.tensor([slot_to_volume[int(k)] for k in slot_index.tolist()], dtype=torch.int64)

    # -- loading ---------------------------------------------------------------------------------
    def _load(self, position: int, v: int, wait_for: Optional[torch.cuda.Event]):
        """Read volume ``v`` (at ``position``) into slot ``position mod slots`` (runs on the worker;
        the caller looks ``v`` up, so only the training thread touches the order cache)."""
        k = position % self.slots
        src, s, t, m, sd = stored_volume(self._host[v], self.dtype, self.names[v], "StreamingBank",
                                         self._stats[v])
        d, h, w = (int(x) for x in self.volume_shapes[v])
        z = k * self._slot_stride
        meta = torch.tensor([s, t, m, sd], dtype=torch.float64)
        shape = torch.tensor([d, h, w], dtype=torch.int64)
        if not self._cuda:
            # through NumPy where the dtype allows: single-threaded copies that release the GIL, where
            # torch's would start a second OpenMP team beside the training thread's on the same cores
            # (with torch copies a load every 8 calls took the streaming bank from 1.10x to 0.92x of the
            # resident bank's batches/s on the 2-core CPU; through NumPy to 1.02x)
            whole = self._storage_np if self._storage_np is not None else self.storage
            slot = whole[0, :, z:z + self.slot_shape[0]]
            _zero_outside(slot, d, h, w)
            slot[:, :d, :h, :w] = src.numpy() if self._storage_np is not None else src
            self._slot_meta[:, k] = meta
            self.shapes[k] = shape
            return None
        # consecutive positions alternate the buffers (loads run one at a time, in position order)
        b = position % 2
        if self._staging_free[b] is not None:
            self._staging_free[b].synchronize()  # that buffer's previous copy has finished
        staged = self._staging[b][:src.numel()].view(src.shape)
        staged.copy_(src)
        self._meta_staging[b].copy_(meta)
        self._shape_staging[b].copy_(shape)
        done = torch.cuda.Event(blocking=True)  # the worker waits on it without spinning a core
        with torch.cuda.stream(self._side):
            if wait_for is not None:
                self._side.wait_event(wait_for)  # the training stream no longer reads this slot
            slot = self.storage[0, :, z:z + self.slot_shape[0]]
            _zero_outside(slot, d, h, w)
            slot[:, :d, :h, :w].copy_(staged, non_blocking=True)
            self._slot_meta[:, k].copy_(self._meta_staging[b], non_blocking=True)
            self.shapes[k].copy_(self._shape_staging[b], non_blocking=True)
            done.record(self._side)
        self._staging_free[b] = done
        return done

    def _training_stream_mark(self) -> Optional[torch.cuda.Event]:
        """An event after everything the training stream has queued so far (CUDA), else None."""
        if not self._cuda:
            return None
        mark = torch.cuda.Event()
        mark.record(torch.cuda.current_stream(self.device))
        return mark

    def _submit(self, position: int) -> None:
        self.loads += 1
        self._pending = (position, self._pool.submit(self._load, position, self.volume_at(position),
                                                     self._training_stream_mark()))

    def _finish_pending(self) -> None:
        """Wait for the spare slot's load; the training stream waits on its copy."""
        if self._pending is None:
            return
        _, fut = self._pending
        self._pending = None
        try:
            done = fut.result()  # re-raises the worker's error (e.g. a DataError naming the volume)
        except Exception as exc:
            self._failed = exc  # the spare slot holds stale data: never make it active
            raise
        if done is not None:
            torch.cuda.current_stream(self.device).wait_event(done)

    def _fill(self, refresh: int) -> None:
        """Make positions ``refresh .. refresh + A - 1`` resident now and start the next load."""
        try:
            self._finish_pending()
        except Exception:
            pass  # its slot is loaded again below if resident; a bad volume raises again when due
        self._failed, self.refreshes = None, refresh
        try:
            for p in range(refresh, refresh + self.active):
                self.loads += 1
                done = self._load(p, self.volume_at(p), self._training_stream_mark())
                if done is not None:
                    torch.cuda.current_stream(self.device).wait_event(done)
        except Exception as exc:
            self._failed = exc
            raise
        self._filled = True
        self._submit(refresh + self.active)

    def _ready(self) -> None:
        if self._failed is not None:
            raise self._failed
        if not self._filled:
            self._fill(self.calls // self.refresh_every)

    def _advance_to(self, refresh: int) -> None:
        while self.refreshes < refresh:
            self._finish_pending()
            self.refreshes += 1
            # the spare slot is now the one position refreshes - 1 left; it takes the next volume
            self._submit(self.refreshes + self.active)

    # -- as a volume source ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._host)

    def value_map(self) -> Optional[tuple]:
        return (self.scale, self.shift) if self.quantised else None

    def volume_stats(self) -> tuple:
        return self.stats

    def every_index(self) -> torch.Tensor:
        """The active slots, oldest first (one sample per resident volume)."""
        self._ready()
        return (torch.arange(self.active, device=self.device) + self.refreshes) % self.slots

    def sample_index(self, batch: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Slots of ``batch`` samples, uniform over the resident volumes."""
        j = torch.randint(self.refreshes, self.refreshes + self.active, (batch,), generator=generator,
                          device=self.device)
        return j.remainder_(self.slots)

    def smaller_than(self, crop_size) -> Optional[int]:
        small = (self.volume_shapes < np.array(tuple(crop_size))).any(1)
        return int(small.nonzero()[0][0]) if small.any() else None

    def host_shapes(self) -> np.ndarray:
        return self.volume_shapes

    def puzzles(self, puzzle, batch: int, generator: Optional[torch.Generator] = None,
                index: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None, seed=None,
                crop_transform=None, intensity_transform=None):
        """One batch, as :meth:`VolumeBank.puzzles`; each call is one step of the schedule
        (``index``, when given, holds slots: see :meth:`slot_volumes`)."""
        self._ready()
        self._advance_to(self.calls // self.refresh_every)
        self.calls += 1
        return super().puzzles(puzzle, batch, generator, index, out, seed, crop_transform, intensity_transform)

    # -- facts and state ---------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        return self.storage.numel() * self.storage.element_size()

    def memory_report(self) -> str:
        return (f"StreamingBank: {len(self)} volumes x {self.channels} channel(s), "
                f"{str(self.dtype).replace('torch.', '')}, {self.active} resident + 1 loading on {self.device}: "
                f"{human_bytes(self.nbytes)} (slots of {self.slot_shape}); one volume swapped every "
                f"{self.refresh_every} batch(es), each resident {self.active * self.refresh_every} batches an epoch "
                f"of {len(self) * self.refresh_every}")

    def state_dict(self) -> dict:
        return {"kind": "streaming", "calls": self.calls, "seed": self.seed, "refresh_every": self.refresh_every,
                "volumes": len(self), "active": self.active, "volumes_hash": self._volumes_hash}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state`` (from :meth:`state_dict`) was taken: same resident set,
        same slots, same next loads."""
        mine = self.state_dict()
        for key in ("kind", "seed", "refresh_every", "volumes", "active", "volumes_hash"):
            if state.get(key) != mine[key]:
                raise ValueError(f"StreamingBank.load_state_dict: the state's {key} is {state.get(key)!r}, "
                                 f"this bank's {mine[key]!r} (same volumes, budget, seed and refresh_every needed)")
        calls = state.get("calls")
        if isinstance(calls, bool) or not isinstance(calls, (int, np.integer)) or calls < 0:
            raise ValueError(f"StreamingBank.load_state_dict: the state's calls must be an int >= 0, got {calls!r}")
        self.calls = int(calls)
        self._fill(self.calls // self.refresh_every)  # now: a resumed run's first step finds it loaded

    def close(self) -> None:
        """Finish the background load, stop the worker, and wait for the side stream's copies (the
        slots must not return to the allocator while a copy still writes them)."""
        if self._pending is not None:
            self._pending[1].cancel()
            self._pending = None
        self._pool.shutdown(wait=True)
        if self._cuda:
            self._side.synchronize()

    def __del__(self):
        if getattr(self, "_pool", None) is not None:
            try:
                self.close()
            except Exception:  # at interpreter exit the CUDA runtime may be gone already
                pass


def make_bank(volumes: Sequence, device="cpu", dtype: Union[str, torch.dtype] = "float32", *,
              budget: Union[None, int, str] = None, shard: Optional[tuple] = None, seed: int = 0,
              refresh_every: int = REFRESH_EVERY, names: Optional[Sequence[str]] = None):
    """A :class:`VolumeBank` when ``budget`` is None or the (shard of the) volumes fit it, else a
    :class:`StreamingBank` within ``budget`` bytes."""
    if budget is not None:
        budget = parse_size(budget, "budget")
        vols = list(volumes)
        if names is None:  # named by their place in the whole list, as VolumeBank names them
            names = volume_names(vols)
        if shard is not None:
            vols, names = take_shard(vols, shard, "make_bank"), take_shard(list(names), shard, "make_bank")
        if bank_bytes(vols, dtype) > budget:
            return StreamingBank(vols, device, dtype, budget=budget, seed=seed, refresh_every=refresh_every,
                                 names=names)
        return VolumeBank(vols, device, dtype, names=names)
    return VolumeBank(volumes, device, dtype, shard=shard, names=names)
