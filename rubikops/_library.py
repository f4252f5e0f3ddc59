"""The rubikops ops in the dispatcher: their definitions (the schemas of
:mod:`rubikops._schema`, defined here and nowhere else), fake kernels for
torch.compile, the autograd formula, and the plain-torch kernels that serve
every device without a backend kernel.  Backends (:mod:`rubikops.backends`)
add kernels for these ops and never define one."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import reference
from ._schema import (EXTRACT_CUBES_BACKWARD_SCHEMA, EXTRACT_CUBES_OUT_SCHEMA, EXTRACT_CUBES_SCHEMA,
                      SAMPLE_PUZZLE_SCHEMA, ExtractCubesParams, out_shape)
from .checks import check_sample_puzzle

LIBRARY = torch.library.Library("rubikops", "DEF")
for schema in (EXTRACT_CUBES_SCHEMA, EXTRACT_CUBES_OUT_SCHEMA, EXTRACT_CUBES_BACKWARD_SCHEMA, SAMPLE_PUZZLE_SCHEMA):
    LIBRARY.define(schema)


def has_kernel(op: str, key: str) -> bool:
    """Whether a backend registered a kernel of ``op`` ("rubikops::name") for dispatch key ``key``."""
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(op, key))
    except RuntimeError:
        return False


# -- extract_cubes ---------------------------------------------------------------------------------------
def extract_cubes_generic(*schema_args) -> torch.Tensor:
    """extract_cubes in plain torch (the reference), from the op's schema arguments."""
    p = ExtractCubesParams.from_schema_args(*schema_args)
    return reference.extract_cubes(p.source, p.origins, p.cube_size, **p.reference_kwargs())


def _extract_cubes_out_generic(*schema_args, out):
    return out.copy_(extract_cubes_generic(*schema_args))


LIBRARY.impl("extract_cubes", extract_cubes_generic, "CompositeExplicitAutograd")
LIBRARY.impl("extract_cubes.out", _extract_cubes_out_generic, "CompositeExplicitAutograd")


@torch.library.register_fake("rubikops::extract_cubes")
def extract_cubes_fake(source, origins, cube_size, index, rotations, mask, fill, keep_prob, seed, scale,
                       shift, scale_value, shift_value, clamp_lo, clamp_hi, out_dtype):
    dtype = out_dtype or reference.default_out_dtype(source.dtype)
    return source.new_empty(out_shape(source, origins, cube_size), dtype=dtype)


@torch.library.register_fake("rubikops::extract_cubes.out")
def _extract_cubes_out_fake(*args, out):
    return out


# -- its gradient: scatter-add of grad_out * scale, zero where masked out or clamped ---------------------
def extract_cubes_backward_generic(
    grad: torch.Tensor, source: torch.Tensor, origins: torch.Tensor, cube_size: Sequence[int],
    index: Optional[torch.Tensor], rotations: Optional[torch.Tensor], mask: Optional[torch.Tensor],
    keep_prob: float, seed: int, scale: Optional[torch.Tensor], shift: Optional[torch.Tensor],
    scale_value: float, shift_value: float, clamp_lo: Optional[float], clamp_hi: Optional[float],
) -> torch.Tensor:
    """Gradient of extract_cubes w.r.t. source in plain torch (any device):
    the implementation of ``rubikops::extract_cubes_backward`` wherever no
    backend kernel is registered (CUDA when built without its kernel, other
    devices), and the reference the kernels are tested against.

    Overlapping boxes and repeated indices accumulate (index_add_)."""
    compute = reference.opmath_dtype(source.dtype, grad.dtype)
    B, M = origins.shape[0], origins.shape[1]
    per_sample = (B, 1, 1, 1, 1, 1)
    g = grad.to(compute)
    g = g * (scale.to(compute).view(per_sample) if scale is not None else scale_value)
    if clamp_lo is not None or clamp_hi is not None:
        # Recompute the unclamped value: torch.clamp passes the gradient where lo <= v <= hi.
        v = torch.ops.rubikops.extract_cubes(source, origins, cube_size, index, rotations, None, 0.0, 0.0, 0,
                                             scale, shift, scale_value, shift_value, None, None, compute)
        inside = torch.ones_like(v, dtype=torch.bool)
        if clamp_lo is not None:
            inside &= v >= clamp_lo
        if clamp_hi is not None:
            inside &= v <= clamp_hi
        g = g * inside
    if mask is not None:
        dropped = mask.to(torch.bool).view(B, M, 1, 1, 1, 1).expand(g.shape)
        if keep_prob > 0:
            dropped = dropped & ~reference.keep_mask(g.numel(), keep_prob, seed, g.device).view(g.shape)
        g = g.masked_fill(dropped, 0)
    offs = reference.source_offsets(source.shape, origins, cube_size, index, rotations)
    flat = torch.zeros(source.numel(), dtype=compute, device=source.device)
    flat.index_add_(0, offs.reshape(-1), g.reshape(-1))
    return flat.view(source.shape).to(source.dtype)


LIBRARY.impl("extract_cubes_backward", extract_cubes_backward_generic, "CompositeExplicitAutograd")


@torch.library.register_fake("rubikops::extract_cubes_backward")
def extract_cubes_backward_fake(grad, source, *args):
    return torch.empty_like(source, memory_format=torch.contiguous_format)


_SAVED = ("origins", "index", "rotations", "mask", "scale", "shift")


def setup_context(ctx, inputs, output):
    (source, origins, cube_size, index, rotations, mask, fill, keep_prob, seed, scale, shift,
     scale_value, shift_value, clamp_lo, clamp_hi, out_dtype) = inputs
    ctx.save_for_backward(source, origins, index, rotations, mask, scale, shift)
    ctx.scalars = (list(cube_size), keep_prob, seed, scale_value, shift_value, clamp_lo, clamp_hi)


def backward_via(backward_op):
    """The autograd formula of a forward op, with its gradient computed by
    ``backward_op`` (the generic scatter-add above, or a backend's kernel)."""
    def backward(ctx, grad):
        source, origins, index, rotations, mask, scale, shift = ctx.saved_tensors
        cube_size, keep_prob, seed, scale_value, shift_value, clamp_lo, clamp_hi = ctx.scalars
        grad_source = backward_op(grad, source, origins, cube_size, index, rotations, mask, keep_prob, seed, scale,
                                  shift, scale_value, shift_value, clamp_lo, clamp_hi)
        return (grad_source,) + (None,) * 15
    return backward


torch.library.register_autograd("rubikops::extract_cubes", backward_via(torch.ops.rubikops.extract_cubes_backward),
                                setup_context=setup_context)


# -- sample_puzzle ---------------------------------------------------------------------------------------
def sample_puzzle_generic(*args):
    check_sample_puzzle(*args)
    return reference.sample_puzzle(*args)


LIBRARY.impl("sample_puzzle", sample_puzzle_generic, "CompositeExplicitAutograd")


@torch.library.register_fake("rubikops::sample_puzzle")
def sample_puzzle_fake(uniforms, volume_shapes, index, cells, permutations, code_table, crop_size, jitter,
                        mask_prob):
    B, M = uniforms.shape[0], permutations.shape[1]
    return (uniforms.new_empty((B, M, 3), dtype=torch.int64), uniforms.new_empty((B, M), dtype=torch.int64),
            uniforms.new_empty((B,), dtype=torch.int64), uniforms.new_empty((B, M), dtype=torch.int64),
            uniforms.new_empty((B, M), dtype=torch.bool))
