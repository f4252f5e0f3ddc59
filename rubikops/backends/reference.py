"""The plain-torch backend: :mod:`rubikops.reference` behind the op's
schema, with the metadata checks the C++ kernels make (the reference has no
C++ checks behind it)."""
from __future__ import annotations

import torch

from .. import reference
from .._library import sample_puzzle_generic as sample_puzzle  # noqa: F401
from .._schema import ExtractCubesParams
from ..checks import check_tensors


class _ReferenceExtractCubes:
    def __call__(self, *schema_args) -> torch.Tensor:
        return self._run(schema_args)

    def out(self, *schema_args, out: torch.Tensor) -> torch.Tensor:
        return out.copy_(self._run(schema_args, out))

    @staticmethod
    def _run(schema_args, out=None) -> torch.Tensor:
        p = ExtractCubesParams.from_schema_args(*schema_args)
        size = check_tensors(p.source, p.origins, p.cube_size, p.index, p.rotations, p.mask, p.scale_tensor,
                             p.shift_tensor, p.fill, p.out_dtype, p.arithmetic, out)
        return reference.extract_cubes(p.source, p.origins, size, **p.reference_kwargs())


extract_cubes = _ReferenceExtractCubes()


def features() -> dict:
    return {"any_device": True}
