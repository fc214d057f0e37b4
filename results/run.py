"""Read a search run directory (written by ``launch_search.py``) into pandas.

Every command starts here, so every way a RUN_DIR can be wrong (missing, empty, not a run,
still running, corrupt files) is turned into one :class:`RunError` with a one-line message.
A run that was interrupted is loaded with whatever trials it finished.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["RunError", "Run", "open_run", "open_runs", "load_run", "combined_trials", "SITE_PREFIX", "OK_STATUSES",
           "FAILED_STATUSES", "REFERENCE"]

log = logging.getLogger(__name__)

SITE_PREFIX = "site:"
OK_STATUSES = ("ok", "stopped")  # trials whose val_acc is a real measurement (stopped = early-stopped)
FAILED_STATUSES = ("failed", "diverged")
REFERENCE = "reference"  # group label of the all-"none" reference trial
_NUMERIC = ("order", "val_acc", "best_val_acc", "reward", "seconds", "epochs")
_TRIAL_COLUMNS = ("trial_id", "order", "searcher", "status", "val_acc", "best_val_acc", "reward",
                  "error", "seconds", "node", "epochs", "plan_json", "methods")
_HISTORY_COLUMNS = ("update", "step", "trials_seen", "mean_reward", "baseline", "entropy", "loss", "time")


class RunError(ValueError):
    """RUN_DIR cannot be used: the message is one line meant for the user."""


@dataclass
class Run:
    """One search run: its configuration, state, finished trials and controller history."""

    path: Path
    config: dict[str, Any]
    state: dict[str, Any]
    trials: pd.DataFrame
    history: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(_HISTORY_COLUMNS)))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        return str(self.state.get("status", "unknown"))

    @property
    def searcher(self) -> str:
        return str(self.config.get("searcher", "unknown"))

    @property
    def train_config(self) -> dict[str, Any]:
        return dict(self.config.get("train") or {})

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.config.get("args") or {})

    @property
    def sites(self) -> list[str]:
        """Site paths in model order: from the saved search space, else from trials.csv columns."""
        space = self.config.get("space") or {}
        groups = space.get("groups") if isinstance(space, dict) else None
        if groups:
            return [str(s) for _, members in groups for s in members]
        return [c[len(SITE_PREFIX):] for c in self.trials.columns if c.startswith(SITE_PREFIX)]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise RunError(f"cannot read {path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read a CSV the search writes; a missing or empty file is an empty table (nothing finished yet)."""
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=list(columns))
    try:
        return pd.read_csv(path, keep_default_na=True, dtype={"trial_id": str, "error": str,
                                                              "plan_json": str, "methods": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise RunError(f"cannot read {path}: {exc}") from None


def _clean_trials(df: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("trial_id", "status", "val_acc", "plan_json") if c not in df.columns]
    if missing and len(df):
        raise RunError(f"trials.csv lacks column(s) {', '.join(missing)}; is it from launch_search.py?")
    df = df.copy()
    for col in _TRIAL_COLUMNS:
        if col not in df.columns:
            df[col] = pd.NA
    for col in _NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["status"] = df["status"].fillna("unknown").astype(str)
    df["searcher"] = df["searcher"].fillna("unknown").astype(str)
    df["error"] = df["error"].fillna("").astype(str)
    # the all-"none" reference trial a search may add: a yardstick, not a searcher's choice
    ref = df["reference"] if "reference" in df.columns else pd.Series(False, index=df.index)
    df["reference"] = pd.to_numeric(ref, errors="coerce").fillna(0).astype(bool) if len(df) else ref.astype(bool)
    if df["order"].isna().all():
        df["order"] = range(len(df))
    return df.sort_values("order", kind="stable").reset_index(drop=True)


def open_run(run_dir: str | Path, allow_running: bool = False) -> Run:
    """Validate and load RUN_DIR; raise :class:`RunError` (one line) when it is not usable.

    ``allow_running`` reads a run whose run_state.json still says "running" (e.g. one whose
    process was killed without a chance to mark it interrupted).
    """
    path = Path(run_dir)
    if not path.exists():
        raise RunError(f"run directory not found: {path}")
    if not path.is_dir():
        raise RunError(f"not a directory: {path}")
    if not any(path.iterdir()):
        raise RunError(f"run directory is empty: {path}")
    if not (path / "search_config.json").is_file():
        raise RunError(f"not a search run (no search_config.json): {path}")
    config = _read_json(path / "search_config.json")
    state_path = path / "run_state.json"
    state = _read_json(state_path) if state_path.is_file() else {"status": "unknown"}
    status = state.get("status", "unknown")
    if status == "running" and not allow_running:
        raise RunError(f"run still in progress ({state.get('completed', '?')}/{state.get('num_samples', '?')} "
                       f"trials, run_state.json updated {state.get('updated_at', '?')}): {path}; wait for it "
                       "to finish, or pass --allow-running if its process is gone")
    if status not in ("finished", "running"):
        log.warning("run %s has status %r: summarizing the trials it finished", path, status)
    trials = _clean_trials(_read_csv(path / "trials.csv", _TRIAL_COLUMNS))
    if "run" not in trials.columns:
        trials.insert(0, "run", path.name)
    history = _read_csv(path / "controller_history.csv", _HISTORY_COLUMNS)
    for col in history.columns:
        history[col] = pd.to_numeric(history[col], errors="coerce")
    return Run(path=path, config=config, state=state, trials=trials, history=history)


def open_runs(run_dirs: list[str | Path], allow_running: bool = False) -> list[Run]:
    """Open several runs (e.g. a controller search and a random search of the same budget)."""
    if not run_dirs:
        raise RunError("no RUN_DIR given")
    runs = [open_run(p, allow_running) for p in run_dirs]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):  # same leaf name from different storage paths: disambiguate
        for r in runs:
            r.trials["run"] = str(r.path)
    return runs


def load_run(run_dir: str | Path, allow_running: bool = False) -> pd.DataFrame:
    """All finished trials of RUN_DIR as a DataFrame (one row per trial, in completion order).

    Columns are those of trials.csv (trial_id, order, searcher, status, val_acc, reward, seconds,
    methods, plan_json, ``site:<path>`` per site, ...) plus ``run`` (the directory name) and
    ``group`` (the searcher, or "reference" for the all-"none" reference trial).
    """
    return combined_trials([open_run(run_dir, allow_running)])


def combined_trials(runs: list[Run]) -> pd.DataFrame:
    """Concatenate the trials of several runs, labelling each with a comparison ``group``.

    The group is the searcher name ("reference" for a search's all-"none" reference trial)
    when that tells the runs apart, else ``run:searcher``.
    """
    frames = [r.trials for r in runs if len(r.trials)]
    if not frames:
        return _clean_trials(pd.DataFrame(columns=list(_TRIAL_COLUMNS))).assign(run=[], group=[])
    df = pd.concat(frames, ignore_index=True, sort=False)
    df["reference"] = df["reference"].fillna(False).astype(bool)
    label = df["searcher"].where(~df["reference"], REFERENCE)
    runs_per_label = df.groupby(label)["run"].nunique()
    ambiguous = set(runs_per_label[runs_per_label > 1].index)
    df["group"] = [f"{run}:{lab}" if lab in ambiguous else lab for run, lab in zip(df["run"], label)]
    return df
