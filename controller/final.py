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
]

TUNED_PREFIX = "tuned-"


def kind_of(label: str, baselines: Sequence[str]) -> str:
    """searched, baseline (hand-set) or tuned (a global recipe tuned inside the budget)."""
    if label.startswith(TUNED_PREFIX):
        return TUNED
    return BASELINE if label in baselines else SEARCHED


def race_results(records: Sequence[Mapping[str, Any]], objective: rf.Objective) -> list[tuple[str, int, float]]:
    """(label, seed, value) of final re-trainings in the order they finished (their ``order``),
    as ``Race.record`` / ``Race.replay`` take them: NaN for a training that did not end ok."""
    out = []
    for r in sorted(records, key=lambda r: int(r.get("order", 0))):
        value = rf.as_float(r.get(objective.metric))
        ok = r["status"] == rf.OK and math.isfinite(value)
        out.append((str(r["label"]), int(r["seed"]), value if ok else float("nan")))
    return out


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
        return _race_rows(records, objective, race, plans or {})
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
        r.update(
            best_baseline=best_base["label"] if best_base else "",
            diff_vs_best_baseline=float("nan"),
            diff_se=float("nan"),
            diff_ci95_low=float("nan"),
            diff_ci95_high=float("nan"),
            p_value=float("nan"),
            paired_seeds=0,
            comparison="",
        )
        if best_base is None or r is best_base:
            continue
        cmp = paired(r["_seeds"], best_base["_seeds"], objective.mode)
        r.update(
            diff_vs_best_baseline=cmp.mean,
            diff_se=cmp.se,
            diff_ci95_low=cmp.ci95_low,
            diff_ci95_high=cmp.ci95_high,
            p_value=cmp.p_value,
            paired_seeds=cmp.n,
            comparison=cmp.word,
        )
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


def _race_rows(
    records: Sequence[Mapping[str, Any]], objective: rf.Objective, race: Race, plans: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The race's rows: ``seeds``, ``mean``, ``se`` and ``values`` over the race's seeds;
    ``diff_*`` and ``comparison`` the paired comparison with the best baseline over those
    seeds (the race's numbers: they carry the winner's curse and decide nothing); ``left``
    the round the plan left the race in (from 1), ``winner`` or ``survivor``; ``confirm_*``
    the confirmation on fresh seeds: a searched plan's comparison with ``confirm_vs``, the
    confirmed baseline it is least clearly better than (``confirm_word``: Holm-corrected over
    the searched plans confirmed, the word do no harm goes by); ``chosen`` the plan the race
    exports."""
    info: dict[str, dict[str, Any]] = {
        str(k): {
            "plan_json": v.get("plan_json", ""),
            "methods": v.get("methods", ""),
            "trial_id": v.get("trial_id", ""),
        }
        for k, v in plans.items()
    }
    for r in records:
        info.setdefault(
            str(r["label"]), {"plan_json": r["plan_json"], "methods": r["methods"], "trial_id": r.get("source", "")}
        )
    table = race.table()
    base = next((t for t in table if t["comparator"]), None)
    rows = []
    for t in table:
        e = info.get(t["label"], {"plan_json": "", "methods": "", "trial_id": ""})
        cmp = paired(t["values"], base["values"], race.mode) if base is not None and t is not base else None
        conf = t["confirm"]
        nan = float("nan")
        rows.append(
            {
                "label": t["label"],
                "kind": t["kind"],
                "trial_id": e["trial_id"],
                "seeds": len(t["seeds"]),
                "mean": t["mean"],
                "se": t["se"],
                "values": json.dumps({str(k): v for k, v in t["values"].items()}),
                "complete": not t["failed"] and all(math.isfinite(v) for v in t["confirm_values"].values()),
                "best_baseline": race.comparator or "",
                "diff_vs_best_baseline": cmp.mean if cmp else nan,
                "diff_se": cmp.se if cmp else nan,
                "diff_ci95_low": cmp.ci95_low if cmp else nan,
                "diff_ci95_high": cmp.ci95_high if cmp else nan,
                "p_value": cmp.p_value if cmp else nan,
                "paired_seeds": cmp.n if cmp else 0,
                "comparison": cmp.word if cmp else "",
                "chosen": t["exported"],
                "left": t["left"],
                "left_reason": t["reason"],
                "confirm_seeds": len(t["confirm_values"]),
                "confirm_values": json.dumps({str(k): v for k, v in t["confirm_values"].items()})
                if t["confirm_values"]
                else "",
                "confirm_mean": t["confirm_mean"],
                "confirm_vs": t["confirm_vs"],
                "confirm_diff": conf.mean if conf else nan,
                "confirm_ci95_low": conf.ci95_low if conf else nan,
                "confirm_ci95_high": conf.ci95_high if conf else nan,
                "confirm_p": conf.p_value if conf else nan,
                "confirm_p_holm": t["confirm_p_holm"],
                "confirm_word": t["confirm_word"],
                "methods": e["methods"],
                "plan_json": e["plan_json"],
            }
        )
    return rows


def raced(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether final.csv's rows come from a race (its ``left`` column is filled)."""
    return any(_text(r.get("left")) for r in rows)


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
        return _raced_plan(chosen, objective, searcher)
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


def _raced_plan(chosen: Mapping[str, Any], objective: rf.Objective, searcher: str) -> tuple[Any, dict[str, Any]]:
    """best_plan_of for a raced final stage: the confirmation's numbers say why."""
    from search_space.plan import Plan

    o = objective
    kind = chosen.get("kind") or SEARCHED
    word = _text(chosen.get("confirm_word"))
    if kind != SEARCHED:
        word = "the best baseline"
    elif not word:
        word = "unproven: no baseline finished the race to compare it with"
    plan = Plan.from_json(str(chosen["plan_json"]))
    plan.metadata = {
        **plan.metadata,
        "selected_by": "final",
        "label": chosen["label"],
        "kind": kind,
        o.metric: rf.finite_or_none(chosen["mean"]),
        o.se_column: rf.finite_or_none(chosen.get("se")),
        "seeds": int(_num(chosen["seeds"])),
        "best_baseline": _text(chosen.get("best_baseline")),
        "comparison": word,
        "diff_ci95": [
            rf.finite_or_none(chosen.get("confirm_ci95_low")),
            rf.finite_or_none(chosen.get("confirm_ci95_high")),
        ],
        "confirmation": {
            "seeds": int(_num(chosen.get("confirm_seeds")) or 0),
            o.metric: rf.finite_or_none(chosen.get("confirm_mean")),
            "diff": rf.finite_or_none(chosen.get("confirm_diff")),
            "p_value": rf.finite_or_none(chosen.get("confirm_p")),
            "p_holm": rf.finite_or_none(chosen.get("confirm_p_holm")),
        },
        "left": _text(chosen.get("left")),
        "trial_id": chosen["trial_id"],
        "searcher": searcher,
    }
    return plan, {"label": chosen["label"], "kind": kind, "selected_by": "final"}


def write_final(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    rf.atomic_write_text(run_dir / rf.FINAL, rf.csv_text(rf.FINAL_COLUMNS, rows))


def _num(value: Any) -> float:
    return rf.as_float(value)


def _text(value: Any) -> str:
    """A cell as text: empty for None and NaN (pandas reads an empty cell as NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _interval(r: Mapping[str, Any]) -> str:
    low, high = _num(r.get("diff_ci95_low")), _num(r.get("diff_ci95_high"))
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no interval"
    return f"95% interval [{low:+.4f}, {high:+.4f}]"


def verdict(rows: Sequence[Mapping[str, Any]], objective: rf.Objective) -> str:
    """Plain words: which plan best_plan.json holds, and why (the paired interval's words)."""
    if raced(rows):
        return _race_verdict(rows, objective)
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
    head = f"best baseline {base['label']} ({metric} {_num(base['mean']):.4f} +- {_num(base['se']):.4f})"
    if chosen["kind"] == SEARCHED:
        return (
            f"Verdict: the searched plan {chosen['label']} ({metric} {_num(chosen['mean']):.4f} +- "
            f"{_num(chosen['se']):.4f}) is better than the {head}: difference "
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
        f"{metric} {_num(top['mean']):.4f} +- {_num(top['se']):.4f}) differs by "
        f"{_num(top['diff_vs_best_baseline']):+.4f} (positive = better), {_interval(top)} over {n} paired seeds: "
        f"{word}{advice}. best_plan.json holds the baseline {base['label']} (do no harm)."
    )


def _race_verdict(rows: Sequence[Mapping[str, Any]], objective: rf.Objective) -> str:
    """The verdict of a raced final stage: the confirmation's numbers, never the race's."""
    metric = objective.metric
    chosen = next((r for r in rows if _true(r.get("chosen"))), None)
    base = next((r for r in rows if r["kind"] != SEARCHED and r["label"] == _text(r.get("best_baseline"))), None)
    searched = [r for r in rows if r["kind"] == SEARCHED]
    confirmed = [r for r in searched if _text(r.get("confirm_word"))]
    if chosen is None:
        return "Verdict: no plan finished the final race; nothing is exported."
    if base is None:
        return (
            f"Verdict: no baseline finished the final race, so nothing tells whether the best searched plan "
            f"({chosen['label']}, {metric} {_num(chosen['mean']):.4f} over {int(_num(chosen['seeds']))} seeds) "
            "helps; best_plan.json holds it unproven."
        )
    head = (
        f"best baseline {base['label']} (best of the baselines in the race: {metric} {_num(base['mean']):.4f} +- "
        f"{_num(base['se']):.4f} over {int(_num(base['seeds']))} seeds)"
    )
    also = [
        r["label"]
        for r in rows
        if r["kind"] != SEARCHED and r is not base and _text(r.get("confirm_values")) not in ("", "{}")
    ]
    head += f" and than {', '.join(also)} (confirmed against too)" if also else ""
    if chosen["kind"] == SEARCHED:
        return (
            f"Verdict: the searched plan {chosen['label']} is better than the {head}: {_confirmed(chosen, confirmed)}. "
            "best_plan.json holds the searched plan."
        )
    if confirmed:
        parts = "; ".join(f"{r['label']}: {_confirmed(r, confirmed)}" for r in confirmed)
        words = {_text(r.get("confirm_word")) for r in confirmed}
        advice = (
            " (a larger final budget gives the confirmation more seeds)" if words & {"cannot tell", TOO_FEW} else ""
        )
        return (
            f"Verdict: no searched plan is better than the {head}. Confirmed on fresh seeds the race never used, "
            f"{parts}{advice}. best_plan.json holds the baseline {base['label']} (do no harm)."
        )
    if not searched:
        return f"Verdict: no searched plan was in the final race; best_plan.json holds the {head}."
    gone = "; ".join(
        f"{r['label']} left in round {_text(r.get('left'))}: {_text(r.get('left_reason'))}" for r in searched
    )
    return (
        f"Verdict: no searched plan is better than the {head}: none survived the race ({gone}). "
        f"best_plan.json holds the baseline {base['label']} (do no harm)."
    )


def _confirmed(r: Mapping[str, Any], confirmed: Sequence[Mapping[str, Any]]) -> str:
    """One confirmed plan's numbers in words: difference, interval, df, p, Holm, the word."""
    n = int(_num(r.get("confirm_seeds")) or 0)
    low, high = _num(r.get("confirm_ci95_low")), _num(r.get("confirm_ci95_high"))
    interval = (
        f"95% interval [{low:+.4f}, {high:+.4f}]" if math.isfinite(low) and math.isfinite(high) else "no interval"
    )
    holm = (
        f", Holm-adjusted over the {len(confirmed)} plans confirmed p = {_num(r.get('confirm_p_holm')):.3g}"
        if len(confirmed) > 1
        else ""
    )
    vs = _text(r.get("confirm_vs"))
    return (
        f"difference {_num(r.get('confirm_diff')):+.4f}{f' from {vs}' if vs else ''} (positive = better) "
        f"on {n} fresh seeds the race never used, "
        f"{interval} (Student-t at {max(n - 1, 0)} df), p = {_num(r.get('confirm_p')):.3g}{holm}: "
        f"{_text(r.get('confirm_word'))}"
    )


def _true(value: Any) -> bool:
    """A bool from a row read back from CSV (pandas gives numpy bools, a string if mixed)."""
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value) if value is not None and value == value else False
