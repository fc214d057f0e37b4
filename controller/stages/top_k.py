"""The final stage as a queue: every finalist with every fresh seed, queued once the search
stages are done. The finalists are the hand-set baselines, each tuned method's best recipe
(``tuned-<method>``) and the ``top_k`` best distinct sampled plans by search-stage value; a
plan equal to an earlier finalist is trained once (a searched plan that is a baseline is that
baseline, and the next distinct searched plan takes its place). What is exported from it:
``controller.final``."""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from controller import run_folder as rf
from controller.final import BASELINE, LEARNED, SEARCHED, TUNED, TUNED_PREFIX, final_rows
from controller.learned import learned_contender
from controller.stages.base import FinalTrial
from search_space.plan import plan_key

__all__ = ["TopKFinal", "contenders"]

log = logging.getLogger("controller.searcher")


class TopKFinal:
    """A ``FinalStage`` (``controller.stages.base``): ``top_k`` sampled plans, the
    ``baselines`` (label -> Plan), the best recipe of each ``tuned`` method and, with
    ``learned``, ``learned-rates``, each trained with every one of ``seeds``. No seeds: no
    final stage. (Tune's trial count is fixed from ``planned()`` at the start, so it must
    never be below what the stage trains.)"""

    def __init__(
        self,
        objective: rf.Objective,
        baselines: Mapping[str, Any],
        tuned: Sequence[str],
        top_k: int,
        seeds: Sequence[int],
        learned: bool = False,
    ) -> None:
        self.objective = objective
        self.learned = learned  # a learned-rates finalist may come: counted before the start
        self.baselines = dict(baselines)
        self.tuned = list(tuned)
        self.seeds = [int(s) for s in seeds]
        self.top_k = top_k if self.seeds else 0
        self._queue: list[FinalTrial] | None = None  # None until started
        self._total: int | None = None

    @property
    def started(self) -> bool:
        return self._queue is not None

    def planned(self) -> int:
        """One trial per (finalist, seed): from top_k until the finalists are known; fewer
        when fewer distinct sampled plans finished ok."""
        if self._total is not None:
            return self._total
        return (self.top_k + len(self.baselines) + len(self.tuned) + self.learned) * len(self.seeds)

    def done(self) -> bool:
        return not self.seeds or (self._queue is not None and not self._queue)

    def waiting(self) -> bool:
        return False  # the queue is known at the start: nothing waits for a result

    def start(
        self,
        records: Sequence[Mapping[str, Any]],
        final_rows: Sequence[Mapping[str, Any]] = (),
        running: Collection[tuple[str, int]] = (),
    ) -> None:
        self._queue = self._finalists(records, final_rows, running)
        self._total = len(self._queue) + len(final_rows)

    def next_trial(self) -> FinalTrial | None:
        return self._queue.pop(0) if self._queue else None

    def record(self, row: Mapping[str, Any]) -> None:
        """Nothing to do: the queue was fixed at the start."""

    def rebuild(
        self,
        records: Sequence[Mapping[str, Any]],
        final_rows: Sequence[Mapping[str, Any]],
        running: Collection[tuple[str, int]],
        state: Mapping[str, Any],
    ) -> None:
        """The queue again from the search-stage records, less what the ledger holds and what
        is running (the finalists are a function of the records)."""
        self._queue, self._total = None, None
        if state["final_started"]:
            self._queue = self._finalists(records, final_rows, running)
        total = state["final_total"]
        self._total = None if total is None else int(total)

    def state(self) -> dict[str, Any]:
        return {"final_started": self.started, "final_total": self._total}

    def table(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One row per finalist (``controller.final.final_rows``)."""
        return final_rows(rows, self.objective, list(self.baselines), len(self.seeds))

    def _finalists(
        self,
        records: Sequence[Mapping[str, Any]],
        final_rows: Sequence[Mapping[str, Any]],
        running: Collection[tuple[str, int]],
    ) -> list[FinalTrial]:
        """Every (finalist, seed) not in the ledger's ``final_rows`` and not ``running``."""
        if not self.seeds:
            return []
        found = contenders(records, self.objective, self.baselines, self.tuned, self.top_k)
        skip = {(r["label"], r["seed"]) for r in final_rows} | set(running)
        return [
            FinalTrial(label, plan, source, seed)
            for label, (plan, source) in found.items()
            for seed in self.seeds
            if (label, seed) not in skip
        ]


def contenders(
    records: Sequence[Mapping[str, Any]],
    objective: rf.Objective,
    baselines: Mapping[str, Any],
    tuned: Sequence[str],
    top_k: int,
) -> dict[str, tuple[Any, str]]:
    """The finalists, label -> (plan, source trial id), in order: the hand-set ``baselines``,
    each ``tuned`` method's best recipe, ``learned-rates`` (the plan the ``learned`` trial's
    rates make, when that trial ended ok: ``controller.learned``), then the ``top_k`` best
    distinct sampled plans (by search-stage value; ties to the earlier). A plan equal to an
    earlier finalist is not added (a searched plan that is a baseline is that baseline; the
    next distinct one takes its place)."""
    o = objective

    def ranked(kind: str, label: str = "") -> list[Mapping[str, Any]]:
        rows = [
            r
            for r in records
            if r.get("kind", SEARCHED if not r["baseline"] else BASELINE) == kind
            and (not label or r["baseline"] == label)
            and r["status"] == rf.OK
            and math.isfinite(r[o.metric])
        ]
        return sorted(rows, key=lambda r: (-o.reward(r[o.metric]), r["order"]))

    plans: dict[str, tuple[Any, str]] = {}
    keys: set[str] = set()

    def add(label: str, plan: Any, source: str) -> bool:
        key = plan_key(plan)
        if key in keys:
            log.info("final stage: %s is the same plan as an earlier finalist; trained once", label)
            return False
        keys.add(key)
        plans[label] = (plan, source)
        return True

    for name, plan in baselines.items():
        add(name, plan, next((r["trial_id"] for r in records if r["baseline"] == name), ""))
    for method in tuned:
        best = ranked(TUNED, f"{TUNED_PREFIX}{method}")
        if best:
            add(f"{TUNED_PREFIX}{method}", best[0]["plan"], best[0]["trial_id"])
    learned = learned_contender(records)
    if learned is not None:
        add(LEARNED, *learned)
    n_searched = 0
    for r in ranked(SEARCHED):
        if n_searched >= top_k:
            break
        if add(f"searched#{n_searched + 1}", r["plan"], r["trial_id"]):
            n_searched += 1
    return plans
