"""Reading NIfTI volumes with nibabel, with clear errors for everything users
actually hand us (missing, empty, truncated or non-NIfTI files, 2-D and 4-D
images, NaN voxels, broken spacings).

A :class:`Volume` is channel-first float32 ``data`` (C, X, Y, Z) in the
file's voxel order (or RAS after reorientation), its 4x4 voxel-to-world
``affine`` (mm) and where it came from."""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Sequence, Union

import numpy as np

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class DataError(ValueError):
    """A problem with a user's data: the message names the file and the problem."""


@dataclass
class Volume:
    data: np.ndarray                 # (C, X, Y, Z) float32 (or int labels)
    affine: np.ndarray               # (4, 4) float64 voxel -> world (mm)
    paths: tuple = ()                # the file(s) it came from, one per channel
    meta: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape[1:])

    @property
    def channels(self) -> int:
        return self.data.shape[0]

    @property
    def spacing(self) -> tuple:
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def orientation(self) -> str:
        import nibabel as nib
        return "".join(nib.aff2axcodes(self.affine))

    @property
    def name(self) -> str:
        return os.path.basename(self.paths[0]) if self.paths else "<array>"


def is_nifti(path: str) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def path_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be opened ("no such file", "symbolic link loop",
    "broken symbolic link", "permission denied"), or None when it can be
    stat'ed.  os.path.exists says False for all of these alike."""
    try:
        os.stat(path)
        return None
    except FileNotFoundError:
        if os.path.islink(path):
            return f"broken symbolic link (to {os.readlink(path)!r})"
        return "no such file"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return (exc.strerror or type(exc).__name__).lower()


def check_file(path: str, expected: str) -> None:
    """``path`` exists, is a file (``expected`` says what kind) and is not empty."""
    problem = path_problem(path)
    if problem is not None:
        raise DataError(f"{path}: {problem}")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, expected {expected}")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: file is empty")


def check_nifti_file(path: str) -> None:
    """What can be said of ``path`` before reading it: it exists, is a
    non-empty file with a NIfTI name.  The preprocessing cache runs this too,
    so a file that fails uncached also fails when its content is cached."""
    check_file(path, "a NIfTI file")
    if not is_nifti(path):
        raise DataError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz)")


class RawImage(NamedTuple):
    """What a format's reader hands back: the array in (X, Y, Z[, T]) voxel
    order, its RAS voxel-to-world affine (mm), whether integer values are to
    be kept (stored integers, unscaled), and what to record in Volume.meta."""
    array: np.ndarray
    affine: np.ndarray
    integer: bool
    meta: dict


def read_nifti(path: str) -> RawImage:
    import nibabel as nib
    check_nifti_file(path)
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises several types for a bad header
        # nibabel's message often repeats the path: name the file once
        why = str(exc).replace(f'"{path}"', "it").replace(str(path), "it")
        raise DataError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {why})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise DataError(f"{path}: {type(img).__name__} is not a NIfTI image")
    integer = _is_label_dtype(img)
    try:
        arr = np.asarray(img.dataobj, dtype=None if integer else np.float32)
    except Exception as exc:  # EOFError, zlib.error, OSError on truncated .gz
        raise DataError(f"{path}: truncated or corrupt image data ({type(exc).__name__}: {exc})") from None
    aff = np.asarray(img.affine, dtype=np.float64)
    _check_affine(path, aff, img)
    return RawImage(arr, aff, integer, {"dtype": str(arr.dtype), "format": "nifti"})


def _is_label_dtype(img) -> bool:
    hdr = img.header
    slope, inter = hdr.get_slope_inter()
    unscaled = slope in (None, 1.0) and inter in (None, 0.0)
    return unscaled and np.dtype(hdr.get_data_dtype()).kind in "iu"


def load_nifti(path: Union[str, Sequence[str]], *, frames: Union[None, int, str] = None,
               allow_nonfinite: bool = False, label: bool = False) -> Volume:
    """Load one case: a NIfTI file, or several files of one subject on the
    same grid (stacked as channels).  ``rubikops.data.load_image`` reads
    every format; this one refuses anything but NIfTI.

    frames: what to do with a 4-D file: None (refuse), an int (take that
    volume), or "channels" (stack its volumes as channels).
    label: keep integer values (label maps); images are float32."""
    return load_channels(path, read_nifti, frames=frames, allow_nonfinite=allow_nonfinite, label=label)


def load_channels(path: Union[str, Sequence[str]], read: Callable[[str], RawImage], *,
                  frames: Union[None, int, str] = None, allow_nonfinite: bool = False,
                  label: bool = False) -> Volume:
    """One case from ``read`` (a format's reader): one file, or several of one
    subject on the same grid stacked as channels; 4-D images by ``frames``."""
    paths = (path,) if isinstance(path, (str, os.PathLike)) else tuple(path)
    paths = tuple(os.fspath(p) for p in paths)
    if not paths:
        raise DataError("load_image: no file given")
    chans, affine, ref, meta = [], None, None, {}
    for p in paths:
        raw = read(p)
        arr = raw.array
        while arr.ndim > 3 and arr.shape[-1] == 1:  # (X, Y, Z, 1) and (X, Y, Z, 1, 1) are 3-D
            arr = arr[..., 0]
        if arr.ndim < 3:
            raise DataError(f"{p}: {arr.ndim}-D image of shape {arr.shape}, expected a 3-D volume")
        if arr.ndim == 4:
            if frames is None:
                raise DataError(f"{p}: 4-D image of shape {arr.shape}; pass frames=<index> to take one volume "
                                "or frames='channels' to stack its volumes as channels")
            if frames == "channels":
                parts = [arr[..., t] for t in range(arr.shape[-1])]
            elif isinstance(frames, int) and -arr.shape[-1] <= frames < arr.shape[-1]:
                parts = [arr[..., frames]]
            else:
                raise DataError(f"{p}: frames={frames!r} is not valid for a 4-D image with {arr.shape[-1]} volumes")
        elif arr.ndim > 4:
            raise DataError(f"{p}: {arr.ndim}-D image of shape {arr.shape}, expected a 3-D volume")
        else:
            parts = [arr]
        aff = raw.affine
        if ref is None:
            ref, affine, meta = parts[0].shape, aff, dict(raw.meta)
        elif parts[0].shape != ref or not np.allclose(aff, affine, atol=1e-3):
            raise DataError(f"{p}: grid {parts[0].shape} does not match the case's first file {paths[0]} {ref} "
                            "(channels of one case must share shape and affine)")
        for part in parts:
            if not label and not allow_nonfinite:
                bad = ~np.isfinite(part)
                if bad.any():
                    raise DataError(f"{p}: {int(bad.sum())} voxels are NaN or Inf (pass allow_nonfinite=True "
                                    "to set them to 0)")
            chans.append(np.nan_to_num(part, nan=0.0, posinf=0.0, neginf=0.0) if allow_nonfinite else part)
    data = np.stack(chans, 0)
    if label and np.issubdtype(data.dtype, np.floating):  # before the cast to int64, which would truncate 1.7 to 1
        bad = ~np.isfinite(data) | (data != np.rint(data)) | (np.abs(data) > 2**53)
        if bad.any():
            raise DataError(f"{paths[0]}: label map holds {int(bad.sum())} non-integer or non-finite values "
                            f"(e.g. {data[bad].flat[0]!r}); a label map holds class ids")
    data = data.astype(np.int64 if label else np.float32, copy=False)
    return Volume(np.ascontiguousarray(data), affine, paths, meta)


def _raw_zooms(path: str, img) -> tuple:
    """pixdim[1:4] as stored: nibabel silently takes abs() of negative ones on load."""
    from nibabel.openers import ImageOpener
    try:
        with ImageOpener(path) as f:
            hdr = type(img.header).from_fileobj(f, check=False)
        return tuple(float(z) for z in hdr["pixdim"][1:4])
    except Exception:
        return tuple(float(z) for z in img.header.get_zooms()[:3])


def _check_affine(path: str, aff: np.ndarray, img) -> None:
    zooms = _raw_zooms(path, img)
    if any((not np.isfinite(z)) or z <= 0 for z in zooms):
        raise DataError(f"{path}: voxel spacing {tuple(float(z) for z in zooms)} has a zero, negative or "
                        "non-finite entry")
    if not np.isfinite(aff).all() or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise DataError(f"{path}: affine is singular or not finite: {aff.round(3).tolist()}")

