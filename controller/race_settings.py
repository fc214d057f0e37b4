"""What a race is given: its contenders (searched plans, baselines, tuned recipes) and its
settings, checked when made so that a bad setting is one line before any training starts.

Kept apart from the race's rounds and decisions (``controller.race``), which re-exports every
name here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from controller.stats import MIN_SEEDS
from search_space.errors import user_error

SEARCHED, BASELINE, TUNED = "searched", "baseline", "tuned"
KINDS = (SEARCHED, BASELINE, TUNED)


@dataclass(frozen=True)
class Contender:
    """One plan in the race: its label and whether it was searched or is a baseline."""

    label: str
    kind: str


@dataclass(frozen=True)
class RaceSettings:
    """How a race spends its budget (defaults chosen by ``benchmarks/race_sim.py``).

    start_seeds: seeds every contender starts on (2 or more: a paired t needs 2).
    growth: how survivors' seed counts grow per round: ``xN`` multiplies (SMAC doubles),
        ``+N`` adds N (irace adds one instance a round).
    race_alpha: family-wise level of one round's eliminations (Holm over the round's
        comparisons with the leader). A wrong elimination costs power, never a false export:
        the confirmation alone decides what is exported.
    alpha: family-wise level of the confirmation (Holm over the searched plans confirmed),
        the product's "better".
    confirm_seeds: fewest confirmation seeds per confirmed plan; the race keeps
        ``(confirm_max + confirm_baselines) * confirm_seeds`` trainings of the budget for the
        confirmation.
    confirm_max: most searched survivors confirmed when the budget ends the race with several.
    confirm_baselines: baselines confirmed against (the best ones by the race): a searched plan
        is exported only when better than each (an intersection-union test: no correction
        needed), so a best baseline the race misjudged among close ones cannot be the weak
        one it is shown better than.
    """

    start_seeds: int = 2
    growth: str = "+1"
    race_alpha: float = 0.2
    alpha: float = 0.05
    confirm_seeds: int = 5
    confirm_max: int = 1
    confirm_baselines: int = 2

    def __post_init__(self) -> None:
        _int_at_least("start_seeds", self.start_seeds, 2)
        _int_at_least("confirm_seeds", self.confirm_seeds, MIN_SEEDS)
        _int_at_least("confirm_max", self.confirm_max, 1)
        _int_at_least("confirm_baselines", self.confirm_baselines, 1)
        for name in ("race_alpha", "alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
                raise user_error(name, value, "a number strictly between 0 and 1, e.g. 0.05")
        self.grow(self.start_seeds)  # validates growth

    def grow(self, n: int) -> int:
        """The seed count survivors aim for in the next round, from ``n`` now."""
        text = self.growth.strip() if isinstance(self.growth, str) else ""
        op, num = text[:1], text[1:]
        k = int(num) if num.isdigit() else 0
        if op == "x" and k >= 2:
            return n * k
        if op == "+" and k >= 1:
            return n + k
        raise user_error("growth", self.growth, "'xN' (N >= 2: multiply seeds per round) or '+N' (N >= 1: add N)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _int_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise user_error(name, value, f"an integer >= {low}")
