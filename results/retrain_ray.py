"""``retrain``'s trainings on Ray, started the way the search starts its own.

Why: one training after another in the driver keeps one core of a laptop busy and leaves a
cluster idle. Here each (plan, seed) training, test split evaluated once, is a Ray task. Ray is
started or joined through ``controller.ray_session`` as the search does (``--address``,
per-trial CPUs and fractional GPUs checked against the cluster, the user's functions shipped,
SIGTERM handled like Ctrl+C), so every core, or every node, trains at once. Each finished
training reaches the driver, which appends it to the ledger (``results.retrain_ledger``) before
anything else: what finished is on disk whatever stops the command next.

Why tasks and not Tune trials: the list of trainings is fixed and independent, so Tune's
searchers and schedulers have nothing to do, while a Tune experiment costs seconds to set up
and starts a fresh actor process (imports, torch) per experiment; tasks reuse Ray's warm worker
processes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller import run_folder as rf

__all__ = ["Job", "RayOptions", "Outcome", "RetrainIncomplete", "run_jobs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One training to run: the plan (as a dict, it travels to a worker) under its label, one seed."""

    label: str
    kind: str
    seed: int
    plan_hash: str
    plan: dict[str, Any]


@dataclass(frozen=True)
class RayOptions:
    """Where the trainings run: ``address`` None starts a local Ray with every CPU (and GPU) of
    this machine; ``gpus_per_trial`` None is 0.25 on a cluster with GPUs, else 0 (as the search);
    ``max_concurrent`` None: as many as the resources allow; ``runtime_env`` ships the code to
    a cluster (``controller.ray_session.code_runtime_env``)."""

    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float | None = None
    max_concurrent: int | None = None
    runtime_env: Mapping[str, Any] | None = None


@dataclass
class Outcome:
    """How the trainings ended: ``finished`` ones handed over, ``errors`` (trainings that ended
    without a result, e.g. a worker that died), and whether the run was interrupted."""

    finished: int = 0
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False


class RetrainIncomplete(RuntimeError):
    """Not every training finished (interrupted, or trainings that ended without a result in
    Ray): what did is in the ledger, and the same command run again trains the rest."""

    def __init__(self, finished: int, total: int, errors: list[str], interrupted: bool, ledger: Path) -> None:
        self.finished, self.total, self.errors = finished, total, list(errors)
        self.interrupted, self.ledger = interrupted, ledger
        head = "interrupted" if interrupted else f"{len(errors)} training(s) ended without a result"
        first = f" (first: {errors[0]})" if errors else ""
        again = "retry" if errors and not interrupted else "train"
        super().__init__(
            f"{head}{first}: {finished} of {total} trainings are recorded in {ledger}; "
            f"run the same command again to {again} the other {total - finished}"
        )


def _result_of(returned: Mapping[str, Any] | None, test: str, val: str) -> dict[str, Any]:
    """The child's return value as the training's record: status, metrics, epochs, seconds."""
    r = dict(returned or {})
    status = str(r.get("status", rf.OK))
    message = str(r.get("message") or r.get("error") or "")
    if status not in rf.CHILD_STATUSES:
        status, message = rf.FAILED, f"status: bad value {status!r} returned by the child"
    epochs = rf.as_float(r.get("epochs"))
    out = {
        "status": status,
        test: rf.as_float(r.get(test)),
        val: rf.as_float(r.get(val)),
        "epochs": int(epochs) if math.isfinite(epochs) else 0,
        "seconds": rf.as_float(r.get("seconds")),
        "message": message,
    }
    if status == rf.OK and not math.isfinite(out[test]):
        out["status"], out["message"] = rf.FAILED, f"{test}: not reported by the child (it must evaluate test)"
    return out


def train_one(train_fn: Callable[..., Any], plan: dict[str, Any], seed: int, test: str, val: str) -> dict[str, Any]:
    """One training, in a Ray worker: ``train_fn(plan, seed, report)``
    (``child_trainer.trial.ChildTrain``); a child that raises is a failed training."""
    import time

    import ray

    from search_space import Plan

    start = time.time()
    try:
        returned = train_fn(Plan.from_dict(plan), seed, lambda **metrics: None)
    except Exception as exc:  # noqa: BLE001 - a child's failure is a result, recorded
        returned = {"status": rf.FAILED, "message": f"{type(exc).__name__}: {exc}"}
    result = _result_of(returned, test, val)
    if not math.isfinite(result["seconds"]):
        result["seconds"] = time.time() - start
    ctx = ray.get_runtime_context()
    result["node"] = f"{ray.util.get_node_ip_address()}/{ctx.get_node_id()[:8]}"
    result["task_id"] = ctx.get_task_id() or ""
    return result


def _first_line(exc: BaseException) -> str:
    """What went wrong in one line: a task's own exception (RayTaskError.cause), else Ray's words."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
        text = f"{type(cause).__name__}: {cause}"
    else:
        text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def run_jobs(
    jobs: Sequence[Job],
    train_fn: Callable[..., Any],
    objective: rf.Objective,
    on_result: Callable[[Job, dict[str, Any]], None],
    options: RayOptions = RayOptions(),
) -> Outcome:
    """Train every job as a Ray task, at most as many at once as the resources allow;
    ``on_result(job, result)`` runs in this process for each finished one, as it finishes.
    Ctrl+C or SIGTERM stops submitting and returns with ``interrupted`` set (the running
    trainings end with the Ray this started, or finish unrecorded on a cluster it joined)."""
    import ray

    from controller.ray_session import Signals, max_concurrent, ship_by_value, start_ray, trial_resources

    if not jobs:
        return Outcome()
    test, val = rf.test_metric(objective), objective.metric
    signals = Signals()  # SIGTERM raises KeyboardInterrupt here, as Ctrl+C does
    signals.install()
    started = start_ray(options.address, options.runtime_env)
    pending: dict[Any, Job] = {}
    outcome = Outcome()
    try:
        signals.install()  # again: ray.init replaced the handler
        res = trial_resources({"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial})
        ship_by_value(train_fn)
        limit = max_concurrent(options.max_concurrent, res, len(jobs))
        log.info("retraining: %d trainings on Ray, %d at once, %g CPU and %g GPU each", len(jobs), limit, *res.values())
        task = ray.remote(train_one)
        fn = ray.put(train_fn)
        queue = list(jobs)
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    job = queue.pop(0)
                    ref = task.options(
                        num_cpus=res["cpu"],
                        num_gpus=res["gpu"],
                        max_retries=0,  # as the search (max_failures 0): the same command retries
                        name=f"retrain {job.label} seed {job.seed}",
                    ).remote(fn, job.plan, job.seed, test, val)
                    pending[ref] = job
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    job = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as exc:  # the worker died, the node was lost, ...
                        outcome.errors.append(f"{job.label} seed {job.seed}: {_first_line(exc)}")
                        continue
                    on_result(job, result)
                    outcome.finished += 1
        except KeyboardInterrupt:
            outcome.interrupted = True
        return outcome
    finally:
        # Interrupted (or on_result failed) with trainings running: a Ray we started goes down with
        # them. On a cluster we joined they are left to finish unrecorded: ray.cancel can race a
        # task's completion and abort this process in Ray 2.x ("Tried to complete task that was
        # not pending", ray-project/ray#54738), and the ledger makes a lost training cheap.
        if pending and not started:
            log.warning("%d training(s) still running on the cluster finish without being recorded", len(pending))
        signals.restore()
        if started:
            ray.shutdown()
