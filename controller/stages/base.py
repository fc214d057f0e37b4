"""What the stages hand the sequencer: a search-stage ``Proposal``, a ``FinalTrial``, and the
``FinalStage`` interface (the only questions ``PlanSearcher`` asks of a final stage)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Proposal", "FinalTrial", "FinalStage"]


@dataclass(frozen=True)
class Proposal:
    """One search-stage trial: the plan, its tokens ([] when the space cannot say it), its
    kind (baseline, tuned, searched) and label (the baseline's name; "" for a sampled plan)."""

    plan: Any
    tokens: list[int]
    kind: str
    label: str = ""


@dataclass(frozen=True)
class FinalTrial:
    """One final re-training: finalist ``label`` with its ``plan`` (from search-stage trial
    ``source``) trained with one fresh ``seed``."""

    label: str
    plan: Any
    source: str
    seed: int

    def entry(self) -> dict[str, Any]:
        """As the searcher keeps a running trial (and searcher_state.json saves it)."""
        return {"label": self.label, "plan": self.plan, "source": self.source, "seed": self.seed}


class FinalStage(Protocol):
    """The final stage as ``PlanSearcher`` drives it; a ``controller.race`` race or today's
    top-k queue (``TopKFinal``) alike. The sequencer asks only this:

    - ``done()``: will nothing more be trained? (then Tune is told FINISHED);
    - ``start(records, final_rows, running)``, once every search-stage trial is recorded:
      the contenders come from ``records`` (the trials.csv rows, with ``plan``);
    - ``waiting()``: must the next trial wait for running ones to report? (Tune asks later);
    - ``next_trial()``: what to train next (None: nothing more);
    - ``record(row)``: a final re-training finished (its final_trials.csv row, in the ledger
      already);
    - ``rebuild(records, final_rows, running, state)``: on resume, replay the ledger's final
      rows (``state`` is what ``state()`` returned when last saved; ``running``: the
      (label, seed) pairs still running, none on a resume from the run folder);
    - ``planned()``: trainings the stage runs in all (an estimate before it starts; exact
      once ``done()``), for the progress line and run_state.json;
    - ``state()``: the JSON it needs in searcher_state.json beside the ledger;
    - ``table(final_rows)``: final.csv's rows once the stage is complete.
    """

    @property
    def started(self) -> bool: ...

    def planned(self) -> int: ...

    def done(self) -> bool: ...

    def start(
        self,
        records: Sequence[Mapping[str, Any]],
        final_rows: Sequence[Mapping[str, Any]] = (),
        running: Collection[tuple[str, int]] = (),
    ) -> None: ...

    def waiting(self) -> bool: ...

    def next_trial(self) -> FinalTrial | None: ...

    def record(self, row: Mapping[str, Any]) -> None: ...

    def rebuild(
        self,
        records: Sequence[Mapping[str, Any]],
        final_rows: Sequence[Mapping[str, Any]],
        running: Collection[tuple[str, int]],
        state: Mapping[str, Any],
    ) -> None: ...

    def state(self) -> dict[str, Any]: ...

    def table(self, final_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]: ...
