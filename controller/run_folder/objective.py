"""What a search optimises (`Objective`: metric, direction, reward) and what "best" means.

Kept apart from the file layout because the searchers, the final stage and ``results`` all
rank with it: one rule, one place.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from controller import run_folder as rf
from controller.run_folder.cells import as_float
from search_space.errors import user_error

MODES = ("max", "min")
TRANSFORMS = ("identity", "negate", "neg_log")


@dataclass(frozen=True)
class Objective:
    """What a search optimises: the metric a trial reports, its direction, and the reward.

    The controller maximises the reward: ``identity`` (the metric itself) for ``mode="max"``,
    ``negate`` (minus the metric) for ``mode="min"``, or ``neg_log`` (minus its natural log:
    for perplexity this is minus the mean NLL per token, a scale that does not change as the
    model improves).
    """

    metric: str = "val_acc"
    mode: str = "max"
    transform: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric.isidentifier():
            raise user_error("metric", self.metric, "a metric name such as val_acc or val_loss")
        if self.mode not in MODES:
            raise user_error("mode", self.mode, ", ".join(MODES))
        if not self.transform:
            object.__setattr__(self, "transform", "identity" if self.mode == "max" else "negate")
        if self.transform not in TRANSFORMS:
            raise user_error("reward_transform", self.transform, ", ".join(TRANSFORMS))
        if (self.transform == "identity") != (self.mode == "max"):
            raise user_error(
                "reward_transform",
                detail=f"bad value {self.transform!r} for mode {self.mode!r}",
                allowed="identity with max, negate or neg_log with min",
            )

    def reward(self, value: float) -> float:
        """The controller's reward for a metric value (higher is better)."""
        if self.transform == "identity":
            return float(value)
        if self.transform == "negate":
            return -float(value)
        return -math.log(value) if value > 0 else float("nan")

    @property
    def se_column(self) -> str:
        return f"{self.metric}_se"

    @property
    def seeds_column(self) -> str:
        return f"{self.metric}_seeds"

    @property
    def best_column(self) -> str:
        return f"best_{self.metric}"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Objective":
        """The objective a run folder's search_config.json records (val_acc/max before it did)."""
        saved = config.get("objective") or {}
        return cls(**{k: saved[k] for k in ("metric", "mode", "transform") if k in saved})


def is_better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def best_row(rows: Sequence[Mapping[str, Any]], objective: Objective) -> Mapping[str, Any] | None:
    """The best finished trial: status ok, finite metric, best by the mode; ties go to the
    earlier trial; never the ``learned`` baseline (a way to train, not a plan: the plan its
    rates make competes in the final stage). ``results`` ranks with the same rule."""
    best = None
    for row in rows:
        value = as_float(row.get(objective.metric))
        if (
            row.get("status") not in rf.RANKED_STATUSES
            or not math.isfinite(value)
            or row.get("baseline") == rf.LEARNED_TRIAL
        ):
            continue
        if best is None or is_better(value, as_float(best[objective.metric]), objective.mode):
            best = row
    return best
