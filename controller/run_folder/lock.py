"""The run folder's lock: one driver per ``STORAGE/NAME`` (see ``RunFolderLock``)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

__all__ = ["RunFolderLock", "RunFolderBusy"]


class RunFolderBusy(RuntimeError):
    """Another driver holds the run folder."""


class RunFolderLock:
    """An exclusive lock on ``STORAGE/NAME`` held for a driver's lifetime.

    The lock file sits beside the folder (``STORAGE/.NAME.lock``), so it can be taken before
    the folder exists: two new runs with one name, or two ``--resume`` of one run, cannot both
    start. The operating system releases it when the process dies, so a killed driver never
    leaves a stale lock.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir.parent / f".{self.run_dir.name}.lock"
        self._fd: int | None = None

    def acquire(self) -> "RunFolderLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = ""
            with contextlib.suppress(OSError):
                holder = self.path.read_text().strip()
            raise RunFolderBusy(
                f"run folder {self.path.parent / self.path.name[1:-5]} is in use by "
                f"another driver{f' (pid {holder})' if holder else ''}; wait for "
                "it to end"
            ) from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Unlock; the lock file goes too when the run folder was never created (a refused
        start leaves nothing behind)."""
        if self._fd is not None:
            if not self.run_dir.exists():
                self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunFolderLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
