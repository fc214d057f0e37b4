"""Checks of a search's arguments before Ray starts: each refusal is one line naming the
argument, the bad value and what is allowed (``search_space.errors.FieldError``), and leaves
nothing behind. The settings' own checks are ``controller.config``'s (they use the pure ones
here); what needs the machine (folders, the network, this machine's CPUs) or the model (sites)
is checked here, by ``run_search``."""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from search_space.errors import SEED_MAX, UserTypeError, check_number, user_error

__all__ = [
    "check_seed",
    "TRIAL_TIMEOUT_MAX",
    "check_trial_timeout",
    "MAX_TRIALS",
    "FINAL_SEED_OFFSET",
    "check_name",
    "check_storage",
    "check_resources",
    "check_address",
    "resolve_sites",
]


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    check_number(name, value, low, high, integer=True)
    return value


def check_seed(name: str, value: Any) -> int:
    return _check_int(name, value, 0, SEED_MAX)


#: The most trainings one search may ask for (far beyond any budget; 2**70 would never end).
MAX_TRIALS = 1_000_000

#: The final stage's seeds start here above the search's seed (``seed + 1000 + i``).
FINAL_SEED_OFFSET = 1000

#: The longest trial_timeout (about three years): threading's waits overflow far above it.
TRIAL_TIMEOUT_MAX = 1e8


def check_trial_timeout(value: Any) -> float | None:
    """None (no limit) or a positive, finite number of seconds."""
    if value is not None:
        check_number("trial_timeout", value, 0, TRIAL_TIMEOUT_MAX, low_open=True)
    return value


def _check_local_cpus(resources: Mapping[str, Any] | None) -> None:
    """A local Ray gets this machine's CPUs: more per trial could never be scheduled (Ray would
    wait forever). Only when Ray is not running yet (a running one is checked after it starts)."""
    import ray

    cpus = dict(resources or {}).get("cpu", 1.0)
    have = os.cpu_count() or 1
    if not ray.is_initialized() and cpus > have:
        raise user_error("cpus_per_trial", cpus, f"at most {have} (this machine's CPUs; use --address for a cluster)")


def check_name(name: str) -> str:
    if (
        not isinstance(name, str)
        or not name
        or "/" in name
        or "\\" in name
        or name in (".", "..")
        or name.startswith(".")
        or len(name.encode()) > 200
        or not name.isprintable()
    ):
        raise user_error(
            "name", name, "a folder name of at most 200 bytes, printable, without '/' and not starting with '.'"
        )
    return name


def check_storage(storage_path: str | os.PathLike[str]) -> Path:
    """The run folder's parent: creatable and writable (``search_space.files.writable_folder``)."""
    from search_space.files import writable_folder

    return writable_folder("storage_path", storage_path)


def check_resources(resources: Mapping[str, Any] | None) -> None:
    """Per-trial resources that can never fit, refused before Ray starts."""
    req = dict(resources or {})
    unknown = sorted(set(req) - {"cpu", "gpu"})
    if unknown:
        raise user_error("resources_per_trial", unknown[0], "keys cpu, gpu")
    cpu, gpu = req.get("cpu", 1.0), req.get("gpu")
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not (math.isfinite(cpu) and 0 < cpu <= 1024):
        raise user_error("cpus_per_trial", cpu, "a number in (0, 1024]")
    if gpu is not None and (
        isinstance(gpu, bool)
        or not isinstance(gpu, (int, float))
        or not (math.isfinite(gpu) and gpu >= 0)
        or (gpu > 1 and gpu % 1)
    ):
        raise user_error("gpus_per_trial", gpu, "a number >= 0, whole above 1 (e.g. 0.25, 1, 2)")


def check_address(address: str | None) -> None:
    """Fail fast on an unreachable cluster instead of waiting for Ray's long timeout."""
    import socket

    if address is None or address == "auto":
        return
    host, _, port = str(address).split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise user_error("address", address, "host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise user_error(
            "address",
            address,
            "the address of a running Ray cluster",
            detail=f"bad value {address!r}; cannot reach Ray ({e.strerror or e})",
        ) from None


def resolve_sites(
    found: Sequence[str], sites: str | Sequence[str] = "all", modules: Sequence[str] = ()
) -> tuple[list[str] | None, str | None]:
    """``sites`` ("all", "stage", or paths / glob patterns) -> (site list or None, share).
    Patterns match the ``found`` sites; an exact path may also name any of ``modules``
    (with an example input, any module whose output is a feature tensor can be a site)."""
    if isinstance(sites, str):
        if sites == "all":
            return None, None
        if sites == "stage":
            return None, "stage"
        patterns = [s.strip() for s in sites.split(",") if s.strip()]
    elif isinstance(sites, Sequence) and all(isinstance(s, str) for s in sites):
        patterns = list(sites)
    else:
        raise user_error(
            "sites",
            detail=f"expected 'all', 'stage' or a list of module paths, got {type(sites).__name__}",
            cls=UserTypeError,
        )
    chosen: list[str] = []
    for pattern in patterns:
        names = [pattern] if pattern in found or pattern in modules else fnmatch.filter(found, pattern)
        if not names:
            raise user_error(
                "sites",
                pattern,
                f"all, stage, or paths/patterns over {list(found)}",
                detail=f"bad value {pattern!r} (matches no site)",
            )
        chosen += [n for n in names if n not in chosen]
    if not chosen:
        raise user_error("sites", "", "all, stage, or comma-separated paths")
    return chosen, None


def _check_callbacks(callbacks: Any) -> list[Any]:
    if callbacks is None:
        return []
    from ray.tune import Callback

    if isinstance(callbacks, (Callback, str)) or not isinstance(callbacks, Sequence):
        raise user_error(
            "callbacks",
            detail=f"expected a list of ray.tune.Callback, got {type(callbacks).__name__}",
            cls=UserTypeError,
        )
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            raise user_error(
                f"callbacks[{i}]", detail=f"expected a ray.tune.Callback, got {type(cb).__name__}", cls=UserTypeError
            )
    return list(callbacks)
