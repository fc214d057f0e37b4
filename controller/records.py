"""What the searcher keeps of each finished trial: its ledger row (``trial_row``) and the
running tallies over the rows (``Tally``: the best trial, the worst ok reward for the penalty,
each plan's latest reward for redraws, the failures), kept as the rows come so the driver's
cost per trial stays flat."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from controller import run_folder as rf
from controller.outcome import TrialOutcome
from search_space.plan import plan_key

__all__ = ["trial_row", "Tally"]


def trial_row(
    trial_id: str,
    entry: Mapping[str, Any],
    outcome: TrialOutcome,
    result: Mapping[str, Any] | None,
    objective: rf.Objective,
    searcher: str,
) -> dict[str, Any]:
    """The columns every trial's row has (trials.csv and final_trials.csv alike); the stage
    adds its own (order, kind or label, seed, ...). ``entry`` is the running trial."""
    res = result or {}
    o = objective
    plan = entry["plan"]
    seconds = res.get("seconds")
    return {
        "trial_id": trial_id,
        "searcher": searcher,
        "status": outcome.status,
        o.metric: outcome.value,
        o.se_column: rf.finite_or_none(res.get(o.se_column)),
        o.seeds_column: res.get(o.seeds_column) or "",
        o.best_column: outcome.best_value,
        "reward": outcome.reward,
        "error": outcome.error,
        "node": res.get("node") or "",
        "precision": res.get("precision") or "",  # amp=auto: bf16 or fp32 depending on the node's CPU
        "seconds": rf.as_float(seconds) if seconds is not None else time.time() - entry["suggested_at"],
        "epochs": res.get("epoch"),
        "plan": plan,
        "plan_json": json.dumps(plan.to_dict(), sort_keys=True),
        "methods": plan.summary(),
        "learned_rates": res.get("learned_rates") or "",  # the learned baseline's (JSON); else empty
    }


class Tally:
    """Running tallies over the search-stage rows (and the failures of every row)."""

    def __init__(self, objective: rf.Objective) -> None:
        self.objective = objective
        self.best: dict[str, Any] | None = None
        self.worst_ok_reward: float | None = None
        self.rewards_by_plan: dict[str, float] = {}  # plan key -> its latest reward (for redraws)
        self.failed = 0

    @classmethod
    def of(cls, objective: rf.Objective, records: Sequence[Mapping], finals: Sequence[Mapping]) -> "Tally":
        """The tallies of rows read back (a resume)."""
        tally = cls(objective)
        for r in records:
            tally.add(r)
        tally.failed = sum(r["status"] in rf.FAILED_STATUSES for r in [*records, *finals])
        return tally

    def add(self, row: Mapping[str, Any]) -> None:
        """Keep the best trial (``run_folder.best_row`` of the best so far and the new one:
        ok, finite, best by the mode, ties to the earlier) and the worst ok reward up to date."""
        o = self.objective
        if row.get("reward") is not None:
            self.rewards_by_plan[plan_key(row["plan"])] = float(row["reward"])
        if rf.best_row([row], o) is None:
            return  # not ranked: stopped, failed, no finite value, or the learned baseline
        self.best = rf.best_row([self.best, row] if self.best is not None else [row], o)
        if row.get("reward") is not None:
            r = float(row["reward"])
            self.worst_ok_reward = r if self.worst_ok_reward is None else min(self.worst_ok_reward, r)
