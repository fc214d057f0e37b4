"""Atomic text writes: every file a search or a user keeps (plans, trial tables, controller
history) is written to a temp file in the same folder and renamed over the target, so a
reader or a crash never sees half a file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = False) -> Path:
    """Write `text` to `path` atomically; ``fsync=True`` also forces it to disk before the
    rename (for files written once and kept, like plans)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def writable_folder(field: str, text: str | os.PathLike[str]) -> Path:
    """A folder that exists or can be created, checked by a real write (root passes
    ``os.access`` on read-only or virtual file systems). The resolved path, or a one-line
    ``FieldError`` naming ``field``: empty, a symlink loop, a file in the way, not writable."""
    from search_space.errors import user_error

    shown = str(text)
    if shown == "":
        raise user_error(field, "", "a folder path")
    try:
        path = Path(text).expanduser().resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise user_error(
            field, shown, "a folder path without a symlink loop", detail=f"bad value {shown!r} ({exc})"
        ) from None
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise user_error(
            field, shown, "a folder (created if missing)", detail=f"bad value {shown!r} ({probe} is a file)"
        )
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise user_error(
            field, shown, "a writable folder", detail=f"bad value {shown!r} ({probe} is not writable: {exc.strerror})"
        ) from None
    return path
