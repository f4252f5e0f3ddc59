"""The schemas of the rubikops ops, defined here once, and the one object
that turns the public arguments of ``extract_cubes`` into them.

Every backend registers kernels for these schemas (C++: ``TORCH_LIBRARY_IMPL``
in csrc/cpu and csrc/cuda; Triton and plain torch: rubikops/backends).  The
schema's encodings that callers never see (a float scale or shift beside the
per-sample tensor, -0.0 as "no shift", the seed as a signed 64-bit integer)
live only in :class:`ExtractCubesParams`."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch

EXTRACT_CUBES_ARGS = (
    "Tensor source, Tensor origins, int[] cube_size, Tensor? index, Tensor? rotations, Tensor? mask, "
    "float fill, float keep_prob, int seed, Tensor? scale, Tensor? shift, float scale_value, "
    "float shift_value, float? clamp_lo, float? clamp_hi, ScalarType? out_dtype"
)
EXTRACT_CUBES_SCHEMA = f"extract_cubes({EXTRACT_CUBES_ARGS}) -> Tensor"
EXTRACT_CUBES_OUT_SCHEMA = f"extract_cubes.out({EXTRACT_CUBES_ARGS}, *, Tensor(a!) out) -> Tensor(a!)"
EXTRACT_CUBES_BACKWARD_SCHEMA = (
    "extract_cubes_backward(Tensor grad, Tensor source, Tensor origins, int[] cube_size, Tensor? index, "
    "Tensor? rotations, Tensor? mask, float keep_prob, int seed, Tensor? scale, Tensor? shift, "
    "float scale_value, float shift_value, float? clamp_lo, float? clamp_hi) -> Tensor")
SAMPLE_PUZZLE_SCHEMA = (
    "sample_puzzle(Tensor uniforms, Tensor volume_shapes, Tensor index, Tensor cells, Tensor permutations, "
    "Tensor code_table, int[] crop_size, int jitter, float mask_prob) "
    "-> (Tensor origins, Tensor codes, Tensor permutation, Tensor state, Tensor mask)")

# -0.0 is the exact additive identity (x + -0.0 == x, also for x = -0.0), so "no shift" costs nothing.
NO_SHIFT = -0.0


def is_no_shift(value: float) -> bool:
    """Whether a schema ``shift_value`` means "no shift" (-0.0; +0.0 is a real shift of an -0.0 input)."""
    return value == 0.0 and math.copysign(1.0, value) < 0


def wrap_seed(seed: int) -> int:
    """A seed in [-2**63, 2**64) as the schema's signed 64-bit int (the same bits)."""
    seed = int(seed)
    return seed - (1 << 64) if seed >= (1 << 63) else seed


def seed_halves(seed: int) -> tuple[int, int]:
    """The schema's 64-bit seed as (low, high) signed int32 halves, for kernels
    whose integer arguments are 32-bit (Triton under inductor)."""
    bits = int(seed) & ((1 << 64) - 1)
    lo, hi = bits & 0xFFFFFFFF, bits >> 32
    return (lo - (1 << 32) if lo >= (1 << 31) else lo), (hi - (1 << 32) if hi >= (1 << 31) else hi)


def out_shape(source, origins, cube_size) -> tuple:
    """(B, M, C, d, h, w) of the op's output."""
    return (origins.shape[0], origins.shape[1], source.shape[1], *[int(s) for s in cube_size])


@dataclasses.dataclass(frozen=True)
class ExtractCubesParams:
    """The arguments of one ``extract_cubes`` call as users write them:
    ``scale`` and ``shift`` a float, a (B,) tensor or None; ``clamp`` None or
    (lo, hi) with either bound None.  :meth:`schema_args` gives the op's 16
    schema arguments; :meth:`from_schema_args` reads them back."""

    source: torch.Tensor
    origins: torch.Tensor
    cube_size: tuple
    index: Optional[torch.Tensor] = None
    rotations: Optional[torch.Tensor] = None
    mask: Optional[torch.Tensor] = None
    fill: float = 0.0
    keep_prob: float = 0.0
    seed: int = 0
    scale: object = None
    shift: object = None
    clamp: Optional[tuple] = None
    out_dtype: Optional[torch.dtype] = None

    @property
    def arithmetic(self) -> bool:
        """Whether values change on the way (scale, shift or clamp): integer outputs allow none."""
        return self.scale is not None or self.shift is not None or self.clamp is not None

    @property
    def scale_tensor(self) -> Optional[torch.Tensor]:
        return self.scale if isinstance(self.scale, torch.Tensor) else None

    @property
    def shift_tensor(self) -> Optional[torch.Tensor]:
        return self.shift if isinstance(self.shift, torch.Tensor) else None

    def schema_args(self) -> tuple:
        scale_t, shift_t = self.scale_tensor, self.shift_tensor
        scale_value = 1.0 if self.scale is None or scale_t is not None else float(self.scale)
        shift_value = NO_SHIFT if self.shift is None or shift_t is not None else float(self.shift)
        lo, hi = self.clamp if self.clamp is not None else (None, None)
        return (self.source, self.origins, [int(s) for s in self.cube_size], self.index, self.rotations, self.mask,
                float(self.fill), float(self.keep_prob), wrap_seed(self.seed), scale_t, shift_t, scale_value,
                shift_value, None if lo is None else float(lo), None if hi is None else float(hi), self.out_dtype)

    @classmethod
    def from_schema_args(cls, source, origins, cube_size, index, rotations, mask, fill, keep_prob, seed, scale,
                         shift, scale_value, shift_value, clamp_lo, clamp_hi, out_dtype) -> "ExtractCubesParams":
        if scale is None and scale_value != 1.0:
            scale = scale_value
        if shift is None and not is_no_shift(shift_value):
            shift = shift_value
        clamp = None if clamp_lo is None and clamp_hi is None else (clamp_lo, clamp_hi)
        return cls(source, origins, tuple(int(s) for s in cube_size), index, rotations, mask, fill, keep_prob,
                   seed, scale, shift, clamp, out_dtype)

    def reference_kwargs(self) -> dict:
        """The keyword arguments of :func:`rubikops.reference.extract_cubes`."""
        return dict(index=self.index, rotations=self.rotations, mask=self.mask, fill=self.fill,
                    keep_prob=self.keep_prob, seed=self.seed, scale=self.scale, shift=self.shift, clamp=self.clamp,
                    out_dtype=self.out_dtype)
