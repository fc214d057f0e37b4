"""Ray Tune searchers that propose regularization plans and keep the run's bookkeeping.

Why it looks like this:
- Ray Tune owns scheduling, resources, fault tolerance and resume; a `Searcher` is the one
  place it lets us decide *what* to train next and hear about every finished trial, so the
  controller lives here, on the driver.
- Trials finish out of order and concurrently: a suggested trial waits in ``pending`` with
  its tokens; finished ones go, in completion order, into a buffer that is turned into one
  REINFORCE update per ``controller_batch`` rewards (and a last, smaller one at the end).
- Ray resumes a run from its own experiment snapshot, which holds this searcher's `save()`
  state; the bookkeeping files are rewritten from that state on `restore()`, so they always
  agree with the trials Ray will (re-)run.

Reward of a finished trial (``trial_outcome``):
- ``ok``: the final validation accuracy (last epoch, not the best epoch: that is the
  plan's value at the end of its schedule, and the same number the scheduler compares);
- ``stopped`` (ended early by the scheduler, e.g. ASHA): its last reported validation
  accuracy, a natural penalty since it trained fewer epochs;
- ``diverged``, or ``failed`` inside the child (it raised or reported a failure): the
  penalty reward (launch_search uses chance level, 1/num_classes), error recorded;
- ``failed`` without any report from the child (worker crash, node lost): recorded in
  trials.csv but left out of the update, because it says nothing about the plan.
The reference trial (the all-"none" plan, suggested first) is recorded like any other but
never enters an update: it was not sampled from the policy.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import pickle
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from ray.tune.search import Searcher

from controller.lstm import LSTMController
from controller.reinforce import Reinforce
from search_space.files import atomic_write_text
from search_space.plan import Plan
from search_space.space import SearchSpace

__all__ = ["ControllerSearcher", "RandomSearcher", "TrialOutcome", "trial_outcome",
           "atomic_write_text", "write_run_state", "read_json", "TRIAL_COLUMNS",
           "HISTORY_COLUMNS", "STATUSES"]

log = logging.getLogger(__name__)

STATE_VERSION = 1
STATUSES = ("ok", "diverged", "failed", "stopped")
TRIAL_COLUMNS = ["trial_id", "order", "searcher", "status", "val_acc", "best_val_acc", "reward",
                 "error", "seconds", "node", "precision", "epochs", "plan_json", "methods", "reference",
                 "update", "tokens"]
HISTORY_COLUMNS = ["update", "step", "trials_seen", "mean_reward", "baseline", "entropy", "loss",
                   "time"]
NO_REPORT_ERROR = ("trial errored in Ray before the child reported (worker crash or node "
                   "loss); see error.txt in the trial directory")


# ------------------------------------------------------------------------- files

def _csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(v) for k, v in row.items()})
    return buf.getvalue()


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return int(value)
    return value


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_run_state(run_dir: str | os.PathLike[str], status: str, num_samples: int,
                    completed: int, **extra: Any) -> None:
    """run_state.json: what a user (or `--resume`) needs to know about the run right now."""
    state = {"status": status, "updated_at": now_iso(), "num_samples": int(num_samples),
             "completed": int(completed), **extra}
    atomic_write_text(Path(run_dir) / "run_state.json", json.dumps(state, indent=2) + "\n")


# ------------------------------------------------------------------------- rewards
@dataclass(frozen=True)
class TrialOutcome:
    """How one finished trial is recorded and rewarded (see the module docstring)."""

    status: str
    val_acc: float
    best_val_acc: float
    reward: float | None  # None: recorded but not used by the controller
    error: str


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def trial_outcome(result: Mapping[str, Any] | None, errored: bool, penalty: float) -> TrialOutcome:
    """Status and reward of a trial from its last result and whether Ray saw it error.

    The trainable marks its last report with ``final=True`` and a child status (ok,
    diverged, failed); a trial whose last result is not final was stopped early.
    """
    res = dict(result or {})
    final = bool(res.get("final"))
    val, best = _num(res.get("val_acc")), _num(res.get("best_val_acc"))
    error = str(res.get("error") or res.get("message") or "")
    if final:
        status = str(res.get("status", "ok"))
        if status not in ("ok", "diverged", "failed"):
            error = error or f"unknown child status {status!r}"
            status = "failed"
        if errored and status == "ok":
            status, error = "failed", error or "trial raised after its final report"
    elif errored:
        status, error = "failed", error or NO_REPORT_ERROR
    else:
        status = "stopped"
    if not math.isfinite(best):
        best = val
    if status in ("ok", "stopped"):
        reward: float | None = val if math.isfinite(val) else (penalty if final else None)
    elif final:  # diverged, or the child itself failed: the plan's fault as far as we know
        reward = float(penalty)
    else:
        reward = None
    if status == "diverged" and not error:
        error = "loss became NaN/inf"
    return TrialOutcome(status, val, best, reward, error)


# ------------------------------------------------------------------------- searchers
class _PlanSearcher(Searcher):
    """Shared machinery: suggestion bookkeeping, outcomes, batches, files, save/restore."""

    name: ClassVar[str] = ""

    def __init__(self, space: SearchSpace, train: Mapping[str, Any], *, num_samples: int,
                 run_dir: str | os.PathLike[str] | None = None, controller_batch: int = 4,
                 penalty_reward: float = 0.0, reference: bool = True,
                 metric: str = "val_acc", mode: str = "max") -> None:
        super().__init__(metric=metric, mode=mode)
        for field, value in (("num_samples", num_samples), ("controller_batch", controller_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field}: bad value {value!r}; allowed: an integer >= 1")
        if not math.isfinite(float(penalty_reward)):
            raise ValueError(f"penalty_reward: bad value {penalty_reward!r}; allowed: a finite number")
        self.space = space
        self.train = dict(train)
        self.num_samples = num_samples
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.controller_batch = controller_batch
        self.penalty_reward = float(penalty_reward)
        self.reference = reference
        self._pending: dict[str, dict[str, Any]] = {}
        self._records: list[dict[str, Any]] = []
        self._buffer: list[tuple[str, list[int], float]] = []
        self._history: list[dict[str, Any]] = []
        self._suggested = 0
        self._session: dict[str, float] | None = None

    # ---- subclass hooks
    def _sample_tokens(self) -> list[int]:
        raise NotImplementedError

    def _learn(self, tokens: list[list[int]], rewards: list[float]) -> dict[str, Any] | None:
        """Use one batch of rewards; return the controller's stats (None: nothing learned)."""
        return None

    def _policy_state(self) -> Any:
        raise NotImplementedError

    def _load_policy_state(self, state: Any) -> None:
        raise NotImplementedError

    # ---- Ray Searcher API
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        """Our space is the SearchSpace, so Tune's param_space must be empty."""
        if config:
            return False
        self._metric = metric or self._metric
        self._mode = mode or self._mode
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        if self._suggested >= self.num_samples:
            return Searcher.FINISHED
        self._start_session()
        is_reference = self.reference and self._suggested == 0
        if is_reference:
            tokens = self.space.encode(Plan.none(self.space.sites, model=self.space.model,
                                                 ramp_fraction=self.space.ramp_fraction))
        else:
            tokens = [int(t) for t in self._sample_tokens()]
        plan_json = self.space.decode(tokens).to_json()
        self._pending[trial_id] = {"tokens": tokens, "plan_json": plan_json,
                                   "reference": is_reference, "suggested_at": time.time(),
                                   "last": None}
        self._suggested += 1
        return {"plan": plan_json, "tokens": list(tokens), "searcher": self.name,
                "train": dict(self.train)}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Keep the latest result: an errored trial completes without one."""
        if trial_id in self._pending:
            self._pending[trial_id]["last"] = {k: result.get(k) for k in (
                "final", "status", "val_acc", "best_val_acc", "error", "message", "seconds",
                "node", "epoch", "precision")}

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        entry = self._pending.pop(trial_id, None)
        if entry is None:
            log.warning("completion of unknown trial %s ignored", trial_id)
            return
        result = result if result else entry["last"]
        outcome = trial_outcome(result, error, self.penalty_reward)
        res = result or {}
        plan = Plan.from_json(entry["plan_json"])
        row: dict[str, Any] = {
            "trial_id": trial_id, "order": len(self._records), "searcher": self.name,
            "status": outcome.status, "val_acc": outcome.val_acc,
            "best_val_acc": outcome.best_val_acc, "reward": outcome.reward,
            "error": outcome.error, "node": res.get("node") or "",
            "precision": res.get("precision") or "",  # amp=auto: bf16 or fp32 depending on the node's CPU
            "seconds": _num(res.get("seconds")) if res.get("seconds") is not None
            else time.time() - entry["suggested_at"],
            "epochs": res.get("epoch"), "plan_json": json.dumps(plan.to_dict(), sort_keys=True),
            "methods": plan.summary(), "reference": entry["reference"], "update": None,
            "tokens": json.dumps(entry["tokens"]),
            **{f"site:{s}": m for s, m in plan.methods().items()},
        }
        self._records.append(row)
        if outcome.status in ("failed", "diverged"):
            log.warning("trial %s %s: %s", trial_id, outcome.status, outcome.error)
        if outcome.reward is not None and not entry["reference"]:
            self._buffer.append((trial_id, entry["tokens"], outcome.reward))
        while len(self._buffer) >= self.controller_batch:
            self._consume(self.controller_batch)
        if len(self._records) >= self.num_samples and self._buffer:
            self._consume(len(self._buffer))  # the last, partial batch
        self._write_files()
        self._log_progress(row)

    def save(self, checkpoint_path: str) -> None:
        state = {"version": STATE_VERSION, "searcher": self.name, "space": self.space.to_dict(),
                 "num_samples": self.num_samples, "controller_batch": self.controller_batch,
                 "suggested": self._suggested, "pending": self._pending,
                 "records": self._records, "buffer": self._buffer, "history": self._history,
                 "policy": self._policy_state()}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"searcher state version: bad value {state.get('version')!r}; "
                             f"allowed: {STATE_VERSION}")
        if state["searcher"] != self.name:
            raise ValueError(f"searcher: bad value {state['searcher']!r} in {checkpoint_path}; "
                             f"allowed: {self.name!r} (the searcher being restored)")
        if state["space"] != self.space.to_dict():
            raise ValueError(f"space: the saved search space in {checkpoint_path} differs from "
                             "this searcher's; allowed: the space the run started with")
        self.num_samples = state["num_samples"]
        self.controller_batch = state["controller_batch"]
        self._suggested = state["suggested"]
        self._pending = state["pending"]
        self._records = state["records"]
        self._buffer = state["buffer"]
        self._history = state["history"]
        self._load_policy_state(state["policy"])
        self._session = None
        self._start_session()
        self._write_files()
        log.info("searcher restored: %d trials finished, %d to re-run, %d controller updates",
                 len(self._records), len(self._pending), len(self._history))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None  # timing of this driver session only
        return state

    # ---- internals
    @property
    def completed(self) -> int:
        return len(self._records)

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self._history)

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self._records)

    def _consume(self, n: int) -> None:
        batch, self._buffer = self._buffer[:n], self._buffer[n:]
        stats = self._learn([list(t) for _, t, _ in batch], [r for _, _, r in batch])
        if stats is None:
            return
        update = len(self._history)
        self._history.append({"update": update, "step": stats["step"],
                              "trials_seen": len(self._records),
                              **{k: stats[k] for k in ("mean_reward", "baseline", "entropy", "loss")},
                              "time": time.time()})
        ids = {tid for tid, _, _ in batch}
        for row in self._records:
            if row["trial_id"] in ids:
                row["update"] = update

    def _start_session(self) -> None:
        if self._session is None:
            self._session = {"start": time.time(), "done_at_start": float(len(self._records))}

    def _write_files(self) -> None:
        if self.run_dir is None:
            return
        site_cols = [f"site:{s}" for s in self.space.sites]
        atomic_write_text(self.run_dir / "trials.csv", _csv_text(TRIAL_COLUMNS + site_cols, self._records))
        atomic_write_text(self.run_dir / "controller_history.csv", _csv_text(HISTORY_COLUMNS, self._history))
        best = self.best()
        if best is not None:
            plan = Plan.from_json(best["plan_json"])
            plan.metadata = {**plan.metadata, "val_acc": best["val_acc"], "trial_id": best["trial_id"],
                             "best_val_acc": best["best_val_acc"], "searcher": self.name}
            plan.save(self.run_dir / "best_plan.json")
        done = len(self._records) >= self.num_samples
        write_run_state(self.run_dir, "finished" if done else "running", self.num_samples,
                        len(self._records))

    def best(self) -> dict[str, Any] | None:
        """The finished ("ok") trial with the highest final validation accuracy."""
        ok = [r for r in self._records if r["status"] == "ok" and math.isfinite(r["val_acc"])]
        return max(ok, key=lambda r: r["val_acc"]) if ok else None

    def _log_progress(self, row: dict[str, Any]) -> None:
        done = len(self._records)
        failed = sum(r["status"] in ("failed", "diverged") for r in self._records)
        best = self.best()
        session = self._session or {"start": time.time(), "done_at_start": 0.0}
        elapsed = time.time() - session["start"]
        rate = (done - session["done_at_start"]) / max(elapsed, 1e-9)
        eta = (self.num_samples - done) / rate if rate > 0 else float("nan")
        if self._history:
            h = self._history[-1]
            ctrl = f"controller upd {h['update'] + 1} reward {h['mean_reward']:.4f} entropy {h['entropy']:.3f}"
        elif self.name == "controller":
            ctrl = f"controller: {len(self._buffer)}/{self.controller_batch} rewards buffered"
        else:
            ctrl = "random search"
        log.info("[%d/%d] %s %s val_acc %.4f | running %d | failed %d | best %s | %s | "
                 "elapsed %s ETA %s", done, self.num_samples, row["trial_id"], row["status"],
                 row["val_acc"], len(self._pending), failed,
                 f"{best['val_acc']:.4f}" if best else "-", ctrl, _hms(elapsed), _hms(eta))


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ControllerSearcher(_PlanSearcher):
    """Plans sampled from an LSTM controller trained with REINFORCE on validation accuracy.

    controller_kwargs / reinforce_kwargs go to `LSTMController` / `Reinforce`; ``seed``
    seeds both the controller's initialisation and its sampling.
    """

    name = "controller"

    def __init__(self, space: SearchSpace, train: Mapping[str, Any], *, num_samples: int,
                 seed: int = 0, controller_kwargs: Mapping[str, Any] | None = None,
                 reinforce_kwargs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(space, train, num_samples=num_samples, **kwargs)
        policy = LSTMController(space.vocab_sizes, seed=seed, **dict(controller_kwargs or {}))
        self.reinforce = Reinforce(policy, seed=seed, active_fn=space.active_mask,
                                   **dict(reinforce_kwargs or {}))

    def _sample_tokens(self) -> list[int]:
        return self.reinforce.sample(1)[0]

    def _learn(self, tokens: list[list[int]], rewards: list[float]) -> dict[str, Any]:
        return self.reinforce.update(tokens, rewards)

    def _policy_state(self) -> Any:
        return self.reinforce.state_dict()

    def _load_policy_state(self, state: Any) -> None:
        self.reinforce.load_state_dict(state)


class RandomSearcher(_PlanSearcher):
    """Uniform samples over the same space: the baseline every controller search is compared with."""

    name = "random"

    def __init__(self, space: SearchSpace, train: Mapping[str, Any], *, num_samples: int,
                 seed: int = 0, **kwargs: Any) -> None:
        super().__init__(space, train, num_samples=num_samples, **kwargs)
        self.rng = np.random.default_rng(seed)

    def _sample_tokens(self) -> list[int]:
        return self.space.random_tokens(self.rng)

    def _policy_state(self) -> Any:
        return self.rng.bit_generator.state

    def _load_policy_state(self, state: Any) -> None:
        self.rng.bit_generator.state = state
