"""The ``learned`` baseline of a run, as ``results`` shows and retrains it: the rate each site
learned in one training (trials.csv's ``learned_rates``), the ``learned-rates`` plan they
make, and the searched plan beside them.

The plan is final.csv's ``learned-rates`` row when the final stage trained it, else derived
from the ``learned`` trial's row exactly as the search derives it
(``controller.learned.learned_contender``), so a run without a final stage shows it too.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from controller.final import LEARNED, LEARNED_TRIAL, SEARCHED
from controller.learned import rates_of

from .run import Run
from .tables import ranked

__all__ = ["learned_rates", "learned_value", "learned_rates_plan", "learned_rates_table"]


def _row(run: Run) -> dict[str, Any] | None:
    """The ``learned`` trial's row as plain values (None: the run has none)."""
    df = run.trials
    if "baseline" not in df.columns or not len(df):
        return None
    rows = df[df["baseline"].fillna("").astype(str) == LEARNED_TRIAL]
    if not len(rows):
        return None
    row = rows.iloc[0]
    return {k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in row.items()}


def learned_rates(run: Run) -> dict[str, float] | None:
    """Site -> the rate the ``learned`` trial learned (mean over its reward seeds); None when
    the run has no such trial or it did not end ok with rates."""
    return rates_of(_row(run))


def learned_value(run: Run) -> float | None:
    """The metric the ``learned`` training reached (mean over its reward seeds), or None."""
    row = _row(run)
    value = None if row is None or rates_of(row) is None else row.get(run.objective.metric)
    try:
        return float(value) if value is not None and math.isfinite(float(value)) else None
    except (TypeError, ValueError):
        return None


def learned_rates_plan(run: Run) -> Any:
    """The ``learned-rates`` Plan of ``run`` (final.csv's, else derived from trials.csv), or None."""
    from search_space import Plan
    from search_space.learned import derived_plan, is_learning_plan

    if run.final is not None and len(run.final) and "label" in run.final.columns:
        found = run.final[run.final["label"].astype(str) == LEARNED]
        if len(found):
            return Plan.from_json(str(found["plan_json"].iloc[0]))
    row, rates = _row(run), learned_rates(run)
    if row is None or rates is None:
        return None
    learning = Plan.from_json(str(row["plan_json"]))
    return derived_plan(learning, rates) if is_learning_plan(learning) else None


def _searched_plan(run: Run) -> tuple[str, Any] | None:
    """(label, Plan) of the searched plan to show beside the learned rates: the final stage's
    chosen searched plan, else its best searched plan by mean, else the best-ranked searched trial."""
    from search_space import Plan

    f = run.final
    if f is not None and len(f) and "kind" in f.columns:
        searched = f[f["kind"].astype(str) == SEARCHED]
        if len(searched):
            chosen = searched[searched["chosen"].astype(bool)] if "chosen" in searched.columns else searched.iloc[:0]
            pick = chosen if len(chosen) else searched.sort_values("mean", ascending=run.objective.mode == "min")
            return str(pick["label"].iloc[0]), Plan.from_json(str(pick["plan_json"].iloc[0]))
    table = ranked(run.trials, run.objective)
    table = table[~table["reference"].astype(bool)] if "reference" in table.columns else table
    if not len(table):
        return None
    return f"trial {table['trial_id'].iloc[0]}", Plan.from_json(str(table["plan_json"].iloc[0]))


def _spec_text(plan: Any, site: str) -> str:
    """One site's method and parameters as ``Plan.summary`` writes them (``none`` if absent)."""
    from search_space import Plan

    spec = plan.sites.get(site) if plan is not None else None
    if spec is None:
        return ""
    return Plan({site: spec}).summary().removeprefix(f"{site}=")


def learned_rates_table(run: Run) -> pd.DataFrame:
    """Per site: the rate it learned, the ``learned-rates`` plan there (spatial dropout or
    dropout on the grid) and the searched plan there (`_searched_plan`); empty when the run
    has no learned rates."""
    rates = learned_rates(run)
    if not rates:
        return pd.DataFrame()
    plan = learned_rates_plan(run)
    searched = _searched_plan(run)
    sites = [s for s in run.sites if s in rates] + [s for s in rates if s not in run.sites]
    out = pd.DataFrame(
        {
            "site": sites,
            "learned rate": [f"{rates[s]:.3f}" if math.isfinite(rates[s]) else "" for s in sites],
            LEARNED: [_spec_text(plan, s) for s in sites],
        }
    )
    if searched is not None:
        out[f"searched ({searched[0]})"] = [_spec_text(searched[1], s) for s in sites]
    return out
