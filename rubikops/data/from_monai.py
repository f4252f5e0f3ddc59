"""MONAI data in: a MONAI dataset (or any sequence) of dictionaries of
``MetaTensor`` s, or of ``MetaTensor`` s, becomes :class:`Volume` s with
their affine (RAS), so ``VolumeBank.from_monai(dataset)`` cuts puzzles from
what a MONAI pipeline (``LoadImaged``, ``EnsureChannelFirstd``, ``Spacingd``,
...) produced.

MONAI's MetaTensor is channel-first (C, H, W, D) over the same voxel axes
its ``affine`` maps to world millimetres; ``meta["space"]`` says whether
that world is RAS (MONAI's default) or LPS (``ITKReader(affine_lps_to_ras=
False)``), which is converted to RAS here."""
from __future__ import annotations

import os
from typing import Iterable, Optional

import numpy as np

from .dicom import LPS_TO_RAS
from .nifti import Volume


def volume_from_metatensor(tensor, name: Optional[str] = None, where: str = "item") -> Volume:
    """One channel-first MetaTensor (or a tensor/array with an ``affine``) as a Volume."""
    affine = getattr(tensor, "affine", None)
    if affine is None:
        raise TypeError(f"{where}: {type(tensor).__name__} has no affine; expected a monai.data.MetaTensor "
                        "(channel first, from LoadImage + EnsureChannelFirst)")
    affine = np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"{where}: affine of shape {affine.shape}, expected a 3-D volume's (4, 4)")
    data = tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
    if data.ndim != 4:
        raise ValueError(f"{where}: array of shape {tuple(data.shape)}, expected channel-first (C, H, W, D) "
                         "(add EnsureChannelFirstd to the transforms)")
    meta = dict(getattr(tensor, "meta", {}) or {})
    space = str(meta.get("space", "RAS")).upper()
    if space == "LPS":
        affine = LPS_TO_RAS @ affine
    elif space != "RAS":
        raise ValueError(f"{where}: meta['space'] is {space!r}, expected RAS or LPS")
    source = meta.get("filename_or_obj")
    name = name or (os.fspath(source) if isinstance(source, (str, os.PathLike)) and source else None)
    return Volume(np.ascontiguousarray(data, dtype=np.float32), affine, (name,) if name else (),
                  {"format": "monai", "dtype": str(data.dtype)})


def volumes_from_monai(items: Iterable, key: str = "image") -> list:
    """Every item of a MONAI dataset or list: a dictionary (its ``key``
    entry is taken) or a MetaTensor."""
    out = []
    for i, item in enumerate(items):
        where = f"item {i}"
        if isinstance(item, dict):
            if key not in item:
                raise KeyError(f"{where}: no {key!r} entry (it has {', '.join(map(str, item))}); pass key=")
            item, where = item[key], f"item {i}[{key!r}]"
        out.append(volume_from_metatensor(item, where=where))
    if not out:
        raise ValueError("volumes_from_monai: the dataset is empty")
    return out
