"""Rotation codes for cubes: axis order x flips, 48 codes in all.

A code is ``8 * p + f``.  ``p`` indexes the six spatial axis orders in
lexicographic order (``AXIS_ORDERS``); ``f`` holds three flip bits, bit ``a``
flips *output* spatial axis ``a`` (0 = D, 1 = H, 2 = W).  With ``X`` a box of
shape (C, d, h, w) the coded cube is ``X.permute(0, 1+p[0], 1+p[1], 1+p[2])``
flipped along every output spatial axis whose bit is set.

The 24 codes whose 3x3 matrix has determinant +1 are the proper rotations of
the cube (``PROPER_ROTATIONS``); the other 24 are reflections.
"""
from __future__ import annotations

import itertools
from typing import Sequence

import torch

AXIS_ORDERS: tuple[tuple[int, int, int], ...] = tuple(itertools.permutations(range(3)))
NUM_CODES = 48

IDENTITY = 0
#: 180 degrees about the D axis: flips H and W.
ROT180_D = 0b110
#: 180 degrees about the H axis: flips D and W (the paper's "horizontal" rotation).
ROT180_H = 0b101
#: 180 degrees about the W axis: flips D and H (the paper's "vertical" rotation).
ROT180_W = 0b011


def make_code(axis_order: Sequence[int], flips: Sequence[bool] | int = 0) -> int:
    """Build a rotation code from an axis order (a permutation of 0, 1, 2) and
    flips (three booleans, one per output axis, or the 3-bit integer)."""
    order = tuple(int(a) for a in axis_order)
    if order not in AXIS_ORDERS:
        raise ValueError(f"axis_order must be a permutation of (0, 1, 2), got {axis_order!r}")
    if isinstance(flips, int):
        if not 0 <= flips < 8:
            raise ValueError(f"flips as an integer must be in [0, 8), got {flips}")
        bits = flips
    else:
        flips = tuple(bool(f) for f in flips)
        if len(flips) != 3:
            raise ValueError(f"flips must have three entries, got {len(flips)}")
        bits = sum(1 << a for a, f in enumerate(flips) if f)
    return 8 * AXIS_ORDERS.index(order) + bits


def decode(code: int) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """Inverse of :func:`make_code`: ``(axis_order, flips)``."""
    code = int(code)
    if not 0 <= code < NUM_CODES:
        raise ValueError(f"rotation code must be in [0, {NUM_CODES}), got {code}")
    bits = code % 8
    return AXIS_ORDERS[code // 8], tuple(bool(bits >> a & 1) for a in range(3))


def code_matrix(code: int) -> torch.Tensor:
    """The signed 3x3 permutation matrix of a code (output axis a <- source axis p[a])."""
    order, flips = decode(code)
    m = torch.zeros(3, 3, dtype=torch.int64)
    for a in range(3):
        m[a, order[a]] = -1 if flips[a] else 1
    return m


def is_proper(code: int) -> bool:
    """True when the code is a rotation (determinant +1), not a reflection."""
    return int(round(torch.linalg.det(code_matrix(code).double()).item())) == 1


#: The 24 proper rotations of a cube, identity first, in increasing code order.
PROPER_ROTATIONS: tuple[int, ...] = tuple(c for c in range(NUM_CODES) if is_proper(c))

#: The rotation codes of the paper: none, horizontal and vertical 180 degree turns.
PAPER_ROTATIONS: tuple[int, ...] = (IDENTITY, ROT180_H, ROT180_W)


def compose(first: int, second: int) -> int:
    """The code of applying ``first`` then ``second``."""
    m = code_matrix(second) @ code_matrix(first)
    return _code_from_matrix(m)


def inverse(code: int) -> int:
    """The code that undoes ``code`` (on cubic cubes)."""
    return _code_from_matrix(code_matrix(code).T)


def _code_from_matrix(m: torch.Tensor) -> int:
    order = tuple(int(torch.nonzero(m[a]).item()) for a in range(3))
    flips = tuple(bool(m[a, order[a]] < 0) for a in range(3))
    return make_code(order, flips)


def apply_code(x: torch.Tensor, code: int) -> torch.Tensor:
    """Apply a rotation code to the last three (spatial) axes of a tensor."""
    if x.dim() < 3:
        raise ValueError(f"x must have at least 3 dimensions, got shape {tuple(x.shape)}")
    order, flips = decode(code)
    lead = x.dim() - 3
    y = x.permute(*range(lead), *(lead + a for a in order))
    dims = [lead + a for a in range(3) if flips[a]]
    return y.flip(dims) if dims else y


def preserves_shape(code: int, cube_size: Sequence[int]) -> bool:
    """True when the code's axis order maps a cube of ``cube_size`` onto itself."""
    order, _ = decode(code)
    return all(cube_size[order[a]] == cube_size[a] for a in range(3))


def kernel_code(code: int, cube_size: Sequence[int]) -> int:
    """The code the kernels apply for any integer ``code`` (validate=False):
    reduced mod 48, and with the identity axis order (flips kept) where its
    order would change a non-cubic cube's shape (csrc/extract_cubes.h,
    cube_geometry)."""
    code = int(code) % NUM_CODES
    return code if preserves_shape(code, cube_size) else code % 8


def moves_w(code: int) -> bool:
    """True when the code's output W axis reads a source axis other than W."""
    return decode(code)[0][2] != 2


assert len(PROPER_ROTATIONS) == 24
assert all(c in PROPER_ROTATIONS for c in PAPER_ROTATIONS)
