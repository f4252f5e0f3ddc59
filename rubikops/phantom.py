"""A 3D head phantom (Shepp-Logan-style ellipsoids with random blobs), for
demos and tests that need anatomy-like structure without any data files."""
from __future__ import annotations

import torch

# (value, centre z y x, semi-axes z y x) in a [-1, 1]^3 box; values loosely HU-like.
_ELLIPSOIDS = [
    (1000.0, (0.0, 0.0, 0.0), (0.90, 0.80, 0.68)),    # skull
    (-960.0, (0.0, -0.02, 0.0), (0.84, 0.74, 0.62)),  # brain (1000 - 960 = 40 HU)
    (-30.0, (0.1, 0.22, 0.0), (0.35, 0.16, 0.11)),    # ventricle
    (-30.0, (0.1, -0.22, 0.0), (0.35, 0.16, 0.11)),
    (25.0, (-0.3, 0.0, 0.35), (0.12, 0.1, 0.1)),
    (15.0, (0.45, 0.1, -0.25), (0.15, 0.2, 0.12)),
]


def head_phantom(shape=(128, 128, 128), seed: int = 0, blobs: int = 4, device=None,
                 dtype=torch.float32) -> torch.Tensor:
    """One (1, D, H, W) volume; ``seed`` places a few random bright blobs (lesions)."""
    D, H, W = shape
    z, y, x = torch.meshgrid(*[torch.linspace(-1, 1, s, device=device) for s in (D, H, W)], indexing="ij")
    vol = torch.full(shape, -1000.0, device=device)  # air
    g = torch.Generator().manual_seed(seed)
    shapes = list(_ELLIPSOIDS)
    for _ in range(blobs):
        c = (torch.rand(3, generator=g) - 0.5) * 0.9
        r = 0.04 + torch.rand(3, generator=g) * 0.08
        shapes.append((float(30 + 50 * torch.rand(1, generator=g)), tuple(c.tolist()), tuple(r.tolist())))
    for value, (cz, cy, cx), (az, ay, ax) in shapes:
        inside = ((z - cz) / az) ** 2 + ((y - cy) / ay) ** 2 + ((x - cx) / ax) ** 2 <= 1
        vol = vol + value * inside
    return vol.to(dtype).unsqueeze(0)
