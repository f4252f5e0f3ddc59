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
    "float shift_value, float? clamp_lo, float? clamp_hi, ScalarType? out_dtype, Tensor? affine=None, "
    "Tensor? read_box=None, Tensor? cube_intensity=None"
)
EXTRACT_CUBES_SCHEMA = f"extract_cubes({EXTRACT_CUBES_ARGS}) -> Tensor"
EXTRACT_CUBES_OUT_SCHEMA = f"extract_cubes.out({EXTRACT_CUBES_ARGS}, *, Tensor(a!) out) -> Tensor(a!)"
# The argument names in schema order: the one list every consumer reads them by.
def _arg_name(arg: str) -> str:
    """The name of one schema argument ("Tensor? affine=None" -> "affine")."""
    return arg.rsplit(" ", 1)[1].split("=")[0]


EXTRACT_CUBES_ARG_NAMES = tuple(_arg_name(arg) for arg in EXTRACT_CUBES_ARGS.split(", "))
# The backward takes the output gradient and the forward's arguments as they are, so that every layer reads
# one argument list: fill is ignored (masked voxels get no gradient whatever their fill) and out_dtype is
# the gradient's.
EXTRACT_CUBES_BACKWARD_SCHEMA = f"extract_cubes_backward(Tensor grad, {EXTRACT_CUBES_ARGS}) -> Tensor"
# The same gradient in plain torch on every device, for calls no backend kernel differentiates (an intensity
# stage): an op of its own, so that traced graphs (torch.compile, opcheck) keep it opaque.
EXTRACT_CUBES_BACKWARD_TORCH_SCHEMA = f"extract_cubes_backward_torch(Tensor grad, {EXTRACT_CUBES_ARGS}) -> Tensor"
SAMPLE_PUZZLE_SCHEMA = (
    "sample_puzzle(Tensor uniforms, Tensor volume_shapes, Tensor index, Tensor cells, Tensor permutations, "
    "Tensor code_table, int[] crop_size, int jitter, float mask_prob) "
    "-> (Tensor origins, Tensor codes, Tensor permutation, Tensor state, Tensor mask)")
# The augmentation's draws: uniforms in, the arguments extract_cubes reads the draws through out
# (rubikops.augment.CropAffine's affine, IntensityAugment's cube_intensity); csrc/augment_draws.h has the rules.
DRAW_CROP_AFFINE_SCHEMA = (
    "draw_crop_affine(Tensor uniforms, Tensor volume_shapes, Tensor index, int[] crop_size, float max_angle, "
    "float zoom_low, float zoom_high) -> Tensor")
DRAW_CUBE_INTENSITY_SCHEMA = (
    "draw_cube_intensity(Tensor uniforms, Tensor mean, Tensor sd, float contrast_low, float contrast_high, "
    "float gamma_low, float gamma_high, float bias_field, float noise, float p, float window) -> Tensor")

# The per-cube intensity stage (``cube_intensity``, (B, M, len(CUBE_INTENSITY_FIELDS)), floating): after the
# per-sample scale and shift, in the arithmetic dtype,
#   v = gain * v + offset
#   gamma on the window [low, low + span]: t = (v - low) / span; 0 < t < 1: v = low + span * t ** gamma
#   bias field about the window's centre c = low + span * 0.5:
#     v = c + (v - c) * exp(bias_d * r0) * exp(bias_h * r1) * exp(bias_w * r2)
#   noise: v = v + noise * n(noise_key, j)
# each step skipped where it is the identity (gamma 1, all three bias coefficients 0, noise 0).  r_a is
# output voxel i_a at i_a * (2 / (n_a - 1)) - 1 (0 for n_a = 1); n is a standard normal
# approximation of output voxel j = c * d * h * w + (its offset in the cube), keyed by the cube's
# noise_key (an integer in [0, 2**53), held in the floating tensor).
CUBE_INTENSITY_FIELDS = ("gain", "offset", "gamma", "low", "span", "noise", "bias_d", "bias_h", "bias_w",
                         "noise_key")
CUBE_INTENSITY_WIDTH = len(CUBE_INTENSITY_FIELDS)
# Irwin-Hall: the sum S of the four 16-bit fields of one splitmix64 hash has mean 131070 and variance
# 4 * (2**32 - 1) / 12; (S - 131070) * sqrt(3) / 65536 has mean 0 and variance 1 - 2**-32, within 3.46 sd.
NOISE_CENTRE = 131070
NOISE_UNIT = math.sqrt(3.0) / 65536.0

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


FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
INT_DTYPES = (torch.int16, torch.uint8)
SOURCE_DTYPES = FLOAT_DTYPES + INT_DTYPES


def default_out_dtype(source_dtype: torch.dtype) -> torch.dtype:
    return source_dtype if source_dtype.is_floating_point else torch.float32


def opmath_dtype(source_dtype: torch.dtype, out_dtype: torch.dtype) -> torch.dtype:
    """The dtype the intensity arithmetic runs in: float64 when either side is
    float64, float32 otherwise (also for half, bfloat16 and integer inputs)."""
    return torch.float64 if torch.float64 in (source_dtype, out_dtype) else torch.float32


# A voxel is kept iff the top 24 bits of its hash are below the keep threshold.
KEEP_ALL = 1 << 24


def keep_threshold(keep_prob: float) -> int:
    """floor(keep_prob * 2**24), in [0, 2**24]: a voxel is kept iff its hash's top 24 bits are below it."""
    if not keep_prob > 0:
        return 0
    return min(int(keep_prob * KEEP_ALL), KEEP_ALL)


def out_shape(source, origins, cube_size) -> tuple:
    """(B, M, C, d, h, w) of the op's output."""
    return (origins.shape[0], origins.shape[1], source.shape[1], *[int(s) for s in cube_size])


@dataclasses.dataclass(frozen=True)
class ExtractCubesParams:
    """The arguments of one ``extract_cubes`` call as users write them:
    ``scale`` and ``shift`` a float, a (B,) tensor or None; ``clamp`` None or
    (lo, hi) with either bound None.  Every consumer of the op (the public
    API, fakes, autograd, the backward, the reference, the Triton launchers)
    converts what it is given into this object once, at its edge, and asks it
    the derived questions.  :meth:`schema_args` gives the op's schema
    arguments; :meth:`from_schema_args` reads them back.  ``read_box``
    ((B, 2, 3) integer, with ``affine``): the lowest and highest voxel, per
    axis, that sample ``b``'s affine read may touch (its volume inside a
    packed storage); None: the whole source.  ``cube_intensity`` ((B, M,
    CUBE_INTENSITY_WIDTH) floating): each cube's intensity stage (see
    CUBE_INTENSITY_FIELDS).  ``cube_size`` is
    held as given until the checks (rubikops.checks) have read it."""

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
    affine: Optional[torch.Tensor] = None
    read_box: Optional[torch.Tensor] = None
    cube_intensity: Optional[torch.Tensor] = None

    # -- derived questions -------------------------------------------------------------------------------
    @property
    def changes_values(self) -> bool:
        """Whether values change on the way (scale, shift, clamp, the interpolation of an affine read, or the
        per-cube intensity stage): integer outputs allow none."""
        return (self.scale is not None or self.shift is not None or self.clamp is not None or self.affine is not None
                or self.cube_intensity is not None)

    @property
    def has_shift(self) -> bool:
        return self.shift is not None

    @property
    def clamp_bounds(self) -> tuple:
        """(lo, hi), either None where unbounded."""
        return tuple(self.clamp) if self.clamp is not None else (None, None)

    @property
    def keep_threshold(self) -> int:
        """Masked voxels whose hash's top 24 bits fall below this are kept (0: none; KEEP_ALL: all)."""
        return keep_threshold(self.keep_prob)

    @property
    def masks_voxels(self) -> bool:
        """Whether the mask replaces any voxel (no mask, or keep_prob 1, replaces none)."""
        return self.mask is not None and self.keep_threshold < KEEP_ALL

    @property
    def result_dtype(self) -> torch.dtype:
        return self.out_dtype or default_out_dtype(self.source.dtype)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the intensity arithmetic runs in."""
        return opmath_dtype(self.source.dtype, self.result_dtype)

    @property
    def out_shape(self) -> tuple:
        """(B, M, C, d, h, w) of the output."""
        return out_shape(self.source, self.origins, self.cube_size)

    @property
    def scale_tensor(self) -> Optional[torch.Tensor]:
        return self.scale if isinstance(self.scale, torch.Tensor) else None

    @property
    def shift_tensor(self) -> Optional[torch.Tensor]:
        return self.shift if isinstance(self.shift, torch.Tensor) else None

    @property
    def scale_value(self) -> float:
        """The scale as the schema's float (1.0 when none, or when it is a tensor)."""
        return 1.0 if self.scale is None or self.scale_tensor is not None else float(self.scale)

    @property
    def shift_value(self) -> float:
        """The shift as the schema's float (NO_SHIFT when none, or when it is a tensor)."""
        return NO_SHIFT if self.shift is None or self.shift_tensor is not None else float(self.shift)

    def tensors(self) -> dict:
        """{name: tensor} of every tensor argument that is given (the ones kernels read besides the source)."""
        return {name: t for name, t in (("origins", self.origins), ("index", self.index),
                                        ("rotations", self.rotations), ("mask", self.mask),
                                        ("scale", self.scale_tensor), ("shift", self.shift_tensor),
                                        ("affine", self.affine), ("read_box", self.read_box),
                                        ("cube_intensity", self.cube_intensity))
                if t is not None}

    # -- the schema's encoding ---------------------------------------------------------------------------
    # Schema arguments that are not a field as given, by name; every other schema argument is the field
    # of its name (EXTRACT_CUBES_ARG_NAMES is the one list of them).
    _ENCODED = {
        "cube_size": lambda p: [int(s) for s in p.cube_size],
        "fill": lambda p: float(p.fill),
        "keep_prob": lambda p: float(p.keep_prob),
        "seed": lambda p: wrap_seed(p.seed),
        "scale": lambda p: p.scale_tensor,
        "shift": lambda p: p.shift_tensor,
        "scale_value": lambda p: p.scale_value,
        "shift_value": lambda p: p.shift_value,
        "clamp_lo": lambda p: None if p.clamp_bounds[0] is None else float(p.clamp_bounds[0]),
        "clamp_hi": lambda p: None if p.clamp_bounds[1] is None else float(p.clamp_bounds[1]),
    }

    def schema_args(self) -> tuple:
        return tuple(self._ENCODED[name](self) if name in self._ENCODED else getattr(self, name)
                     for name in EXTRACT_CUBES_ARG_NAMES)

    @classmethod
    def from_schema_args(cls, *schema_args) -> "ExtractCubesParams":
        a = dict(zip(EXTRACT_CUBES_ARG_NAMES, schema_args))  # trailing defaulted arguments may be left out
        fields = {f.name: a.get(f.name) for f in dataclasses.fields(cls) if f.name in EXTRACT_CUBES_ARG_NAMES}
        lo, hi = a["clamp_lo"], a["clamp_hi"]
        fields.update(
            cube_size=tuple(int(s) for s in a["cube_size"]),
            scale=a["scale"] if a["scale"] is not None or a["scale_value"] == 1.0 else a["scale_value"],
            shift=a["shift"] if a["shift"] is not None or is_no_shift(a["shift_value"]) else a["shift_value"],
            clamp=None if lo is None and hi is None else (lo, hi))
        return cls(**fields)

    @classmethod
    def from_backward_args(cls, grad: torch.Tensor, *schema_args) -> "ExtractCubesParams":
        """The forward's arguments of a backward call: fill 0 (masked voxels get no gradient), the output
        dtype the gradient's."""
        return dataclasses.replace(cls.from_schema_args(*schema_args), fill=0.0, out_dtype=grad.dtype)

    def reference_kwargs(self) -> dict:
        """The keyword arguments of :func:`rubikops.reference.extract_cubes`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)[3:]}
