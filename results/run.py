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

from controller import run_folder as rf
from search_space.errors import UserError, user_error

__all__ = [
    "RunError",
    "Run",
    "open_run",
    "open_runs",
    "load_run",
    "combined_trials",
    "SITE_PREFIX",
    "OK_STATUSES",
    "FAILED_STATUSES",
    "BASELINE_GROUP",
]

log = logging.getLogger(__name__)

SITE_PREFIX = rf.SITE_PREFIX
OK_STATUSES = rf.RANKED_STATUSES  # the trials ranked and called "best" (run_folder decides)
FAILED_STATUSES = rf.FAILED_STATUSES
BASELINE_GROUP = "baseline:{}"  # group label of a baseline trial (hand-set, not searched)
_HISTORY_COLUMNS = tuple(rf.HISTORY_COLUMNS)


class RunError(UserError, ValueError):
    """RUN_DIR cannot be used: the message is one line meant for the user."""


_WHERE = "pass the folder launch_search.py wrote (--storage-path/--name, e.g. runs/NAME)"


def _unusable(detail: str, hint: str = "") -> UserError:
    """A `RunError` worded as a sentence (no field applies: the folder is the problem)."""
    return user_error(detail=detail, hint=hint, cls=RunError)


@dataclass
class Run:
    """One search run: its configuration, state, finished trials and controller history."""

    path: Path
    config: dict[str, Any]
    state: dict[str, Any]
    trials: pd.DataFrame
    history: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(_HISTORY_COLUMNS)))
    final: pd.DataFrame | None = None

    @property
    def objective(self) -> rf.Objective:
        return rf.Objective.from_config(self.config)

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
    def settings(self) -> dict[str, Any]:
        """The search's settings by name, of any config version (``run_folder.settings``)."""
        from controller.run_folder.settings import raw_settings

        return raw_settings(self.config)

    @property
    def train_config(self) -> dict[str, Any]:
        return dict(self.settings.get("train") or {})

    @property
    def args(self) -> dict[str, Any]:
        """The settings (older runs: the command's flags among them)."""
        return {**dict(self.config.get("args") or {}), **self.settings}

    @property
    def sites(self) -> list[str]:
        """Site paths in model order: from the saved search space, else from trials.csv columns."""
        space = self.config.get("space") or {}
        groups = space.get("groups") if isinstance(space, dict) else None
        if groups:
            return [str(s) for _, members in groups for s in members]
        return [c[len(SITE_PREFIX) :] for c in self.trials.columns if c.startswith(SITE_PREFIX)]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, RecursionError) as exc:
        raise _unusable(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise _unusable(f"cannot read {path}: expected a JSON object, got {type(data).__name__}")
    return data


#: final.csv columns the tables, plots and retrain read (others are optional, e.g. an older run's).
FINAL_REQUIRED = ("label", "kind", "seeds", "mean", "se", "values", "chosen", "methods", "plan_json")


def _read_csv(path: Path, columns: tuple[str, ...], required: tuple[str, ...] = ()) -> pd.DataFrame:
    """Read a CSV the search writes; a missing or empty file is an empty table (nothing finished
    yet). A file without one of the ``required`` columns is refused in one line (not a KeyError
    later, deep in a table)."""
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame(columns=list(columns))
    try:
        df = pd.read_csv(path, keep_default_na=True)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise _unusable(f"cannot read {path}: {exc}") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise _unusable(
            f"cannot read {path}: column(s) {', '.join(missing)} missing; allowed: a {path.name} "
            f"with columns {', '.join(required)}"
        )
    return df


def _clean_trials(df: pd.DataFrame, objective: rf.Objective) -> pd.DataFrame:
    df = df.copy()
    for col in rf.trial_columns(objective):
        if col not in df.columns:
            df[col] = pd.NA
    df["status"] = df["status"].fillna("unknown").astype(str)
    df["searcher"] = df["searcher"].fillna("unknown").astype(str)
    df["error"] = df["error"].fillna("").astype(str)
    df["baseline"] = df["baseline"].fillna("").astype(str)
    df["reference"] = df["baseline"] != ""
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
        raise _unusable(f"run directory not found: {path}", _WHERE)
    if not path.is_dir():
        raise _unusable(f"not a directory: {path}", _WHERE)
    if not any(path.iterdir()):
        raise _unusable(f"run directory is empty: {path}", _WHERE)
    if not (path / "search_config.json").is_file():
        raise _unusable(f"not a search run (no search_config.json): {path}", _WHERE)
    config = _read_json(path / "search_config.json")
    state_path = path / "run_state.json"
    state = _read_json(state_path) if state_path.is_file() else {"status": "unknown"}
    status = state.get("status", "unknown")
    if status == "running" and not allow_running:
        raise _unusable(
            f"run still in progress ({state.get('completed', '?')}/{state.get('num_samples', '?')} "
            f"trials, run_state.json updated {state.get('updated_at', '?')}): {path}",
            "wait for it to finish, or pass --allow-running if its process is gone",
        )
    if status not in ("finished", "running"):
        log.warning("run %s has status %r: summarizing the trials it finished", path, status)
    try:
        objective = rf.Objective.from_config(config)
        trials = _clean_trials(rf.read_trials(path / rf.TRIALS, objective), objective)
    except (OSError, ValueError) as exc:
        raise _unusable(f"cannot read {path / rf.TRIALS}: {exc}") from None
    if "run" not in trials.columns:
        trials.insert(0, "run", path.name)
    history = _read_csv(path / rf.HISTORY, _HISTORY_COLUMNS)
    for col in history.columns:
        history[col] = pd.to_numeric(history[col], errors="coerce")
    final = _read_csv(path / rf.FINAL, tuple(rf.FINAL_COLUMNS), FINAL_REQUIRED) if (path / rf.FINAL).is_file() else None
    return Run(path=path, config=config, state=state, trials=trials, history=history, final=final)


def open_runs(run_dirs: list[str | Path], allow_running: bool = False) -> list[Run]:
    """Open several runs (e.g. a controller search and a random search of the same budget)."""
    if not run_dirs:
        raise _unusable("no RUN_DIR given", _WHERE)
    runs = [open_run(p, allow_running) for p in run_dirs]
    metrics = {(r.objective.metric, r.objective.mode) for r in runs}
    if len(metrics) > 1:
        raise _unusable(
            f"runs optimise different metrics ({', '.join(f'{m} {d}' for m, d in sorted(metrics))})",
            "compare runs of one metric",
        )
    names = [r.name for r in runs]
    if len(set(names)) != len(names):  # same leaf name from different storage paths: disambiguate
        for r in runs:
            r.trials["run"] = str(r.path)
    return runs


def load_run(run_dir: str | Path, allow_running: bool = False) -> pd.DataFrame:
    """All finished trials of RUN_DIR as a DataFrame (one row per trial, in completion order).

    Columns are those of trials.csv (trial_id, order, searcher, baseline, status, the run's
    metric and its standard error, reward, seconds, methods, plan_json, ``site:<path>`` per
    site, ...) plus ``run`` (the directory name) and ``group`` (the searcher, or
    "baseline:<name>" for a baseline trial).
    """
    return combined_trials([open_run(run_dir, allow_running)])


def combined_trials(runs: list[Run]) -> pd.DataFrame:
    """Concatenate the trials of several runs, labelling each with a comparison ``group``.

    The group is the searcher name ("baseline:<name>" for a search's baseline trials) when
    that tells the runs apart, else ``run:searcher``.
    """
    frames = [r.trials for r in runs if len(r.trials)]
    objective = runs[0].objective if runs else rf.Objective()
    if not frames:
        return _clean_trials(pd.DataFrame(columns=rf.trial_columns(objective)), objective).assign(run=[], group=[])
    df = pd.concat(frames, ignore_index=True, sort=False)
    df["baseline"] = df["baseline"].fillna("").astype(str)
    df["reference"] = df["baseline"] != ""
    label = df["searcher"].where(~df["reference"], df["baseline"].map(BASELINE_GROUP.format))
    runs_per_label = df.groupby(label)["run"].nunique()
    ambiguous = set(runs_per_label[runs_per_label > 1].index)
    df["group"] = [f"{run}:{lab}" if lab in ambiguous else lab for run, lab in zip(df["run"], label)]
    df.attrs["objective"] = objective
    return df
