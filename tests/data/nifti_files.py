"""Small synthetic NIfTI files written by the tests."""
from __future__ import annotations

import os

import nibabel as nib
import numpy as np


def world_linear(affine: np.ndarray, shape, coef=(1.0, -2.0, 3.0), const=5.0) -> np.ndarray:
    """Values f(world) = coef . world + const at every voxel centre: any
    correct reorientation or resampling keeps f(world) at each voxel."""
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    return world @ np.asarray(coef) + const


def write(path: str, data: np.ndarray, affine=None, dtype=None, slope=None, inter=None) -> str:
    affine = np.eye(4) if affine is None else affine
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype or data.dtype), affine)
    if slope is not None:
        img.header.set_slope_inter(slope, inter or 0.0)
    nib.save(img, path)
    return str(path)


# A left-posterior-inferior oblique-free affine with permuted axes and
# anisotropic spacing: voxel axes (i, j, k) -> world (y, z, x) with flips.
LPS_PERMUTED = np.array([
    [0.0, 0.0, -1.5, 40.0],
    [-0.8, 0.0, 0.0, 30.0],
    [0.0, 2.5, 0.0, -20.0],
    [0.0, 0.0, 0.0, 1.0],
])


def aniso_case(folder, shape=(13, 9, 11), name="aniso.nii.gz") -> tuple:
    data = world_linear(LPS_PERMUTED, shape).astype(np.float32)
    return write(os.path.join(folder, name), data, LPS_PERMUTED), data
