"""The Triton backend: ``rubikops::extract_cubes_triton`` (with its out=
variant and backward) and ``rubikops::sample_puzzle_triton``, opaque custom
ops around the kernels of :mod:`rubikops.triton_kernels`; on CUDA they are
also the kernels of the main ops where the compiled library has no CUDA
kernel.  On CPU tensors they run in the Triton interpreter
(TRITON_INTERPRET=1 before ``import rubikops``).

Opaque custom ops, not torch.library.triton_op: opcheck and
torch.compile(fullgraph=True) pass with them on CPU (the interpreter, where
triton_op fails: "Attempted to set the storage of a tensor on device meta")
and on the GPU.  Defined at import (about 20 ms), not on first use: a first
call inside torch.compile would define ops while dynamo traces, which it
refuses."""
from __future__ import annotations

import torch

from .._library import (LIBRARY, backward_via, extract_cubes_backward_fake, extract_cubes_fake, has_kernel,
                        sample_puzzle_fake, setup_context)
from .._schema import (EXTRACT_CUBES_ARG_NAMES, EXTRACT_CUBES_ARGS, EXTRACT_CUBES_BACKWARD_SCHEMA,
                       EXTRACT_CUBES_SCHEMA, SAMPLE_PUZZLE_SCHEMA, ExtractCubesParams)
from ..checks import check_tensors
from ..triton_kernels import extract_cubes as _kernels
from ..triton_kernels.sample_puzzle import sample_puzzle as _launch_sampler


def _checked(schema_args: tuple, out=None) -> ExtractCubesParams:
    """The call's arguments after the shape, dtype, device and out= checks of
    the C++ backends (csrc/extract_cubes_checks.h), for calls that reach this
    op without the Python ones (validate=False, torch.ops): they keep the
    kernel in bounds."""
    p = ExtractCubesParams.from_schema_args(*schema_args)
    check_tensors(p, out)
    return p


def _functional(*schema_args):
    p = _checked(schema_args)
    out = torch.empty(p.out_shape, dtype=p.result_dtype, device=p.source.device)
    _kernels.launch(p, out)
    return out


# A custom op cannot define an overload: the out= variant is a second op.  Custom ops take no keyword-only
# tensors, so its `out` comes before the arguments with a default (affine), which callers may leave out.
_ARGS = EXTRACT_CUBES_ARGS.split(", ")
_OUT_AT = next((i for i, arg in enumerate(_ARGS) if "=" in arg), len(_ARGS))
_OUT_SCHEMA = "({}) -> ()".format(", ".join(_ARGS[:_OUT_AT] + ["Tensor(a!) out"] + _ARGS[_OUT_AT:]))


def _out_variant(*args):
    out = args[_OUT_AT]
    schema_args = args[:_OUT_AT] + args[_OUT_AT + 1:]
    _kernels.launch(_checked(schema_args, out), out)


def _backward(grad, *schema_args):
    p = ExtractCubesParams.from_backward_args(grad, *schema_args)
    check_tensors(p)
    torch._check_value(p.cube_intensity is None,
                       lambda: "rubikops.extract_cubes_backward: no kernel differentiates cube_intensity; autograd "
                               "computes its gradient in plain torch")
    torch._check_value(grad.shape == p.out_shape and grad.device == p.source.device,
                       lambda: f"rubikops.extract_cubes_backward: grad must have shape {p.out_shape} on "
                               f"{p.source.device}, got {tuple(grad.shape)} on {grad.device}")
    return _kernels.launch_backward(grad, p)


def _anonymous(schema: str, name: str) -> str:
    """A library schema as custom_op takes it (no name)."""
    return schema.replace(f"{name}(", "(", 1)


_schema = _anonymous(EXTRACT_CUBES_SCHEMA, "extract_cubes")
_functional_op = torch.library.custom_op("rubikops::extract_cubes_triton", _functional, mutates_args=(),
                                         schema=_schema)
_out_op = torch.library.custom_op("rubikops::extract_cubes_triton_out", _out_variant, mutates_args=("out",),
                                  schema=_OUT_SCHEMA)
_functional_op.register_fake(extract_cubes_fake)
_backward_op = torch.library.custom_op("rubikops::extract_cubes_backward_triton", _backward, mutates_args=(),
                                       schema=_anonymous(EXTRACT_CUBES_BACKWARD_SCHEMA, "extract_cubes_backward"))
_backward_op.register_fake(extract_cubes_backward_fake)
torch.library.register_autograd("rubikops::extract_cubes_triton", backward_via(_backward_op),
                                setup_context=setup_context)


def _every_argument(schema_args: tuple) -> tuple:
    """The schema's arguments with the trailing defaults a caller left out (affine) filled in."""
    return schema_args + (None,) * (len(EXTRACT_CUBES_ARG_NAMES) - len(schema_args))


class _ExtractCubes:
    """The registered Triton op, called with the schema's arguments, and its out= variant."""

    def __call__(self, *schema_args):
        return _functional_op(*_every_argument(schema_args))

    def out(self, *schema_args, out):
        schema_args = _every_argument(schema_args)
        _out_op(*schema_args[:_OUT_AT], out, *schema_args[_OUT_AT:])
        return out


extract_cubes = _ExtractCubes()
sample_puzzle = torch.library.custom_op("rubikops::sample_puzzle_triton", _launch_sampler, mutates_args=(),
                                        schema=_anonymous(SAMPLE_PUZZLE_SCHEMA, "sample_puzzle"))
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
