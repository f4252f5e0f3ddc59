"""What the experiment scripts share for their reports: the sections they own
in markdown files, and mean +- sd over seeds."""
from __future__ import annotations

import math
import os

from common import write_text


def write_doc_section(path: str, name: str, text: str) -> None:
    """Replace the text between ``<!-- name:start -->`` and ``<!-- name:end -->`` in a
    markdown file (appended with its markers when absent), so each script that
    writes into a document owns one section and leaves the prose around it."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    old = open(path).read() if os.path.exists(path) else ""
    block = f"{start}\n{text.strip()}\n{end}"
    if start in old and end in old.split(start, 1)[1]:
        before, rest = old.split(start, 1)
        new = before + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block + "\n"
    write_text(path, new)


def mean_sd(values) -> tuple:
    """Mean and sample sd (0 for one value) of the finite values; (nan, nan) for none."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return mean, sd
