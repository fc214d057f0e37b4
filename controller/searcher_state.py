"""How a ``PlanSearcher`` persists and comes back: ``searcher_state.json`` beside the run
folder's ledger (``resume``), or, without a run folder, Ray's checkpoint as plain values and
tensors (``save`` / ``restore``, loaded with ``weights_only=True``). Nothing saved here is a
pickle that can run code. Also what the files and the API read from that state (records,
best, final table, the summaries best_plan.json and run_state.json). A mixin of
``controller.searcher.PlanSearcher`` (one job: its state, in memory and on disk)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from controller import run_folder as rf
from controller.final import best_plan_of
from controller.run_folder.snapshot import SnapshotError
from search_space.errors import UserTypeError, user_error
from search_space.plan import Plan

__all__ = ["Persisted", "STATE_VERSION", "SEARCH", "FINAL", "entry_to_json", "entry_from_json", "seed_list"]

log = logging.getLogger("controller.searcher")

STATE_VERSION = 2  # of a Tune checkpoint without a run folder
SEARCH, FINAL = "search", "final"


class Persisted:
    """The searcher's state as data: written after every change, read back on resume."""

    # ---- the run folder (searcher_state.json + the ledger)
    def resume(self) -> None:
        """Continue the search of ``run_dir`` from its ledger and searcher_state.json.

        The ledger is the truth: the trials it holds are done (never re-run); the trials the
        snapshot knew as running that the ledger lacks run again first. Nothing is unpickled:
        the snapshot is JSON and the controller's tensors load with ``weights_only=True``.
        Raises ``SnapshotError`` (one line) on state this product did not write."""
        if self.store is None:
            raise user_error("resume", detail="this searcher has no run folder (run_dir=None)")
        records, finals, history, state = self.store.load()
        if state is None:
            if records or finals:
                raise SnapshotError(self.run_dir, f"{rf.SNAPSHOT} is missing but the ledger holds trials")
            return  # stopped before its first suggestion: start as new
        try:
            self._load_state(state, records, finals, history)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, SnapshotError):
                raise
            raise SnapshotError(
                self.run_dir, f"{rf.SNAPSHOT} does not hold a state this searcher wrote ({type(exc).__name__}: {exc})"
            ) from None
        log.info(
            "searcher resumed: %d trials finished, %d to run again, %d controller updates",
            self.finished,
            len(self._requeue),
            len(self._history),
        )

    def _load_state(self, state: Mapping[str, Any], records: list, finals: list, history: list) -> None:
        if state.get("searcher") != self.name:
            raise SnapshotError(
                self.run_dir, f"{rf.SNAPSHOT} is a {state.get('searcher')!r} searcher's, not {self.name!r}"
            )
        if state.get("space") != self.space.to_dict() or state.get("objective") != self.objective.to_dict():
            raise SnapshotError(self.run_dir, f"the search space or objective in {rf.SNAPSHOT} differs from the run's")
        suggested = state["suggested"]
        if isinstance(suggested, bool) or not isinstance(suggested, int) or suggested < len(records):
            raise user_error("suggested", suggested)
        self._records, self._final_records, self._history = records, finals, history
        self._suggested = suggested
        self.sampled.warmed = bool(state["warmed"])
        done = {r["trial_id"] for r in records} | {r["trial_id"] for r in finals}
        pending = state["pending"]
        if not isinstance(pending, dict):
            raise user_error(detail="pending is not an object", cls=UserTypeError)
        self._requeue = [
            entry_from_json(e)
            for tid, e in pending.items()
            if tid not in done and isinstance(e, dict) and e.get("stage") == SEARCH
        ]
        self._pending = {}
        self._seen = None
        self.load_policy_json(state["policy"])
        self.final.rebuild(records, finals, (), state)
        self._rebuild_buffer()
        self._retally()

    def _state_json(self) -> dict[str, Any]:
        """searcher_state.json: what the ledger does not hold (its size does not grow with the run)."""
        return {
            "searcher": self.name,
            "space": self.space.to_dict(),
            "objective": self.objective.to_dict(),
            "suggested": self._suggested,
            "warmed": self.sampled.warmed,
            **self.final.state(),
            "pending": {tid: entry_to_json(e) for tid, e in self._pending.items()},
            "updates": len(self._history),
            "last_update": self._history[-1] if self._history else None,
            "policy": self.policy_json(),
            "saved_at": time.time(),
        }

    def _save_state(self) -> None:
        if self.store is not None:
            self.store.snapshot(self._state_json())

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None  # timing of this driver session only
        return state

    # ---- Ray's checkpoint (a searcher in your own Tuner, without a run folder)
    def save(self, checkpoint_path: str) -> None:
        """Ray's checkpoint of this searcher. With a run folder it is a pointer: the state is in
        the folder (searcher_state.json and the ledger), and ``resume()`` reads it from there;
        without one (a searcher in your own Tuner) it is the state itself as plain values and
        tensors, which ``restore`` loads with ``weights_only=True`` (nothing in it can run code)."""
        if self.store is not None:
            Path(checkpoint_path).write_text(
                json.dumps({"searcher": self.name, "state": f"{rf.SNAPSHOT} and the ledger in {self.run_dir}"})
            )
            return
        import torch

        def plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: v for k, v in r.items() if k != "plan"} for r in rows]  # the plan is plan_json

        state = {
            "version": STATE_VERSION,
            "searcher": self.name,
            "space": self.space.to_dict(),
            "suggested": self._suggested,
            "pending": {tid: entry_to_json(e) for tid, e in self._pending.items()},
            "records": plain(self._records),
            "final_records": plain(self._final_records),
            "final": self.final.state(),
            "buffer": [[tid, list(tokens), reward] for tid, tokens, reward in self._buffer],
            "history": self._history,
            "warmed": self.sampled.warmed,
            "policy": self._policy_state(),
        }
        torch.save(state, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        """Tune's restore of a searcher without a run folder (a run folder resumes with
        ``resume()``, which never reads Ray's files). Loaded with ``weights_only=True``."""
        import torch

        if self.store is not None:
            raise RuntimeError(
                "a searcher with a run folder resumes from that folder (PlanSearcher.resume, or "
                "run_search(..., resume=True)), not from Ray's checkpoint"
            )
        try:
            state = torch.load(checkpoint_path, weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - anything weights_only refuses is not ours
            raise user_error(
                "searcher state",
                detail=f"bad value {checkpoint_path} ({type(exc).__name__})",
                allowed=f"a {self.name} searcher's save()",
            ) from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION or state.get("searcher") != self.name:
            raise user_error(
                "searcher state", detail=f"bad value {checkpoint_path}", allowed=f"a {self.name} searcher's save()"
            )
        if state["space"] != self.space.to_dict():
            raise user_error("space", detail="the saved search space differs", allowed="the space the run started with")

        def with_plans(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{**r, "plan": Plan.from_json(r["plan_json"])} for r in rows]

        self._suggested = state["suggested"]
        self._pending = {
            tid: {**entry_from_json(e), "last": None, "suggested_at": time.time()}
            for tid, e in state["pending"].items()
        }
        self._records, self._final_records = with_plans(state["records"]), with_plans(state["final_records"])
        running = [(p["label"], p["seed"]) for p in self._pending.values() if p["stage"] == FINAL]
        final = state.get("final") or {  # a checkpoint of the code before the stages: its queue
            "final_started": state.get("final_queue") is not None,
            "final_total": state.get("final_total"),
        }
        self.final.rebuild(self._records, self._final_records, running, final)
        self._buffer = [(str(tid), list(tokens), float(reward)) for tid, tokens, reward in state["buffer"]]
        self._history, self._seen = state["history"], None
        self.sampled.warmed = state["warmed"]
        self._load_policy_state(state["policy"])
        self._retally()

    # ---- what the files and the API read
    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self._history)

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self._records)

    @property
    def final_records(self) -> list[dict[str, Any]]:
        return list(self._final_records)

    @property
    def finished(self) -> int:
        return len(self._records) + len(self._final_records)

    def best(self) -> dict[str, Any] | None:
        """The best search-stage trial (``run_folder.best_row``'s rule: ok, best metric)."""
        return dict(self.tally.best) if self.tally.best is not None else None

    def final_table(self) -> list[dict[str, Any]]:
        """One row per final plan (``FinalStage.table``)."""
        return self.final.table(self._final_records)

    def _write_summaries(self) -> None:
        """best_plan.json and run_state.json after every trial; final.csv once the final stage is done."""
        if self.store is None:
            return
        done = self.finished >= self.total_trials
        final = self.final_table() if done and self._final_records else []
        plan, exported = best_plan_of(final, self.best(), self.objective, self.name)
        self.store.summaries(
            final=final,
            best_plan=plan,
            status="finished" if done else "running",
            total=self.total_trials,
            finished=self.finished,
            exported=exported,
        )


def seed_list(field: str, value: Any, first: int) -> list[int]:
    """Seeds as given, or their number (``first``, ``first + 1``, ...)."""
    if isinstance(value, bool):
        raise user_error(field, value, "a number of seeds or a list of seeds", cls=UserTypeError)
    if isinstance(value, int):
        if value < 0:
            raise user_error(field, value, "a number of seeds >= 0 or a list of seeds")
        return list(range(first, first + value))
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise user_error(
            field,
            detail=f"bad value {value!r} of type {type(value).__name__}",
            allowed="a number of seeds or a list",
            cls=UserTypeError,
        )
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise user_error(field, list(value), "seeds (integers >= 0)")
    return [int(s) for s in value]


def entry_to_json(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A running trial as searcher_state.json keeps it (its plan as the plan's own JSON)."""
    keep = ("stage", "tokens", "baseline", "kind", "label", "seed", "source", "suggested_at")
    return {**{k: entry[k] for k in keep if k in entry}, "plan": entry["plan"].to_dict()}


def entry_from_json(entry: Mapping[str, Any]) -> dict[str, Any]:
    tokens = entry["tokens"]
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise user_error(detail="a running trial's tokens are not a list of integers", cls=UserTypeError)
    out = {k: entry[k] for k in ("stage", "baseline", "kind", "label", "source") if k in entry}
    if not all(isinstance(v, str) for v in out.values()):
        raise user_error(detail="a trial's stage, baseline, kind, label or source is not text", cls=UserTypeError)
    if "seed" in entry:
        if isinstance(entry["seed"], bool) or not isinstance(entry["seed"], int):
            raise user_error(detail="a trial's seed is not an integer", cls=UserTypeError)
        out["seed"] = entry["seed"]
    return {**out, "baseline": out.get("baseline", ""), "tokens": tokens, "plan": Plan.from_dict(entry["plan"])}
