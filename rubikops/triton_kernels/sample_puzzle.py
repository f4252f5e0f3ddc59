"""Triton kernel of the puzzle sampler (``rubikops::sample_puzzle``): the
rule of ``csrc/sample_puzzle.h`` with one lane per (sample, cube).

It serves CUDA tensors where the CUDA C++ kernels were not built (a torch
wheel without nvcc: ``extract_cubes`` then runs on Triton too), so such an
installation also samples a batch in one launch instead of fifteen.  Every
float is float64 and every draw truncates toward zero, as in the C++ kernels,
so the three implementations agree bit for bit.
"""
from __future__ import annotations

import struct
from typing import Sequence

import torch
from torch import Tensor
import triton
import triton.language as tl

from ..checks import check_sample_puzzle
from .extract_cubes import _INTERPRET


@triton.jit
def _clamp(x, lo, hi):
    return tl.minimum(tl.maximum(x, lo), hi)


@triton.jit
def _origin_along(u_ptr, row, shapes_ptr, shape_row, shape_s1, cells_ptr, j, live, crop, jitter,
                  AXIS: tl.constexpr):
    """origins[..., AXIS] = crop start + cell corner + the cell's jitter."""
    extent = tl.load(shapes_ptr + shape_row + AXIS * shape_s1, mask=live, other=0).to(tl.int64)
    free = (extent - crop + 1).to(tl.float64)
    start = (tl.load(u_ptr + row + AXIS, mask=live, other=0.0) * free).to(tl.int64)
    spread = tl.cast(jitter + 1, tl.float64)  # tl.cast: Triton passes an int argument equal to 1 as a Python int
    jit = (tl.load(u_ptr + row + 3 + 3 * j + AXIS, mask=live, other=0.0) * spread).to(tl.int64)
    return start + tl.load(cells_ptr + j * 3 + AXIS, mask=live, other=0) + jit


@triton.jit
def _sample_puzzle_kernel(u_ptr, shapes_ptr, shape_s0, shape_s1, index_ptr, cells_ptr, perms_ptr, table_ptr,
                          origins_ptr, codes_ptr, perm_ptr, state_ptr, mask_ptr,
                          total, M, N, K, R, n_cells, n_cols, crop_d, crop_h, crop_w, jitter, mask_prob_bits,
                          HAS_ROT: tl.constexpr, DRAW_MASK: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = t < total
    b = t // M
    m = t - b * M
    row = b * n_cols
    n = _clamp(tl.load(index_ptr + b, mask=live, other=0).to(tl.int64), 0, N - 1)
    perm = (tl.load(u_ptr + row + 3 + 3 * n_cells, mask=live, other=0.0) * tl.cast(K, tl.float64)).to(tl.int64)
    perm = _clamp(perm, 0, K - 1)
    j = _clamp(tl.load(perms_ptr + perm * M + m, mask=live, other=0), 0, n_cells - 1)
    shape_row = n * shape_s0
    for_d = _origin_along(u_ptr, row, shapes_ptr, shape_row, shape_s1, cells_ptr, j, live, crop_d, jitter, 0)
    for_h = _origin_along(u_ptr, row, shapes_ptr, shape_row, shape_s1, cells_ptr, j, live, crop_h, jitter, 1)
    for_w = _origin_along(u_ptr, row, shapes_ptr, shape_row, shape_s1, cells_ptr, j, live, crop_w, jitter, 2)
    tl.store(origins_ptr + t * 3 + 0, for_d, mask=live)
    tl.store(origins_ptr + t * 3 + 1, for_h, mask=live)
    tl.store(origins_ptr + t * 3 + 2, for_w, mask=live)
    mask_col = 4 + 3 * n_cells
    if HAS_ROT:
        u_state = tl.load(u_ptr + row + mask_col + m, mask=live, other=0.0)
        state = _clamp((u_state * tl.cast(R, tl.float64)).to(tl.int64), 0, R - 1)
        code = tl.load(table_ptr + state, mask=live, other=0)
        mask_col += M
    else:
        state = tl.zeros([BLOCK], dtype=tl.int64)
        code = tl.zeros([BLOCK], dtype=tl.int64)
    if DRAW_MASK:
        # mask_prob travels as its float64 bit pattern: a float argument would
        # be rounded to float32 and flip draws near the threshold, and a
        # one-element tensor would cost a host-to-device copy every batch.
        mask_prob = tl.cast(tl.cast(mask_prob_bits, tl.int64), tl.float64, bitcast=True)
        masked = tl.load(u_ptr + row + mask_col + m, mask=live, other=1.0) < mask_prob
    else:
        masked = tl.zeros([BLOCK], dtype=tl.int1)
    tl.store(state_ptr + t, state, mask=live)
    tl.store(codes_ptr + t, code, mask=live)
    tl.store(mask_ptr + t, masked, mask=live)
    tl.store(perm_ptr + b, perm, mask=live & (m == 0))


def _float64_bits(x: float) -> int:
    """The bit pattern of float64 ``x`` as a signed int64."""
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _block(total: int) -> int:
    # The interpreter costs ~5 ms a program whatever its size: one program for
    # a whole batch there; 128 lanes a program on a GPU (a few hundred cubes).
    if _INTERPRET:
        return max(16, triton.next_power_of_2(min(max(total, 1), 1 << 14)))
    return 128


def sample_puzzle(uniforms: Tensor, volume_shapes: Tensor, index: Tensor, cells: Tensor, permutations: Tensor,
                  code_table: Tensor, crop_size: Sequence[int], jitter: int, mask_prob: float):
    """Check the arguments (as the C++ kernels do) and launch the kernel."""
    check_sample_puzzle(uniforms, volume_shapes, index, cells, permutations, code_table, crop_size, jitter,
                            mask_prob)
    dev = uniforms.device
    B, (K, M), R = uniforms.shape[0], permutations.shape, code_table.numel()
    long = dict(dtype=torch.int64, device=dev)
    origins, codes = torch.empty(B, M, 3, **long), torch.empty(B, M, **long)
    perm, state = torch.empty(B, **long), torch.empty(B, M, **long)
    mask = torch.empty(B, M, dtype=torch.bool, device=dev)
    total = B * M
    if total == 0:
        return origins, codes, perm, state, mask
    u = uniforms.contiguous()
    shapes = volume_shapes.to(torch.int64)
    table = code_table.to(torch.int64).contiguous() if R else torch.zeros(1, **long)
    block = _block(total)
    _sample_puzzle_kernel[(triton.cdiv(total, block),)](
        u, shapes, shapes.stride(0), shapes.stride(1), index.to(torch.int64).contiguous(),
        cells.to(torch.int64).contiguous(), permutations.to(torch.int64).contiguous(), table,
        origins, codes, perm, state, mask,
        total, M, volume_shapes.shape[0], K, R, cells.shape[0], u.shape[1], int(crop_size[0]), int(crop_size[1]),
        int(crop_size[2]), int(jitter), _float64_bits(mask_prob), HAS_ROT=R > 0, DRAW_MASK=float(mask_prob) > 0, BLOCK=block,
        num_warps=4 if dev.type == "cuda" else 1)
    return origins, codes, perm, state, mask
