"""The searcher's state as data: a JSON file, and the controller's tensors in a file that
``torch.load(weights_only=True)`` reads. Neither can run code when loaded.

``searcher_state.json`` is rewritten (atomically, fsynced) after every suggestion and every
recorded trial; its size does not grow with the run (the trials live in the ledger). The
controller's weights and optimizer change only at updates: they go to a content-addressed
``searcher_policy-<sha256[:16]>.pt`` first, then the JSON names it with its full hash, then
older policy files are removed; a crash between the two writes leaves the named file intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any

from controller.run_folder import SNAPSHOT, disk_full_is_fatal
from search_space.errors import FieldError
from search_space.files import atomic_write_text

__all__ = ["SNAPSHOT_VERSION", "write_snapshot", "read_snapshot", "save_policy", "load_policy", "SnapshotError"]

log = logging.getLogger(__name__)

SNAPSHOT_VERSION = 1
POLICY_PREFIX = "searcher_policy-"


class SnapshotError(FieldError):
    """A state file the product did not write (tampered, or from another version): refused."""

    def __init__(self, run_dir: Path, why: str) -> None:
        super().__init__("resume", str(run_dir), "a run folder written by this version", detail=why)


def write_snapshot(run_dir: Path, state: dict[str, Any]) -> None:
    with disk_full_is_fatal(run_dir):
        atomic_write_text(run_dir / SNAPSHOT, json.dumps({"version": SNAPSHOT_VERSION, **state}) + "\n", fsync=True)


def read_snapshot(run_dir: Path) -> dict[str, Any] | None:
    """The saved state, or None when the run never saved one (it stopped before its first
    trial); SnapshotError when the file is not one this product wrote."""
    path = run_dir / SNAPSHOT
    if not path.is_file():
        return None
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SnapshotError(run_dir, f"{path.name} is unreadable ({type(exc).__name__}); nothing was changed") from None
    if not isinstance(state, dict) or state.get("version") != SNAPSHOT_VERSION:
        raise SnapshotError(run_dir, f"{path.name} is not a searcher state of version {SNAPSHOT_VERSION}")
    return state


def save_policy(run_dir: Path, tensors: dict[str, Any]) -> dict[str, str]:
    """Write the controller's state (tensors and plain values) content-addressed; returns
    ``{"file": name, "sha256": hex}`` for the JSON snapshot."""
    import torch

    buf = io.BytesIO()
    torch.save(tensors, buf)
    data = buf.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    name = f"{POLICY_PREFIX}{digest[:16]}.pt"
    path = run_dir / name
    with disk_full_is_fatal(run_dir):
        if not path.is_file():
            run_dir.mkdir(parents=True, exist_ok=True)
            tmp = run_dir / f".{name}.tmp"
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    return {"file": name, "sha256": digest}


def prune_policies(run_dir: Path, keep: str) -> None:
    """Remove policy files other than ``keep`` (after the JSON snapshot names it)."""
    for old in run_dir.glob(f"{POLICY_PREFIX}*.pt"):
        if old.name != keep:
            old.unlink(missing_ok=True)


def load_policy(run_dir: Path, ref: Any) -> dict[str, Any]:
    """The controller's state named by the snapshot, checked against its hash and loaded with
    ``weights_only=True`` (tensors and plain values only: a pickle that would run code is refused)."""
    import torch

    if not isinstance(ref, dict) or not isinstance(ref.get("file"), str) or not isinstance(ref.get("sha256"), str):
        raise SnapshotError(run_dir, f"{SNAPSHOT} names no policy file")
    name = ref["file"]
    if "/" in name or "\\" in name or not name.startswith(POLICY_PREFIX) or not name.endswith(".pt"):
        raise SnapshotError(run_dir, f"{SNAPSHOT} names a policy file outside the run folder ({name!r})")
    path = run_dir / name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SnapshotError(run_dir, f"policy file {name} is missing ({exc.strerror}); nothing was changed") from None
    if hashlib.sha256(data).hexdigest() != ref["sha256"]:
        raise SnapshotError(run_dir, f"policy file {name} does not match its recorded hash (changed since written)")
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - anything weights_only refuses is not ours
        raise SnapshotError(
            run_dir, f"policy file {name} is not plain tensors ({type(exc).__name__}); it was not loaded"
        ) from None
