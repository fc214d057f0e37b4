"""After a search: tables, figures, plan export and retraining against baselines.

``python -m results summarize|plot|export|retrain RUN_DIR``; from Python, ``load_run(RUN_DIR)``
gives the trials as a pandas DataFrame. Heavy parts (torch, matplotlib) load lazily.
"""

from __future__ import annotations

from .run import FAILED_STATUSES, OK_STATUSES, Run, RunError, combined_trials, load_run, open_run, open_runs
from .tables import (
    compute_cost,
    failed_trials,
    method_share_table,
    method_stats,
    ranked,
    render,
    searcher_comparison,
    top_plans,
)

__all__ = [
    "load_run",
    "open_run",
    "open_runs",
    "combined_trials",
    "Run",
    "RunError",
    "OK_STATUSES",
    "FAILED_STATUSES",
    "ranked",
    "top_plans",
    "method_stats",
    "method_share_table",
    "searcher_comparison",
    "failed_trials",
    "compute_cost",
    "render",
]
