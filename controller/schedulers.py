"""Tune schedulers that know the search's stages (imported only when one is used)."""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

__all__ = ["SearchStageASHA"]


class SearchStageASHA(ASHAScheduler):
    """ASHA for the sampled plans only: a final re-training is a measurement with one fresh
    seed, judged against nothing, so it always runs to the end (a cut seed would make its plan
    incomplete, and the final selection wrong)."""

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if (trial.config or {}).get("stage") == "final":
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)
