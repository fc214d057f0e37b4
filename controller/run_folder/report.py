"""What a finished (or stopped) search tells its user: the ``SearchResult`` and its summary text
(counts, the search stage's best, the baselines, the final stage's paired intervals, the
verdict, and the commands that will work next), read from the run folder."""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller import run_folder as rf

__all__ = ["SearchResult", "summary_text"]


@dataclass
class SearchResult:
    """What a search leaves: the plan to take home, the tables, and where everything is.

    ``best_plan`` is this project's pick (the best mean over the reward seeds among sampled
    plans, or the final stage's best mean); Ray Tune's own ``ResultGrid.get_best_result()``
    may name another trial: it ranks every Tune trial (baselines and final re-trainings
    included) by its last reported epoch, not by the seeds' mean. ``status`` is "failed"
    (with ``error`` the most common trial error) when no trial finished ok."""

    run_dir: Path
    status: str  # finished | interrupted | failed
    objective: rf.Objective
    best_plan: Any  # search_space.Plan or None (no trial finished ok)
    trials: Any  # pandas DataFrame, one row per search-stage trial (trials.csv)
    final: Any = None  # pandas DataFrame (final.csv) when a final stage ran
    error: str = ""
    summary: str = field(default="", repr=False)

    @property
    def finished(self) -> bool:
        return self.status == "finished"


def _result(run_dir: Path, config: Mapping[str, Any], status: str, error: str) -> SearchResult:
    import pandas as pd

    from search_space.plan import Plan

    objective = rf.Objective.from_config(config)
    trials = rf.read_trials(run_dir / rf.TRIALS, objective)
    final = pd.read_csv(run_dir / rf.FINAL) if (run_dir / rf.FINAL).is_file() else None
    best = Plan.load(run_dir / rf.BEST_PLAN) if (run_dir / rf.BEST_PLAN).is_file() else None
    if status == "finished" and len(trials) and not trials["status"].isin(rf.RANKED_STATUSES).any():
        error = _all_failed(trials)
        status = "failed"
    result = SearchResult(
        run_dir=run_dir, status=status, objective=objective, best_plan=best, trials=trials, final=final, error=error
    )
    result.summary = summary_text(result)
    return result


def _all_failed(trials: Any) -> str:
    """The error of a search in which no trial finished ok: the most common one, counted."""
    from search_space.describe import most_common

    errors = [str(e).strip().splitlines()[0] for e in trials["error"].fillna("") if str(e).strip()]
    text, count = most_common(errors)
    if not text:
        return f"no trial of {len(trials)} finished ok (statuses: {', '.join(sorted(set(trials['status'])))})"
    return f"every trial failed; most common error ({count} of {len(trials)} trials): {text}"


def summary_text(result: SearchResult) -> str:
    """The end-of-search lines: counts, the search stage's best and the baselines (values only),
    the final re-training's paired intervals, and the verdict."""
    import pandas as pd

    from controller.final import verdict

    o, df = result.objective, result.trials
    counts = df["status"].value_counts() if len(df) else {}
    n_final = 0
    if result.final is not None and len(result.final):  # the race's seeds and the confirmation's
        n_final = int(result.final["seeds"].sum())
        if "confirm_seeds" in result.final.columns:
            n_final += int(pd.to_numeric(result.final["confirm_seeds"], errors="coerce").fillna(0).sum())
    lines = [
        f"Search {result.status}: {len(df)} trials ("
        + ", ".join(f"{int(counts[s])} {s}" for s in rf.STATUSES if s in counts)
        + ")"
        + (f" + {n_final} final re-trainings" if n_final else "")
        + f"; run folder {result.run_dir}"
    ]
    ok = df[df["status"].isin(rf.RANKED_STATUSES)] if len(df) else df
    plain = ok[ok["baseline"].fillna("") == "none"] if len(ok) else ok
    ref = float(plain[o.metric].mean()) if len(plain) else None
    ranked = ok[ok["baseline"].fillna("") != rf.LEARNED_TRIAL] if len(ok) else ok  # run_folder.best_row's rule
    if len(ranked):
        best = ranked.sort_values([o.metric, "order"], ascending=[o.mode == "min", True]).iloc[0]
        label = (
            f"baseline {best['baseline']}"
            if str(best.get("baseline") or "") not in ("", "nan")
            else f"trial {best['trial_id']}"
        )
        se = best.get(o.se_column)
        se_text = f" +- {se:.4f}" if isinstance(se, float) and math.isfinite(se) else ""
        lines.append(
            f"Best in search ({label}, {o.metric} {best[o.metric]:.4f}{se_text}; the best of {len(ranked)} draws, "
            "so biased upwards: the final re-training compares fairly): "
            f"{_plan_summary(best['plan_json'])}"
        )
        for name, part in ok[ok["baseline"].fillna("") != ""].groupby("baseline", sort=False):
            if str(name).startswith("tuned-"):  # a grid: its best point is the recipe
                top = part.sort_values([o.metric, "order"], ascending=[o.mode == "min", True]).iloc[0]
                lines.append(
                    f"Baseline {name} (best of {len(part)} grid points): {o.metric} {top[o.metric]:.4f}, "
                    f"{_plan_summary(top['plan_json'])}"
                )
            elif name == rf.LEARNED_TRIAL:  # one training that learns the rates; the plan they make
                value = f"{o.metric} {part[o.metric].mean():.4f}"
                lines.append(f"Baseline {name} (rates learned in one training): {value}, "
                             f"learned-rates {_learned_summary(part.iloc[0])}")  # fmt: skip
            else:
                lines.append(f"Baseline {name}: {o.metric} {part[o.metric].mean():.4f}")
        if ref is None:
            lines.append("No regularization: no finished 'none' baseline to compare with")
        else:
            lines.append(f"No regularization: {o.metric} {ref:.4f} ({len(plain)} trial{'s' * (len(plain) > 1)})")
    elif len(ok):
        lines.append("No trial but the learned baseline finished with status ok: see the error column of trials.csv")
    else:
        lines.append("No trial finished with status ok: see the error column of trials.csv")
    if result.final is not None and len(result.final) and result.status == "finished":
        rows = result.final.to_dict("records")
        chosen = next((r for r in rows if r.get("chosen")), None)
        if any(str(r.get("left", "")).strip() not in ("", "nan") for r in rows):
            lines += _race_lines(rows, o, chosen)
        else:
            lines += _fixed_lines(rows, o, chosen)
        lines.append(verdict(rows, o))
    if result.error:
        lines.append(f"Stopped by an error: {result.error}")
    rel = os.path.relpath(result.run_dir)
    rel = shlex.quote(str(result.run_dir) if rel.startswith("..") else rel)  # pasteable with spaces too
    lines += ["Next:", f"  python -m results summarize {rel}"]
    if len(ok):  # the others need at least one trial that finished ok (and a best plan)
        lines.append(f"  python -m results plot {rel}")
        if result.best_plan is not None:
            lines += [
                f"  python -m results export {rel} --out best_plan.json",
                f"  python -m results retrain {rel}",
            ]
    return "\n".join(lines)


def _fixed_lines(rows: list[dict[str, Any]], o: Any, chosen: Any) -> list[str]:
    """A fixed final stage: every finalist on the same fresh seeds, each paired with the best baseline."""
    lines = [
        f"Final re-training ({int(rows[0]['seeds'])} fresh seeds, validation split; paired 95% interval of the "
        "difference from the best baseline, positive = better):"
    ]
    for r in rows:
        low, high = rf.as_float(r.get("diff_ci95_low")), rf.as_float(r.get("diff_ci95_high"))
        word = r.get("comparison") if isinstance(r.get("comparison"), str) else ""
        versus = (
            f"  [{low:+.4f}, {high:+.4f}] {word}"
            if math.isfinite(low) and math.isfinite(high)
            else ("  best baseline" if r["label"] == r.get("best_baseline") else f"  {word}")
        )
        lines.append(
            f"  {r['label']:<16} {o.metric} {rf.mean_se_text(r['mean'], r['se'])}{versus.rstrip()}"
            + ("   <- best_plan.json" if r is chosen else "")
        )
    return lines


def _race_lines(rows: list[dict[str, Any]], o: Any, chosen: Any) -> list[str]:
    """A raced final stage: each contender's mean over its race seeds and how it left (the
    race's numbers only decide who goes on: they claim nothing), then, for the confirmed
    plans, the confirmation on fresh seeds with its Holm-corrected word, which decides."""
    lines = [
        "Final race (shared fresh seeds, validation split; the clearly worse leave after each round), then a "
        "confirmation on seeds the race never used (paired 95% interval against a confirmed baseline, "
        "positive = better; Holm over the plans confirmed):"
    ]
    for r in rows:
        left = str(r.get("left", "")).strip()
        left = f"left in round {int(float(left))}" if left.replace(".", "", 1).isdigit() else left
        text = (
            f"  {r['label']:<16} {o.metric} {rf.mean_se_text(r['mean'], r['se'])} over {int(r['seeds'])} seeds, {left}"
        )
        low, high = rf.as_float(r.get("confirm_ci95_low")), rf.as_float(r.get("confirm_ci95_high"))
        if math.isfinite(low) and math.isfinite(high):
            text += (
                f"; confirmation vs {r.get('confirm_vs')}: {rf.as_float(r.get('confirm_diff')):+.4f} "
                f"[{low:+.4f}, {high:+.4f}] on {int(r['confirm_seeds'])} seeds, {r.get('confirm_word')}"
            )
        lines.append(text + ("   <- best_plan.json" if r is chosen else ""))
    return lines


def _plan_summary(plan_json: str) -> str:
    from search_space.plan import Plan

    return Plan.from_json(str(plan_json)).summary()


def _learned_summary(row: Any) -> str:
    """The plan the learned baseline's rates make (``search_space.learned.derived_plan``), in one line."""
    from controller.learned import rates_of
    from search_space.learned import derived_plan
    from search_space.plan import Plan

    rates = rates_of(row)
    return derived_plan(Plan.from_json(str(row["plan_json"])), rates).summary() if rates else "(no rates)"
