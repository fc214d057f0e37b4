"""``retrain``'s ledger: every finished (plan, seed) training is one line of OUT/retrain_trials.csv.

Why: a retrain is tens of trainings; stopped at any point (Ctrl+C, SIGTERM, SIGKILL, a lost
node) it must resume without training a finished pair again. The file is appended and read
with the search's ledger rules (``controller.run_folder.ledger``): one complete line per
training, fsynced; a last line without its newline (a write cut short) is dropped with a
warning and cut off before the next append.

A training is known by its plan (a hash of ``search_space.plan.plan_key``), its seed and its **recipe**:
the TrainConfig every training of the retrain shares (the run's recipe, ``--epochs``,
``--train-size``, ``--device``) and the child function, saved in retrain_recipe.json. Rerun with
another recipe, the command is refused in one line naming the setting (pass another ``--out``).
A rerun that asks for other plans or seeds (``--top``, ``--seeds``, ``--seed-offset``,
``--baselines``, ``--no-tuned``) reuses the pairs it shares with the ledger and trains the rest.
Resources (``--address``, ``--cpus-per-trial``, ``--gpus-per-trial``, ``--num-threads``) are not
part of the recipe: they decide where a training runs, not what it trains.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from controller import run_folder as rf
from controller.run_folder.ledger import append_row, read_rows, repair_tail
from search_space.errors import short_repr, user_error

__all__ = ["RetrainLedger", "plan_hash", "recipe_of", "recipe_key", "RECIPE_FLAGS", "folder_lock", "disk_full"]

log = logging.getLogger(__name__)

#: Recipe fields a retrain flag sets (the flag is ``--`` + the field with dashes).
RECIPE_FLAGS = ("epochs", "train_size", "device")
#: TrainConfig fields that are not the recipe: the seed is the pair's own, threads are resources.
NOT_RECIPE = ("seed", "num_threads")


def recipe_of(train: Mapping[str, Any], child: str | None) -> dict[str, Any]:
    """What makes two trainings of one plan and seed the same training: the TrainConfig without
    its seed and thread count, and the child function (``--child`` of the search, or none)."""
    return {**{k: v for k, v in train.items() if k not in NOT_RECIPE}, "child": child or ""}


def plan_hash(plan: Any) -> str:
    """A short stable hash of what makes a plan a training (``search_space.plan.plan_key``)."""
    from search_space.plan import plan_key

    return hashlib.sha256(plan_key(plan).encode()).hexdigest()[:16]


def recipe_key(recipe: Mapping[str, Any]) -> str:
    """A short stable hash of a recipe (its JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RetrainLedger:
    """OUT/retrain_trials.csv and OUT/retrain_recipe.json of one retrain recipe."""

    def __init__(self, out_dir: Path, objective: rf.Objective, recipe: Mapping[str, Any]) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / rf.RETRAIN_TRIALS
        self.recipe_path = self.out_dir / rf.RETRAIN_RECIPE
        self.objective = objective
        self.recipe = dict(recipe)
        self.key = recipe_key(self.recipe)
        self.columns = rf.retrain_trial_columns(objective)

    def open(self) -> dict[tuple[str, int], dict[str, Any]]:
        """Check the recipe against the folder's (a different one is refused), cut a torn last
        line, save the recipe, and return the finished trainings by (plan_hash, seed)."""
        rows = read_rows(self.path) if self.path.is_file() else []
        keys = {r.get("recipe", "") for r in rows}
        if rows and keys != {self.key}:
            self._refuse(keys)
        repair_tail(self.path)
        if not self.recipe_path.is_file() or not rows:
            with rf.disk_full_is_fatal(self.out_dir):
                self.out_dir.mkdir(parents=True, exist_ok=True)
                rf.atomic_write_text(self.recipe_path, json.dumps(self.recipe, indent=2, sort_keys=True) + "\n")
        finished: dict[tuple[str, int], dict[str, Any]] = {}
        for line_no, row in enumerate(rows, start=2):
            typed = self._typed(row)
            if isinstance(typed, str):
                log.warning("%s line %d ignored: %s", self.path, line_no, typed)
                continue
            finished.setdefault((typed["plan_hash"], typed["seed"]), typed)
        return finished

    def append(self, row: Mapping[str, Any]) -> None:
        """One finished training, on disk when this returns."""
        append_row(self.path, self.columns, {**row, "recipe": self.key, "time": rf.now_iso()})

    def _typed(self, row: Mapping[str, str]) -> dict[str, Any] | str:
        """A ledger row with numbers as numbers, or what is wrong with it."""
        test, val = rf.test_metric(self.objective), self.objective.metric
        if None in row.values() or None in row:
            return "a damaged row (its cell count is not the header's)"
        if not row.get("plan_hash"):
            return "plan_hash: empty"
        if row.get("status") not in rf.CHILD_STATUSES:
            return f"status: bad value {row.get('status')!r}; allowed: {', '.join(rf.CHILD_STATUSES)}"
        try:
            seed = int(row.get("seed", ""))
        except ValueError:
            return f"seed: bad value {row.get('seed')!r}"
        out: dict[str, Any] = dict(row)
        out["seed"] = seed
        for col in (test, val, "seconds"):
            out[col] = rf.as_float(row.get(col))
        out["epochs"] = int(rf.as_float(row.get("epochs"))) if math.isfinite(rf.as_float(row.get("epochs"))) else 0
        if out["status"] == rf.OK and not math.isfinite(out[test]):
            return f"{test}: bad value {row.get(test)!r} for an ok training"
        return out

    def _refuse(self, keys: set[str]) -> None:
        """One line: which setting differs from the trainings the folder holds."""
        hint = "rerun with the settings it was made with to continue it, or pass another --out"
        old = None
        if self.recipe_path.is_file():
            try:
                old = json.loads(self.recipe_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
        if not isinstance(old, dict) or recipe_key(old) not in keys:
            raise user_error(
                "out",
                str(self.out_dir),
                detail=f"bad value {str(self.out_dir)!r} (its {rf.RETRAIN_TRIALS} holds trainings of another "
                f"recipe, and {rf.RETRAIN_RECIPE} does not say which)",
                hint="pass another --out",
            )
        changed = sorted(
            (k for k in {*old, *self.recipe} if old.get(k) != self.recipe.get(k)),
            key=lambda k: (k not in RECIPE_FLAGS, k),
        )
        k = changed[0]
        then, now = _shown(k, old.get(k)), _shown(k, self.recipe.get(k))
        if k in RECIPE_FLAGS:
            detail = f"bad value {now} ({self.out_dir} holds trainings with {k} {then})"
            raise user_error(k, self.recipe.get(k), detail=detail, hint=hint)
        raise user_error(
            "out",
            str(self.out_dir),
            detail=f"bad value {str(self.out_dir)!r} (it holds trainings with {k} {then}; this retrain trains with "
            f"{k} {now})",
            hint="pass another --out",
        )


def _shown(key: str, value: Any) -> str:
    """A recipe value as the user set it (train_size None is the whole training split, "full")."""
    return "full" if key == "train_size" and value is None else short_repr(value)


@contextlib.contextmanager
def folder_lock(out_dir: Path) -> Iterator[None]:
    """One retrain at a time per output folder (the ledger has one writer)."""
    lock = rf.RunFolderLock(Path(out_dir).resolve())  # "." has no name to lock beside
    try:
        lock.acquire()
    except rf.RunFolderBusy:
        holder = ""
        with contextlib.suppress(OSError):
            holder = lock.path.read_text().strip()
        raise user_error(
            "out",
            str(out_dir),
            detail=f"bad value {str(out_dir)!r} (another retrain{f' (pid {holder})' if holder else ''} writes there)",
            hint="wait for it to end, or pass another --out",
        ) from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def disk_full(out_dir: Path) -> Iterator[None]:
    """A full disk stops the retrain in one line; what the ledger holds stays."""
    try:
        yield
    except rf.DiskFullError:
        raise user_error(
            detail=f"disk full while writing {out_dir}",
            hint="free space, then run the same command again: finished trainings are kept",
        ) from None
