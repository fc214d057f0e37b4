"""Search a regularization plan for *your* model and training loop, with Ray Tune.

    from controller import run_search

    def model_fn():                       # any nn.Module: its sites make the search space
        return MyNet()

    def train_fn(plan, seed, report):     # runs in a Ray worker, once per trial and seed
        torch.manual_seed(seed)
        model = apply_plan(MyNet(), plan, total_steps=steps, n_train=len(train_set))
        opt = SGD(learned_param_groups(model), lr=0.1)  # the learned baseline's logits too
        for epoch in range(epochs):
            ...train one epoch: loss + learned_regularizer(model); step_schedulers(model) after each step...
            report(val_loss=validate(model))

    config = SearchConfig(metric="val_loss", mode="min", num_samples=32)
    result = run_search(model_fn, train_fn, config)   # or run_search(..., metric="val_loss", ...)
    result.best_plan.save("plan.json"); print(result.trials)

Every setting is a field of ``controller.config.SearchConfig`` (saved in the run folder) or
``RunConfig`` (where this driver runs). Ray Tune runs the trials (resources, ASHA, fault
tolerance, resume); a searcher from ``controller.searcher`` proposes the plans and writes the
run folder (``controller.run_folder``). Every argument is checked before Ray starts
(ValueError naming the argument and value).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from controller import run_folder as rf
from controller.checks import (
    _check_local_cpus,
    check_address,
    check_name,
    check_resources,
    check_seed,
    check_storage,
    check_trial_timeout,
    resolve_sites,
)
from controller.config import SCHEDULERS, RunConfig, SearchConfig
from controller.learned import learning_plan_of
from controller.ray_session import (
    _max_concurrent,
    _quiet_tune,
    _resources,
    _scheduler,
    _ship_by_value,
    _show_progress,
    _Signals,
    _start_ray,
    _trial_name,
)
from controller.run_folder import CONFIG_VERSION
from controller.run_folder.report import SearchResult, _result, summary_text
from controller.run_folder.resume import check_resumable, searcher_from_config
from controller.run_folder.settings import config_json, resume_settings, write_config
from controller.space_setup import _space_and_baselines
from controller.space_setup import tuned_recipes as tuned_recipes
from controller.trainable import TrainFn, make_trainable
from search_space.errors import UserTypeError, user_error

__all__ = [
    "run_search",
    "SearchConfig",
    "RunConfig",
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

#: Older keyword names run_search still takes: resources_per_trial={"cpu": c, "gpu": g}
#: (cpus_per_trial, gpus_per_trial) and extra_config (extra).
ALIASES = ("resources_per_trial", "extra_config")


# ----------------------------------------------------------------------------- the search
def run_search(
    model_fn: Callable[[], Any],
    train_fn: TrainFn,
    config: SearchConfig | None = None,
    run: RunConfig | None = None,
    *,
    resume: bool = False,
    example_input: Any = None,
    **settings: Any,
) -> SearchResult:
    """Search a regularization plan for ``model_fn()``'s network trained by ``train_fn``.

    Args:
        model_fn: returns the (unregularized) model; called once on the driver to find its
            sites (``search_space.find_sites``) and build the search space.
        train_fn: ``train_fn(plan, seed, report)``; builds and trains the model under the
            ``search_space.Plan`` (``apply_plan``) with ``seed``, calls ``report(**metrics)``
            once per epoch (the config's ``metric`` among them), and may return final metrics
            (``status`` ok / diverged / failed). Runs in Ray workers: it must be picklable.
        config: every setting of the search (``controller.config.SearchConfig``: budget,
            stages, objective, sites, searcher, limits); saved in search_config.json.
        run: where this driver runs it (``controller.config.RunConfig``: ``storage_path``,
            ``name``, ``address``, ``runtime_env``, ``callbacks``, ``verbose``); never saved.
        resume: finish the run folder ``storage_path/name``. Its settings are the folder's,
            not the caller's (a setting given that differs is ignored, with a warning); only
            code and where Ray runs come from the caller (``run_folder.settings``).
        example_input: one input batch of the model: the space then comes from its output
            shapes, every method is tried on it, and the baselines other than "none" need it.
        **settings: any field of ``SearchConfig`` or ``RunConfig`` by name (``num_samples=8,
            search="tpe", name="mine"``), over ``config`` and ``run``; ``resources_per_trial``
            ({"cpu": 1, "gpu": 0.25}) and ``extra_config`` are older names of
            ``cpus_per_trial``/``gpus_per_trial`` and ``extra``.

    Raises TypeError for an argument of the wrong type and ValueError (``FieldError``) for a
    bad value, both naming the argument, before Ray starts.
    """
    if not callable(model_fn):
        raise user_error(
            "model_fn",
            detail=f"expected a function returning an nn.Module, got {type(model_fn).__name__}",
            cls=UserTypeError,
        )
    if not callable(train_fn):
        raise user_error(
            "train_fn",
            detail=f"expected a function (plan, seed, report), got {type(train_fn).__name__}",
            cls=UserTypeError,
        )
    config, run, given = _configs(config, run, settings)
    check_address(run.address)
    if run.address is None:
        _check_local_cpus({"cpu": config.cpus_per_trial})
    storage = check_storage(run.storage_path)
    if resume and not run.name:
        raise user_error("name", None, "the name of the run to resume", detail="missing")
    name = check_name(run.name or f"{config.model_name or 'model'}-{config.search}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = storage / name
    lock = rf.RunFolderLock(run_dir)
    try:
        lock.acquire()
    except rf.RunFolderBusy as exc:
        raise user_error(
            "name", name, "a run folder no other driver uses", detail=f"bad value {name!r} ({exc})"
        ) from None
    try:
        if resume:
            saved_settings = check_resumable(run_dir)
            resumed = resume_settings(saved_settings, given, quiet=True)
            if resumed != config:  # the caller's settings are not the folder's already: say what is ignored
                resumed = resume_settings(saved_settings, given)
            config = resumed
            saved = rf.read_json(run_dir / rf.SEARCH_CONFIG)
            searcher = searcher_from_config(config, saved, run_dir)
            searcher.resume()  # the ledger and the JSON state; refuses what it did not write
            return _execute(run_dir, config, saved, searcher, train_fn, run, resume=True)
        if run_dir.exists():
            raise user_error(
                "name",
                name,
                "a new name, or resume the run",
                detail=f"bad value {name!r} (run folder {run_dir} already exists)",
            )
        space, baseline_plans = _space_and_baselines(model_fn, config, example_input)
        tuned = tuned_recipes(space, config.tuned_trials, config.num_samples, exclude=list(baseline_plans.values()))
        learned = learning_plan_of(space) if config.learned_rates else None
        started = config_json(config, space=space, baselines=baseline_plans, tuned=tuned, learned=learned)
        searcher = searcher_from_config(config, started, run_dir)
        return _execute(run_dir, config, started, searcher, train_fn, run, resume=False)
    finally:
        lock.release()


def _configs(
    config: SearchConfig | None, run: RunConfig | None, settings: Mapping[str, Any]
) -> tuple[SearchConfig, RunConfig, dict[str, Any]]:
    """``config`` and ``run`` with the keyword ``settings`` over them (each checked once), and
    the settings the caller gave (what a resume compares with the folder's)."""
    for value, cls in ((config, SearchConfig), (run, RunConfig)):
        if value is not None and not isinstance(value, cls):
            raise user_error(
                cls.__name__, detail=f"expected a {cls.__name__}, got {type(value).__name__}", cls=UserTypeError
            )
    kw = dict(settings)
    if "resources_per_trial" in kw:
        resources = kw.pop("resources_per_trial") or {}
        check_resources(resources)
        kw.update(cpus_per_trial=resources.get("cpu", 1.0), gpus_per_trial=resources.get("gpu"))
    if "extra_config" in kw:
        kw["extra"] = kw.pop("extra_config") or {}
    search_fields = {f.name for f in dataclasses.fields(SearchConfig)}
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(kw) - search_fields - run_fields)
    if unknown:
        raise user_error(
            unknown[0],
            detail="not a setting of run_search",
            allowed="a field of SearchConfig or RunConfig, or resume, example_input",
            cls=UserTypeError,
        )
    base = config or SearchConfig()
    defaults = SearchConfig()
    given = {f: getattr(base, f) for f in search_fields if getattr(base, f) != getattr(defaults, f)}
    given.update({k: v for k, v in kw.items() if k in search_fields})
    config = dataclasses.replace(base, **{k: v for k, v in kw.items() if k in search_fields})
    run = dataclasses.replace(run or RunConfig(), **{k: v for k, v in kw.items() if k in run_fields})
    return config, run, given


def _execute(
    run_dir: Path,
    config: SearchConfig,
    started: Mapping[str, Any],
    searcher: Any,
    train_fn: TrainFn,
    run: RunConfig,
    *,
    resume: bool,
) -> SearchResult:
    """Run ``searcher``'s trials with a Ray Tune Tuner. A resume is a new Tuner over the same
    run folder, its searcher already rebuilt from the ledger: Ray's snapshot is not needed.
    ``started``: search_config.json (what the start resolved beside the settings)."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    objective = rf.Objective.from_config(started)
    _quiet_tune()
    signals = _Signals()
    signals.install()
    ours = _start_ray(run.address, run.runtime_env)
    try:
        signals.install()
        res = _resources({"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial})
        _ship_by_value(train_fn)
        trainable = tune.with_resources(make_trainable(train_fn, objective, config.trial_timeout), res)
        if run.verbose:
            _show_progress()
        if not resume:
            run_dir.mkdir(parents=True, exist_ok=False)
            write_config(run_dir, started)
        remaining = max(0, searcher.total_trials - searcher.finished)
        log.info(
            "%s %s search: %d trials (%d baselines, %d tuned, %d sampled, %d final), %d to run, on %g CPU, "
            "%g GPU per trial -> %s",
            "resuming" if resume else "starting",
            config.search,
            searcher.total_trials,
            searcher.fixed[0].size,
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
                searcher, max_concurrent=_max_concurrent(config.max_concurrent, res, remaining)
            )
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=limiter,
                    scheduler=_scheduler(config.scheduler, {**started, "max_epochs": config.max_epochs}),
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
                    failure_config=tune.FailureConfig(max_failures=config.max_failures, fail_fast=False),
                    sync_config=tune.SyncConfig(sync_period=5),
                    callbacks=list(run.callbacks),
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
        return _result(run_dir, started, status, error)
    finally:
        signals.restore()
        if ours:
            import ray

            ray.shutdown()
