"""The Triton backend: ``rubikops::extract_cubes_triton`` (with its out=
variant and backward) and ``rubikops::sample_puzzle_triton``, opaque custom
ops around the kernels of :mod:`rubikops.triton`; on CUDA they are also the
kernels of the main ops where the compiled library has no CUDA kernel.  On
CPU tensors they run in the Triton interpreter (TRITON_INTERPRET=1 before
``import rubikops``)."""
from __future__ import annotations

import torch

from .._library import LIBRARY, has_kernel, sample_puzzle_fake
from .._schema import SAMPLE_PUZZLE_SCHEMA
from ..triton import extract_cubes as _kernels
from ..triton.sample_puzzle import sample_puzzle as _launch_sampler

# Defined at import (about 20 ms), not on first use: a first call inside torch.compile would define ops
# while dynamo traces, which it refuses.
extract_cubes = _kernels.register()
sample_puzzle = torch.library.custom_op("rubikops::sample_puzzle_triton", _launch_sampler, mutates_args=(),
                                        schema=SAMPLE_PUZZLE_SCHEMA.replace("sample_puzzle(", "("))
sample_puzzle.register_fake(sample_puzzle_fake)

CUDA_FALLBACK = {"extract_cubes": not has_kernel("rubikops::extract_cubes", "CUDA"),
                 "sample_puzzle": not has_kernel("rubikops::sample_puzzle", "CUDA")}
if CUDA_FALLBACK["extract_cubes"]:
    LIBRARY.impl("extract_cubes", lambda *args: extract_cubes(*args), "CUDA")
    LIBRARY.impl("extract_cubes.out", lambda *args, out: extract_cubes.out(*args, out=out), "CUDA")
if CUDA_FALLBACK["sample_puzzle"]:
    LIBRARY.impl("sample_puzzle", lambda *args: sample_puzzle(*args), "CUDA")


def interpreter_enabled() -> bool:
    """Whether the kernels run in the Triton interpreter: decided by TRITON_INTERPRET at import."""
    return _kernels._INTERPRET


def features() -> dict:
    return {"interpreter": interpreter_enabled(), "cuda_fallback": dict(CUDA_FALLBACK)}
