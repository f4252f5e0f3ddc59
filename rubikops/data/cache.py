"""An on-disk cache of preprocessed volumes, keyed by the files' content and
the preprocessing settings, so a second run starts in seconds.

Every write goes to a temporary file in the same folder and is renamed into
place (``os.replace`` is atomic on POSIX), so an interrupted run leaves at most
a stray ``.tmp-*`` file, never a half-written entry; a corrupt entry (e.g. a
disk that filled up) is detected on read, reported, and rebuilt."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from typing import Callable, Optional, Sequence

import numpy as np

from .formats import content_key
from .nifti import Volume

CACHE_VERSION = 1  # bump when preprocessing code changes what it produces


def default_cache_dir() -> str:
    return os.environ.get("RUBIKOPS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "rubikops")


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it
    (/proc/self/status); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: str) -> int:
    """The mode ``open(path, "w")`` would leave: an existing file keeps its
    own, a new one gets 0o666 less the umask (0o644 under umask 022)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str, durable: bool = True, prefix: str = ".tmp-"):
    """Yield a temporary path next to ``path`` (same suffix, so writers that
    look at the extension behave); rename it onto ``path`` on success, delete
    it on failure.  The file ends with the mode a plain write would give it,
    not mkstemp's owner-only 0o600.  ``durable=False`` skips the fsync, for
    records whose loss in a crash only costs recomputing them (readers still
    never see a partial file).  ``prefix``: the temporary's name starts with it (``.tmp-`` and more)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix="-" + os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        os.chmod(tmp, _new_file_mode(path))
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def file_digest(path: str, chunk: int = 1 << 20) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


class PreprocessCache:
    """``cache.get(paths, settings_key, build)``: the cached Volume for these
    files and settings, or ``build()``'s result, stored atomically."""

    def __init__(self, folder: Optional[str] = None):
        self.folder = os.fspath(folder) if folder is not None else default_cache_dir()
        self.hits = self.misses = 0

    def key(self, paths: Sequence[str], settings_key: str) -> str:
        h = hashlib.blake2b(digest_size=20)
        h.update(f"v{CACHE_VERSION}|{settings_key}".encode())
        for p in paths:  # the suffix too (nibabel reads .nii and .nii.gz differently); a series: every slice
            h.update(f"|{content_key(os.fspath(p), file_digest)}".encode())
        return h.hexdigest()

    def path(self, key: str) -> str:
        return os.path.join(self.folder, key + ".npz")

    def load(self, key: str, paths: Sequence[str]) -> Optional[Volume]:
        """The entry for ``key``, named after ``paths``: the key is the
        content, so identical files share one entry that each reports as its own."""
        path = self.path(key)
        if not os.path.exists(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                meta.pop("paths", None)
                return Volume(z["data"], z["affine"], tuple(os.fspath(p) for p in paths), meta)
        except Exception as exc:
            warnings.warn(f"rubikops cache: entry {path} is corrupt ({type(exc).__name__}); rebuilding it")
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None

    def store(self, key: str, vol: Volume) -> None:
        meta = dict(vol.meta)
        with atomic_path(self.path(key)) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, data=vol.data, affine=vol.affine, meta=np.array(json.dumps(meta)))

    def get(self, paths: Sequence[str], settings_key: str, build: Callable[[], Volume]) -> Volume:
        key = self.key(paths, settings_key)
        vol = self.load(key, paths)
        if vol is not None:
            self.hits += 1
            return vol
        self.misses += 1
        vol = build()
        self.store(key, vol)
        return vol
