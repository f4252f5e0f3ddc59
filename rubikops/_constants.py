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
    key = (str(torch.device(device)), dtype, values)
    t = _CACHE.get(key)
    if t is None:
        t = _CACHE[key] = torch.tensor(values, device=device, dtype=dtype)
    return t
