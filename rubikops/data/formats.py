"""Every common scan format into the same :class:`Volume`: one reader per
format, chosen by the file's suffix or, for DICOM, by the folder's content.

=========  ===========================  ==========================================
format     names                        reader
=========  ===========================  ==========================================
nifti      ``.nii``, ``.nii.gz``        nibabel
nrrd       ``.nrrd``, ``.nhdr``         SimpleITK
metaimage  ``.mha``, ``.mhd``           SimpleITK
dicom      a folder of slices (or       pydicom (headers, pixels); see dicom.py
           ``folder#SeriesInstanceUID``
           when it holds several series)
=========  ===========================  ==========================================

Every reader returns the array in (X, Y, Z) voxel order with a RAS
voxel-to-world affine in mm, so the same anatomy gives the same array,
spacing and affine whatever the format (ITK and DICOM store LPS: their x and
y world axes are negated here).  SimpleITK and pydicom are optional
(``pip install -r requirements-formats.txt``); without them a file that needs
one is a one-line DataError saying what to install."""
from __future__ import annotations

import glob as _glob
import hashlib
import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np

from .dicom import LPS_TO_RAS, SERIES_SEPARATOR, find_series, is_dicom_file, read_series, require, series_files
from .nifti import (NIFTI_SUFFIXES, DataError, RawImage, Volume, check_file, check_nifti_file, load_channels,
                    path_problem, read_nifti)


# -- SimpleITK: NRRD and MetaImage ---------------------------------------------------------------------
def _itk_message(exc: Exception) -> str:
    """ITK's multi-line exception text as one line: its last non-empty line says what went wrong."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def read_itk(path: str, what: str) -> RawImage:
    sitk = require("SimpleITK", "SimpleITK", path, what)
    try:
        img = sitk.ReadImage(path)
        arr = sitk.GetArrayFromImage(img)
    except RuntimeError as exc:
        raise DataError(f"{path}: not a readable {what} file ({_itk_message(exc)})") from None
    dim = img.GetDimension()
    if dim < 3:  # before the component axis could pass a 2-D colour image for a volume
        raise DataError(f"{path}: {dim}-D image of shape {tuple(img.GetSize())}, expected a 3-D volume")
    components = img.GetNumberOfComponentsPerPixel()
    # SimpleITK's array is (Z, Y, X) (plus a trailing component axis for vector pixels; a
    # leading T for 4-D): reverse the spatial axes to (X, Y, Z), frames/components last
    if components > 1:
        arr = np.moveaxis(arr, -1, 0)
    arr = arr.transpose(tuple(range(arr.ndim - 1, -1, -1)))
    spacing = np.asarray(img.GetSpacing(), dtype=np.float64)[:3]
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise DataError(f"{path}: voxel spacing {tuple(spacing.tolist())} has a zero, negative or non-finite entry")
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    lps = np.eye(4)
    lps[:3, :3] = direction * spacing  # column j: the world step of voxel axis j
    lps[:3, 3] = np.asarray(img.GetOrigin(), dtype=np.float64)[:3]
    affine = LPS_TO_RAS @ lps
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{path}: direction matrix is singular or not finite: {direction.round(3).tolist()}")
    integer = arr.dtype.kind in "iu"
    if not integer:
        arr = arr.astype(np.float32, copy=False)
    return RawImage(arr, affine, integer, {"dtype": str(arr.dtype)})


def read_nrrd(path: str) -> RawImage:
    raw = read_itk(path, "NRRD")
    return raw._replace(meta=dict(raw.meta, format="nrrd"))


def read_metaimage(path: str) -> RawImage:
    raw = read_itk(path, "MetaImage")
    return raw._replace(meta=dict(raw.meta, format="metaimage"))


def _detached_data_file(header: str, keys: Sequence[str]) -> Optional[str]:
    """The data file a detached header (``.mhd``, ``.nhdr``) names, when it names one file;
    its bytes are part of the case's content (the cache and ``prepare`` hash them)."""
    try:
        with open(header, "rb") as f:
            text = f.read(1 << 16).decode("latin-1")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":") if ":" in line.split("=")[0] else line.partition("=")
        if sep and key.strip().lower().replace(" ", "") in keys:
            value = value.strip()
            if value.upper() in ("LOCAL", "LIST") or " " in value:
                return None  # data inline, or a list / pattern of files: the header stands for them
            return os.path.join(os.path.dirname(header), value)
    return None


# -- the registry ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reader:
    name: str
    suffixes: tuple
    read: Callable[[str], RawImage]
    data_file_keys: tuple = ()  # header keys naming a detached data file


READERS = {
    "nifti": Reader("nifti", NIFTI_SUFFIXES, read_nifti),
    "nrrd": Reader("nrrd", (".nrrd", ".nhdr"), read_nrrd, ("datafile", "data_file")),
    "metaimage": Reader("metaimage", (".mha", ".mhd"), read_metaimage, ("elementdatafile",)),
    "dicom": Reader("dicom", (".dcm",), read_series),
}
FILE_SUFFIXES = tuple(s for r in READERS.values() if r.name != "dicom" for s in r.suffixes)


def format_of(path: str) -> Optional[str]:
    """The reader for ``path`` by its name (a folder, ``folder#UID`` or a file with the DICM marker is
    DICOM), or None."""
    path = os.fspath(path)
    low = path.lower()
    for reader in READERS.values():
        if low.endswith(reader.suffixes):
            return reader.name
    if os.path.isdir(path) or _series_part(path) is not None or (os.path.isfile(path) and is_dicom_file(path)):
        return "dicom"
    return None


def _series_part(path: str) -> Optional[tuple]:
    """(folder, SeriesInstanceUID) for a ``folder#UID`` case, else None."""
    if SERIES_SEPARATOR not in path or os.path.exists(path):
        return None
    folder, uid = path.rsplit(SERIES_SEPARATOR, 1)
    return (folder, uid) if os.path.isdir(folder) and uid else None


def is_image_file(name: str) -> bool:
    return str(name).lower().endswith(FILE_SUFFIXES)


def check_image_file(path: str) -> None:
    """What can be said of a case's path before reading it (the cache and
    ``prepare`` run this too): it exists, is non-empty and has a reader."""
    kind = format_of(path)
    if kind == "nifti":
        return check_nifti_file(path)
    if is_series(path):
        series_files(path)  # a folder without DICOM slices is refused here
        return
    check_file(path, "an image file")
    if kind is None:
        raise DataError(f"{path}: no reader for this file name (expected {', '.join(FILE_SUFFIXES)}, "
                        "or a folder of DICOM slices)")


def read_image(path: str) -> RawImage:
    check_image_file(path)
    return READERS[format_of(path)].read(path)


def load_image(path: Union[str, Sequence[str]], *, frames: Union[None, int, str] = None,
               allow_nonfinite: bool = False, label: bool = False) -> Volume:
    """Load one case in any format (``load_nifti``'s arguments): a file, a
    DICOM series folder, or several of one subject on one grid as channels."""
    return load_channels(path, read_image, frames=frames, allow_nonfinite=allow_nonfinite, label=label)


# -- what a case is made of (for hashing, stat and caching) ------------------------------------------------
def case_files(path: str) -> list:
    """The files whose bytes make up the case at ``path``: the file itself,
    plus the data file of a detached header, or a DICOM series' slices."""
    kind = format_of(path)
    if is_series(path):
        return series_files(path)
    files = [path]
    keys = READERS[kind].data_file_keys if kind else ()
    if keys:
        data = _detached_data_file(path, keys)
        if data is not None and os.path.isfile(data):
            files.append(data)
    return files


def is_series(path: str) -> bool:
    """A DICOM series case (a folder or ``folder#UID``), not a single file."""
    return os.path.isdir(path) or _series_part(path) is not None


def content_key(path: str, digest: Callable[[str], str]) -> str:
    """A key for the content of one case path: the format's suffix and its
    files' digests (``digest(file)``); a NIfTI file's key is its suffix and
    digest alone, as before the other formats were added."""
    files = case_files(path)
    if is_series(path):
        h = hashlib.blake2b(digest_size=16)
        for f in files:
            h.update(f"{os.path.basename(f)}|{digest(f)}|".encode())
        return f"dicom|{h.hexdigest()}"
    suffix = ".nii.gz" if path.lower().endswith(".gz") else os.path.splitext(path)[1].lower()
    return "|".join([suffix] + [digest(f) for f in files])


# -- finding the cases -------------------------------------------------------------------------------------
def _folder_cases(folder: str) -> list:
    """The cases of a folder: its image files, and the DICOM series found
    in it and its subfolders (one case per series)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        why = (exc.strerror or type(exc).__name__).lower()
        raise DataError(f"{folder}: cannot list the folder ({why})") from None
    cases = [os.path.join(folder, f) for f in names if is_image_file(f) and not os.path.isdir(os.path.join(folder, f))]
    cases += find_series(folder)
    return sorted(cases)


def find_files(spec: Union[str, os.PathLike, Sequence]) -> list:
    """Resolve a folder, a glob pattern, a single file or a list of them into
    a sorted list of cases; a case is a path (a file, or a DICOM series
    folder), or a tuple of paths (one per channel, e.g. T1 and FLAIR) when
    the list holds tuples/lists."""
    if isinstance(spec, (list, tuple)):
        cases = []
        for item in spec:
            if isinstance(item, (list, tuple)):
                cases.append(tuple(os.fspath(p) for p in item))
            else:
                cases.extend(find_files(item))
        if not cases:
            raise DataError(f"data: the list {list(spec)!r} holds no image files")
        return cases
    spec = os.fspath(spec)
    if os.path.isdir(spec):
        found = _folder_cases(spec)
        if not found:
            raise DataError(f"{spec}: folder holds no {', '.join(FILE_SUFFIXES)} files or DICOM series")
        return found
    if _series_part(spec) is not None:
        return [spec]
    if any(ch in spec for ch in "*?["):
        hits = sorted(_glob.glob(spec, recursive=True))
        found = sorted([p for p in hits if is_image_file(p) and os.path.isfile(p)]
                       + [case for p in hits if os.path.isdir(p) for case in find_series(p)])
        if not found:
            raise DataError(f"{spec}: pattern matches no {', '.join(FILE_SUFFIXES)} files or DICOM series")
        return found
    problem = path_problem(spec)
    if problem is not None:
        raise DataError(f"{spec}: {problem}" + (" or folder" if problem == "no such file" else ""))
    return [spec]
