"""What a searcher keeps in its run folder, and what a resume reads back: one object the
search stages call (``RunStore``), over the ledger, the state snapshot and the summaries.

- **Ledger** (``ledger.Ledger``): a finished trial, a final re-training, a controller update:
  one appended line each, on disk before anything that can fail afterwards.
- **Snapshot** (``snapshot``): the searcher's counters, running trials and policy state as
  JSON (and the controller's tensors, weights_only), after every change.
- **Summaries**: best_plan.json and run_state.json (small, rewritten atomically), and
  final.csv, written once, when the final stage is complete.

``load()`` rebuilds the records from the ledger (the truth: a snapshot may be one trial
behind it after a hard kill, never ahead).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from controller import run_folder as rf
from controller.run_folder import ledger as ledger_io
from controller.run_folder import snapshot

__all__ = ["RunStore"]

log = logging.getLogger(__name__)


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


class RunStore:
    """The run folder as the searcher writes and resumes it (see the module docstring)."""

    def __init__(self, run_dir: str | Path, objective: rf.Objective, site_columns: Sequence[str]) -> None:
        self.run_dir = Path(run_dir)
        self.objective = objective
        self.ledger = ledger_io.Ledger(self.run_dir, rf.trial_columns(objective) + list(site_columns))
        self._policy_ref: dict[str, str] | None = None

    # ---------------------------------------------------------------- writing
    def trial(self, row: Mapping[str, Any]) -> None:
        self.ledger.trial(row)

    def final(self, row: Mapping[str, Any]) -> None:
        self.ledger.final({**row, "value": row.get(self.objective.metric)})

    def update(self, row: Mapping[str, Any]) -> None:
        self.ledger.update({**row, "trials": json.dumps(list(row.get("trials") or []))})

    def save_policy(self, tensors: dict[str, Any]) -> dict[str, str]:
        self._policy_ref = snapshot.save_policy(self.run_dir, tensors)
        return self._policy_ref

    def snapshot(self, state: dict[str, Any]) -> None:
        snapshot.write_snapshot(self.run_dir, state)
        if self._policy_ref is not None:
            snapshot.prune_policies(self.run_dir, self._policy_ref["file"])

    def summaries(
        self,
        *,
        final: Sequence[Mapping[str, Any]],
        best_plan: Any,
        status: str,
        total: int,
        finished: int,
        exported: Mapping[str, Any],
    ) -> None:
        """final.csv (only when ``final`` is the complete stage's table), best_plan.json, run_state.json."""
        from controller.final import write_final

        with rf.disk_full_is_fatal(self.run_dir):
            if final:
                write_final(self.run_dir, final)
            if best_plan is not None:
                best_plan.save(self.run_dir / rf.BEST_PLAN)
            else:
                (self.run_dir / rf.BEST_PLAN).unlink(missing_ok=True)
            rf.write_run_state(self.run_dir, status, total, finished, exported=dict(exported))

    # ---------------------------------------------------------------- reading back
    def load(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None]:
        """(search records, final records, controller history, snapshot) of the run folder.

        Torn last lines are cut off first (the next append must start a new line); a record
        that appears twice counts once; the snapshot's last update is appended to the history
        if the driver stopped between the two writes.
        """
        self.ledger.repair()
        records = self._records()
        finals = self._finals()
        history = self._history()
        state = snapshot.read_snapshot(self.run_dir)
        if state is not None:
            updates = state.get("updates")
            last = state.get("last_update")
            if isinstance(updates, int) and updates == len(history) + 1 and isinstance(last, dict):
                log.info("controller update %s was saved but not logged: logging it now", last.get("update"))
                self.update(last)
                history.append({**last, "trials": list(last.get("trials") or [])})
            elif isinstance(updates, int) and updates != len(history):
                raise snapshot.SnapshotError(
                    self.run_dir,
                    f"{rf.SNAPSHOT} counts {updates} controller updates, {rf.HISTORY} {len(history)}: "
                    "the files do not belong together",
                )
            policy = state.get("policy")
            if isinstance(policy, dict) and "file" in policy:
                self._policy_ref = {"file": policy["file"], "sha256": policy.get("sha256", "")}
        return records, finals, history, state

    def load_policy(self, ref: Any) -> dict[str, Any]:
        return snapshot.load_policy(self.run_dir, ref)

    def _records(self) -> list[dict[str, Any]]:
        from search_space.plan import Plan

        o = self.objective
        df = rf.read_trials(self.run_dir / rf.TRIALS, o)
        out = []
        for r in df.to_dict("records"):
            baseline = _text(r.get("baseline"))
            row = {
                **{k: v for k, v in r.items() if str(k).startswith(rf.SITE_PREFIX)},
                "trial_id": str(r["trial_id"]),
                "order": int(rf.as_float(r.get("order"))) if math.isfinite(rf.as_float(r.get("order"))) else len(out),
                "searcher": _text(r.get("searcher")),
                "kind": _text(r.get("kind")) or ("baseline" if baseline else "searched"),
                "baseline": baseline,
                "status": str(r["status"]),
                o.metric: rf.as_float(r.get(o.metric)),
                o.se_column: rf.finite_or_none(r.get(o.se_column)),
                o.seeds_column: _text(r.get(o.seeds_column)),
                o.best_column: rf.as_float(r.get(o.best_column)),
                "reward": rf.finite_or_none(r.get("reward")),
                "error": _text(r.get("error")),
                "node": _text(r.get("node")),
                "precision": _text(r.get("precision")),
                "seconds": rf.as_float(r.get("seconds")),
                "epochs": int(rf.as_float(r.get("epochs"))) if math.isfinite(rf.as_float(r.get("epochs"))) else None,
                "plan": Plan.from_json(str(r["plan_json"])),
                "plan_json": str(r["plan_json"]),
                "methods": _text(r.get("methods")),
                "reference": bool(baseline),
                "tokens": _text(r.get("tokens")) or "[]",
                "learned_rates": _text(r.get("learned_rates")),
            }
            out.append(row)
        out.sort(key=lambda row: row["order"])
        return out

    def _finals(self) -> list[dict[str, Any]]:
        o = self.objective
        out, seen = [], set()
        for r in ledger_io.read_rows(self.run_dir / rf.FINAL_TRIALS):
            key = (r.get("label"), r.get("seed"))
            if not r.get("trial_id") or key in seen or r.get("status") not in rf.STATUSES:
                continue
            seen.add(key)
            out.append(
                {
                    "trial_id": r["trial_id"],
                    "order": len(out),
                    "label": r["label"],
                    "seed": int(r["seed"]),
                    "source": r.get("source", ""),
                    "searcher": r.get("searcher", ""),
                    "status": r["status"],
                    o.metric: rf.as_float(r.get("value")),
                    "error": r.get("error", ""),
                    "seconds": rf.as_float(r.get("seconds")),
                    "node": r.get("node", ""),
                    "precision": r.get("precision", ""),
                    "epochs": r.get("epochs") or None,
                    "plan_json": r["plan_json"],
                    "methods": r.get("methods", ""),
                }
            )
        return out

    def _history(self) -> list[dict[str, Any]]:
        out = []
        for r in ledger_io.read_rows(self.run_dir / rf.HISTORY):
            try:
                trials = json.loads(r.get("trials") or "[]")
            except ValueError:
                trials = []
            out.append(
                {
                    "update": int(r["update"]),
                    "step": int(r["step"]),
                    "trials_seen": int(r["trials_seen"]),
                    **{k: rf.as_float(r.get(k)) for k in ("mean_reward", "baseline", "entropy", "loss", "time")},
                    "trials": [str(t) for t in trials] if isinstance(trials, list) else [],
                }
            )
        return out
