"""The run folder's ledger: every finished trial, controller update and final re-training is
appended as one complete line, flushed and fsynced, and never rewritten.

Why: a search is hours of compute, and its record must survive any stop. Appending makes the
driver's cost per trial constant (a table rewritten per trial grows with the run) and means a
crash can damage at most the line being written: like SQLite's write-ahead log, a last line
without its newline is a torn write, dropped when read and cut off before the next append.

Every cell is kept on its line (``run_folder._cell`` folds line breaks into spaces), so one
record is one line and a torn record is always the last, unterminated one.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from controller.run_folder import FINAL_TRIALS, HISTORY, HISTORY_COLUMNS, TRIALS, disk_full_is_fatal
from controller.run_folder.cells import _cell

__all__ = ["Ledger", "append_row", "csv_line", "complete_text", "repair_tail", "read_rows"]

log = logging.getLogger(__name__)


def csv_line(columns: Sequence[str], row: Mapping[str, Any]) -> str:
    """One CSV record on one line (``\\n``-terminated) with the given columns."""
    buf = io.StringIO()
    csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n").writerow(
        {k: _cell(v) for k, v in row.items()}
    )
    return buf.getvalue()


def complete_text(text: str) -> tuple[str, str]:
    """(the complete lines, the torn tail): a ledger's text up to its last newline, and what
    a crash left after it (empty when the file ends cleanly)."""
    cut = text.rfind("\n") + 1
    return text[:cut], text[cut:]


def repair_tail(path: Path) -> int:
    """Cut a torn last line off ``path`` (before appending again); returns the bytes removed."""
    if not path.is_file():
        return 0
    size = path.stat().st_size
    with path.open("rb+") as f:
        keep = size
        step = 4096
        while keep > 0:  # find the last newline from the end
            start = max(0, keep - step)
            f.seek(start)
            chunk = f.read(keep - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            keep = start
        if keep < size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
            log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted write", path, size - keep)
    return size - keep


def append_row(path: Path, columns: Sequence[str], row: Mapping[str, Any]) -> None:
    """Append ``row`` to the ledger file ``path`` as one line (the header first when the file is
    new), on disk when this returns. Any append-only table uses this: the search's ledger files
    and ``results retrain``'s retrain_trials.csv."""
    folder = path.parent
    with disk_full_is_fatal(folder):
        folder.mkdir(parents=True, exist_ok=True)
        new = not path.is_file() or path.stat().st_size == 0
        text = (csv_line(columns, dict(zip(columns, columns))) if new else "") + csv_line(columns, row)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            data = text.encode("utf-8")
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)


class Ledger:
    """Appends to a run folder's trials.csv, controller_history.csv and final_trials.csv.

    ``trial_columns`` are trials.csv's columns (``run_folder.trial_columns`` plus one per
    site); a file's header is written when the file is created. A full disk raises
    ``run_folder.DiskFullError`` naming the folder; what was appended before stays intact.
    """

    def __init__(self, run_dir: str | os.PathLike[str], trial_columns: Sequence[str]) -> None:
        from controller.run_folder import FINAL_TRIAL_COLUMNS

        self.run_dir = Path(run_dir)
        self.columns = {
            TRIALS: list(trial_columns),
            HISTORY: list(HISTORY_COLUMNS),
            FINAL_TRIALS: list(FINAL_TRIAL_COLUMNS),
        }
        self._headers: dict[str, list[str]] = {}  # an existing file's own columns

    def repair(self) -> None:
        """Drop torn last lines (a crash mid-append) so the next append starts a new line."""
        for name in self.columns:
            repair_tail(self.run_dir / name)

    def append(self, name: str, row: Mapping[str, Any]) -> None:
        """Append ``row`` to the ledger file ``name`` as one line, on disk when this returns.
        An existing file keeps its own header: a folder written before a column existed is
        resumed with its columns (the new one left out), never with misaligned rows."""
        path = self.run_dir / name
        new = not path.is_file() or path.stat().st_size == 0
        append_row(path, self.columns[name] if new else self._header(name, path), row)

    def _header(self, name: str, path: Path) -> list[str]:
        """The columns of an existing ledger file (its first line), read once."""
        if name not in self._headers:
            with path.open(encoding="utf-8", newline="") as f:
                header = next(csv.reader(f), None)
            self._headers[name] = list(header) if header else self.columns[name]
            dropped = [c for c in self.columns[name] if c not in self._headers[name]]
            if dropped:
                log.info("%s was written without column(s) %s: appending without them", path, ", ".join(dropped))
        return self._headers[name]

    def trial(self, row: Mapping[str, Any]) -> None:
        self.append(TRIALS, row)

    def update(self, row: Mapping[str, Any]) -> None:
        self.append(HISTORY, row)

    def final(self, row: Mapping[str, Any]) -> None:
        self.append(FINAL_TRIALS, row)


def read_rows(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """A ledger file's complete rows (header -> cell), without a torn last line."""
    path = Path(path)
    if not path.is_file():
        return []
    text, torn = complete_text(path.read_text(encoding="utf-8", errors="replace"))
    if torn:
        log.warning("%s: a torn last line (an interrupted write) is ignored", path)
    return list(csv.DictReader(io.StringIO(text)))
