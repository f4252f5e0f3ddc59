"""Small constant tensors, made once per device and dtype.

A fresh ``torch.tensor(...)`` on a GPU is a blocking host-to-device copy
(a stream sync) in every batch that builds one; on the CPU it costs as much
as a small kernel.  The batch-drawing code takes its constants from here.
"""
from __future__ import annotations

from typing import Optional

import torch

_CACHE: dict = {}


def device_constant(values: tuple, device, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """``torch.tensor(values, device=device, dtype=dtype)``, cached; treat it as read-only."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:  # "cuda" is the current device, which may change
        device = torch.device("cuda", torch.cuda.current_device())
    # repr: 1, 1.0 and True are equal keys (and 0.0 and -0.0), but not equal tensors
    key = (str(device), dtype, repr(values))
    t = _CACHE.get(key)
    if t is None:
        t = _CACHE[key] = torch.tensor(values, device=device, dtype=dtype)
    return t
