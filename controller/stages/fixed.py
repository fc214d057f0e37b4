"""Plans known before the search starts, trained in order, recorded and never learned from:
the hand-set baselines and the tuned global recipes (``search_space.baselines``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from controller.stages.base import Proposal

__all__ = ["FixedPlans", "tokens_of"]


def tokens_of(space: Any, plan: Any) -> list[int]:
    """A plan's tokens, for the record; [] when the space cannot say it (a hand-set plan need
    not follow the space's groups: DropBlock on some sites of a stage only)."""
    try:
        return space.encode(plan)
    except ValueError:
        return []


class FixedPlans:
    """``items`` ((label, plan) pairs) of one ``kind`` (baseline or tuned), one trial each."""

    def __init__(self, kind: str, items: Sequence[tuple[str, Any]], space: Any) -> None:
        self.kind = kind
        self.items = list(items)
        self.space = space

    @property
    def size(self) -> int:
        return len(self.items)

    def propose(self, i: int) -> Proposal:
        """The ``i``-th plan of the stage."""
        label, plan = self.items[i]
        return Proposal(plan, tokens_of(self.space, plan), self.kind, label)
