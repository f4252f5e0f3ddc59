"""The rubikops ops in the dispatcher: their definitions (the schemas of
:mod:`rubikops._schema`, defined here and nowhere else), fake kernels for
torch.compile, the autograd formula, and the plain-torch kernels that serve
every device without a backend kernel.  Backends (:mod:`rubikops.backends`)
add kernels for these ops and never define one."""
from __future__ import annotations

import dataclasses

import torch

from . import reference
from ._schema import (CUBE_INTENSITY_WIDTH, DRAW_CROP_AFFINE_SCHEMA, DRAW_CUBE_INTENSITY_SCHEMA,
                      EXTRACT_CUBES_ARG_NAMES, EXTRACT_CUBES_BACKWARD_SCHEMA, EXTRACT_CUBES_BACKWARD_TORCH_SCHEMA,
                      EXTRACT_CUBES_OUT_SCHEMA, EXTRACT_CUBES_SCHEMA, SAMPLE_PUZZLE_SCHEMA, ExtractCubesParams,
                      opmath_dtype)
from .checks import check_draw_crop_affine, check_draw_cube_intensity, check_sample_puzzle

LIBRARY = torch.library.Library("rubikops", "DEF")
for schema in (EXTRACT_CUBES_SCHEMA, EXTRACT_CUBES_OUT_SCHEMA, EXTRACT_CUBES_BACKWARD_SCHEMA,
               EXTRACT_CUBES_BACKWARD_TORCH_SCHEMA, SAMPLE_PUZZLE_SCHEMA, DRAW_CROP_AFFINE_SCHEMA,
               DRAW_CUBE_INTENSITY_SCHEMA):
    LIBRARY.define(schema)


def has_kernel(op: str, key: str) -> bool:
    """Whether a backend registered a kernel of ``op`` ("rubikops::name") for dispatch key ``key``."""
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(op, key))
    except RuntimeError:
        return False


# -- extract_cubes: every function below takes the schema's arguments and reads them as ExtractCubesParams -----
def extract_cubes_generic(*schema_args) -> torch.Tensor:
    """extract_cubes in plain torch (the reference), from the op's schema arguments."""
    return reference.extract(ExtractCubesParams.from_schema_args(*schema_args))


def _extract_cubes_out_generic(*schema_args, out):
    return out.copy_(extract_cubes_generic(*schema_args))


LIBRARY.impl("extract_cubes", extract_cubes_generic, "CompositeExplicitAutograd")
LIBRARY.impl("extract_cubes.out", _extract_cubes_out_generic, "CompositeExplicitAutograd")


@torch.library.register_fake("rubikops::extract_cubes")
def extract_cubes_fake(*schema_args):
    p = ExtractCubesParams.from_schema_args(*schema_args)
    return p.source.new_empty(p.out_shape, dtype=p.result_dtype)


@torch.library.register_fake("rubikops::extract_cubes.out")
def _extract_cubes_out_fake(*args, out):
    return out


# -- its gradient: scatter-add of grad_out * scale, zero where masked out or clamped ---------------------
def extract_cubes_backward_generic(grad: torch.Tensor, *schema_args) -> torch.Tensor:
    """Gradient of extract_cubes w.r.t. source in plain torch (any device):
    the implementation of ``rubikops::extract_cubes_backward`` wherever no
    backend kernel is registered (CUDA when built without its kernel, other
    devices), and the reference the kernels are tested against.

    Overlapping boxes and repeated indices accumulate (index_add_)."""
    p = ExtractCubesParams.from_backward_args(grad, *schema_args)
    source = p.source
    if p.affine is not None or p.cube_intensity is not None:
        # The affine read's gradient is the reference's own (eight weighted corners a voxel), and so is the
        # intensity stage's (its gamma's derivative needs each voxel's value).
        with torch.enable_grad():
            x = source.detach().requires_grad_()
            cubes = reference.extract(dataclasses.replace(p, source=x))
            (grad_source,) = torch.autograd.grad(cubes, x, grad)
        return grad_source.contiguous()
    compute = opmath_dtype(source.dtype, grad.dtype)
    B, M = p.origins.shape[0], p.origins.shape[1]
    g = grad.to(compute)
    g = g * (p.scale_tensor.to(compute).view(B, 1, 1, 1, 1, 1) if p.scale_tensor is not None else p.scale_value)
    if p.clamp is not None:
        # Recompute the unclamped value: torch.clamp passes the gradient where lo <= v <= hi.
        unclamped = dataclasses.replace(p, mask=None, clamp=None, out_dtype=compute)
        v = torch.ops.rubikops.extract_cubes(*unclamped.schema_args())
        lo, hi = p.clamp_bounds
        inside = torch.ones_like(v, dtype=torch.bool)
        if lo is not None:
            inside &= v >= lo
        if hi is not None:
            inside &= v <= hi
        g = g * inside
    if p.mask is not None:
        dropped = p.mask.to(torch.bool).view(B, M, 1, 1, 1, 1).expand(g.shape)
        if p.keep_prob > 0:
            dropped = dropped & ~reference.keep_mask(g.numel(), p.keep_prob, p.seed, g.device).view(g.shape)
        g = g.masked_fill(dropped, 0)
    offs = reference.source_offsets(source.shape, p.origins, p.cube_size, p.index, p.rotations)
    flat = torch.zeros(source.numel(), dtype=compute, device=source.device)
    flat.index_add_(0, offs.reshape(-1), g.reshape(-1))
    return flat.view(source.shape).to(source.dtype)


LIBRARY.impl("extract_cubes_backward", extract_cubes_backward_generic, "CompositeExplicitAutograd")
LIBRARY.impl("extract_cubes_backward_torch", extract_cubes_backward_generic, "CompositeExplicitAutograd")


def extract_cubes_backward_fake(grad, source, *args):
    return torch.empty_like(source, memory_format=torch.contiguous_format)


for _backward in ("extract_cubes_backward", "extract_cubes_backward_torch"):
    torch.library.register_fake(f"rubikops::{_backward}")(extract_cubes_backward_fake)


def setup_context(ctx, inputs, output):
    """Keeps the backward's arguments (the forward's): the tensors saved for backward, the rest as they are."""
    ctx.tensor_slots = [i for i, a in enumerate(inputs) if isinstance(a, torch.Tensor)]
    ctx.save_for_backward(*(inputs[i] for i in ctx.tensor_slots))
    ctx.other_args = [None if isinstance(a, torch.Tensor) else a for a in inputs]


_CUBE_INTENSITY_SLOT = EXTRACT_CUBES_ARG_NAMES.index("cube_intensity")


def backward_via(backward_op):
    """The autograd formula of a forward op, with its gradient computed by
    ``backward_op`` (the generic scatter-add above, or a backend's kernel);
    a call with ``cube_intensity`` always by ``extract_cubes_backward_torch``
    (the generic one), since no kernel differentiates the intensity stage."""
    def backward(ctx, grad):
        args = list(ctx.other_args)
        for i, t in zip(ctx.tensor_slots, ctx.saved_tensors):
            args[i] = t
        by = torch.ops.rubikops.extract_cubes_backward_torch if args[_CUBE_INTENSITY_SLOT] is not None else backward_op
        return (by(grad, *args),) + (None,) * (len(EXTRACT_CUBES_ARG_NAMES) - 1)
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


# -- the augmentation's draws ----------------------------------------------------------------------------
def draw_crop_affine_generic(*args):
    check_draw_crop_affine(*args)
    return reference.draw_crop_affine(*args)


def draw_cube_intensity_generic(*args):
    check_draw_cube_intensity(*args)
    return reference.draw_cube_intensity(*args)


LIBRARY.impl("draw_crop_affine", draw_crop_affine_generic, "CompositeExplicitAutograd")
LIBRARY.impl("draw_cube_intensity", draw_cube_intensity_generic, "CompositeExplicitAutograd")


@torch.library.register_fake("rubikops::draw_crop_affine")
def draw_crop_affine_fake(uniforms, *args):
    return uniforms.new_empty((uniforms.shape[0], 3, 4))


@torch.library.register_fake("rubikops::draw_cube_intensity")
def draw_cube_intensity_fake(uniforms, *args):
    return uniforms.new_empty((uniforms.shape[0], uniforms.shape[1], CUBE_INTENSITY_WIDTH))
