"""Scans in (NIfTI, NRRD, MetaImage, DICOM series), a device-resident volume bank out.

``load_volumes(folder, Preprocessing.mri(spacing=1.5))`` reads, reorients,
resamples, normalises and caches a folder of scans; ``VolumeBank(volumes,
device="cuda", dtype="int16")`` packs them into one allocation that
``bank.puzzles(puzzle, batch)`` cuts puzzles from with one kernel launch.
``python -m rubikops.data info PATH`` describes a folder."""
from .bank import VolumeBank  # noqa: F401
from .streaming import StreamingBank, bank_bytes, make_bank, parse_size  # noqa: F401
from .cache import PreprocessCache, atomic_path, default_cache_dir  # noqa: F401
from .dataset import LoadReport, load_case, load_volumes  # noqa: F401
from .formats import READERS, case_files, find_files, format_of, load_image  # noqa: F401
from .nifti import DataError, Volume, load_nifti  # noqa: F401
from .prepared import PrepareReport, load_prepared, prepare, read_manifest, settings_differences  # noqa: F401
from .preprocess import (  # noqa: F401
    Preprocessing,
    crop,
    foreground_box,
    pad_to,
    preprocess,
    reorient,
    resample,
    resample_to,
)
