"""How a finished trial is recorded and rewarded, from its last result and Ray's word.

Reward of a finished trial (the run's ``Objective`` turns a metric value into a reward, e.g.
minus the loss for ``mode="min"``):
- ``ok``: the final value of the metric (last epoch, mean over the reward seeds);
- ``stopped`` (ended early by a scheduler, e.g. ASHA): its last reported value, a natural
  penalty since it trained fewer epochs;
- ``timeout`` (past ``trial_timeout``), ``diverged``, or ``failed`` inside the child: the
  penalty reward (default: the worst reward seen so far), error recorded;
- ``failed`` without any report (worker crash, node lost): recorded but left out of the
  update, because it says nothing about the plan.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from controller import run_folder as rf

__all__ = ["TrialOutcome", "trial_outcome", "NO_REPORT_ERROR", "PARTIAL_ERROR"]

NO_REPORT_ERROR = (
    "trial errored in Ray before the child reported (worker crash or node loss); see error.txt in the trial directory"
)
PARTIAL_ERROR = (
    "trial errored in Ray after the child reported {epochs} epoch(s) (worker "
    "crash or node loss); {metric} {value} is the last, partial value; see "
    "error.txt in the trial directory"
)


@dataclass(frozen=True)
class TrialOutcome:
    """How one finished trial is recorded and rewarded (see the module docstring)."""

    status: str
    value: float
    best_value: float
    reward: float | None  # None: recorded but not used by the controller
    error: str


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


_DEFAULT_OBJECTIVE = rf.Objective()


def trial_outcome(
    result: Mapping[str, Any] | None, errored: bool, penalty: float | None, objective: rf.Objective = _DEFAULT_OBJECTIVE
) -> TrialOutcome:
    """Status and reward of a trial from its last result and whether Ray saw it error.

    The trainable marks its last report with ``final=True`` and a child status (ok,
    diverged, failed); a trial whose last result is not final was stopped early.
    """
    res = dict(result or {})
    if res and "final" not in res and not errored:
        # a plain trainable (not ours: no final report) that ended normally: its last result is final
        res = {**res, "final": True, "status": rf.OK}
    final = bool(res.get("final"))
    val, best = _num(res.get(objective.metric)), _num(res.get(objective.best_column))
    error = str(res.get("error") or res.get("message") or "")
    if final:
        status = str(res.get("status", rf.OK))
        if status not in rf.CHILD_STATUSES:
            error = error or f"unknown child status {status!r}"
            status = rf.FAILED
        if errored and status == rf.OK:  # the child finished; its worker failed afterwards
            error = error or "the worker failed after the child's final report (value kept)"
    elif errored:
        status = rf.FAILED
        if not error:
            error = (
                PARTIAL_ERROR.format(epochs=res.get("epoch"), metric=objective.metric, value=f"{val:.6g}")
                if res.get("epoch") and math.isfinite(val)
                else NO_REPORT_ERROR
            )
    else:
        status = rf.STOPPED
    if status in (rf.OK, rf.STOPPED) and math.isfinite(val) and abs(val) > rf.METRIC_MAX:
        # e.g. 1e308 from a buggy child: no measurement, and its sums would overflow
        status, final = rf.FAILED, True
        error = (
            f"{objective.metric}: bad value {val:g} reported by the child; "
            f"allowed: a finite number of magnitude at most {rf.METRIC_MAX:g}"
        )
    if not math.isfinite(best) or abs(best) > rf.METRIC_MAX:
        best = val
    reward: float | None
    if status in (rf.OK, rf.STOPPED):
        r = objective.reward(val) if math.isfinite(val) else float("nan")
        reward = r if math.isfinite(r) else (penalty if final else None)
    elif final:  # diverged, or the child itself failed: the plan's fault as far as we know
        reward = penalty
    else:
        reward = None
    if status == rf.DIVERGED and not error:
        error = "loss became NaN/inf"
    return TrialOutcome(status, val, best, reward, error)
