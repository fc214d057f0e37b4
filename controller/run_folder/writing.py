"""Writing the run folder's small files, and the full disk that stops a search.

``run_state.json`` (what a user or ``--resume`` needs to know now), JSON read back, and
`disk_full_is_fatal`, which turns ENOSPC/EDQUOT into one `DiskFullError` naming the folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from controller import run_folder as rf
from search_space.files import atomic_write_text


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_run_state(
    run_dir: str | os.PathLike[str], status: str, num_samples: int, completed: int, **extra: Any
) -> None:
    """run_state.json: what a user (or ``--resume``) needs to know about the run right now."""
    state = {
        "status": status,
        "updated_at": now_iso(),
        "num_samples": int(num_samples),
        "completed": int(completed),
        **extra,
    }
    atomic_write_text(Path(run_dir) / rf.RUN_STATE, json.dumps(state, indent=2) + "\n")


class DiskFullError(OSError):
    """The run folder's disk is full: what was written before is intact, the rest must wait."""


@contextlib.contextmanager
def disk_full_is_fatal(path: Path) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT into DiskFullError naming the folder (callers stop the search)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                exc.errno, f"disk full while writing the run folder {path}; free space, then resume with --resume"
            ) from exc
        raise
