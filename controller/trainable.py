"""The Ray Tune trainable that wraps a user's ``train_fn(plan, seed, report)``.

One trial trains its plan once per seed in ``config["seeds"]`` (the reward seeds), one after
the other, forwarding every ``report(**metrics)`` to Tune (``epoch`` counts epochs over all
seeds, so a scheduler sees one growing curve: the reported ``epoch`` when the child gives one,
else one per report). The last report carries ``final=True``, the
child's status, the metric's mean over the seeds, its standard error and every seed's value.

A search's ``learned`` trial (a plan whose sites learn their rates: `search_space.learned`)
also ends with ``learned_rates``, the rates each site learned (JSON, the mean over the
seeds): those the ``train_fn`` returned (our children do), else those the product reads from
the layers ``apply_plan`` inserted. A ``train_fn`` that ignored the plan, its regularizer or
its logits ends the trial ``failed`` with one line that says which (the search goes on).

A ``train_fn`` that raises is reported as status "failed" with its error (the traceback goes
to Ray's result.json) and the function returns normally: Ray then keeps the worker process for
the next trial instead of paying a new one (seconds of imports) per failure. A ``train_fn``
may return a dict of final metrics (``status`` "ok" / "diverged" / "failed", ``message``);
returning None means "ok, and the last reported metrics are final".

With a ``timeout`` (the search's ``trial_timeout``, seconds over all seeds of a trial),
``train_fn`` runs in a daemon thread and the trial waits for it with a deadline. Past it, the
trial reports a final ``status="timeout"`` and then ends its worker process (``os._exit``):
Python cannot stop a thread, and a hung child left alive would hold the worker (and, through
Ray's process-wide session, could report into the next trial). Tune's function trainable
reports synchronously: ``tune.report`` returns only when the driver asks for the next result,
so the final report has reached the driver before the process ends. Tune then sees the trial
error after its final report, and ``controller.outcome`` records it as ``timeout``.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import statistics
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from controller import run_folder as rf
from controller.stats import standard_error

__all__ = ["make_trainable", "TrainFn", "LEARNED_RATES"]

log = logging.getLogger(__name__)

#: The final report's key (and trials.csv's column) holding a learned trial's rates: JSON
#: object site -> rate, the mean over the reward seeds.
LEARNED_RATES = "learned_rates"

#: ``train_fn(plan, seed, report)``: builds and trains the user's model under ``plan`` with
#: ``seed``, calling ``report(**metrics)`` once per epoch.
TrainFn = Callable[[Any, int, Callable[..., None]], "Mapping[str, Any] | None"]


def _scalars(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The reportable values: numbers (numpy and 0-d torch numbers too, as Python numbers),
    strings, booleans and None; anything else is left out."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if hasattr(v, "item") and getattr(v, "ndim", getattr(v, "dim", lambda: 0)) in (0, ()):
            v = v.item()  # np.float32(0.9), torch.tensor(0.9)
        elif not isinstance(v, (bool, str)) and isinstance(v, numbers.Real):
            v = int(v) if isinstance(v, numbers.Integral) else float(v)
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = float(v) if isinstance(v, float) else v
    return out


def _node_name() -> str:
    import ray

    return f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"


def make_trainable(
    train_fn: TrainFn, objective: rf.Objective, timeout: float | None = None
) -> Callable[[dict[str, Any]], None]:
    """The function Tune runs per trial (a closure, so train_fn travels with it); ``timeout``:
    seconds a trial may run over all its seeds (None: no limit)."""

    def autodropout_trial(config: dict[str, Any]) -> None:
        run_trial(config, train_fn, objective, timeout)

    return autodropout_trial


class _SeedReporter:
    """``report(**metrics)`` for one seed of a trial: forwards each epoch to Tune (``epoch``
    counted over all seeds) and keeps what the seed reported and its best value."""

    def __init__(self, index: int, metric: str, sign: float, node: str, state: dict[str, Any]) -> None:
        self.index, self.metric, self.sign, self.node, self.state = index, metric, sign, node, state
        self.base = state["epoch"]  # epochs of the earlier seeds
        self.seen: dict[str, Any] = {}
        self.best = [float("nan")]

    def __call__(self, **metrics: Any) -> None:
        from ray import tune

        if self.state.get("timed_out"):  # a late report of a child past its deadline: dropped
            return
        values_now = _scalars(metrics)
        epoch = values_now.get("epoch")  # a child that validates every few epochs says which
        if isinstance(epoch, int) and not isinstance(epoch, bool) and self.base + epoch > self.state["epoch"]:
            self.state["epoch"] = self.base + epoch
        else:
            self.state["epoch"] += 1
        self.seen.update(values_now)
        value = values_now.get(self.metric)
        if (
            isinstance(value, (int, float))
            and math.isfinite(value)
            and abs(value) <= rf.METRIC_MAX
            and not self.sign * self.best[0] >= self.sign * value
        ):
            self.best[0] = float(value)
        self.state["in_report"] = True
        tune.report(
            {
                **values_now,
                "epoch": self.state["epoch"],
                "seed_index": self.index,
                "status": "running",
                "final": False,
                "node": self.node,
            }
        )
        self.state["in_report"] = False


class _PastDeadline(Exception):
    """train_fn was still running at the trial's deadline."""


def _call_with_deadline(train_fn: TrainFn, plan: Any, seed: int, report: Callable[..., None], deadline: float) -> Any:
    """``train_fn(plan, seed, report)`` in a daemon thread; its return value or its exception
    (BaseException too: Tune ends a trial by raising SystemExit inside ``report``), or
    _PastDeadline when it is still running at ``deadline`` (time.monotonic())."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["returned"] = train_fn(plan, seed, report)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the trial's own thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"train_fn-seed-{seed}", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        raise _PastDeadline
    if "error" in box:
        raise box["error"]
    return box.get("returned")


def _end_worker() -> None:
    """End this worker process: the only way to stop a child thread that runs past its deadline."""
    logging.shutdown()
    os._exit(0)


def run_trial(
    config: Mapping[str, Any], train_fn: TrainFn, objective: rf.Objective, timeout: float | None = None
) -> None:
    from ray import tune

    metric, sign = objective.metric, (1.0 if objective.mode == "max" else -1.0)
    plan, seeds = config["plan"], [int(s) for s in config["seeds"]]
    node = _node_name()
    state: dict[str, Any] = {"in_report": False, "epoch": 0}
    values: list[float] = []
    bests: list[float] = []
    extra: dict[str, Any] = {}
    learning = _is_learning(plan)
    rates: list[dict[str, float]] = []  # a learned trial: each seed's learned rates
    deadline = None if timeout is None else time.monotonic() + float(timeout)

    def final(status: str, **fields: Any) -> None:
        tune.report(
            {
                **extra,
                metric: float("nan"),
                **fields,
                "final": True,
                "status": status,
                "epoch": state["epoch"],
                "node": node,
            }
        )

    for index, seed in enumerate(seeds):
        report = _SeedReporter(index, metric, sign, node, state)
        seen, best = report.seen, report.best
        try:
            if deadline is None:
                returned = train_fn(plan, seed, report)
            else:
                returned = _call_with_deadline(train_fn, plan, seed, report, deadline)
        except _PastDeadline:
            state["timed_out"] = True
            message = (
                f"trial_timeout: ran past the limit of {float(timeout or 0):g} s (seed {seed}, "
                f"{state['epoch']} epoch(s) reported); its worker process was ended"
            )
            log.warning("trial %s: %s", tune.get_context().get_trial_id(), message)
            try:
                final(rf.TIMEOUT, error=message)
            finally:  # also when Tune ends the trial inside that report: the hung thread must go
                _end_worker()
        except Exception as exc:
            if state["in_report"]:  # Tune itself is ending the trial: not a child failure
                raise
            final(rf.FAILED, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=-8))
            return
        result = {**seen, **_scalars(dict(returned or {}))}
        extra = {k: result[k] for k in ("precision", "seconds") if k in result}
        status = str(result.get("status", rf.OK))
        message = str(result.get("message") or result.get("error") or "")
        if status not in rf.CHILD_STATUSES:
            final(
                rf.FAILED,
                error=f"status: bad value {status!r} returned by train_fn; allowed: {', '.join(rf.CHILD_STATUSES)}",
            )
            return
        if status != rf.OK:
            final(status, error=message or status)
            return
        value = result.get(metric)
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or abs(value) > rf.METRIC_MAX
        ):
            final(
                rf.FAILED,
                error=f"{metric}: bad value {value!r} at the end of seed {seed}; "
                f"allowed: a finite number of magnitude at most {rf.METRIC_MAX:g} reported with report({metric}=...)",
            )
            return
        if learning:
            seed_rates, why = _learned_rates(plan, returned)
            if why:
                final(rf.FAILED, error=f"learned rates (seed {seed}): {why}")
                return
            rates.append(seed_rates)
        values.append(float(value))
        bests.append(best[0] if math.isfinite(best[0]) else float(value))
    mean = statistics.fmean(values)
    se = standard_error(values)
    final(
        rf.OK,
        **{
            metric: mean,
            objective.se_column: se,
            objective.best_column: statistics.fmean(bests),
            objective.seeds_column: json.dumps(values),
            "error": "",
            **({LEARNED_RATES: json.dumps(_mean_rates(rates))} if learning else {}),
        },
    )


def _is_learning(plan: Any) -> bool:
    from search_space.learned import is_learning_plan

    return is_learning_plan(plan)


def _learned_rates(plan: Any, returned: Any) -> tuple[dict[str, float], str]:
    """A learned trial's rates after one seed, and "" ; or ({}, why there are none). The rates a
    ``train_fn`` returns (``learned_rates``, as our children do) are taken as they are; else the
    product reads them from the layers ``apply_plan`` put in the model (`search_space.learned.trained_rates`,
    which also says when the loop ignored the plan, its regularizer or its logits)."""
    from search_space.learned import trained_rates
    from search_space.plan import LEARNED_METHOD

    given = returned.get(LEARNED_RATES) if isinstance(returned, Mapping) else None
    if given is None:
        return trained_rates(plan)
    trained_rates(plan)  # forget the layers of this seed either way
    if not isinstance(given, Mapping) or not given:
        return {}, f"{LEARNED_RATES}: bad value {given!r} returned by train_fn; allowed: a mapping site -> rate"
    learned = {str(s) for s, spec in plan.sites.items() if spec.method == LEARNED_METHOD}
    out: dict[str, float] = {}
    for site, rate in given.items():
        r = rate.item() if hasattr(rate, "item") else rate
        if str(site) not in learned or isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 <= r <= 1:
            return {}, f"{LEARNED_RATES}[{site!r}]: bad value {rate!r}; allowed: a rate in [0, 1] at a learned site"
        out[str(site)] = float(r)
    return out, ""


def _mean_rates(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Each site's rate averaged over the seeds that learned one (6 decimals)."""
    sites = list(dict.fromkeys(s for rates in per_seed for s in rates))
    return {s: round(statistics.fmean(r[s] for r in per_seed if s in r), 6) for s in sites}
