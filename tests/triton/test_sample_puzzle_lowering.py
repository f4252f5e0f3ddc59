"""Compile the Triton sampler kernel for an H100 (sm_90) without a GPU (see
test_extract_cubes_lowering.py for why in a subprocess)."""
import pytest

pytest.importorskip("triton")

from .test_extract_cubes_lowering import _lower  # noqa: E402


@pytest.mark.parametrize("has_rot,draw_mask,small", [(True, True, True), (False, False, False), (True, False, False)])
def test_sampler_kernel_lowers_for_sm90(has_rot, draw_mask, small):
    const = dict(HAS_ROT=has_rot, DRAW_MASK=draw_mask, BLOCK=128)
    if small:  # Triton passes integer arguments equal to 1 as constants: one volume, one permutation, jitter 1
        const.update(N=1, K=1, jitter=1, shape_s1=1)
    ptrs = dict(u_ptr="*fp64", shapes_ptr="*i64", index_ptr="*i64", cells_ptr="*i64", perms_ptr="*i64",
                table_ptr="*i64", mask_prob_bits="i64", origins_ptr="*i64", codes_ptr="*i64", perm_ptr="*i64",
                state_ptr="*i64", mask_ptr="*i1")
    _lower([dict(module="rubikops.triton_kernels.sample_puzzle", kernel="_sample_puzzle_kernel", const=const, ptrs=ptrs,
                 small_ints=small, src="fp64", out="i64")])
