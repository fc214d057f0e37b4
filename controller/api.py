"""Search a regularization plan for *your* model and training loop, with Ray Tune.

    from controller import run_search

    def model_fn():                       # any nn.Module: its sites make the search space
        return MyNet()

    def train_fn(plan, seed, report):     # runs in a Ray worker, once per trial and seed
        torch.manual_seed(seed)
        model = apply_plan(MyNet(), plan, total_steps=steps)
        for epoch in range(epochs):
            ...train one epoch (call step_schedulers(model) after each optimizer step)...
            report(val_loss=validate(model))

    result = run_search(model_fn, train_fn, metric="val_loss", mode="min", num_samples=32)
    result.best_plan.save("plan.json"); print(result.trials)

Ray Tune runs the trials (resources, ASHA, fault tolerance, resume); a searcher from
``controller.searcher`` proposes the plans and writes the run folder (``controller.run_folder``).
Every argument is checked before Ray starts (ValueError naming the argument and value).
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import math
import os
import shlex
import signal
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller import run_folder as rf
from controller.trainable import TrainFn, make_trainable
from search_space.errors import SEED_MAX, FieldError, check_number

__all__ = [
    "run_search",
    "SearchResult",
    "resolve_sites",
    "summary_text",
    "check_seed",
    "check_trial_timeout",
    "check_name",
    "check_storage",
    "check_resumable",
    "check_resources",
    "check_address",
    "CONFIG_VERSION",
    "SCHEDULERS",
]

log = logging.getLogger(__name__)

#: 3: the run folder is a ledger (trials, history, final_trials appended) plus searcher_state.json;
#: a run of version 2 (Ray's pickles) can still be summarized and exported, not resumed.
CONFIG_VERSION = 3
SCHEDULERS = ("fifo", "asha")


@dataclass
class SearchResult:
    """What a search leaves: the plan to take home, the tables, and where everything is.

    ``best_plan`` is this project's pick (the best mean over the reward seeds among sampled
    plans, or the final stage's best mean); Ray Tune's own ``ResultGrid.get_best_result()``
    may name another trial: it ranks every Tune trial (baselines and final re-trainings
    included) by its last reported epoch, not by the seeds' mean. ``status`` is "failed"
    (with ``error`` the most common trial error) when no trial finished ok."""

    run_dir: Path
    status: str  # finished | interrupted | failed
    objective: rf.Objective
    best_plan: Any  # search_space.Plan or None (no trial finished ok)
    trials: Any  # pandas DataFrame, one row per search-stage trial (trials.csv)
    final: Any = None  # pandas DataFrame (final.csv) when a final stage ran
    error: str = ""
    summary: str = field(default="", repr=False)

    @property
    def finished(self) -> bool:
        return self.status == "finished"


# ----------------------------------------------------------------------------- checks
def _check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    check_number(name, value, low, high, integer=True)
    return value


def check_seed(name: str, value: Any) -> int:
    return _check_int(name, value, 0, SEED_MAX)


#: The longest trial_timeout (about three years): threading's waits overflow far above it.
TRIAL_TIMEOUT_MAX = 1e8


def check_trial_timeout(value: Any) -> float | None:
    """None (no limit) or a positive, finite number of seconds."""
    if value is not None:
        check_number("trial_timeout", value, 0, TRIAL_TIMEOUT_MAX, low_open=True)
    return value


#: The most trainings one search may ask for (far beyond any budget; 2**70 would never end).
MAX_TRIALS = 1_000_000
#: The final stage's seeds start here above the search's seed (``seed + 1000 + i``).
FINAL_SEED_OFFSET = 1000


def _check_seed_room(seed: int, reward_seeds: int, final_seeds: int) -> None:
    """Every seed the run will use (seed .. seed+K-1, seed+1000 .. seed+1000+S-1) must stay
    within SEED_MAX: refused here rather than in a trial hours later."""
    top = max(reward_seeds - 1, FINAL_SEED_OFFSET + final_seeds - 1 if final_seeds else 0)
    if seed + top > SEED_MAX:
        raise FieldError(
            "seed",
            seed,
            f"an integer in [0, {SEED_MAX - top}] (the run also uses seeds up to seed + {top}: "
            f"reward seeds{' and the final stage' if final_seeds else ''})",
        )


def _check_local_cpus(resources: Mapping[str, Any] | None) -> None:
    """A local Ray gets this machine's CPUs: more per trial could never be scheduled (Ray would
    wait forever). Only when Ray is not running yet (a running one is checked after it starts)."""
    import ray

    cpus = dict(resources or {}).get("cpu", 1.0)
    have = os.cpu_count() or 1
    if not ray.is_initialized() and cpus > have:
        raise FieldError("cpus_per_trial", cpus, f"at most {have} (this machine's CPUs; use --address for a cluster)")


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
        raise FieldError(
            "name", name, "a folder name of at most 200 bytes, printable, without '/' and not starting with '.'"
        )
    return name


def check_storage(storage_path: str | os.PathLike[str]) -> Path:
    path = Path(storage_path).expanduser()
    if str(storage_path) == "":
        raise FieldError("storage_path", "", "a folder path")
    try:
        path = path.resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise FieldError(
            "storage_path",
            str(storage_path),
            "a folder path without a symlink loop",
            detail=f"bad value {str(storage_path)!r} ({exc})",
        ) from None
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise FieldError(
            "storage_path",
            str(storage_path),
            "a folder (created if missing)",
            detail=f"bad value {str(storage_path)!r} ({probe} is a file)",
        )
    try:  # a real write, not os.access: root passes access checks on read-only or virtual file systems
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise FieldError(
            "storage_path",
            str(storage_path),
            "a writable folder",
            detail=f"bad value {str(storage_path)!r} ({probe} is not writable: {exc.strerror})",
        ) from None
    return path


def check_resources(resources: Mapping[str, Any] | None) -> None:
    """Per-trial resources that can never fit, refused before Ray starts."""
    req = dict(resources or {})
    unknown = sorted(set(req) - {"cpu", "gpu"})
    if unknown:
        raise FieldError("resources_per_trial", unknown[0], "keys cpu, gpu")
    cpu, gpu = req.get("cpu", 1.0), req.get("gpu")
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or not (math.isfinite(cpu) and 0 < cpu <= 1024):
        raise FieldError("cpus_per_trial", cpu, "a number in (0, 1024]")
    if gpu is not None and (
        isinstance(gpu, bool)
        or not isinstance(gpu, (int, float))
        or not (math.isfinite(gpu) and gpu >= 0)
        or (gpu > 1 and gpu % 1)
    ):
        raise FieldError("gpus_per_trial", gpu, "a number >= 0, whole above 1 (e.g. 0.25, 1, 2)")


def check_address(address: str | None) -> None:
    """Fail fast on an unreachable cluster instead of waiting for Ray's long timeout."""
    import socket

    if address is None or address == "auto":
        return
    host, _, port = str(address).split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise FieldError("address", address, "host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise FieldError(
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
        raise TypeError(f"sites: expected 'all', 'stage' or a list of module paths, got {type(sites).__name__}")
    chosen: list[str] = []
    for pattern in patterns:
        names = [pattern] if pattern in found or pattern in modules else fnmatch.filter(found, pattern)
        if not names:
            raise FieldError(
                "sites",
                pattern,
                f"all, stage, or paths/patterns over {list(found)}",
                detail=f"bad value {pattern!r} (matches no site)",
            )
        chosen += [n for n in names if n not in chosen]
    if not chosen:
        raise FieldError("sites", "", "all, stage, or comma-separated paths")
    return chosen, None


# ----------------------------------------------------------------------------- Ray
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
            raise FieldError(
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
        raise FieldError("resources_per_trial", unknown[0], "keys cpu, gpu")
    total = ray.cluster_resources()
    total_cpus, total_gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
    cpus = float(req["cpu"])
    gpus = float(req["gpu"]) if req["gpu"] is not None else (0.25 if total_gpus > 0 else 0.0)
    if gpus > 0 and total_gpus == 0:
        raise FieldError("gpus_per_trial", gpus, "0 (the Ray cluster has no GPUs)")
    if gpus > total_gpus:
        raise FieldError("gpus_per_trial", gpus, f"at most {total_gpus:g} (the Ray cluster's GPUs)")
    if cpus > total_cpus:
        raise FieldError("cpus_per_trial", cpus, f"at most {total_cpus:g} (the Ray cluster's CPUs)")
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


# ----------------------------------------------------------------------------- the search
def run_search(
    model_fn: Callable[[], Any],
    train_fn: TrainFn,
    *,
    metric: str = "val_acc",
    mode: str = "max",
    reward_transform: str = "",
    num_samples: int = 16,
    search: str = "controller",
    storage_path: str | os.PathLike[str] = "runs",
    name: str | None = None,
    resume: bool = False,
    resources_per_trial: Mapping[str, float] | None = None,
    max_concurrent: int | None = None,
    scheduler: Any = "fifo",
    max_epochs: int | None = None,
    sites: str | Sequence[str] = "all",
    methods: Sequence[str] | None = None,
    model_name: str = "",
    seed: int = 0,
    reward_seeds: int = 1,
    baselines: Mapping[str, Any] | Sequence[str] = ("none",),
    tuned_trials: int | str = "auto",
    example_input: Any = None,
    final_top_k: int = 0,
    final_seeds: int = 0,
    controller_batch: int = 4,
    controller_lr: float | None = None,
    controller_kwargs: Mapping[str, Any] | None = None,
    penalty_reward: float | None = None,
    address: str | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    max_failures: int = 0,
    trial_timeout: float | None = None,
    extra_config: Mapping[str, Any] | None = None,
    verbose: bool | int = False,
    callbacks: Sequence[Any] | None = None,
) -> SearchResult:
    """Search a regularization plan for ``model_fn()``'s network trained by ``train_fn``.

    Args:
        model_fn: returns the (unregularized) model; called once on the driver to find its
            sites (``search_space.find_sites``) and build the search space.
        train_fn: ``train_fn(plan, seed, report)``; builds and trains the model under the
            ``search_space.Plan`` (``apply_plan``) with ``seed``, calls ``report(**metrics)``
            once per epoch (``metric`` among them), and may return final metrics (``status``
            ok / diverged / failed). Runs in Ray workers: it must be picklable.
        metric, mode: what to optimise (``"val_loss", "min"`` works); reward_transform:
            how a value becomes the controller's reward (``run_folder.Objective``).
        num_samples: trainings of the search stage (the hand-set baselines and the final stage
            come on top): ``tuned_trials`` of them tune the global recipes, the rest are
            sampled plans.
        search: "controller" (LSTM + REINFORCE), "random" or "tpe" (Optuna TPE).
        storage_path, name: the run folder is ``storage_path/name``; resume: finish it.
        resources_per_trial: ``{"cpu": 1, "gpu": 0.25}``; fractional GPUs share a device.
        scheduler: "fifo", "asha" (needs ``max_epochs``: the epochs one seed trains) or a
            Tune ``TrialScheduler``.
        sites: "all", "stage" (one decision set per stage) or paths / glob patterns.
        reward_seeds: each plan trains this many times (seeds seed..seed+K-1); reward = mean.
        baselines: hand-set plans trained first at the same fidelity, recorded, never learned
            from: name -> Plan, or names from ``search_space.baselines.BASELINES`` (those
            other than "none" need ``example_input``, one input batch of the model).
        tuned_trials: trainings spent tuning "one method at every site" (dropout and DropBlock
            for ConvNets, dropout and the sequence pattern for Transformers) on a small grid
            (``search_space.baselines.TUNED_GRIDS``), split evenly between the methods; each
            method's best enters the final stage as ``tuned-<method>``, and the controller
            and TPE start from the best. "auto": a quarter of ``num_samples`` when that gives
            every method a trial and leaves sampled plans (16 -> 2 per method); 0: none.
        final_top_k, final_seeds: re-train the K best distinct sampled plans, every baseline
            and every tuned recipe with S fresh seeds (final.csv); ``best_plan.json`` holds a
            searched plan only if its paired 95% interval against the best baseline lies
            wholly on the better side, else that baseline (``controller.final``).
        trial_timeout: seconds one trial may run (over all its reward seeds); past it the trial
            is recorded with status "timeout" and the penalty reward, its worker process is
            ended (so a child that hangs cannot hold the search), and the search goes on.
            None: no limit. Saved in search_config.json, so a resume keeps it.
        extra_config: saved in search_config.json (e.g. the command line that started it).
        verbose: show the searcher's line per finished trial (``[k/N] trial ... best ... ETA``,
            logger ``controller.searcher``) on stderr even where logging is not set up (a
            notebook, a script); quiet by default.
        callbacks: Ray Tune ``Callback`` objects, passed to ``tune.RunConfig``.

    Raises TypeError for an argument of the wrong type and ValueError (``FieldError``) for a
    bad value, both naming the argument, before Ray starts.
    """
    if not callable(model_fn):
        raise TypeError(f"model_fn: expected a function returning an nn.Module, got {type(model_fn).__name__}")
    if not callable(train_fn):
        raise TypeError(f"train_fn: expected a function (plan, seed, report), got {type(train_fn).__name__}")
    if methods is not None and (isinstance(methods, str) or not all(isinstance(m, str) for m in methods)):
        raise TypeError(f"methods: expected None or a list of method names, got {methods!r}")
    if not isinstance(verbose, (bool, int)):
        raise TypeError(f"verbose: expected a bool, got {type(verbose).__name__}")
    callbacks = _check_callbacks(callbacks)
    objective = rf.Objective(metric, mode, reward_transform)
    _check_int("num_samples", num_samples, 1, MAX_TRIALS)
    _check_int("reward_seeds", reward_seeds, 1, 1000)
    _check_int("final_top_k", final_top_k, 0, MAX_TRIALS)
    _check_int("final_seeds", final_seeds, 0, 1000)
    if final_top_k and not final_seeds:
        raise FieldError(
            "final_seeds", final_seeds, "at least 1 when final_top_k > 0 (a final stage needs seeds), or final_top_k 0"
        )
    _check_int("controller_batch", controller_batch, 1)
    _check_int("max_failures", max_failures, 0)
    check_seed("seed", seed)
    _check_seed_room(seed, reward_seeds, final_seeds if final_top_k else 0)
    check_trial_timeout(trial_timeout)
    if max_concurrent is not None:
        _check_int("max_concurrent", max_concurrent, 1)
    if controller_lr is not None and not (
        isinstance(controller_lr, (int, float)) and math.isfinite(controller_lr) and 0 < controller_lr <= 1
    ):
        raise FieldError("controller_lr", controller_lr, "a number in (0, 1]")
    if isinstance(scheduler, str):
        if scheduler not in SCHEDULERS:
            raise FieldError("scheduler", scheduler, f"{', '.join(SCHEDULERS)} or a ray.tune TrialScheduler")
        if scheduler == "asha":
            _check_int("max_epochs", max_epochs, 1)
    from controller.policies import SEARCHERS

    if search not in SEARCHERS:
        raise FieldError("search", search, ", ".join(SEARCHERS))
    if penalty_reward is not None and (
        isinstance(penalty_reward, bool)
        or not isinstance(penalty_reward, (int, float))
        or not math.isfinite(penalty_reward)
    ):
        raise FieldError("penalty_reward", penalty_reward, "a finite number or None (the worst reward so far)")
    check_resources(resources_per_trial)
    check_address(address)
    if address is None:
        _check_local_cpus(resources_per_trial)
    storage = check_storage(storage_path)
    if resume and not name:
        raise FieldError("name", None, "the name of the run to resume", detail="missing")
    name = check_name(name or f"{model_name or 'model'}-{search}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = storage / name
    lock = rf.RunFolderLock(run_dir)
    try:
        lock.acquire()
    except rf.RunFolderBusy as exc:
        raise FieldError(
            "name", name, "a run folder no other driver uses", detail=f"bad value {name!r} ({exc})"
        ) from None
    try:
        if resume:
            check_resumable(run_dir)
            config = rf.read_json(run_dir / rf.SEARCH_CONFIG)
            searcher = searcher_from_config(config, run_dir)
            searcher.resume()  # the ledger and the JSON state; refuses what it did not write
            return _execute(
                run_dir,
                config,
                searcher,
                train_fn,
                resume=True,
                resources=resources_per_trial,
                address=address,
                runtime_env=runtime_env,
                callbacks=callbacks,
                verbose=bool(verbose),
            )
        if run_dir.exists():
            raise FieldError(
                "name",
                name,
                "a new name, or resume the run",
                detail=f"bad value {name!r} (run folder {run_dir} already exists)",
            )
        space, baseline_plans = _space_and_baselines(model_fn, sites, methods, model_name, baselines, example_input)
        tuned = tuned_recipes(space, tuned_trials, num_samples, exclude=list(baseline_plans.values()))
        config = {
            "version": CONFIG_VERSION,
            "searcher": search,
            "objective": objective.to_dict(),
            "space": space.to_dict(),
            "num_samples": num_samples,
            "seed": seed,
            "reward_seeds": list(range(seed, seed + reward_seeds)),
            "final_top_k": final_top_k,
            "final_seeds": [seed + FINAL_SEED_OFFSET + i for i in range(final_seeds)],
            "baselines": {k: p.to_dict() for k, p in baseline_plans.items()},
            "tuned": {m: [p.to_dict() for p in plans] for m, plans in tuned.items()},
            "controller_batch": controller_batch,
            "controller_lr": controller_lr,
            "controller_kwargs": dict(controller_kwargs or {}),
            "penalty_reward": penalty_reward,
            "scheduler": scheduler if isinstance(scheduler, str) else type(scheduler).__name__,
            "max_epochs": max_epochs,
            "max_concurrent": max_concurrent,
            "max_failures": max_failures,
            "trial_timeout": None if trial_timeout is None else float(trial_timeout),
            "started_at": rf.now_iso(),
            **dict(extra_config or {}),
        }
        searcher = searcher_from_config(config, run_dir)
        return _execute(
            run_dir,
            config,
            searcher,
            train_fn,
            resume=False,
            resources=resources_per_trial,
            address=address,
            runtime_env=runtime_env,
            scheduler=scheduler,
            callbacks=callbacks,
            verbose=bool(verbose),
        )
    finally:
        lock.release()


def tuned_recipes(space: Any, tuned_trials: int | str, num_samples: int, exclude: Any = ()) -> dict[str, list[Any]]:
    """Method -> grid plans of the tuned global recipes, within ``num_samples`` trainings."""
    from search_space.baselines import TUNED_GRIDS, tuned_grid, tuned_methods

    methods = tuned_methods(tuple(space.methods))
    if tuned_trials == "auto":
        per = int(0.25 * num_samples / len(methods)) if methods and num_samples >= 4 * len(methods) else 0
    else:
        _check_int("tuned_trials", tuned_trials, 0, max(0, num_samples - 1))
        if tuned_trials and (not methods or tuned_trials < len(methods)):
            raise FieldError(
                "tuned_trials",
                tuned_trials,
                f"0, auto, or at least one per tuned method ({', '.join(methods) or 'none fit this space'})",
            )
        per = tuned_trials // len(methods) if methods else 0
    per = min(per, *(len(TUNED_GRIDS[m]) for m in methods)) if per else 0
    out = {m: tuned_grid(space, m, per, exclude) for m in methods} if per else {}
    if out:
        log.info(
            "tuned global recipes: %d of %d trainings (%s; %d grid points each)",
            per * len(methods),
            num_samples,
            ", ".join(methods),
            per,
        )
    return out


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


def _check_callbacks(callbacks: Any) -> list[Any]:
    if callbacks is None:
        return []
    from ray.tune import Callback

    if isinstance(callbacks, (Callback, str)) or not isinstance(callbacks, Sequence):
        raise TypeError(f"callbacks: expected a list of ray.tune.Callback, got {type(callbacks).__name__}")
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks[{i}]: expected a ray.tune.Callback, got {type(cb).__name__}")
    return list(callbacks)


def _refused_resume(run_dir: Path, allowed: str, why: str) -> FieldError:
    """The one-line refusal of ``resume`` for ``run_dir``: what it lacks and what it needs."""
    return FieldError("resume", str(run_dir), allowed, detail=why)


def check_resumable(run_dir: Path) -> None:
    """Refuse (FieldError, one line) a resume this code cannot do, before anything is touched.

    Only JSON is read here (search_config.json, searcher_state.json); Ray's pickles in the
    folder are never read, so a folder from someone else cannot run code on resume. The
    searcher's own ``resume()`` then checks the state against the run's space and objective.
    """
    from controller.run_folder.snapshot import read_snapshot

    if not (run_dir / rf.SEARCH_CONFIG).is_file():
        raise _refused_resume(
            run_dir,
            "a run folder with search_config.json",
            f"no resumable run at {run_dir} (missing search_config.json)",
        )
    try:
        config = rf.read_json(run_dir / rf.SEARCH_CONFIG)
        if not isinstance(config, dict) or config.get("version") != CONFIG_VERSION:
            raise ValueError(f"version {config.get('version') if isinstance(config, dict) else None!r}")
        rf.Objective.from_config(config)
        searcher_from_config(config, None)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise _refused_resume(
            run_dir,
            f"a {rf.SEARCH_CONFIG} of version {CONFIG_VERSION}",
            f"{run_dir / rf.SEARCH_CONFIG} is unreadable or from another version ({type(exc).__name__}: {exc}); "
            "nothing was changed (python -m results summarize/export still read the run)",
        ) from None
    read_snapshot(run_dir)


def searcher_from_config(config: Mapping[str, Any], run_dir: Path | None) -> Any:
    """The run's searcher, built from search_config.json alone (a new run and a resume alike)."""
    from controller.policies import make_searcher
    from search_space.plan import Plan
    from search_space.space import SearchSpace

    tuned = {str(m): [Plan.from_dict(p) for p in plans] for m, plans in (config.get("tuned") or {}).items()}
    kwargs: dict[str, Any] = dict(
        objective=rf.Objective.from_config(config),
        num_samples=int(config["num_samples"]) - sum(len(v) for v in tuned.values()),
        seed=int(config["seed"]),
        run_dir=run_dir,
        controller_batch=int(config["controller_batch"]),
        penalty_reward=config.get("penalty_reward"),
        baselines={str(k): Plan.from_dict(v) for k, v in (config.get("baselines") or {}).items()},
        tuned=tuned,
        reward_seeds=list(config["reward_seeds"]),
        final_top_k=int(config["final_top_k"]),
        final_seeds=list(config["final_seeds"]),
    )
    if config["searcher"] == "controller":
        kwargs["controller_kwargs"] = dict(config.get("controller_kwargs") or {})
        if config.get("controller_lr") is not None:
            kwargs["reinforce_kwargs"] = {"lr": float(config["controller_lr"])}
    return make_searcher(str(config["searcher"]), SearchSpace.from_dict(config["space"]), **kwargs)


def _space_and_baselines(
    model_fn: Callable[[], Any], sites: Any, methods: Any, model_name: str, baselines: Any, example_input: Any
) -> tuple[Any, dict[str, Any]]:
    """The search space and the baseline plans, checked before Ray starts. With
    ``example_input`` the space comes from output shapes (``search_space.describe``) and
    every method is tried forward and backward on it (``check_plans``), so a plan that cannot
    train is refused here, naming the site, the method and the shape."""
    from torch import nn

    from search_space.apply import find_sites
    from search_space.baselines import BASELINES, baseline_plans
    from search_space.describe import candidate_sites, check_plans
    from search_space.plan import Plan
    from search_space.space import SearchSpace

    model = model_fn()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model_fn: returned a {type(model).__name__}; expected a function returning an nn.Module")
    if example_input is not None:
        found = candidate_sites(model)
        chosen, share = resolve_sites(found, sites, modules=[n for n, _ in model.named_modules() if n])
        space = SearchSpace.for_model(
            model, sites=chosen, share=share, methods=methods, model_name=model_name, example_input=example_input
        )
        check_plans(model, space, example_input)
    else:
        found = find_sites(model)
        chosen, share = resolve_sites(found, sites)
        space = SearchSpace.for_model(model, sites=chosen, share=share, methods=methods, model_name=model_name)
    if isinstance(baselines, Mapping):
        plans = {str(k): (v if isinstance(v, Plan) else Plan.from_dict(v)) for k, v in baselines.items()}
    else:
        names = tuple(baselines or ())
        unknown = [n for n in names if n not in BASELINES]
        if unknown:
            raise FieldError("baselines", unknown[0], ", ".join(BASELINES))
        if "seq_pattern" in space.methods or "dropblock" not in space.methods:
            # a Transformer (the practitioners' recipe), or a model without block-sized maps
            allowed = space.baseline_plans()
            bad = [n for n in names if n not in allowed]
            if bad:
                kind = "a Transformer" if "seq_pattern" in space.methods else "a model without feature maps"
                raise FieldError("baselines", bad[0], f"{', '.join(allowed)} (for {kind})")
            plans = {n: allowed[n] for n in names}
        elif any(n != "none" for n in names) and example_input is None:
            raise FieldError(
                "example_input",
                None,
                "one input batch of the model (baselines other than 'none' place their layers by feature-map size)",
            )
        elif names == ("none",) or not names:
            plans = {"none": Plan.none(space.sites, model=model_name)} if names else {}
        else:
            plans = baseline_plans(model, space.sites, example_input, model_name, names)
    return space, plans


def _execute(
    run_dir: Path,
    config: dict[str, Any],
    searcher: Any,
    train_fn: TrainFn,
    *,
    resume: bool,
    resources: Mapping[str, float] | None,
    address: str | None,
    runtime_env: Mapping[str, Any] | None,
    scheduler: Any = "fifo",
    callbacks: Sequence[Any] = (),
    verbose: bool = False,
) -> SearchResult:
    """Run ``searcher``'s trials with a Ray Tune Tuner. A resume is a new Tuner over the same
    run folder, its searcher already rebuilt from the ledger: Ray's snapshot is not needed."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    objective = rf.Objective.from_config(config)
    _quiet_tune()
    signals = _Signals()
    signals.install()
    started = _start_ray(address, runtime_env)
    try:
        signals.install()
        res = _resources(resources)
        _ship_by_value(train_fn)
        timeout = config.get("trial_timeout")
        trainable = tune.with_resources(
            make_trainable(train_fn, objective, None if timeout is None else float(timeout)), res
        )
        if verbose:
            _show_progress()
        if not resume:
            run_dir.mkdir(parents=True, exist_ok=False)
            with rf.disk_full_is_fatal(run_dir):
                rf.atomic_write_text(run_dir / rf.SEARCH_CONFIG, json.dumps(config, indent=2) + "\n", fsync=True)
        remaining = max(0, searcher.total_trials - searcher.finished)
        log.info(
            "%s %s search: %d trials (%d baselines, %d tuned, %d sampled, %d final), %d to run, on %g CPU, "
            "%g GPU per trial -> %s",
            "resuming" if resume else "starting",
            config["searcher"],
            searcher.total_trials,
            len(searcher.baselines),
            len(searcher._tuned_trials),
            searcher.num_samples,
            searcher.final_trials,
            remaining,
            res["cpu"],
            res["gpu"],
            run_dir,
        )
        rf.write_run_state(run_dir, "running", searcher.total_trials, searcher.finished)
        start = time.time()
        error = ""
        if remaining:
            limiter = ConcurrencyLimiter(
                searcher, max_concurrent=_max_concurrent(config.get("max_concurrent"), res, remaining)
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=limiter,
                    scheduler=_scheduler(scheduler if not resume else config.get("scheduler", "fifo"), config),
                    metric=objective.metric,
                    mode=objective.mode,
                    num_samples=remaining,
                    reuse_actors=True,
                    trial_name_creator=_trial_name,
                    trial_dirname_creator=_trial_name,
                ),
                run_config=tune.RunConfig(
                    name=run_dir.name,
                    storage_path=str(run_dir.parent),
                    verbose=0,
                    failure_config=tune.FailureConfig(max_failures=config.get("max_failures", 0), fail_fast=False),
                    sync_config=tune.SyncConfig(sync_period=5),
                    callbacks=list(callbacks),
                ),
            )
            signals.in_tune = True
            try:
                tuner.fit()
            except KeyboardInterrupt:
                pass
            except Exception as e:  # noqa: BLE001 - the run stays resumable; say so
                error = f"{type(e).__name__}: {e}"
            finally:
                signals.in_tune = False
        else:
            searcher._write_summaries()  # stopped after its last trial, before saying so
        if searcher.fatal_error:
            error = searcher.fatal_error
        done, total = searcher.finished, searcher.total_trials
        status = "failed" if error else ("finished" if done >= total else "interrupted")
        with contextlib.suppress(OSError):
            exported = {}
            with contextlib.suppress(OSError, ValueError, AttributeError):
                exported = rf.read_json(run_dir / rf.RUN_STATE).get("exported") or {}
            rf.write_run_state(
                run_dir,
                status if status != "failed" else "interrupted",
                total,
                done,
                **({"exported": exported} if exported else {}),
                **({"error": error} if error else {}),
                **({"seconds_this_session": round(time.time() - start, 1)} if status == "finished" else {}),
            )
        return _result(run_dir, config, status, error)
    finally:
        signals.restore()
        if started:
            import ray

            ray.shutdown()


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


def _result(run_dir: Path, config: Mapping[str, Any], status: str, error: str) -> SearchResult:
    import pandas as pd

    from search_space.plan import Plan

    objective = rf.Objective.from_config(config)
    trials = rf.read_trials(run_dir / rf.TRIALS, objective)
    final = pd.read_csv(run_dir / rf.FINAL) if (run_dir / rf.FINAL).is_file() else None
    best = Plan.load(run_dir / rf.BEST_PLAN) if (run_dir / rf.BEST_PLAN).is_file() else None
    if status == "finished" and len(trials) and not trials["status"].isin(rf.RANKED_STATUSES).any():
        error = _all_failed(trials)
        status = "failed"
    result = SearchResult(
        run_dir=run_dir, status=status, objective=objective, best_plan=best, trials=trials, final=final, error=error
    )
    result.summary = summary_text(result)
    return result


def _all_failed(trials: Any) -> str:
    """The error of a search in which no trial finished ok: the most common one, counted."""
    from search_space.describe import most_common

    errors = [str(e).strip().splitlines()[0] for e in trials["error"].fillna("") if str(e).strip()]
    text, count = most_common(errors)
    if not text:
        return f"no trial of {len(trials)} finished ok (statuses: {', '.join(sorted(set(trials['status'])))})"
    return f"every trial failed; most common error ({count} of {len(trials)} trials): {text}"


def summary_text(result: SearchResult) -> str:
    """The end-of-search lines: counts, the search stage's best and the baselines (values only),
    the final re-training's paired intervals, and the verdict."""
    from controller.final import verdict

    o, df = result.objective, result.trials
    counts = df["status"].value_counts() if len(df) else {}
    n_final = int(result.final["seeds"].sum()) if result.final is not None and len(result.final) else 0
    lines = [
        f"Search {result.status}: {len(df)} trials ("
        + ", ".join(f"{int(counts[s])} {s}" for s in rf.STATUSES if s in counts)
        + ")"
        + (f" + {n_final} final re-trainings" if n_final else "")
        + f"; run folder {result.run_dir}"
    ]
    ok = df[df["status"].isin(rf.RANKED_STATUSES)] if len(df) else df
    plain = ok[ok["baseline"].fillna("") == "none"] if len(ok) else ok
    ref = float(plain[o.metric].mean()) if len(plain) else None
    if len(ok):
        best = ok.sort_values([o.metric, "order"], ascending=[o.mode == "min", True]).iloc[0]
        label = (
            f"baseline {best['baseline']}"
            if str(best.get("baseline") or "") not in ("", "nan")
            else f"trial {best['trial_id']}"
        )
        se = best.get(o.se_column)
        se_text = f" +- {se:.4f}" if isinstance(se, float) and math.isfinite(se) else ""
        lines.append(
            f"Best in search ({label}, {o.metric} {best[o.metric]:.4f}{se_text}; the best of {len(ok)} draws, "
            "so biased upwards: the final re-training compares fairly): "
            f"{_plan_summary(best['plan_json'])}"
        )
        for name, part in ok[ok["baseline"].fillna("") != ""].groupby("baseline", sort=False):
            if str(name).startswith("tuned-"):  # a grid: its best point is the recipe
                top = part.sort_values([o.metric, "order"], ascending=[o.mode == "min", True]).iloc[0]
                lines.append(
                    f"Baseline {name} (best of {len(part)} grid points): {o.metric} {top[o.metric]:.4f}, "
                    f"{_plan_summary(top['plan_json'])}"
                )
            else:
                lines.append(f"Baseline {name}: {o.metric} {part[o.metric].mean():.4f}")
        if ref is None:
            lines.append("No regularization: no finished 'none' baseline to compare with")
        else:
            lines.append(f"No regularization: {o.metric} {ref:.4f} ({len(plain)} trial{'s' * (len(plain) > 1)})")
    else:
        lines.append("No trial finished with status ok: see the error column of trials.csv")
    if result.final is not None and len(result.final) and result.status == "finished":
        rows = result.final.to_dict("records")
        chosen = next((r for r in rows if r.get("chosen")), None)
        lines.append(
            f"Final re-training ({int(rows[0]['seeds'])} fresh seeds, validation split; paired 95% interval of the "
            "difference from the best baseline, positive = better):"
        )
        for r in rows:
            low, high = rf.as_float(r.get("diff_ci95_low")), rf.as_float(r.get("diff_ci95_high"))
            word = r.get("comparison") if isinstance(r.get("comparison"), str) else ""
            versus = (
                f"  [{low:+.4f}, {high:+.4f}] {word}"
                if math.isfinite(low) and math.isfinite(high)
                else ("  best baseline" if r["label"] == r.get("best_baseline") else f"  {word}")
            )
            lines.append(
                f"  {r['label']:<16} {o.metric} {r['mean']:.4f} +- {r['se']:.4f}{versus.rstrip()}"
                + ("   <- best_plan.json" if r is chosen else "")
            )
        lines.append(verdict(rows, o))
    if result.error:
        lines.append(f"Stopped by an error: {result.error}")
    rel = os.path.relpath(result.run_dir)
    rel = shlex.quote(str(result.run_dir) if rel.startswith("..") else rel)  # pasteable with spaces too
    lines += ["Next:", f"  python -m results summarize {rel}"]
    if len(ok):  # the others need at least one trial that finished ok (and a best plan)
        lines.append(f"  python -m results plot {rel}")
        if result.best_plan is not None:
            lines += [
                f"  python -m results export {rel} --out best_plan.json",
                f"  python -m results retrain {rel}",
            ]
    return "\n".join(lines)


def _plan_summary(plan_json: str) -> str:
    from search_space.plan import Plan

    return Plan.from_json(str(plan_json)).summary()
