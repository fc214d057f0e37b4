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
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from controller.run_folder.lock import RunFolderBusy, RunFolderLock
from search_space.errors import user_error
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

log = logging.getLogger(__name__)

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
#: ``trials``: the trial ids whose rewards this update used (JSON list).
HISTORY_COLUMNS = ["update", "step", "trials_seen", "mean_reward", "baseline", "entropy", "loss", "time", "trials"]
FINAL_COLUMNS = [
    "label",
    "kind",
    "trial_id",
    "seeds",
    "mean",
    "se",
    "values",
    "complete",
    "best_baseline",
    "diff_vs_best_baseline",
    "diff_se",
    "diff_ci95_low",
    "diff_ci95_high",
    "p_value",
    "paired_seeds",
    "comparison",
    "chosen",
    # the race (controller.race; empty for a final stage of fixed seeds): how the plan left the
    # race, then the confirmation on fresh seeds against best_baseline, which decides the export
    "left",
    "left_reason",
    "confirm_seeds",
    "confirm_values",
    "confirm_mean",
    "confirm_vs",
    "confirm_diff",
    "confirm_ci95_low",
    "confirm_ci95_high",
    "confirm_p",
    "confirm_p_holm",
    "confirm_word",
    "methods",
    "plan_json",
]
#: final_trials.csv: one final re-training (one finalist, one fresh seed).
FINAL_TRIAL_COLUMNS = [
    "trial_id",
    "order",
    "label",
    "seed",
    "source",
    "searcher",
    "status",
    "value",
    "error",
    "seconds",
    "node",
    "precision",
    "epochs",
    "plan_json",
    "methods",
]

# ``python -m results retrain``'s files, in its output folder (default RUN_DIR/results).
RETRAIN = "retrain.csv"
RETRAIN_SUMMARY = "retrain_summary.csv"
RETRAIN_TRIALS = "retrain_trials.csv"
RETRAIN_RECIPE = "retrain_recipe.json"
RETRAIN_PLOT = "retrain.png"

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


def trial_columns(objective: Objective) -> list[str]:
    """trials.csv's columns before the per-site ones.

    ``kind`` is baseline (hand-set), tuned (a global recipe's grid point) or searched;
    ``baseline`` names a baseline's label (``tuned-<method>`` for tuned ones; empty for
    searched plans); ``reference`` is 1 for both (they never enter a controller update; which
    update a searched trial reached is in controller_history.csv's ``trials``). The metric's
    column holds the final value (mean over the reward seeds), ``<metric>_se`` its standard
    error and ``<metric>_seeds`` every seed's value (JSON list); ``learned_rates`` the rate per
    site of the ``learned`` baseline (JSON; ``controller.learned``), empty for the others.
    """
    m = objective
    return [
        "trial_id",
        "order",
        "searcher",
        "kind",
        "baseline",
        "status",
        m.metric,
        m.se_column,
        m.seeds_column,
        m.best_column,
        "reward",
        "error",
        "seconds",
        "node",
        "precision",
        "epochs",
        "plan_json",
        "methods",
        "reference",
        "tokens",
        "learned_rates",
    ]


def test_metric(objective: Objective) -> str:
    """The test split's name for the search metric: val_acc -> test_acc, val_ppl -> test_ppl."""
    return "test_" + objective.metric.removeprefix("val_")


def retrain_trial_columns(objective: Objective) -> list[str]:
    """retrain_trials.csv, the retrain's ledger: one finished training per line, in the order
    they finished. A training is known by ``plan_hash`` (of ``search_space.plan.plan_key``) and
    ``seed`` under the ``recipe`` (a hash of retrain_recipe.json); ``plan`` and ``kind`` are
    the label it was trained under. ``status`` is the child's (ok, diverged, failed); ``task_id``
    and ``node``: the Ray task that trained it and where."""
    return [
        "plan_hash",
        "seed",
        "recipe",
        "plan",
        "kind",
        "status",
        test_metric(objective),
        objective.metric,
        "epochs",
        "seconds",
        "message",
        "train_size",
        "task_id",
        "node",
        "time",
        "plan_json",
    ]


def retrain_columns(objective: Objective) -> list[str]:
    """retrain.csv: one row per plan and seed of the retrain, plans in their order, then seeds.
    ``same_as``: the plan's other names (trained once); ``fresh``: a seed the search never used."""
    return [
        "plan",
        "kind",
        "same_as",
        "fresh",
        "seed",
        "train_size",
        "status",
        test_metric(objective),
        objective.metric,
        "epochs",
        "seconds",
        "message",
        "summary",
    ]


def retrain_summary_columns(objective: Objective) -> list[str]:
    """retrain_summary.csv: one row per plan. ``<test>`` is "mean +- se"; the paired comparison
    with the best baseline on test (positive = better) gives ``diff_*``, ``p_value`` and
    ``comparison_uncorrected`` (that comparison alone); ``comparison`` is the word after Holm's
    correction over the ``holm_family`` comparisons the retrain made (``holm_rejected``)."""
    test = test_metric(objective)
    return [
        "plan",
        test,
        "kind",
        "seeds",
        "ok",
        f"{test}_mean",
        f"{test}_std",
        f"{test}_se",
        f"{objective.metric}_mean",
        "summary",
        "best_baseline",
        "diff_vs_best_baseline",
        "diff_ci95_low",
        "diff_ci95_high",
        "p_value",
        "paired_seeds",
        "comparison_uncorrected",
        "holm_family",
        "holm_rejected",
        "comparison",
    ]


def is_better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def best_row(rows: Sequence[Mapping[str, Any]], objective: Objective) -> Mapping[str, Any] | None:
    """The best finished trial: status ok, finite metric, best by the mode; ties go to the
    earlier trial; never the ``learned`` baseline (a way to train, not a plan: the plan its
    rates make competes in the final stage). ``results`` ranks with the same rule."""
    best = None
    for row in rows:
        value = as_float(row.get(objective.metric))
        if row.get("status") not in RANKED_STATUSES or not math.isfinite(value) or row.get("baseline") == LEARNED_TRIAL:
            continue
        if best is None or is_better(value, as_float(best[objective.metric]), objective.mode):
            best = row
    return best


def as_float(value: Any) -> float:
    """A number from a cell or a reported value; NaN for anything that is not one."""
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def finite_or_none(value: Any) -> float | None:
    """A finite number, or None (JSON has no NaN: a missing number is null)."""
    v = as_float(value)
    return v if math.isfinite(v) else None


def mean_se_text(mean: Any, se: Any) -> str:
    """``0.8125 +- 0.0100``; the mean alone where there is no standard error (one seed): never
    ``+- nan``."""
    m, s = as_float(mean), as_float(se)
    return f"{m:.4f} +- {s:.4f}" if math.isfinite(s) else f"{m:.4f}"


# ------------------------------------------------------------------------- writing
def csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV text with a header; None and non-finite floats become empty cells, bools 0/1."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buf.getvalue()


def _cell(value: Any) -> Any:
    """A CSV cell: None and non-finite floats empty, bools 0/1, line breaks folded to spaces
    (one record is one line, so a torn write is always the last, unterminated line)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and ("\n" in value or "\r" in value):
        return " ".join(value.splitlines())
    return value


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_run_state(
    run_dir: str | os.PathLike[str], status: str, num_samples: int, completed: int, **extra: Any
) -> None:
    """run_state.json: what a user (or ``--resume``) needs to know about the run right now."""
    state = {
        "status": status,
        "updated_at": now_iso(),
        "num_samples": int(num_samples),
        "completed": int(completed),
        **extra,
    }
    atomic_write_text(Path(run_dir) / RUN_STATE, json.dumps(state, indent=2) + "\n")


class DiskFullError(OSError):
    """The run folder's disk is full: what was written before is intact, the rest must wait."""


@contextlib.contextmanager
def disk_full_is_fatal(path: Path) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT into DiskFullError naming the folder (callers stop the search)."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                exc.errno, f"disk full while writing the run folder {path}; free space, then resume with --resume"
            ) from exc
        raise


# ------------------------------------------------------------------------- reading
NUMERIC_TRIAL_COLUMNS = ("order", "reward", "seconds", "epochs", "update")


def read_trials(path: str | os.PathLike[str], objective: Objective) -> "Any":
    """trials.csv as a pandas DataFrame, never with a silently wrong number.

    A row whose required cells are missing (a file cut mid-row by a crash or a full disk) or
    whose status is unknown is dropped with a warning naming the row; a missing or empty file
    is an empty table.
    """
    import pandas as pd

    path = Path(path)
    columns = trial_columns(objective)
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=columns)
    from controller.run_folder.ledger import complete_text

    text, torn = complete_text(path.read_text(encoding="utf-8", errors="replace"))
    if torn:
        log.warning("%s: a torn last line (an interrupted write) is ignored", path)
    with io.StringIO(text, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None) or []
        missing = [c for c in ("trial_id", "status", objective.metric, "plan_json") if c not in header]
        if missing:
            raise user_error(
                str(path),
                detail=f"column(s) {', '.join(missing)} missing",
                allowed=f"a trials.csv written by a search with metric {objective.metric!r}",
            )
        rows = []
        seen: set[str] = set()
        for line_no, cells in enumerate(reader, start=2):
            row = dict(zip(header, cells))
            problem = _row_problem(row, len(cells), len(header), objective)
            if not problem and row["trial_id"] in seen:
                problem = f"trial {row['trial_id']} is already recorded (a duplicated row)"
            if problem:
                log.warning("%s line %d dropped: %s", path, line_no, problem)
                continue
            seen.add(row["trial_id"])
            rows.append(row)
    df = pd.DataFrame(rows, columns=header)
    for col in (objective.metric, objective.se_column, objective.best_column, *NUMERIC_TRIAL_COLUMNS):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def _row_problem(row: Mapping[str, str], n_cells: int, n_columns: int, objective: Objective) -> str:
    if n_cells != n_columns:
        return f"{n_cells} cells for {n_columns} columns (a truncated or damaged row)"
    if row.get("status") not in STATUSES:
        return f"status: bad value {row.get('status')!r}; allowed: {', '.join(STATUSES)}"
    if not row.get("trial_id"):
        return "trial_id: empty"
    try:
        json.loads(row.get("plan_json") or "")
    except (ValueError, RecursionError):
        return "plan_json: not a complete JSON plan"
    if row["status"] == OK and not math.isfinite(as_float(row.get(objective.metric))):
        return f"{objective.metric}: bad value {row.get(objective.metric)!r} for an ok trial"
    return ""
