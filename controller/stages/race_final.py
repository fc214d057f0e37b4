"""The final stage as a race (``controller.race``): the finalists (``contenders``: every
baseline, each tuned method's best recipe, the top-k distinct sampled plans) race on shared
fresh seeds within a budget of trainings, the clearly worse leaving after each round, and the
winner is confirmed on seeds the race never used; do no harm decides on the confirmation.

The race's state is a function of the search-stage records (which decide the contenders)
and the final rows in the order they finished, so a resume replays the ledger: the only
thing saved beside it is whether the stage had started.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from controller import run_folder as rf
from controller.final import final_rows, kind_of
from controller.final_race import race_results
from controller.race import Race, RaceSettings
from controller.stages.base import FinalTrial
from controller.stages.top_k import contenders

__all__ = ["RaceFinal"]

log = logging.getLogger("controller.searcher")


class RaceFinal:
    """A ``FinalStage`` (``controller.stages.base``) run as a ``controller.race.Race`` over the
    seed pool ``seeds`` (its length is the budget of trainings). No seeds or ``top_k`` 0: no
    final stage."""

    def __init__(
        self,
        objective: rf.Objective,
        baselines: Mapping[str, Any],
        tuned: Sequence[str],
        top_k: int,
        seeds: Sequence[int],
        settings: RaceSettings,
    ) -> None:
        self.objective = objective
        self.baselines = dict(baselines)
        self.tuned = list(tuned)
        self.seeds = [int(s) for s in seeds]
        self.top_k = top_k if self.seeds else 0
        self.settings = settings
        self.race: Race | None = None  # None until started
        self._plans: dict[str, tuple[Any, str]] = {}  # label -> (plan, source trial)
        self._running: set[tuple[str, int]] = set()
        self._started = False

    @property
    def budget(self) -> int:
        return len(self.seeds) if self.top_k else 0

    @property
    def started(self) -> bool:
        return self._started

    def planned(self) -> int:
        """The budget until the race is done (an upper bound: a race can end early), then the
        trainings it asked for."""
        if self.race is not None and self.race.done:
            return self.race.planned
        return self.budget

    def done(self) -> bool:
        return not self.budget or (self._started and (self.race is None or self.race.done))

    def waiting(self) -> bool:
        """A round (or the confirmation) that has asked for all its trainings waits for them."""
        return self.race is not None and not self.race.done and not self.race.requests(self._running)

    def start(
        self,
        records: Sequence[Mapping[str, Any]],
        final_rows: Sequence[Mapping[str, Any]] = (),
        running: Collection[tuple[str, int]] = (),
    ) -> None:
        self._plans = contenders(records, self.objective, self.baselines, self.tuned, self.top_k)
        self._started = True
        self._running = {(str(label), int(seed)) for label, seed in running}
        labels = [(label, kind_of(label, list(self.baselines))) for label in self._plans]
        if not labels:
            log.warning("final stage: no plan finished the search stage ok; nothing to race")
            self.race = None
            return
        done = race_results(final_rows, self.objective)
        self.race = Race.replay(labels, self.seeds, self.budget, self.settings, self.objective.mode, done)
        log.info(
            "final stage: a race of %d finalists (%s) within %d trainings",
            len(labels),
            ", ".join(label for label, _ in labels),
            self.budget,
        )

    def next_trial(self) -> FinalTrial | None:
        if self.race is None or self.race.done:
            return None
        todo = self.race.requests(self._running)
        if not todo:
            return None
        label, seed = todo[0]
        self._running.add((label, seed))
        plan, source = self._plans[label]
        return FinalTrial(label, plan, source, seed)

    def record(self, row: Mapping[str, Any]) -> None:
        """One re-training finished (its row is in the ledger): the race hears its value."""
        label, seed = str(row["label"]), int(row["seed"])
        self._running.discard((label, seed))
        if self.race is None:
            return
        before = len(self.race.log)
        ((_, _, value),) = race_results([{**row, "order": 0}], self.objective)
        self.race.record(label, seed, value)
        for line in self.race.log[before:]:
            log.info("final stage: %s", line)

    def rebuild(
        self,
        records: Sequence[Mapping[str, Any]],
        final_rows: Sequence[Mapping[str, Any]],
        running: Collection[tuple[str, int]],
        state: Mapping[str, Any],
    ) -> None:
        """The race again from the search-stage records and the ledger's final rows."""
        self.race, self._started, self._running = None, False, set()
        if state.get("final_started"):
            self.start(records, final_rows, running)

    def state(self) -> dict[str, Any]:
        return {"final_started": self._started, "final_total": self.planned() if self.done() else None}

    def table(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """final.csv's rows: the race's (``controller.final_race.race_rows``)."""
        if self.race is None:
            return []
        plans = {
            label: {"plan_json": plan.to_json(), "methods": plan.summary(), "trial_id": source}
            for label, (plan, source) in self._plans.items()
        }
        return final_rows(rows, self.objective, list(self.baselines), race=self.race, plans=plans)
