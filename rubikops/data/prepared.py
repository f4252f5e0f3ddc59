"""Preprocess a folder of scans once, in parallel and resumably, into a
folder of memory-mappable volumes that each training rank reads only its
share of.

``prepare("scans/", "prepared/", Preprocessing.mri(spacing=1.5), workers=8)``
writes, under ``prepared/``:

- ``volumes/<name>-<key>.npy``: one float32 (C, X, Y, Z) array per volume,
  exactly what ``load_volumes`` returns for that file and those settings
  (float32, not the bank's int16/uint8, so the bank quantises at load as it
  does for ``load_volumes`` and the two paths give the same bank); read back
  with ``np.load(..., mmap_mode="r")``.  ``<key>`` hashes the source content
  and the settings, so a changed file or changed settings get a new output.
- ``volumes/<name>-<key>.json``: that volume's manifest entry, written after
  the ``.npy``; a volume counts as done when both exist, so a killed job
  resumes where it stopped and a second run redoes only what changed.
- ``manifest.rank<r>.json``: what rank ``r`` of ``world`` did, skipped files
  included (rank ``r`` takes cases ``r, r + world, ...`` of the sorted
  list); ``manifest.json`` and ``report.json`` merge them once every rank's
  part is there (rank 0 after a barrier under torch.distributed, else
  whichever rank finishes last, else the next ``load_prepared``).

``--out`` must be a new or empty folder, or one prepare made: a folder holding other files is refused,
so no manifest.json or report.json of the user's is replaced.  A prepared folder is checked when read,
not trusted: each manifest entry's keys and types, a ``file`` inside the folder, each .npy's shape and
dtype; the bank then verifies each volume finite and its statistics those of the manifest.

Every file is written atomically (``atomic_path``), temporaries named after the writing process, so the
next run removes those a killed job left.  Worker processes end with the job.  Sources are only read.
Each source is hashed before and after it is processed; a file that changed
in between is reported and not stored.  Duplicates (same content as an
earlier file in the sorted list) keep the first and report the rest.
Outputs of files that changed or left are not deleted (the manifest no
longer lists them)."""
from __future__ import annotations

import concurrent.futures
import glob
import hashlib
import json
import multiprocessing
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np

from .bank import take_shard
from .cache import atomic_path, file_digest
from .dataset import load_case
from .formats import case_files, check_image_file, content_key, find_files, is_series
from .manifest_checks import check_entry, check_part
from .nifti import DataError, Volume
from .preprocess import Preprocessing

PREPARE_VERSION = 1  # bump when what an output holds changes
MANIFEST = "manifest.json"
REPORT = "report.json"
VOLUMES = "volumes"
SOURCES = "sources"  # per source: its size, mtime and content hash, so a resumed job need not reread it


@dataclass
class PrepareReport:
    out_dir: str
    rank: int = 0
    world: int = 1
    prepared: list = field(default_factory=list)   # sources processed in this run
    reused: list = field(default_factory=list)     # sources whose output was already there
    skipped: list = field(default_factory=list)    # {"file", "reason", "detail"}
    notes: list = field(default_factory=list)      # files a prepared case left out (DICOM localizers), with why
    stopped: bool = False                          # stop_after ended the run early
    manifest: Optional[str] = None                 # manifest.json, once every rank's part is there
    waiting: Optional[str] = None                  # without it: which ranks are missing or mismatched

    def summary(self) -> str:
        who = f"rank {self.rank} of {self.world}: " if self.world > 1 else ""
        s = (f"{who}{len(self.prepared)} volume(s) prepared, {len(self.reused)} already done, "
             f"{len(self.skipped)} skipped")
        if self.stopped:
            s += " (stopped early; run again to finish)"
        for item in self.skipped:
            s += f"\n  {item['file']}: {item['reason']}: {item['detail']}"
        if self.notes:
            s += "\nleft out of prepared cases:" + "".join(f"\n  {n}" for n in self.notes)
        s += f"\n{self.manifest or 'manifest.json not written yet: ' + (self.waiting or 'waiting for the other ranks')}"
        return s


def settings_key(settings: Preprocessing) -> str:
    return hashlib.blake2b(f"v{PREPARE_VERSION}|{settings.key()}".encode(), digest_size=8).hexdigest()


def _stat_key(paths: Sequence[str]) -> list:
    """Size and modification time of every file of the case (a DICOM series: each slice)."""
    return [[os.path.abspath(f), os.stat(f).st_size, os.stat(f).st_mtime_ns] for p in paths for f in case_files(p)]


def _hash_record(out_dir: str, paths: Sequence[str]) -> str:
    name = hashlib.blake2b("|".join(os.path.abspath(p) for p in paths).encode(), digest_size=12).hexdigest()
    return os.path.join(out_dir, SOURCES, name + ".json")


def known_source_hash(out_dir: str, paths: Sequence[str], stat: list) -> Optional[str]:
    """The content hash recorded for ``paths`` when their sizes and modification times (ns),
    ``stat``, are unchanged since: a resumed job over thousands of scans then rereads none of
    those already done (a file rewritten with the same size and mtime to the nanosecond is not
    noticed)."""
    record = _read_json(_hash_record(out_dir, paths))
    return record.get("source_hash") if record and record.get("stat") == stat else None


def _remember_hash(out_dir: str, paths: Sequence[str], stat: list, content: str) -> None:
    # not fsynced: losing the record in a crash only costs hashing the file again
    _write_json(_hash_record(out_dir, paths), {"stat": stat, "source_hash": content}, durable=False)


def source_hash(paths: Sequence[str]) -> str:
    if len(paths) == 1 and case_files(paths[0]) == [paths[0]]:
        return file_digest(paths[0])
    return hashlib.blake2b("|".join(content_key(p, file_digest) for p in paths).encode(), digest_size=16).hexdigest()


def _output_stem(paths: Sequence[str], content: str, skey: str) -> str:
    base = os.path.basename(paths[0])
    base = base[:-7] if base.lower().endswith(".nii.gz") else base if is_series(paths[0]) else os.path.splitext(base)[0]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)[:60]
    digest = hashlib.blake2b(f"{content}|{skey}".encode(), digest_size=8).hexdigest()
    return f"{base}-{digest}"


def _reason(message: str) -> str:
    """A short category for a DataError, for the report."""
    if "file is empty" in message:
        return "empty"
    if "-D image" in message:
        return "not 3-D"
    if "NaN or Inf" in message:
        return "NaN or Inf voxels"
    if "not a readable" in message or "truncated" in message or "not a NIfTI" in message or "no reader" in message:
        return "unreadable"
    return "unusable"


def _write_json(path: str, obj, durable: bool = True) -> None:
    with atomic_path(path, durable, _temporary_prefix()) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _volume_entry(vol: Volume, npy_name: str, content: str, skey: str) -> dict:
    data = vol.data.astype(np.float64)  # float64 sums: float32 loses digits over 10^7 voxels
    return {"file": f"{VOLUMES}/{npy_name}", "shape": list(vol.data.shape), "dtype": str(vol.data.dtype),
            "spacing": list(vol.spacing), "affine": vol.affine.tolist(), "meta": vol.meta,
            "stats": {"min": float(data.min()), "max": float(data.max()), "mean": float(data.mean()),
                      "std": float(data.std())},
            "source_hash": content, "settings_key": skey}


def _done_entry(out_dir: str, stem: str, content: str, skey: str) -> Optional[dict]:
    entry = _read_json(os.path.join(out_dir, VOLUMES, stem + ".json"))
    if not entry or entry.get("source_hash") != content or entry.get("settings_key") != skey:
        return None
    npy = os.path.join(out_dir, entry["file"])
    return entry if os.path.isfile(npy) and os.path.getsize(npy) > 0 else None


def prepare_case(index: int, paths: tuple, settings: Preprocessing, out_dir: str) -> dict:
    """Hash, reuse or preprocess and store one case (one worker's job).
    Returns {"index", "sources", "status": prepared|reused|skipped, ...}."""
    result = {"index": index, "sources": [os.path.abspath(p) for p in paths]}
    skey = settings_key(settings)
    try:
        for p in paths:  # an empty or misnamed file is reported as such, not hashed
            check_image_file(p)
        stat_before = _stat_key(paths)
        content = known_source_hash(out_dir, paths, stat_before)
        if content is None:
            content = source_hash(paths)
    except DataError as exc:
        return dict(result, status="skipped", reason=_reason(str(exc)), detail=str(exc))
    except OSError as exc:
        return dict(result, status="skipped", reason="unreadable", detail=f"{paths[0]}: {exc}")
    result["source_hash"] = content
    stem = _output_stem(paths, content, skey)
    entry = _done_entry(out_dir, stem, content, skey)
    if entry is not None:
        _remember_hash(out_dir, paths, stat_before, content)
        return dict(result, status="reused", entry=entry)
    try:
        vol = load_case(paths, settings, cache=None)
    except DataError as exc:
        return dict(result, status="skipped", reason=_reason(str(exc)), detail=str(exc))
    except MemoryError:
        return dict(result, status="skipped", reason="too large",
                    detail=f"{paths[0]}: preprocessing it needs more memory than this machine has")
    try:
        after = source_hash(paths)
    except OSError as exc:
        after = f"unreadable ({exc})"
    if after != content:
        return dict(result, status="skipped", reason="changed during the job",
                    detail=f"{paths[0]}: content changed while it was processed; run again to include it")
    entry = _volume_entry(vol, stem + ".npy", content, skey)
    with atomic_path(os.path.join(out_dir, VOLUMES, stem + ".npy"), prefix=_temporary_prefix()) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(vol.data))
    _write_json(os.path.join(out_dir, VOLUMES, stem + ".json"), entry)  # marks the volume done
    _remember_hash(out_dir, paths, stat_before, content)
    return dict(result, status="prepared", entry=entry)


def _prepare_case_job(args) -> dict:
    return prepare_case(*args)


# how often a worker checks that the job that started it is still there: a killed job's workers end within this
PARENT_POLL_S = 0.5


def _end_with_parent(parent: int) -> None:
    """Worker initializer: end this worker once ``parent`` (the job) has ended.  A SIGKILLed job cannot
    stop its workers, and a worker busy with a large file would otherwise finish it, and the next ones
    queued, with no one to collect the results."""
    def watch():
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(1)
    threading.Thread(target=watch, name="rubikops-prepare-parent-watch", daemon=True).start()


def rank_slice(cases: Sequence, rank: int, world: int) -> list:
    """(global index, case) pairs of this rank: cases rank, rank + world, ..."""
    return [(i, cases[i]) for i in range(rank, len(cases), world)]


def _check_args(out_dir: str, workers: int, rank: int, world: int) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(f"--workers must be at least 1 (an int), got {workers!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) for v in (rank, world)) or world < 1 or not 0 <= rank < world:
        raise DataError(f"--rank {rank!r} --world {world!r}: need ints with 0 <= rank < world")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DataError(f"{out_dir}: --out is a file, expected a folder")
    check_out_folder(out_dir)


_OWN_ENTRIES = re.compile(r"(volumes|sources|manifest\.json|report\.json|manifest\.rank\d+\.json|\.tmp-.*)")


def check_out_folder(out_dir: str) -> None:
    """Refuse (DataError) an existing ``out_dir`` that is neither empty nor a prepared folder: prepare
    writes manifest.json and report.json there, and must not replace files it did not write."""
    try:
        entries = os.listdir(out_dir)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DataError(f"{out_dir}: cannot read the --out folder ({exc.strerror or exc})") from None
    foreign = sorted(e for e in entries if not _OWN_ENTRIES.fullmatch(e))
    for name, keys in ((MANIFEST, ("version", "settings_key", "volumes")), (REPORT, ("cases", "volumes", "skipped"))):
        if name in entries:
            content = _read_json(os.path.join(out_dir, name))
            if not isinstance(content, dict) or not set(keys) <= set(content):
                foreign.append(name)
    if foreign:
        raise DataError(f"{out_dir}: --out holds files prepare did not write ({', '.join(foreign[:5])}"
                        f"{', ...' if len(foreign) > 5 else ''}); choose an empty or new folder (nothing was "
                        "changed)")


# a write of another host's job, whose process cannot be asked after, counts as abandoned when its temporary
# has not changed for this long (an atomic write renames its temporary within seconds of creating it)
STALE_TEMPORARY_S = 3600.0
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40]
_TAGGED = re.compile(r"\.tmp-(\d+)@([A-Za-z0-9_]+)-")


def _temporary_prefix() -> str:
    """Prefix of this process's temporaries: its pid and host, so a later run can tell whether the writer lives."""
    return f".tmp-{os.getpid()}@{_HOST}-"


def _writer_gone(name: str, mtime: float) -> bool:
    tag = _TAGGED.match(name)
    if tag is not None and tag.group(2) == _HOST:
        try:
            os.kill(int(tag.group(1)), 0)
        except ProcessLookupError:
            return True
        except OSError:  # alive, under another user
            return False
        return int(tag.group(1)) != os.getpid() and time.time() - mtime > STALE_TEMPORARY_S
    return time.time() - mtime > STALE_TEMPORARY_S


def remove_stale_temporaries(out_dir: str) -> int:
    """Delete the ``.tmp-*`` files a killed job left in ``out_dir``, volumes/ and sources/ (``atomic_path``
    deletes its temporary on any exception, but not on SIGKILL): those whose writer on this host has
    ended, and any not modified for STALE_TEMPORARY_S.  Another rank's write in progress is kept."""
    removed = 0
    for folder in (out_dir, os.path.join(out_dir, VOLUMES), os.path.join(out_dir, SOURCES)):
        for path in glob.glob(os.path.join(folder, ".tmp-*")):
            try:
                if _writer_gone(os.path.basename(path), os.stat(path).st_mtime):
                    os.unlink(path)
                    removed += 1
            except OSError:  # another rank removed or renamed it first
                pass
    return removed


def prepare(files_or_spec: Union[str, Sequence], out_dir: str, settings: Preprocessing = Preprocessing(),
            workers: int = 1, rank: int = 0, world: int = 1, progress: bool = True,
            stop_after: Optional[int] = None) -> PrepareReport:
    """Preprocess this rank's share of ``files_or_spec`` (a folder, glob, file
    or list, as ``load_volumes`` takes) into ``out_dir`` with ``workers``
    processes (1: in this process).  ``stop_after``: return after that many
    newly prepared volumes without writing this rank's manifest part (tests
    use it to stand for a killed job)."""
    out_dir = os.fspath(out_dir)
    _check_args(out_dir, workers, rank, world)
    cases = find_files(files_or_spec)
    mine = rank_slice(cases, rank, world)
    os.makedirs(os.path.join(out_dir, VOLUMES), exist_ok=True)
    os.makedirs(os.path.join(out_dir, SOURCES), exist_ok=True)
    remove_stale_temporaries(out_dir)
    report = PrepareReport(out_dir, rank, world)
    results = []
    jobs = [(i, (c,) if isinstance(c, str) else tuple(c), settings, out_dir) for i, c in mine]
    bar = _progress_bar(len(jobs), progress, f"preparing (rank {rank})" if world > 1 else "preparing")
    if workers == 1:
        for job in jobs:
            results.append(_prepare_case_job(job))
            bar.update(1)
            if _reached(results, stop_after):
                break
    else:
        # spawn, not fork: a forked child of a process that has started torch's
        # thread pools can deadlock
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=_end_with_parent, initargs=(os.getpid(),)) as ex:
            futures = [ex.submit(_prepare_case_job, job) for job in jobs]
            for fut in concurrent.futures.as_completed(futures):
                results.append(fut.result())
                bar.update(1)
                if _reached(results, stop_after):
                    for f in futures:
                        f.cancel()
                    break
    bar.close()
    first = {}  # duplicates within this rank; merge_manifest finds those across ranks
    for r in sorted(results, key=lambda r: r["index"]):
        name = r["sources"][0]
        if r["status"] == "skipped":
            report.skipped.append({"file": name, "reason": r["reason"], "detail": r["detail"]})
        elif r["source_hash"] in first:
            report.skipped.append(_duplicate(name, first[r["source_hash"]]))
        else:
            first[r["source_hash"]] = name
            (report.prepared if r["status"] == "prepared" else report.reused).append(name)
            report.notes += r["entry"]["meta"].get("skipped_files", [])
    if _reached(results, stop_after):
        report.stopped = True
        return report
    part = {"version": PREPARE_VERSION, "rank": rank, "world": world, "cases": len(cases),
            "settings": json.loads(settings.key()), "settings_key": settings_key(settings),
            "results": sorted(results, key=lambda r: r["index"])}
    _write_json(os.path.join(out_dir, f"manifest.rank{rank}.json"), part)
    report.manifest = _merge_after_all_ranks(out_dir, world)
    if report.manifest is None:
        report.waiting = pending_ranks(out_dir)
    return report


def _duplicate(name: str, kept: str) -> dict:
    return {"file": name, "reason": "duplicate", "detail": f"{name}: same content as {kept}, which is kept"}


def _reached(results: list, stop_after: Optional[int]) -> bool:
    return stop_after is not None and sum(r["status"] == "prepared" for r in results) >= stop_after


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress_bar(total: int, progress: bool, desc: str):
    if not progress:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=desc, unit="vol")


def _merge_after_all_ranks(out_dir: str, world: int) -> Optional[str]:
    try:
        import torch.distributed as td
        distributed = td.is_available() and td.is_initialized()
    except ImportError:
        distributed = False
    if distributed and td.get_world_size() == world:
        td.barrier()
        try:
            path = merge_manifest(out_dir) if td.get_rank() == 0 else None
        finally:
            td.barrier()  # every rank reaches it, so an error on rank 0 leaves none waiting
        path = os.path.join(out_dir, MANIFEST)
        if not os.path.isfile(path):  # every rank has finished: what is missing will never come
            raise DataError(f"{out_dir}: the ranks' parts do not merge: {pending_ranks(out_dir)}")
        return path
    return merge_manifest(out_dir)


def _parts(out_dir: str) -> list:
    """(modification time, part) of every rank's part in ``out_dir``, each checked."""
    found = []
    for path in glob.glob(os.path.join(out_dir, "manifest.rank*.json")):
        found.append((os.path.getmtime(path), check_part(path, _read_json(path))))
    return found


def pending_ranks(out_dir: str) -> Optional[str]:
    """Why the newest job's parts cannot be merged, in words: ranks prepared with other settings or
    another world size (they will never merge with it), and ranks with no part yet; None when nothing
    is missing."""
    found = _parts(out_dir)
    if not found:
        return None
    newest = max(found, key=lambda t: t[0])[1]
    job = (newest["world"], newest["cases"], newest["settings_key"])
    have = {p["rank"] for _, p in found if (p["world"], p["cases"], p["settings_key"]) == job}
    other = sorted({p["rank"] for _, p in found if (p["world"], p["cases"], p["settings_key"]) != job} - have)
    missing = [r for r in range(job[0]) if r not in have and r not in other]
    words = []
    if other:
        words.append(f"rank(s) {', '.join(map(str, other))} were prepared with other settings, world size or file "
                     f"list than rank {newest['rank']} (world {job[0]}, {job[1]} files, settings "
                     f"{newest['settings']}); run every rank with the same settings")
    if missing:
        words.append(f"rank(s) {', '.join(map(str, missing))} of {job[0]} have not finished")
    return "; ".join(words) or None


def merge_manifest(out_dir: str) -> Optional[str]:
    """Merge the ranks' parts into manifest.json and report.json when every
    part of the latest job is there (same world, case count and settings);
    None when some are missing.  Duplicates across ranks are dropped here:
    the first in the sorted file list stays.  A part that is not what
    prepare writes is a DataError naming it."""
    found = _parts(out_dir)
    if not found:
        return None
    # the latest part defines the job; parts of an earlier job with another world or settings are ignored
    newest = max(found, key=lambda t: t[0])[1]
    parts = [p for _, p in found]
    job = (newest["world"], newest["cases"], newest["settings_key"])
    parts = {p["rank"]: p for p in parts if (p["world"], p["cases"], p["settings_key"]) == job}
    if len(parts) < job[0]:
        return None
    results = sorted((r for p in parts.values() for r in p["results"]), key=lambda r: r["index"])
    volumes, skipped, first = [], [], {}
    for r in results:
        name = r["sources"][0]
        if r["status"] == "skipped":
            skipped.append({"file": name, "reason": r["reason"], "detail": r["detail"]})
        elif r["source_hash"] in first:
            skipped.append(_duplicate(name, first[r["source_hash"]]))
        else:
            first[r["source_hash"]] = name
            volumes.append(dict(r["entry"], sources=r["sources"]))
    settings = newest["settings"]
    _write_json(os.path.join(out_dir, REPORT), {"cases": job[1], "volumes": len(volumes), "skipped": skipped})
    path = os.path.join(out_dir, MANIFEST)
    _write_json(path, {"version": PREPARE_VERSION, "settings": settings, "settings_key": job[2],
                       "volumes": volumes})
    return path


def settings_differences(settings: dict, wanted: Preprocessing) -> list:
    """(name, the folder's value, the wanted value) for each setting that decides what a volume looks
    like (spacing, intensity, foreground crop; the window when windowing) in which a prepared folder's
    manifest ``settings`` differ from ``wanted``.  JSON keeps tuples as lists: compared as lists."""
    ours = json.loads(wanted.key())
    keys = ["spacing", "intensity", "crop_foreground"] + (["window"] if ours["intensity"] == "window" else [])
    return [(k, settings[k], ours[k]) for k in keys if k in settings and settings[k] != ours[k]]


def read_manifest(out_dir: str) -> dict:
    """manifest.json of a prepared folder, merging the ranks' parts first if
    that has not happened yet, every entry checked; a DataError naming the
    folder or file otherwise."""
    out_dir = os.fspath(out_dir)
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.isfile(path) and merge_manifest(out_dir) is None:
        if not os.path.isdir(out_dir):
            raise DataError(f"{out_dir}: no such folder (make it with python -m rubikops.data prepare)")
        why = pending_ranks(out_dir)
        if why is not None:
            raise DataError(f"{out_dir}: no {MANIFEST} yet: {why}")
        raise DataError(f"{out_dir}: no {MANIFEST} (not a prepared folder)")
    manifest = _read_json(path)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("volumes"), list):
        raise DataError(f"{path}: not a readable manifest (a JSON object with a 'volumes' list)")
    if not manifest["volumes"]:
        raise DataError(f"{path}: lists no volumes (see {REPORT} for why)")
    for i, e in enumerate(manifest["volumes"]):
        check_entry(out_dir, f"{path}: volumes[{i}]", e)
    return manifest


def open_volume(path: str) -> np.ndarray:
    """A read-only memory map of one prepared volume: pages are read when
    the bank copies them, so host memory holds one volume at a time."""
    return np.load(path, mmap_mode="r")


def load_prepared(out_dir: str, shard: Optional[tuple] = None,
                  volumes: Optional[Sequence[int]] = None) -> list:
    """The prepared volumes as :class:`Volume` s over memory maps.
    ``volumes``: manifest indices to consider (default all); ``shard=(rank,
    world)`` then keeps rank, rank + world, ... of them, the rule
    ``VolumeBank(shard=...)`` applies, and opens only those files."""
    out_dir = os.fspath(out_dir)
    entries = read_manifest(out_dir)["volumes"]
    picked = range(len(entries)) if volumes is None else list(volumes)
    bad = [i for i in picked if not isinstance(i, (int, np.integer)) or isinstance(i, bool)
           or not 0 <= i < len(entries)]
    if bad:
        raise DataError(f"load_prepared({out_dir}): volumes {bad[:5]} are not indices of its {len(entries)} volumes")
    chosen = [entries[i] for i in picked]
    if shard is not None:
        chosen = take_shard(chosen, shard, f"load_prepared({out_dir})")
    out = []
    for e in chosen:
        path = os.path.join(out_dir, e["file"])
        try:
            data = open_volume(path)
        except (OSError, ValueError, EOFError) as exc:  # a zero-byte file is an EOFError
            raise DataError(f"{path}: cannot read prepared volume ({type(exc).__name__}: {exc})") from None
        if list(data.shape) != e["shape"]:
            raise DataError(f"{path}: shape {data.shape} does not match the manifest's {tuple(e['shape'])}")
        if str(data.dtype) != e["dtype"]:  # what the bank reads must be what prepare wrote (float32)
            raise DataError(f"{path}: dtype {data.dtype} does not match the manifest's {e['dtype']}")
        # the bank trusts these statistics while the volume's data is still this file's memory map
        meta = dict(e["meta"], stats=dict(e["stats"], file=os.path.abspath(path)))
        out.append(Volume(data, np.asarray(e["affine"], dtype=np.float64), tuple(e["sources"]), meta))
    return out
