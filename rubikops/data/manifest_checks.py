"""What a prepared folder's manifest files must hold (rubikops/data/prepared.py writes them): checked when
read, so a hand-edited or damaged file is a DataError naming it, never a KeyError or a read outside the
folder."""
from __future__ import annotations

import os

import numpy as np

from .nifti import DataError


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_part(path: str, part) -> dict:
    """A rank's manifest part as prepare writes it; a DataError naming the file otherwise."""
    if not isinstance(part, dict):
        raise DataError(f"{path}: not a readable manifest part (JSON object expected); delete it and run that rank "
                        "again")
    for key, ok in (("rank", is_int), ("world", is_int), ("cases", is_int),
                    ("settings_key", lambda v: isinstance(v, str)), ("settings", lambda v: isinstance(v, dict)),
                    ("results", lambda v: isinstance(v, list))):
        if not ok(part.get(key)):
            raise DataError(f"{path}: {key!r} is missing or of the wrong type ({part.get(key)!r}); delete the file "
                            "and run that rank again")
    if not 0 <= part["rank"] < part["world"]:
        raise DataError(f"{path}: rank {part['rank']} is not within world {part['world']}")
    for i, r in enumerate(part["results"]):
        skipped = isinstance(r, dict) and r.get("status") == "skipped"
        need = ("reason", "detail") if skipped else ("source_hash", "entry")
        if (not isinstance(r, dict) or not is_int(r.get("index"))
                or r.get("status") not in ("prepared", "reused", "skipped")
                or not isinstance(r.get("sources"), list) or not r["sources"]
                or not all(isinstance(x, str) for x in r["sources"]) or any(k not in r for k in need)):
            raise DataError(f"{path}: results[{i}] is not a result prepare writes; delete the file and run that rank "
                            "again")
    return part


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def check_entry(out_dir: str, where: str, e) -> None:
    """One manifest volume entry as prepare writes it (types, a 4-D shape, a 4x4 finite affine, finite
    statistics, a ``file`` inside ``out_dir``); a DataError naming ``where`` otherwise."""
    if not isinstance(e, dict):
        raise DataError(f"{where}: not a JSON object")
    for key, kind in (("file", str), ("shape", list), ("dtype", str), ("affine", list), ("meta", dict),
                      ("stats", dict), ("sources", list)):
        if not isinstance(e.get(key), kind):
            raise DataError(f"{where}: {key!r} is missing or not a {kind.__name__} (got {e.get(key)!r})")
    if len(e["shape"]) != 4 or not all(is_int(n) and n >= 1 for n in e["shape"]):
        raise DataError(f"{where}: shape must be 4 positive ints (C, X, Y, Z), got {e['shape']!r}")
    if e["dtype"] != "float32":
        raise DataError(f"{where}: dtype {e['dtype']!r}; prepare writes float32 volumes")
    affine = e["affine"]
    if len(affine) != 4 or not all(isinstance(r, list) and len(r) == 4 and all(map(_number, r)) for r in affine):
        raise DataError(f"{where}: affine must be 4 rows of 4 finite numbers")
    if not all(_number(e["stats"].get(k)) for k in ("min", "max", "mean", "std")) or e["stats"]["std"] < 0:
        raise DataError(f"{where}: stats must hold finite min, max, mean and std >= 0, got {e['stats']!r}")
    if not e["sources"] or not all(isinstance(x, str) for x in e["sources"]):
        raise DataError(f"{where}: sources must list the source file(s)")
    root = os.path.realpath(out_dir)
    target = os.path.realpath(os.path.join(out_dir, e["file"]))
    if os.path.isabs(e["file"]) or os.path.commonpath([root, target]) != root:
        raise DataError(f"{where}: file {e['file']!r} points outside the prepared folder {out_dir}; refused")
