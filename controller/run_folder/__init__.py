"""The run folder: its files, their columns, the trial statuses and what "best" means.

Every piece that writes or reads ``STORAGE/NAME/`` (the searchers, the search API,
``launch_search.py``, ``results/``) takes these names from here, so the layout is defined
once. Only the standard library and pandas are imported: ``results`` loads this without torch.

Layout::

    search_config.json      how the search was started: its settings, the objective, the space (``settings``)
    run_state.json          running | interrupted | finished, and how many trials are done
    trials.csv              ledger: one row per finished trial (trial_columns, then one per site)
    controller_history.csv  ledger: one row per controller update (HISTORY_COLUMNS)
    final_trials.csv        ledger: one row per final re-training (FINAL_TRIAL_COLUMNS)
    final.csv               the final stage's table (FINAL_COLUMNS), written once it is complete
    best_plan.json          the plan to take home (see ``controller.final``)
    searcher_state.json     the searcher's state as data (counters, running trials, RNG)
    searcher_policy-<sha>.pt  the controller's weights and optimizer (tensors only: weights_only)
    trial_*/                Ray Tune's per-trial folders (never read back by this project)
    results/                what ``python -m results`` writes (``--out`` elsewhere), among it
                            ``retrain``'s files:
      retrain_trials.csv    ledger: one row per finished retraining (retrain_trial_columns)
      retrain_recipe.json   the training recipe those rows share (a rerun must match it)
      retrain.csv           one row per plan and seed of the last retrain (retrain_columns)
      retrain_summary.csv   one row per plan (retrain_summary_columns)
      retrain.png           test metric per plan (the trained plans are in plans/)

The ledger files (the search's three, and retrain_trials.csv) are appended one complete line
at a time and never rewritten (``controller.run_folder.ledger``); a resume rebuilds the search
from them and the state files, never from Ray's pickles (``controller.run_folder.resume``).

The names (files, statuses, limits) are defined here; the package's modules own the rest:
``objective`` (`Objective`, what "best" means), ``columns`` (every CSV file's columns),
``cells`` (values in and out of CSV cells), ``trials_csv`` (reading trials.csv back),
``writing`` (run_state.json, a full disk); all of it is importable from here.
"""

from __future__ import annotations

from controller.run_folder.cells import as_float, csv_text, finite_or_none
from controller.run_folder.cells import mean_se_text as mean_se_text
from controller.run_folder.columns import (
    FINAL_COLUMNS,
    FINAL_TRIAL_COLUMNS,
    HISTORY_COLUMNS,
    retrain_columns,
    retrain_summary_columns,
    retrain_trial_columns,
    test_metric,
    trial_columns,
)
from controller.run_folder.lock import RunFolderBusy, RunFolderLock
from controller.run_folder.objective import MODES as MODES
from controller.run_folder.objective import TRANSFORMS as TRANSFORMS
from controller.run_folder.objective import Objective, best_row, is_better
from controller.run_folder.trials_csv import NUMERIC_TRIAL_COLUMNS as NUMERIC_TRIAL_COLUMNS
from controller.run_folder.trials_csv import read_trials as read_trials
from controller.run_folder.writing import DiskFullError, now_iso, read_json, write_run_state
from controller.run_folder.writing import disk_full_is_fatal as disk_full_is_fatal
from search_space.files import atomic_write_text

__all__ = [
    "CONFIG_VERSION",
    "SEARCH_CONFIG",
    "RUN_STATE",
    "TRIALS",
    "HISTORY",
    "FINAL",
    "FINAL_TRIALS",
    "FINAL_TRIAL_COLUMNS",
    "BEST_PLAN",
    "SNAPSHOT",
    "OK",
    "STOPPED",
    "DIVERGED",
    "FAILED",
    "TIMEOUT",
    "STATUSES",
    "CHILD_STATUSES",
    "FAILED_STATUSES",
    "RANKED_STATUSES",
    "METRIC_MAX",
    "SITE_PREFIX",
    "LEARNED_TRIAL",
    "HISTORY_COLUMNS",
    "FINAL_COLUMNS",
    "RETRAIN",
    "RETRAIN_SUMMARY",
    "RETRAIN_TRIALS",
    "RETRAIN_RECIPE",
    "RETRAIN_PLOT",
    "test_metric",
    "retrain_trial_columns",
    "retrain_columns",
    "retrain_summary_columns",
    "Objective",
    "trial_columns",
    "is_better",
    "best_row",
    "as_float",
    "finite_or_none",
    "csv_text",
    "read_json",
    "now_iso",
    "write_run_state",
    "RunFolderLock",
    "RunFolderBusy",
    "DiskFullError",
    "atomic_write_text",
]


#: 4: search_config.json keeps every setting under ``settings`` (``controller.config.SearchConfig``;
#: ``run_folder.settings``); 3 (flat keys and the command's args) still resumes. 3 made the run
#: folder a ledger (trials, history, final_trials appended) plus searcher_state.json; a run of
#: version 2 (Ray's pickles) can still be summarized and exported, not resumed.
CONFIG_VERSION = 4

SEARCH_CONFIG = "search_config.json"
RUN_STATE = "run_state.json"
TRIALS = "trials.csv"
HISTORY = "controller_history.csv"
FINAL = "final.csv"
FINAL_TRIALS = "final_trials.csv"
BEST_PLAN = "best_plan.json"
SNAPSHOT = "searcher_state.json"

# Trial statuses. A child ends ok, diverged (NaN/inf loss) or failed (raised); a trial that ran
# past the search's trial_timeout is "timeout" (the trainable reports it, then ends its worker);
# a trial that a scheduler ended early is "stopped". Only "ok" trials are ranked: a stopped
# trial's value was measured after fewer epochs than the others', so it is recorded and
# rewarded, never "best".
OK, STOPPED, DIVERGED, FAILED, TIMEOUT = "ok", "stopped", "diverged", "failed", "timeout"
STATUSES = (OK, STOPPED, DIVERGED, FAILED, TIMEOUT)
CHILD_STATUSES = (OK, DIVERGED, FAILED, TIMEOUT)
FAILED_STATUSES = (FAILED, DIVERGED, TIMEOUT)
RANKED_STATUSES = (OK,)

#: The largest magnitude a metric value may have to count as a measurement: the controller
#: learns in float32 (at most 3.4e38) and means and sums of values near 1e308 overflow. A
#: child reporting more (a bug, e.g. 1e308) gets status failed, never OverflowError.
METRIC_MAX = 1e30

SITE_PREFIX = "site:"
LEARNED_TRIAL = "learned"  # the baseline that learns per-site rates (controller.learned)

# ``python -m results retrain``'s files, in its output folder (default RUN_DIR/results).
RETRAIN = "retrain.csv"
RETRAIN_SUMMARY = "retrain_summary.csv"
RETRAIN_TRIALS = "retrain_trials.csv"
RETRAIN_RECIPE = "retrain_recipe.json"
RETRAIN_PLOT = "retrain.png"
