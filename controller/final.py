"""The final, honest selection: the top searched plans and every baseline (hand-set and tuned),
re-trained with fresh seeds on the validation split, compared in pairs, and the plan to export
chosen so that it does no harm.

A search-stage value is the maximum of many noisy draws, so it is biased upwards (the
winner's curse); re-training the finalists with seeds none of them was selected on removes
that bias. Every finalist trains on the same seeds, so differences are paired
(``controller.stats.paired``: Student's t at n - 1 degrees of freedom).

**Do no harm.** ``best_plan.json`` holds a searched plan only when its paired 95% interval
against the best baseline (by mean, tuned ones included) lies wholly on the better side;
otherwise it holds that best baseline, and the verdict says so.

**Raced final stages** (``controller.race.Race``, passed as ``race=``): the finalists race on
shared seeds and the race's winner is confirmed on seeds the race never used; do no harm then
decides on the confirmation alone (Holm over the searched plans confirmed), and final.csv
says per plan the seeds it got, the round it left and the confirmation's numbers. Without a
race (runs written before it, or a stage of fixed seeds) everything reads as before.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from controller import run_folder as rf
from controller.final_race import comparison_columns, race_results, race_rows, race_verdict, raced, raced_plan
from controller.final_race import is_true as _true
from controller.race import BASELINE, SEARCHED, TUNED, Race
from controller.stats import BETTER, MIN_SEEDS, TOO_FEW, paired, sign_of, standard_error

__all__ = [
    "final_rows",
    "race_results",
    "write_final",
    "verdict",
    "kind_of",
    "best_plan_of",
    "SEARCHED",
    "BASELINE",
    "TUNED",
    "LEARNED",
    "LEARNED_TRIAL",
]

TUNED_PREFIX = "tuned-"
#: The search-stage trial that learns per-site rates in one training (its baseline name in
#: trials.csv; ``search_space.learned.LEARNED_TRIAL``), and the finalist its rates make
#: (``search_space.learned.LEARNED``): a baseline that a searched plan must beat.
LEARNED_TRIAL = rf.LEARNED_TRIAL
LEARNED = "learned-rates"


def kind_of(label: str, baselines: Sequence[str]) -> str:
    """searched, baseline (hand-set, or ``learned-rates``) or tuned (a global recipe tuned inside the budget)."""
    if label.startswith(TUNED_PREFIX):
        return TUNED
    return BASELINE if label in baselines or label == LEARNED else SEARCHED


def final_rows(
    records: Sequence[Mapping[str, Any]],
    objective: rf.Objective,
    baselines: Sequence[str],
    expected_seeds: int | None = None,
    *,
    race: Race | None = None,
    plans: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """One row per finalist (``run_folder.FINAL_COLUMNS``), in the order they were queued.

    ``values`` holds each seed's final metric (seed order); a seed that did not end ok counts
    as missing and the plan cannot be chosen. Every row but the best baseline's carries the
    paired comparison against the best baseline (``controller.stats.paired``, positive =
    better); ``chosen`` marks the plan best_plan.json holds (see the module docstring).

    With ``race`` (fed with these ``records``), the rows are the race's (``_race_rows``);
    ``plans`` (label -> plan_json, methods, trial_id) names the plans of contenders that
    never trained (a race of one).
    """
    if race is not None:
        return race_rows(records, objective, race, plans or {})
    by_label: dict[str, dict[str, Any]] = {}
    for r in records:
        entry = by_label.setdefault(
            r["label"],
            {"plan_json": r["plan_json"], "methods": r["methods"], "trial_id": r.get("source", ""), "seeds": {}},
        )
        value = rf.as_float(r.get(objective.metric))
        entry["seeds"][int(r["seed"])] = value if r["status"] == rf.OK and math.isfinite(value) else float("nan")
    rows = []
    for label, e in by_label.items():
        seeds = dict(sorted(e["seeds"].items()))
        vals = [v for v in seeds.values() if math.isfinite(v)]
        rows.append(
            {
                "label": label,
                "kind": kind_of(label, baselines),
                "trial_id": e["trial_id"],
                "seeds": len(seeds),
                "mean": statistics.fmean(vals) if vals else float("nan"),
                "se": standard_error(vals),
                "values": json.dumps({str(k): v for k, v in seeds.items()}),
                "complete": len(vals) == (expected_seeds or len(seeds)),
                "methods": e["methods"],
                "plan_json": e["plan_json"],
                "_seeds": seeds,
            }
        )
    sign = sign_of(objective.mode)
    base = [r for r in rows if r["kind"] != SEARCHED and r["complete"]]
    best_base = max(base, key=lambda r: sign * r["mean"]) if base else None
    for r in rows:
        cmp = None if best_base is None or r is best_base else paired(r["_seeds"], best_base["_seeds"], objective.mode)
        r.update(best_baseline=best_base["label"] if best_base else "", **comparison_columns(cmp))
    searched = [r for r in rows if r["kind"] == SEARCHED and r["complete"]]
    if best_base is None:  # nothing to compare with: the best searched plan, and the verdict says so
        chosen = max(searched, key=lambda r: sign * r["mean"]) if searched else None
    else:
        winners = [r for r in searched if r["comparison"] == BETTER]
        chosen = max(winners, key=lambda r: sign * r["mean"]) if winners else best_base
    for r in rows:
        r["chosen"] = r is chosen
        del r["_seeds"]
    return rows


def best_plan_of(
    final: Sequence[Mapping[str, Any]], best_trial: Mapping[str, Any] | None, objective: rf.Objective, searcher: str
) -> tuple[Any, dict[str, Any]]:
    """(best_plan.json's Plan with its metadata, run_state.json's ``exported``): the final
    stage's chosen row once the stage is complete (``final``), else the best search-stage
    trial, marked unproven (no final stage compared it with the baselines)."""
    from search_space.plan import Plan

    o = objective

    chosen = next((r for r in final if _true(r.get("chosen"))), None)
    if chosen is not None and raced(final):
        return raced_plan(chosen, objective, searcher)
    if chosen is not None:
        plan = Plan.from_json(str(chosen["plan_json"]))
        plan.metadata = {
            **plan.metadata,
            "selected_by": "final",
            "label": chosen["label"],
            "kind": chosen.get("kind") or SEARCHED,
            o.metric: rf.finite_or_none(chosen["mean"]),
            o.se_column: rf.finite_or_none(chosen.get("se")),
            "seeds": int(chosen["seeds"]),
            "best_baseline": chosen.get("best_baseline") or "",
            "comparison": chosen.get("comparison") or ("the best baseline" if chosen.get("kind") != SEARCHED else ""),
            "diff_ci95": [
                rf.finite_or_none(chosen.get("diff_ci95_low")),
                rf.finite_or_none(chosen.get("diff_ci95_high")),
            ],
            "trial_id": chosen["trial_id"],
            "searcher": searcher,
        }
        return plan, {"label": chosen["label"], "kind": plan.metadata["kind"], "selected_by": "final"}
    if best_trial is None:
        return None, {}
    kind = best_trial.get("kind") or (BASELINE if best_trial.get("baseline") else SEARCHED)
    plan = Plan.from_json(str(best_trial["plan_json"]))
    plan.metadata = {
        **plan.metadata,
        "selected_by": "search",
        "kind": kind,
        "comparison": "unproven: no final stage compared it with the baselines",
        o.metric: rf.finite_or_none(best_trial[o.metric]),
        "trial_id": best_trial["trial_id"],
        o.best_column: rf.finite_or_none(best_trial.get(o.best_column)),
        "baseline": best_trial.get("baseline") or "",
        "searcher": searcher,
    }
    exported = {"label": best_trial.get("baseline") or best_trial["trial_id"], "kind": kind, "selected_by": "search"}
    return plan, exported


def write_final(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    rf.atomic_write_text(run_dir / rf.FINAL, rf.csv_text(rf.FINAL_COLUMNS, rows))


def _num(value: Any) -> float:
    return rf.as_float(value)


def _interval(r: Mapping[str, Any]) -> str:
    low, high = _num(r.get("diff_ci95_low")), _num(r.get("diff_ci95_high"))
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no interval"
    return f"95% interval [{low:+.4f}, {high:+.4f}]"


def verdict(rows: Sequence[Mapping[str, Any]], objective: rf.Objective) -> str:
    """Plain words: which plan best_plan.json holds, and why (the paired interval's words)."""
    if raced(rows):
        return race_verdict(rows, objective)
    metric = objective.metric
    sign = sign_of(objective.mode)
    chosen = next((r for r in rows if _true(r.get("chosen"))), None)
    searched = [
        r for r in rows if r["kind"] == SEARCHED and _true(r.get("complete", True)) and math.isfinite(_num(r["mean"]))
    ]
    base = next((r for r in rows if r["kind"] != SEARCHED and r["label"] == r.get("best_baseline")), None)
    if chosen is None:
        return "Verdict: no plan finished the final re-training; nothing is exported."
    if base is None:
        return (
            f"Verdict: no baseline finished the final re-training, so nothing tells whether the best searched plan "
            f"({chosen['label']}, {metric} {_num(chosen['mean']):.4f}) helps; best_plan.json holds it unproven."
        )
    head = f"best baseline {base['label']} ({metric} {rf.mean_se_text(base['mean'], base['se'])})"
    if chosen["kind"] == SEARCHED:
        return (
            f"Verdict: the searched plan {chosen['label']} ({metric} {rf.mean_se_text(chosen['mean'], chosen['se'])}) "
            f"is better than the {head}: difference "
            f"{_num(chosen['diff_vs_best_baseline']):+.4f} (positive = better), {_interval(chosen)} over "
            f"{int(_num(chosen['paired_seeds']))} paired seeds (p = {_num(chosen['p_value']):.3g}). "
            "best_plan.json holds the searched plan."
        )
    if not searched:
        return (
            f"Verdict: no searched plan finished the final re-training; best_plan.json holds the {head} (do no harm)."
        )
    top = max(searched, key=lambda r: sign * _num(r["mean"]))
    word = str(top.get("comparison") or TOO_FEW)
    n = int(_num(top.get("paired_seeds")) or 0)
    advice = (
        f" ({MIN_SEEDS} or more paired seeds are needed: raise --final-seeds)"
        if word == TOO_FEW
        else " (more final seeds narrow the interval)"
        if word != "worse"
        else ""
    )
    return (
        f"Verdict: no searched plan is better than the {head}. The best searched plan ({top['label']}, "
        f"{metric} {rf.mean_se_text(top['mean'], top['se'])}) differs by "
        f"{_num(top['diff_vs_best_baseline']):+.4f} (positive = better), {_interval(top)} over {n} paired seeds: "
        f"{word}{advice}. best_plan.json holds the baseline {base['label']} (do no harm)."
    )
