"""Values in and out of CSV cells: never a silently wrong number, one record per line.

A cell that is not a number reads as NaN; a missing number is written as an empty cell (JSON:
null), and line breaks are folded so that a torn write is always the last, unterminated line.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any


def as_float(value: Any) -> float:
    """A number from a cell or a reported value; NaN for anything that is not one."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def finite_or_none(value: Any) -> float | None:
    """A finite number, or None (JSON has no NaN: a missing number is null)."""
    v = as_float(value)
    return v if math.isfinite(v) else None


def mean_se_text(mean: Any, se: Any) -> str:
    """``0.8125 +- 0.0100``; the mean alone where there is no standard error (one seed): never
    ``+- nan``."""
    m, s = as_float(mean), as_float(se)
    return f"{m:.4f} +- {s:.4f}" if math.isfinite(s) else f"{m:.4f}"


# ------------------------------------------------------------------------- writing
def csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text with a header; None and non-finite floats become empty cells, bools 0/1."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buf.getvalue()


def _cell(value: Any) -> Any:
    """A CSV cell: None and non-finite floats empty, bools 0/1, line breaks folded to spaces
    (one record is one line, so a torn write is always the last, unterminated line)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and ("\n" in value or "\r" in value):
        return " ".join(value.splitlines())
    return value
