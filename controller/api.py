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
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from controller import run_folder as rf
from controller.checks import (
    FINAL_SEED_OFFSET,
    MAX_TRIALS,
    _check_callbacks,
    _check_int,
    _check_local_cpus,
    _check_seed_room,
    check_address,
    check_name,
    check_resources,
    check_seed,
    check_storage,
    check_trial_timeout,
    resolve_sites,
)
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
from controller.trainable import TrainFn, make_trainable
from search_space.errors import UserTypeError, user_error

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

SCHEDULERS = ("fifo", "asha")


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
    layouts: Mapping[str, str] | None = None,
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
        example_input: one input batch of the model: a tensor, a tuple of positional arguments
            or a dict of keyword arguments (``search_space.probe.call_model``); sites, their
            layouts and methods then come from one forward pass (``search_space.describe``).
        layouts: site path or glob pattern -> layout name (``{"stages.*": "NHWC"}``, see
            ``search_space.layouts``) for sites whose layout the evidence does not show;
            checked against the output shapes.
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
    if methods is not None and (isinstance(methods, str) or not all(isinstance(m, str) for m in methods)):
        raise user_error(
            "methods", detail=f"expected None or a list of method names, got {methods!r}", cls=UserTypeError
        )
    if not isinstance(verbose, (bool, int)):
        raise user_error("verbose", detail=f"expected a bool, got {type(verbose).__name__}", cls=UserTypeError)
    callbacks = _check_callbacks(callbacks)
    objective = rf.Objective(metric, mode, reward_transform)
    _check_int("num_samples", num_samples, 1, MAX_TRIALS)
    _check_int("reward_seeds", reward_seeds, 1, 1000)
    _check_int("final_top_k", final_top_k, 0, MAX_TRIALS)
    _check_int("final_seeds", final_seeds, 0, 1000)
    if final_top_k and not final_seeds:
        raise user_error(
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
        raise user_error("controller_lr", controller_lr, "a number in (0, 1]")
    if isinstance(scheduler, str):
        if scheduler not in SCHEDULERS:
            raise user_error("scheduler", scheduler, f"{', '.join(SCHEDULERS)} or a ray.tune TrialScheduler")
        if scheduler == "asha":
            _check_int("max_epochs", max_epochs, 1)
    from controller.policies import SEARCHERS

    if search not in SEARCHERS:
        raise user_error("search", search, ", ".join(SEARCHERS))
    if penalty_reward is not None and (
        isinstance(penalty_reward, bool)
        or not isinstance(penalty_reward, (int, float))
        or not math.isfinite(penalty_reward)
    ):
        raise user_error("penalty_reward", penalty_reward, "a finite number or None (the worst reward so far)")
    check_resources(resources_per_trial)
    check_address(address)
    if address is None:
        _check_local_cpus(resources_per_trial)
    storage = check_storage(storage_path)
    if resume and not name:
        raise user_error("name", None, "the name of the run to resume", detail="missing")
    name = check_name(name or f"{model_name or 'model'}-{search}-{time.strftime('%Y%m%d-%H%M%S')}")
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
            raise user_error(
                "name",
                name,
                "a new name, or resume the run",
                detail=f"bad value {name!r} (run folder {run_dir} already exists)",
            )
        space, baseline_plans = _space_and_baselines(
            model_fn, sites, methods, model_name, baselines, example_input, layouts
        )
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

    methods = tuned_methods(space)
    if tuned_trials == "auto":
        per = int(0.25 * num_samples / len(methods)) if methods and num_samples >= 4 * len(methods) else 0
    else:
        _check_int("tuned_trials", tuned_trials, 0, max(0, num_samples - 1))
        if tuned_trials and (not methods or tuned_trials < len(methods)):
            raise user_error(
                "tuned_trials",
                tuned_trials,
                f"0, auto, or at least one per tuned method ({', '.join(methods) or 'none fit this space'})",
            )
        per = tuned_trials // len(methods) if methods else 0
    per = min(per, *(len(TUNED_GRIDS[m]) for m in methods)) if per else 0
    out = {m: tuned_grid(space, m, per, exclude) for m in methods} if per else {}
    out = {m: plans for m, plans in out.items() if plans}  # a method no site allows is not tuned
    if out:
        log.info(
            "tuned global recipes: %d of %d trainings (%s; %d grid points each)",
            per * len(methods),
            num_samples,
            ", ".join(methods),
            per,
        )
    return out


def _space_and_baselines(
    model_fn: Callable[[], Any],
    sites: Any,
    methods: Any,
    model_name: str,
    baselines: Any,
    example_input: Any,
    layouts: Mapping[str, str] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The search space and the baseline plans, checked before Ray starts. With
    ``example_input`` the space comes from output shapes (``search_space.describe``) and
    every method is tried forward and backward on it (``check_plans``), so a plan that cannot
    train is refused here, naming the site, the method and the shape."""
    from torch import nn

    from search_space.apply import find_sites
    from search_space.baselines import BASELINES, baseline_plans, convnet_baselines
    from search_space.describe import candidate_sites, check_plans
    from search_space.plan import Plan
    from search_space.space import SearchSpace

    model = model_fn()
    if not isinstance(model, nn.Module):
        raise user_error(
            "model_fn",
            detail=f"returned a {type(model).__name__}; expected a function returning an nn.Module",
            cls=UserTypeError,
        )
    if example_input is not None:
        found = candidate_sites(model, example_input)
        chosen, share = resolve_sites(found, sites, modules=[n for n, _ in model.named_modules() if n])
        space = SearchSpace.for_model(
            model,
            sites=chosen,
            share=share,
            methods=methods,
            model_name=model_name,
            example_input=example_input,
            layouts=layouts,
        )
        check_plans(model, space, example_input)
    else:
        found = find_sites(model)
        chosen, share = resolve_sites(found, sites)
        space = SearchSpace.for_model(
            model, sites=chosen, share=share, methods=methods, model_name=model_name, layouts=layouts
        )
    if isinstance(baselines, Mapping):
        plans = {
            str(k): space.with_layouts(v if isinstance(v, Plan) else Plan.from_dict(v)) for k, v in baselines.items()
        }
    else:
        names = tuple(baselines or ())
        unknown = [n for n in names if n not in BASELINES]
        if unknown:
            raise user_error("baselines", unknown[0], ", ".join(BASELINES))
        if not convnet_baselines(space):
            # a Transformer or recurrent model (the practitioners' recipe), or one without maps
            allowed = space.baseline_plans()
            bad = [n for n in names if n not in allowed]
            if bad:
                kind = "a Transformer or recurrent model" if "seq_pattern" in space.methods else "a model without maps"
                raise user_error("baselines", bad[0], f"{', '.join(allowed)} (for {kind})")
            plans = {n: allowed[n] for n in names}
        elif any(n != "none" for n in names) and example_input is None:
            raise user_error(
                "example_input",
                None,
                "one input batch of the model (baselines other than 'none' place their layers by feature-map size)",
            )
        elif names == ("none",) or not names:
            plans = {"none": Plan.none(space.sites, model=model_name)} if names else {}
        else:
            plans = baseline_plans(model, space.sites, example_input, model_name, names, space.layouts or None)
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
