"""Ray around a search: start a local Ray or join a cluster, check per-trial resources against
it, ship the user's functions to the workers, Tune's scheduler and trial names, signals (SIGTERM
stops Tune cleanly), quiet logs and the progress lines. Nothing here knows about plans."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from search_space.errors import user_error

__all__ = [
    "code_runtime_env",
    "SHIPPING_EXCLUDES",
    "start_ray",
    "trial_resources",
    "max_concurrent",
    "Signals",
    "quiet_tune",
    "ship_by_value",
    "trial_name",
]

#: The repository whose code a cluster's workers get (launch_search.py, controller/, ...).
REPO_ROOT = Path(__file__).resolve().parents[1]
#: What never travels with the code: data, run folders, caches.
SHIPPING_EXCLUDES = [".git/", "data/", "runs/", "**/__pycache__/", "*.egg-info/", ".pytest_cache/"]


def code_runtime_env(address: str | None, storage: Path) -> dict[str, Any] | None:
    """On a cluster (``address``) the code travels as the job's working_dir, without the data,
    the caches and ``storage`` (the run folders, when they live inside the repository); a local
    Ray needs nothing (its workers see this machine's files). ``launch_search.py`` and
    ``python -m results retrain`` ship the same way."""
    if not address:
        return None
    excludes = list(SHIPPING_EXCLUDES)
    try:
        excludes.append(storage.resolve().relative_to(REPO_ROOT).as_posix() + "/")
    except ValueError:
        pass
    return {"working_dir": str(REPO_ROOT), "excludes": excludes}


def _start_ray(address: str | None, runtime_env: Mapping[str, Any] | None) -> bool:
    """Join ``address`` or start a local Ray; True if we started it (and must shut it down)."""
    import ray

    if ray.is_initialized():  # e.g. a notebook or a test session: use it as it is
        return False
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address:
        try:
            ray.init(address=address, runtime_env=dict(runtime_env or {}) or None, **common)
        except (ConnectionError, RuntimeError) as e:
            text = f"{e} {e.__cause__ or ''}"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            hint = (
                "; a cluster with token authentication needs RAY_AUTH_MODE=token and its token"
                if "auth" in text.lower() or "Failed to connect" in text
                else ""
            )
            raise user_error(
                "address",
                address,
                "the address of a running Ray cluster",
                detail=f"bad value {address!r}; cannot join Ray ({first}{hint})",
            ) from None
    else:
        import torch

        ray.init(
            num_cpus=os.cpu_count() or 1,
            num_gpus=torch.cuda.device_count(),
            runtime_env=dict(runtime_env or {}) or None,
            **common,
        )
    return True


def _resources(requested: Mapping[str, float] | None) -> dict[str, float]:
    """Per-trial resources checked against the cluster (ValueError when they cannot fit)."""
    import ray

    req = {"cpu": 1.0, "gpu": None, **dict(requested or {})}
    unknown = sorted(set(req) - {"cpu", "gpu"})
    if unknown:
        raise user_error("resources_per_trial", unknown[0], "keys cpu, gpu")
    total = ray.cluster_resources()
    total_cpus, total_gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    cpus = float(req["cpu"])
    gpus = float(req["gpu"]) if req["gpu"] is not None else (0.25 if total_gpus > 0 else 0.0)
    if gpus > 0 and total_gpus == 0:
        raise user_error("gpus_per_trial", gpus, "0 (the Ray cluster has no GPUs)")
    if gpus > total_gpus:
        raise user_error("gpus_per_trial", gpus, f"at most {total_gpus:g} (the Ray cluster's GPUs)")
    if cpus > total_cpus:
        raise user_error("cpus_per_trial", cpus, f"at most {total_cpus:g} (the Ray cluster's CPUs)")
    return {"cpu": cpus, "gpu": gpus}


def _max_concurrent(requested: int | None, res: Mapping[str, float], total_trials: int) -> int:
    import ray

    if requested:
        return requested
    total = ray.cluster_resources()
    fits = int(total.get("CPU", 1) // max(res["cpu"], 1e-9))
    if res["gpu"] > 0:
        fits = min(fits, int(total.get("GPU", 0) // res["gpu"]))
    return max(1, min(fits, total_trials))


class _Signals:
    """SIGTERM behaves like SIGINT: inside Tune it asks Tune to stop (Tune's SIGUSR1 handler
    saves the experiment state); outside it raises KeyboardInterrupt. `install` again after
    ray.init, whose core worker replaces the SIGTERM handler with one that aborts."""

    def __init__(self) -> None:
        self.in_tune = False
        self.previous: Any = None

    def install(self) -> None:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous = signal.signal(signal.SIGTERM, self._handle)
            if self.previous is None:
                self.previous = previous

    def _handle(self, signum: int, frame: Any) -> None:
        if self.in_tune and hasattr(signal, "SIGUSR1"):
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            raise KeyboardInterrupt

    def restore(self) -> None:
        if self.previous is not None:
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGTERM, self.previous)


def _stop_tune() -> None:
    """Ask a running Tune to stop as on Ctrl+C (SIGUSR1: it saves its state, and trials still
    running are re-run on resume). Outside Tune (no handler installed) nothing is sent."""
    usr1 = getattr(signal, "SIGUSR1", None)
    if usr1 is not None and signal.getsignal(usr1) not in (signal.SIG_DFL, signal.SIG_IGN, None):
        os.kill(os.getpid(), usr1)


class _DropTuneHints(logging.Filter):
    """Tune's end-of-run hints name Python APIs; our own log line says what to run instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not msg.startswith(("Experiment has been interrupted", "Trials did not complete"))


def _quiet_tune() -> None:
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # errors go to trials.csv
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables, our log lines
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    tune_log = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _DropTuneHints) for f in tune_log.filters):
        tune_log.addFilter(_DropTuneHints())


def _show_progress() -> None:
    """verbose=True: the searcher's and the driver's INFO lines reach stderr."""
    import sys

    for name in ("controller.searcher", "controller.api"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    parent = logging.getLogger("controller")
    if not logging.getLogger().handlers and not parent.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        parent.addHandler(handler)


_OUR_PACKAGES = ("controller", "search_space", "child_trainer", "results", "launch_search")


def _ship_by_value(*functions: Any) -> None:
    """Let Ray workers run functions from modules they cannot import (a script, a notebook, a
    test file outside any package): such modules are pickled by value with the trial. Modules
    of installed packages (site-packages) and our own stay pickled by reference."""
    import inspect
    import sys

    from ray import cloudpickle

    for fn in functions:
        module = sys.modules.get(getattr(fn, "__module__", None) or "") or inspect.getmodule(type(fn))
        if module is None or module.__name__ == "__main__":
            continue
        top = module.__name__.split(".")[0]
        path = str(getattr(module, "__file__", "") or "")
        if (
            top in _OUR_PACKAGES
            or not path
            or "site-packages" in path
            or "dist-packages" in path
            or top in sys.stdlib_module_names
        ):
            continue
        with contextlib.suppress(ValueError):  # already registered
            cloudpickle.register_pickle_by_value(module)


def _scheduler(scheduler: Any, config: Mapping[str, Any]) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    if not isinstance(scheduler, str):
        return scheduler
    if scheduler == "asha":
        # time_attr "epoch" counts over every reward seed; max_t beyond the last one so the
        # final report (same epoch) still reaches the searcher.
        seeds = len(config.get("reward_seeds") or [0])
        from controller.schedulers import SearchStageASHA

        return SearchStageASHA(
            time_attr="epoch", max_t=int(config["max_epochs"]) * seeds + 1, grace_period=1, reduction_factor=3
        )
    return FIFOScheduler()


def _trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


# The public names other drivers use (``results retrain`` runs its trainings as Ray trials too);
# the search API imports the same functions under their underscored names.
start_ray = _start_ray
trial_resources = _resources
max_concurrent = _max_concurrent
Signals = _Signals
quiet_tune = _quiet_tune
ship_by_value = _ship_by_value
trial_name = _trial_name
