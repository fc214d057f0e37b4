"""The searcher's line per finished trial (``[k/N] trial ... best ... ETA``), on the logger
``controller.searcher`` that ``launch_search.py`` and ``run_search(verbose=True)`` show."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["log_progress"]

log = logging.getLogger("controller.searcher")


def log_progress(searcher: Any, row: Mapping[str, Any]) -> None:
    """One line for the trial ``row`` just recorded by ``searcher`` (a ``PlanSearcher``)."""
    s = searcher
    done, total = s.finished, s.total_trials
    best = s.best()
    metric = s.objective.metric
    session = s._session or {"start": time.time(), "done_at_start": 0.0}
    elapsed = time.time() - session["start"]
    rate = (done - session["done_at_start"]) / max(elapsed, 1e-9)
    eta = (total - done) / rate if rate > 0 else float("nan")
    if s._history:
        h = s._history[-1]
        ctrl = f"controller upd {h['update'] + 1} reward {h['mean_reward']:.4f} entropy {h['entropy']:.3f}"
    elif s.name == "controller":
        ctrl = f"controller: {len(s._buffer)}/{s.controller_batch} rewards buffered"
    else:
        ctrl = f"{s.name} search"
    label = row.get("label") or row.get("baseline") or ""
    stage = f"final {label} seed {row['seed']}" if "seed" in row else (f"baseline {label}" if label else "")
    log.info(
        "[%d/%d] %s %s%s %s %.4f | running %d | failed %d | best %s | %s | elapsed %s ETA %s",
        done,
        total,
        row["trial_id"],
        f"({stage}) " if stage else "",
        row["status"],
        metric,
        row[metric],
        len(s._pending),
        s.tally.failed,
        f"{best[metric]:.4f}" if best else "-",
        ctrl,
        _hms(elapsed),
        _hms(eta),
    )


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
