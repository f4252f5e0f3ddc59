"""Load a folder (or glob, or list) of cases in any format (rubikops/data/formats.py),
preprocessed and cached."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from .cache import PreprocessCache
from .formats import check_image_file, find_files, load_image
from .nifti import DataError, Volume
from .preprocess import Preprocessing, preprocess


@dataclass
class LoadReport:
    volumes: list
    skipped: list = field(default_factory=list)  # (case, reason)
    notes: list = field(default_factory=list)    # (case, note): files a loaded case left out (DICOM localizers)
    cache_hits: int = 0
    cache_misses: int = 0

    def summary(self) -> str:
        s = f"{len(self.volumes)} volumes loaded ({self.cache_hits} from cache)"
        if self.skipped:
            # the reason names its file already (DataError messages start with it): the path once
            s += f", {len(self.skipped)} skipped:\n" + "\n".join(
                f"  {r}" if str(c) in r else f"  {c}: {r}" for c, r in self.skipped)
        if self.notes:
            s += "\nleft out of loaded cases:\n" + "\n".join(f"  {n}" for _, n in self.notes)
        return s


def load_case(case, settings: Preprocessing = Preprocessing(), cache: Optional[PreprocessCache] = None,
              min_shape_for: Optional[Sequence[int]] = None) -> Volume:
    paths = (case,) if isinstance(case, str) else tuple(case)

    def build():
        vol = load_image(paths, frames=settings.frames, allow_nonfinite=settings.allow_nonfinite)
        return preprocess(vol, settings)

    for p in paths:  # before the cache: a file the reader refuses is refused when its content is cached too
        check_image_file(p)
    vol = cache.get(paths, settings.key(), build) if cache is not None else build()
    if min_shape_for is not None and any(n < m for n, m in zip(vol.shape, min_shape_for)):
        raise DataError(f"{paths[0]}: preprocessed shape {vol.shape} is smaller than the {tuple(min_shape_for)} "
                        "the puzzle needs (use a smaller cube_size or gap, or Preprocessing(min_shape=...) to pad)")
    return vol


def load_volumes(spec: Union[str, Sequence], settings: Preprocessing = Preprocessing(), *,
                 cache: Union[bool, str, PreprocessCache] = True, skip_bad: bool = False,
                 min_shape: Optional[Sequence[int]] = None, progress: bool = False) -> LoadReport:
    """Load every case in ``spec`` (folder, glob, file, or list; a tuple in
    the list is one multi-channel case).  A bad file raises a DataError naming
    it, unless ``skip_bad``: then the good ones load and the report lists what
    was skipped and why.  ``min_shape``: refuse volumes smaller than this."""
    cases = find_files(spec)
    if cache is True:
        cache = PreprocessCache()
    elif isinstance(cache, str):
        cache = PreprocessCache(cache)
    elif cache is False:
        cache = None
    report = LoadReport([])
    it = cases
    if progress:
        try:
            from tqdm import tqdm
            it = tqdm(cases, desc="loading", unit="vol")
        except ImportError:
            pass
    for case in it:
        try:
            report.volumes.append(load_case(case, settings, cache, min_shape))
            report.notes += [(case, note) for note in report.volumes[-1].meta.get("skipped_files", [])]
        except DataError as exc:
            if not skip_bad:
                exc.case = case  # a caller can offer to skip it (pretrain.py: --skip-bad)
                raise
            report.skipped.append((case, str(exc)))
    if not report.volumes:
        raise DataError(f"{spec}: no usable volumes" + (" (all skipped:\n" + "\n".join(
            f"  {r}" for _, r in report.skipped) + ")" if report.skipped else ""))
    if cache is not None:
        report.cache_hits, report.cache_misses = cache.hits, cache.misses
    return report
