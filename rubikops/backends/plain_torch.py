"""The plain-torch backend (named "torch"): :mod:`rubikops.reference` behind
the op's schema, with the metadata checks the C++ kernels make (the reference
has no C++ checks behind it)."""
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
        check_tensors(p, out)
        return reference.extract(p)


extract_cubes = _ReferenceExtractCubes()


def features() -> dict:
    return {"any_device": True}
