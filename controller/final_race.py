"""final.csv, best_plan.json and the verdict of a raced final stage (``controller.race``).

The race's own numbers carry the winner's curse, so everything that says "better" here reads
the confirmation: the paired comparison on seeds the race never used, Holm-corrected over the
searched plans confirmed. ``controller.final`` calls these when it is given a race, or when
final.csv's ``left`` column is filled; stages of fixed seeds never reach them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from controller import run_folder as rf
from controller.race import SEARCHED, Race
from controller.stats import TOO_FEW, Paired, paired

__all__ = ["race_results", "race_rows", "raced", "raced_plan", "race_verdict"]


def race_results(records: Sequence[Mapping[str, Any]], objective: rf.Objective) -> list[tuple[str, int, float]]:
    """(label, seed, value) of final re-trainings in the order they finished (their ``order``),
    as ``Race.record`` / ``Race.replay`` take them: NaN for a training that did not end ok."""
    out = []
    for r in sorted(records, key=lambda r: int(r.get("order", 0))):
        value = rf.as_float(r.get(objective.metric))
        ok = r["status"] == rf.OK and math.isfinite(value)
        out.append((str(r["label"]), int(r["seed"]), value if ok else float("nan")))
    return out


def comparison_columns(cmp: Paired | None) -> dict[str, Any]:
    """final.csv's paired comparison with the best baseline (``diff_*``, ``p_value``,
    ``paired_seeds``, ``comparison``); empty values without one (the best baseline itself)."""
    nan = float("nan")
    return {
        "diff_vs_best_baseline": cmp.mean if cmp else nan,
        "diff_se": cmp.se if cmp else nan,
        "diff_ci95_low": cmp.ci95_low if cmp else nan,
        "diff_ci95_high": cmp.ci95_high if cmp else nan,
        "p_value": cmp.p_value if cmp else nan,
        "paired_seeds": cmp.n if cmp else 0,
        "comparison": cmp.word if cmp else "",
    }


def race_rows(
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
                **comparison_columns(cmp),
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


def raced_plan(chosen: Mapping[str, Any], objective: rf.Objective, searcher: str) -> tuple[Any, dict[str, Any]]:
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


def race_verdict(rows: Sequence[Mapping[str, Any]], objective: rf.Objective) -> str:
    """The verdict of a raced final stage: the confirmation's numbers, never the race's."""
    metric = objective.metric
    chosen = next((r for r in rows if is_true(r.get("chosen"))), None)
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
            " (a larger final budget, --final-budget or final_budget, gives the confirmation more seeds)"
            if words & {"cannot tell", TOO_FEW}
            else ""
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


def _num(value: Any) -> float:
    return rf.as_float(value)


def _text(value: Any) -> str:
    """A cell as text: empty for None and NaN (pandas reads an empty cell as NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def is_true(value: Any) -> bool:
    """A bool from a row read back from CSV (pandas gives numpy bools, a string if mixed)."""
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value) if value is not None and value == value else False
