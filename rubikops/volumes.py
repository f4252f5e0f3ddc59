"""Volume sources: where pretext tasks cut their cubes from.

A task draws volume-relative boxes (an origin inside volume ``index[b]``)
and hands them to the source, which owns everything about storage:

- ``storage``: the tensor ``extract_cubes`` reads, (N, C, D, H, W) for a
  plain batch, (1, C, sum D, max H, max W) for a packed bank;
- ``shapes``: (N, 3) true extents of the volumes (padding excluded);
- ``locate(origins, index)``: the storage coordinates and storage index of
  volume-relative boxes (adds the packing offsets);
- ``locate_affine(affine, index)``: the same for an affine read (the affine
  in storage coordinates, and the box each sample may read);
- ``value_map()``: per-volume (scale, shift) turning stored values into
  physical ones (quantised banks), or None;
- ``volume_stats()``: per-volume (mean, std) of physical values, or None;
- ``sample_index(batch, generator)``: the volume of each sample of a batch;
  ``every_index()``: one sample per volume (what a task cuts given no index);
- sharding and memory, where the source has any (:class:`rubikops.data.VolumeBank`).

So a task never sees packing offsets or quantisation, and a new storage
layout needs no change to any task.
"""
from __future__ import annotations

from typing import Optional

import torch

from ._constants import device_constant


class VolumeSource:
    """The interface tasks use (see the module docstring); subclasses set
    ``storage``, ``device``, ``shapes`` and ``offsets`` (None when volume i
    is ``storage[i]``)."""

    storage: torch.Tensor
    device: torch.device  # the storage's
    shapes: torch.Tensor
    offsets: Optional[torch.Tensor] = None
    #: spatial shape shared by every volume when it is known without reading the device, else None
    static_shape: Optional[tuple] = None

    def __len__(self) -> int:
        return self.shapes.shape[0]

    @property
    def channels(self) -> int:
        return self.storage.shape[1]

    @property
    def packed(self) -> bool:
        return self.offsets is not None

    def value_map(self) -> Optional[tuple]:
        """Per-volume (scale, shift), each (N,) float64: physical = stored * scale + shift; None: identity."""
        return None

    def volume_stats(self) -> Optional[tuple]:
        """Per-volume (mean, std) of physical values, each (N,), or None when unknown."""
        return None

    def locate(self, origins: torch.Tensor, index: torch.Tensor) -> tuple:
        """(storage origins, storage index) of volume-relative boxes ``origins`` (B, M, 3) in volumes ``index``."""
        if self.offsets is None:
            return origins, index
        return origins + self.offsets[index][:, None, :], torch.zeros_like(index)

    def locate_affine(self, affine: torch.Tensor, index: torch.Tensor) -> tuple:
        """(storage affine, read box, storage index) of a (B, 3, 4) affine into volumes ``index``: the
        arguments ``extract_cubes(affine=, read_box=, index=)`` takes, so no read leaves its volume
        (a packed neighbour or the padding past a smaller volume)."""
        extent = self.shapes[index].to(torch.int64)
        if self.offsets is None:
            return affine, torch.stack([torch.zeros_like(extent), extent - 1], 1), index
        lowest = self.offsets[index].to(torch.int64)
        # in float64 (the op's position math): a float32 translation deep in a packed storage (60k planes)
        # would hold it to 0.004 voxel; a copy, since the caller's affine is the caller's
        affine = affine.to(torch.float64, copy=True)
        affine[..., 3] += lowest
        return affine, torch.stack([lowest, lowest + extent - 1], 1), torch.zeros_like(index)

    def every_index(self) -> torch.Tensor:
        """One sample per volume: what a task cuts when it is given no ``index``."""
        return torch.arange(len(self), device=self.device)

    def sample_index(self, batch: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.randint(len(self), (batch,), generator=generator, device=self.device)

    def smaller_than(self, crop_size) -> Optional[int]:
        """Index of the first volume smaller than ``crop_size`` along some axis, or None
        (reads the shapes back from the device unless they are static)."""
        if self.static_shape is not None:
            return 0 if any(v < c for v, c in zip(self.static_shape, crop_size)) else None
        small = (self.shapes < torch.tensor(tuple(crop_size), device=self.shapes.device)).any(1)
        return int(small.nonzero()[0, 0]) if bool(small.any()) else None


class TensorVolumes(VolumeSource):
    """A plain (N, C, D, H, W) tensor of volumes as a source.

    ``shapes`` (N, 3): true extents when the volumes are zero-padded to a
    common shape; ``offsets`` (N, 3): where each volume starts when they are
    packed into one (1, C, D, H, W) storage; ``intensity``: per-volume
    (scale, shift) of quantised storage; ``stats``: per-volume (mean, std)
    of physical values (computed from the tensor when not given and not packed)."""

    def __init__(self, volumes: torch.Tensor, shapes: Optional[torch.Tensor] = None,
                 offsets: Optional[torch.Tensor] = None, intensity: Optional[tuple] = None,
                 stats: Optional[tuple] = None, label: str = "volumes"):
        if not isinstance(volumes, torch.Tensor) or volumes.dim() != 5:
            raise ValueError(f"{label}: volumes must be a 5-D tensor (N, C, D, H, W), got "
                             f"{getattr(volumes, 'shape', type(volumes))}")
        dev = volumes.device
        if dev.type == "meta":
            raise ValueError(f"{label}: volumes on the meta device hold no values to cut cubes from")
        if offsets is not None and (shapes is None or volumes.shape[0] != 1):
            raise ValueError(f"{label}: volume_offsets needs volume_shapes and a packed (1, C, D, H, W) storage")
        for name, t in (("volume_shapes", shapes), ("volume_offsets", offsets)):
            if t is not None and (not isinstance(t, torch.Tensor) or t.device != dev):
                raise ValueError(f"{label}: {name} must be a tensor on the volumes' device ({dev}), got "
                                 f"{getattr(t, 'device', type(t).__name__)}")
        rows = volumes.shape[0] if offsets is None else (offsets.shape[0] if offsets.dim() == 2 else -1)
        for name, t in (("volume_shapes", shapes), ("volume_offsets", offsets)):
            if t is not None and (t.dim() != 2 or t.shape != (rows, 3) or t.dtype not in (torch.int64, torch.int32)):
                raise ValueError(f"{label}: {name} must be a ({rows}, 3) int64 tensor (one row per volume), got "
                                 f"{t.dtype} of shape {tuple(t.shape)}")
        self.storage, self.device = volumes, dev
        if shapes is None:
            self.static_shape = tuple(volumes.shape[2:])
            shapes = device_constant(tuple(self.static_shape), dev).expand(volumes.shape[0], 3)
        self.shapes, self.offsets = shapes, offsets
        self._intensity, self._stats = intensity, stats

    def value_map(self) -> Optional[tuple]:
        return self._intensity

    def volume_stats(self) -> Optional[tuple]:
        if self._stats is None and not self.packed:
            v = self.storage.float().flatten(1)
            if self._intensity is not None:  # the statistics of physical values, as a bank's, not of stored ones
                v = v.double() * self._intensity[0].double()[:, None] + self._intensity[1].double()[:, None]
            return v.mean(1), v.std(1)
        return self._stats


def as_volume_source(volumes, label: str = "volumes") -> VolumeSource:
    """``volumes`` itself when it is a :class:`VolumeSource`, else a plain tensor wrapped."""
    return volumes if isinstance(volumes, VolumeSource) else TensorVolumes(volumes, label=label)
