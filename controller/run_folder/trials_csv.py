"""Reading trials.csv back as a table, dropping (with a warning) the rows a crash damaged.

Only pandas and the standard library: ``results`` reads run folders without torch.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller import run_folder as rf
from controller.run_folder.cells import as_float
from controller.run_folder.columns import trial_columns
from search_space.errors import user_error

if TYPE_CHECKING:
    from controller.run_folder.objective import Objective

log = logging.getLogger("controller.run_folder")  # the package's voice, as before this module split off

NUMERIC_TRIAL_COLUMNS = ("order", "reward", "seconds", "epochs", "update")


def read_trials(path: str | os.PathLike[str], objective: Objective) -> "Any":
    """trials.csv as a pandas DataFrame, never with a silently wrong number.

    A row whose required cells are missing (a file cut mid-row by a crash or a full disk) or
    whose status is unknown is dropped with a warning naming the row; a missing or empty file
    is an empty table.
    """
    import pandas as pd

    path = Path(path)
    columns = trial_columns(objective)
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=columns)
    from controller.run_folder.ledger import complete_text

    text, torn = complete_text(path.read_text(encoding="utf-8", errors="replace"))
    if torn:
        log.warning("%s: a torn last line (an interrupted write) is ignored", path)
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None) or []
        missing = [c for c in ("trial_id", "status", objective.metric, "plan_json") if c not in header]
        if missing:
            raise user_error(
                str(path),
                detail=f"column(s) {', '.join(missing)} missing",
                allowed=f"a trials.csv written by a search with metric {objective.metric!r}",
            )
        rows = []
        seen: set[str] = set()
        for line_no, cells in enumerate(reader, start=2):
            row = dict(zip(header, cells))
            problem = _row_problem(row, len(cells), len(header), objective)
            if not problem and row["trial_id"] in seen:
                problem = f"trial {row['trial_id']} is already recorded (a duplicated row)"
            if problem:
                log.warning("%s line %d dropped: %s", path, line_no, problem)
                continue
            seen.add(row["trial_id"])
            rows.append(row)
    df = pd.DataFrame(rows, columns=header)
    for col in (objective.metric, objective.se_column, objective.best_column, *NUMERIC_TRIAL_COLUMNS):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def _row_problem(row: Mapping[str, str], n_cells: int, n_columns: int, objective: Objective) -> str:
    if n_cells != n_columns:
        return f"{n_cells} cells for {n_columns} columns (a truncated or damaged row)"
    if row.get("status") not in rf.STATUSES:
        return f"status: bad value {row.get('status')!r}; allowed: {', '.join(rf.STATUSES)}"
    if not row.get("trial_id"):
        return "trial_id: empty"
    try:
        json.loads(row.get("plan_json") or "")
    except (ValueError, RecursionError):
        return "plan_json: not a complete JSON plan"
    if row["status"] == rf.OK and not math.isfinite(as_float(row.get(objective.metric))):
        return f"{objective.metric}: bad value {row.get(objective.metric)!r} for an ok trial"
    return ""
