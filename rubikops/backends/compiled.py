"""The compiled backend: C++ kernels for CPU and, where built, CUDA
(csrc/cpu, csrc/cuda), registered with the dispatcher by loading ``_C``."""
from __future__ import annotations

import torch

from .. import _C  # noqa: F401  (its static initialisers register the kernels)
from .._library import has_kernel

extract_cubes = torch.ops.rubikops.extract_cubes
sample_puzzle = torch.ops.rubikops.sample_puzzle


# Read at load, before the Triton backend registers its CUDA kernels for the ops the compiled library lacks.
_FEATURES = {"cpu": has_kernel("rubikops::extract_cubes", "CPU"),
             "cpu_backward": has_kernel("rubikops::extract_cubes_backward", "CPU"),
             "cpu_sampler": has_kernel("rubikops::sample_puzzle", "CPU"),
             "cuda": has_kernel("rubikops::extract_cubes", "CUDA"),
             "cuda_backward": has_kernel("rubikops::extract_cubes_backward", "CUDA"),
             "cuda_sampler": has_kernel("rubikops::sample_puzzle", "CUDA"),
             "cpu_draws": has_kernel("rubikops::draw_crop_affine", "CPU")
             and has_kernel("rubikops::draw_cube_intensity", "CPU"),
             "cuda_draws": has_kernel("rubikops::draw_crop_affine", "CUDA")
             and has_kernel("rubikops::draw_cube_intensity", "CUDA")}


def features() -> dict:
    return dict(_FEATURES)
