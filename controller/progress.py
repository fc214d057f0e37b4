"""Progress lines while `run_search` runs (``verbose=True``): one per finished or failed trial.

A Ray Tune ``Callback``, so it sits beside any callbacks the user passes (Tune's own style);
lines go to the ``controller.progress`` logger.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from ray.tune import Callback

__all__ = ["ProgressCallback", "enable_progress_logging"]

log = logging.getLogger("controller.progress")


def enable_progress_logging() -> None:
    """Make the progress lines visible (a notebook or script without logging set up)."""
    log.setLevel(logging.INFO)
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        log.addHandler(handler)


class ProgressCallback(Callback):
    """Logs ``trial K/TOTAL <label>: <metric> <value>`` as each trial ends (errors too)."""

    def __init__(self, metric: str, total: int) -> None:
        self.metric = metric
        self.total = total
        self.done = 0

    def _label(self, trial: Any) -> str:
        config = getattr(trial, "config", None) or {}
        return f"{trial.trial_id} ({config.get('label') or config.get('stage') or 'trial'})"

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        value = (trial.last_result or {}).get(self.metric)
        shown = f"{value:.4g}" if isinstance(value, (int, float)) else "no value"
        log.info("trial %d/%d %s: %s %s", self.done, self.total, self._label(trial), self.metric, shown)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        log.info("trial %d/%d %s: error (see trials.csv)", self.done, self.total, self._label(trial))
