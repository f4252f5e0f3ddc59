"""DICOM series with pydicom: find the series in a folder tree, check that
the slices make one regular volume, stack them in RAS.

A folder's DICOM files (``.dcm`` or any file with the ``DICM`` preamble
marker) are grouped by SeriesInstanceUID.  A folder holding one image series
is one case (the folder's path); one holding several gives one case per
series, ``folder#SeriesInstanceUID``.  Within a series, slices are sorted by
their position along the slice normal (the cross product of the
ImageOrientationPatient row and column cosines), each slice's stored values
go through its own RescaleSlope and RescaleIntercept (CT in HU), and the
affine comes from ImagePositionPatient, ImageOrientationPatient and
PixelSpacing, converted from DICOM's LPS to RAS.

What is refused, each a one-line DataError naming the series and a file: a
missing slice or irregular spacing, gantry tilt (sheared slices), mixed
sizes, pixel spacings or orientations, two slices at one position (several
echoes or time points), a series of one 2-D slice, multi-frame files, colour
images.  Localizers (ImageType LOCALIZER, or a few slices whose orientation
differs from the rest) are skipped, and each skip is recorded with its
reason in the volume's ``meta["skipped_files"]``."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .nifti import DataError, RawImage, path_problem

INSTALL_HINT = "pip install -r requirements-formats.txt (SimpleITK and pydicom)"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # DICOM and ITK world axes are LPS; Volume affines are RAS
SERIES_SEPARATOR = "#"  # "folder#SeriesInstanceUID": one series of a folder that holds several
# files in a DICOM folder that are never slices (other formats' images, notes), not even opened
NOT_SLICES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".raw", ".txt", ".json", ".csv", ".md", ".xml",
              ".png", ".jpg", ".zip")



def require(module: str, package: str, path: str, what: str):
    """Import an optional reader's module, or a one-line DataError naming the file and what to install."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"{path}: reading {what} needs {package}, which is not installed: {INSTALL_HINT}") from None


HEADER_TAGS = ["SeriesInstanceUID", "SeriesDescription", "Modality", "Rows", "Columns", "ImageOrientationPatient",
               "ImagePositionPatient", "PixelSpacing", "ImageType", "NumberOfFrames", "SamplesPerPixel",
               "GantryDetectorTilt", "InstanceNumber"]
# Positions are written with ~6 significant digits: slice gaps agree to far
# better than 1% of the gap (0.025 mm at 2.5 mm) in a regular series.
GAP_TOLERANCE = 0.01
# Orientation cosines of one series agree to their printed precision (1e-6..1e-4).
ORIENTATION_TOLERANCE = 1e-3
TILT_TOLERANCE_DEG = 0.05
WHAT = "DICOM"
NO_UID = "no-SeriesInstanceUID"  # the series of the files that lack one


@dataclass
class SliceHeader:
    file: str
    uid: str
    image: bool                      # has Rows/Columns: a pixel image (not DICOMDIR, RTSTRUCT, SR, ...)
    rows: int = 0
    columns: int = 0
    orientation: Optional[tuple] = None
    position: Optional[tuple] = None
    pixel_spacing: Optional[tuple] = None
    image_type: tuple = ()
    frames: int = 1
    samples: int = 1
    gantry_tilt: float = 0.0
    description: str = ""


def is_dicom_file(path: str) -> bool:
    """``.dcm``, or the ``DICM`` marker after the 128-byte preamble (how DICOM files are recognised)."""
    if path.lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _floats(value, n: int) -> Optional[tuple]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def read_header(path: str) -> SliceHeader:
    pydicom = require("pydicom", "pydicom", path, WHAT)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=HEADER_TAGS)
    except Exception as exc:  # pydicom raises several types for a broken file
        raise DataError(f"{path}: not a readable DICOM file ({type(exc).__name__}: {exc})") from None
    uid = str(ds.get("SeriesInstanceUID", "") or "") or NO_UID
    if "Rows" not in ds or "Columns" not in ds:
        return SliceHeader(path, uid, False)
    return SliceHeader(
        path, uid, True, int(ds.Rows), int(ds.Columns),
        _floats(ds.get("ImageOrientationPatient"), 6), _floats(ds.get("ImagePositionPatient"), 3),
        _floats(ds.get("PixelSpacing"), 2), tuple(str(t).upper() for t in (ds.get("ImageType") or ())),
        int(ds.get("NumberOfFrames") or 1), int(ds.get("SamplesPerPixel") or 1),
        float(ds.get("GantryDetectorTilt") or 0.0), str(ds.get("SeriesDescription", "") or ""))


_SCANS: dict = {}  # folder -> (signature, headers, unreadable): a folder is scanned once while unchanged


def scan_folder(folder: str) -> tuple:
    """(headers, unreadable) of the DICOM files directly in ``folder``;
    ``unreadable`` lists (file, reason)."""
    names = sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)))
    files = [os.path.join(folder, n) for n in names if n.upper() != "DICOMDIR"
             and not n.lower().endswith(NOT_SLICES) and is_dicom_file(os.path.join(folder, n))]
    signature = tuple((f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files)
    key = os.path.abspath(folder)
    if key in _SCANS and _SCANS[key][0] == signature:
        return _SCANS[key][1:]
    headers, unreadable = [], []
    for f in files:
        try:
            headers.append(read_header(f))
        except DataError as exc:
            if "needs pydicom" in str(exc):
                raise
            unreadable.append((f, str(exc).split(": ", 1)[1]))
    _SCANS[key] = (signature, headers, unreadable)
    return headers, unreadable


def image_series(headers: list) -> dict:
    """SeriesInstanceUID -> its headers, for the series that hold images."""
    series: dict = {}
    for h in headers:
        series.setdefault(h.uid, []).append(h)
    return {uid: hs for uid, hs in sorted(series.items()) if any(h.image for h in hs)}


def find_series(folder: str) -> list:
    """The DICOM series cases under ``folder`` (its subfolders included)."""
    cases = []
    for root, dirs, _ in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # not .git, .cache, ...
        if not any(is_dicom_file(os.path.join(root, n)) for n in os.listdir(root)
                   if os.path.isfile(os.path.join(root, n)) and not n.lower().endswith(NOT_SLICES)):
            continue
        series = image_series(scan_folder(root)[0])
        if len(series) == 1:
            cases.append(root)
        else:
            cases.extend(f"{root}{SERIES_SEPARATOR}{uid}" for uid in series)
    return cases


def _series_of(case: str) -> tuple:
    """(folder, uid, the series' headers, unreadable files) for a case; a DataError if it names no single series."""
    folder, uid = case, None
    if not os.path.isdir(case) and SERIES_SEPARATOR in case:
        folder, uid = case.rsplit(SERIES_SEPARATOR, 1)
    problem = path_problem(folder)
    if problem is not None:
        raise DataError(f"{folder}: {problem}")
    if not os.path.isdir(folder):  # one file: a series of that file alone
        header = read_header(folder)
        return os.path.dirname(folder), header.uid, [header], []
    headers, unreadable = scan_folder(folder)
    series = image_series(headers)
    if uid is None:
        if not series:
            raise DataError(f"{folder}: folder holds no DICOM image slices" + (
                f" ({len(unreadable)} unreadable, e.g. {unreadable[0][0]}: {unreadable[0][1]})" if unreadable else ""))
        if len(series) > 1:
            raise DataError(f"{folder}: folder holds {len(series)} DICOM series; name one as "
                            f"{folder}{SERIES_SEPARATOR}<SeriesInstanceUID> (one of {', '.join(series)})")
        uid = next(iter(series))
    elif uid not in series:
        raise DataError(f"{case}: no DICOM image series {uid} in {folder}")
    return folder, uid, series[uid], unreadable


def series_files(case: str) -> list:
    """The files of the series ``case`` names, sorted by name."""
    return sorted(h.file for h in _series_of(case)[2])


def _majority(values: list, close) -> tuple:
    """The value most slices share (``close(a, b)`` says two agree) and its count: one pass
    over the few distinct values (a series has one orientation, plus its localizers')."""
    groups: list = []  # [first value, count]
    for v in values:
        for g in groups:
            if close(v, g[0]):
                g[1] += 1
                break
        else:
            groups.append([v, 1])
    best = max(groups, key=lambda g: g[1])
    return best[0], best[1]


def _same_orientation(a, b) -> bool:
    return a is not None and b is not None and max(abs(x - y) for x, y in zip(a, b)) < ORIENTATION_TOLERANCE


def check_slices(case: str, uid: str, headers: list) -> tuple:
    """The slices that make the volume, sorted along the normal, plus the
    skipped ones as (file, reason); a DataError for a series that is not
    one regular volume.  Returns (slices, normal, skipped)."""
    name = f"DICOM series {uid} in {case}"
    skipped = [(h.file, "no pixel data (not an image)") for h in headers if not h.image]
    slices = [h for h in headers if h.image]
    for h in slices:
        if h.frames > 1:
            raise DataError(f"{name}: {h.file}: multi-frame file ({h.frames} frames) is not read; convert the "
                            "series to NIfTI (e.g. with dcm2niix)")
        if h.samples != 1:
            raise DataError(f"{name}: {h.file}: colour image ({h.samples} samples per pixel), expected grey values")
        if h.orientation is None or h.position is None or h.pixel_spacing is None:
            raise DataError(f"{name}: {h.file}: no ImageOrientationPatient, ImagePositionPatient or PixelSpacing "
                            "(not a cross-sectional image?)")
    kept = []
    for h in slices:
        if "LOCALIZER" in h.image_type:
            skipped.append((h.file, "localizer (ImageType LOCALIZER)"))
        else:
            kept.append(h)
    if kept:
        main, count = _majority([h.orientation for h in kept], _same_orientation)
        odd = [h for h in kept if not _same_orientation(h.orientation, main)]
        if odd and len(odd) * 2 >= len(kept):
            raise DataError(f"{name}: mixed slice orientations: {odd[0].file} is {_fmt(odd[0].orientation)}, "
                            f"{count} others {_fmt(main)}")
        skipped += [(h.file, f"orientation {_fmt(h.orientation)} differs from the series' {count} other slices "
                             "(a localizer)") for h in odd]
        kept = [h for h in kept if _same_orientation(h.orientation, main)]
    if not kept:
        raise DataError(f"{name}: no slices left after skipping localizers ({skipped[0][0]}: {skipped[0][1]})"
                        if skipped else f"{name}: no image slices")
    first = kept[0]
    for h in kept[1:]:
        if (h.rows, h.columns) != (first.rows, first.columns):
            raise DataError(f"{name}: mixed sizes: {h.file} is {h.rows}x{h.columns}, {first.file} "
                            f"{first.rows}x{first.columns}")
        if max(abs(a - b) for a, b in zip(h.pixel_spacing, first.pixel_spacing)) > 1e-4:
            raise DataError(f"{name}: mixed pixel spacings: {h.file} {_fmt(h.pixel_spacing)} mm, {first.file} "
                            f"{_fmt(first.pixel_spacing)} mm")
    if len(kept) == 1:
        raise DataError(f"{name}: {first.file}: a single 2-D slice, not a volume (a 2-D-only series)")
    row, col = np.asarray(first.orientation[:3]), np.asarray(first.orientation[3:])
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    kept.sort(key=lambda h: float(np.dot(h.position, normal)))
    positions = np.asarray([h.position for h in kept])
    along = (positions - positions[0]) @ normal
    gaps = np.diff(along)
    # a repeated position is repeated exactly in the header (or to its printed digits)
    same = np.flatnonzero(gaps < max(1e-3, 0.01 * float(np.median(gaps))))
    if same.size:
        i = int(same[0])
        raise DataError(f"{name}: two slices at one position ({along[i]:.3f} mm along the normal): {kept[i].file} "
                        f"and {kept[i + 1].file} (several acquisitions, echoes or time points in one series?)")
    step = float(np.median(gaps))
    off = np.flatnonzero(np.abs(gaps - step) > GAP_TOLERANCE * step + 1e-4)
    if off.size:
        i = int(off[0])
        missing = int(round(gaps[i] / step)) - 1
        what = (f"{missing} missing slice(s)" if missing >= 1 and abs(gaps[i] - (missing + 1) * step)
                <= GAP_TOLERANCE * step else "irregular slice spacing")
        raise DataError(f"{name}: {what}: gap of {gaps[i]:.3f} mm between {kept[i].file} and {kept[i + 1].file}, "
                        f"where the series' slices are {step:.3f} mm apart")
    inplane = (positions - positions[0]) - np.outer(along, normal)
    tilt = float(np.degrees(np.arctan2(np.linalg.norm(inplane, axis=1).max(), along[-1])))
    if tilt > TILT_TOLERANCE_DEG:
        tag = f", GantryDetectorTilt {first.gantry_tilt:g}" if first.gantry_tilt else ""
        raise DataError(f"{name}: gantry tilt: slices are sheared by {tilt:.2f} degrees from the slice normal "
                        f"(from {kept[0].file} to {kept[-1].file}{tag}); resample it to an orthogonal grid first "
                        "(e.g. dcm2niix corrects tilt)")
    return kept, normal, skipped


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def read_series(case: str) -> RawImage:
    """The volume of one series: (columns, rows, slices) voxels, RAS affine."""
    pydicom = require("pydicom", "pydicom", case, WHAT)
    folder, uid, headers, unreadable = _series_of(case)
    slices, _, skipped = check_slices(case, uid, headers)
    skipped = sorted(skipped + unreadable)
    arrays, integer = [], True
    for h in slices:
        try:
            ds = pydicom.dcmread(h.file, force=True)
            pixels = ds.pixel_array
        except Exception as exc:  # compressed data without a decoder, truncated pixel data, ...
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"DICOM series {uid} in {case}: {h.file}: cannot read its pixel data "
                            f"({type(exc).__name__}: {message[:200]})") from None
        if pixels.shape != (h.rows, h.columns):
            raise DataError(f"DICOM series {uid} in {case}: {h.file}: pixel data of shape {pixels.shape}, "
                            f"header says {h.rows}x{h.columns}")
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        if slope != 1.0 or intercept != 0.0 or pixels.dtype.kind not in "iu":
            integer = False
            pixels = pixels.astype(np.float64) * slope + intercept  # float64: exact for 16-bit values times slope
        arrays.append(pixels.T)  # (rows, columns) -> (columns, rows): x follows the row direction
    arr = np.stack(arrays, -1)
    arr = arr.astype(np.int64 if integer else np.float32, copy=False)
    first, last = slices[0], slices[-1]
    row_spacing, column_spacing = first.pixel_spacing  # PixelSpacing: between rows, then between columns
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(first.orientation[:3]) * column_spacing
    lps[:3, 1] = np.asarray(first.orientation[3:]) * row_spacing
    lps[:3, 2] = (np.asarray(last.position) - np.asarray(first.position)) / (len(slices) - 1)
    lps[:3, 3] = first.position
    meta = {"format": "dicom", "dtype": str(arr.dtype), "series": uid, "slices": len(slices),
            "skipped_files": [f"{f}: {reason}" for f, reason in skipped]}
    if first.description:
        meta["series_description"] = first.description
    return RawImage(arr, LPS_TO_RAS @ lps, integer, meta)
