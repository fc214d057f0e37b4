"""The final, honest selection: the top searched plans and every baseline, re-trained with
fresh seeds on the validation split, compared in pairs, and the best plan chosen from means.

A search-stage value is the maximum of many noisy draws, so it is biased upwards (the
winner's curse); re-training the finalists with seeds none of them was selected on removes
that bias. Every finalist trains on the same seeds, so differences are paired: the seed's
own luck (initialisation, batch order) cancels, and the standard error of a difference is
smaller than that of either mean.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from controller import run_folder as rf

__all__ = ["final_rows", "write_final", "verdict"]

#: Below this many seeds a standard error is itself too noisy to lean on (the verdict says so).
FEW_SEEDS = 5


def _se(values: Sequence[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")


def final_rows(
    records: Sequence[Mapping[str, Any]],
    objective: rf.Objective,
    baselines: Sequence[str],
    expected_seeds: int | None = None,
) -> list[dict[str, Any]]:
    """One row per finalist (``run_folder.FINAL_COLUMNS``), in the order they were queued.

    ``values`` holds each seed's final metric (seed order); a seed that did not end ok counts
    as missing and the plan cannot be chosen. The paired comparison is against the best
    baseline by mean (over the seeds both finished); ``z`` = mean difference / its standard
    error, signed so that positive means better than that baseline.
    """
    by_label: dict[str, dict[str, Any]] = {}
    for r in records:
        entry = by_label.setdefault(
            r["label"],
            {"plan_json": r["plan_json"], "methods": r["methods"], "trial_id": r.get("source", ""), "seeds": {}},
        )
        ok = r["status"] == rf.OK and math.isfinite(float(r[objective.metric]))
        entry["seeds"][int(r["seed"])] = float(r[objective.metric]) if ok else float("nan")
    rows = []
    for label, e in by_label.items():
        seeds = dict(sorted(e["seeds"].items()))
        vals = [v for v in seeds.values() if math.isfinite(v)]
        rows.append(
            {
                "label": label,
                "kind": "baseline" if label in baselines else "searched",
                "trial_id": e["trial_id"],
                "seeds": len(seeds),
                "mean": statistics.fmean(vals) if vals else float("nan"),
                "se": _se(vals),
                "values": json.dumps({str(k): v for k, v in seeds.items()}),
                "complete": len(vals) == (expected_seeds or len(seeds)),
                "methods": e["methods"],
                "plan_json": e["plan_json"],
                "_seeds": seeds,
            }
        )
    sign = 1.0 if objective.mode == "max" else -1.0
    base = [r for r in rows if r["kind"] == "baseline" and r["complete"]]
    best_base = max(base, key=lambda r: sign * r["mean"]) if base else None
    for r in rows:
        r.update(diff_vs_best_baseline=float("nan"), diff_se=float("nan"), z=float("nan"))
        if best_base is None or r is best_base:
            continue
        common = [
            s
            for s, v in r["_seeds"].items()
            if math.isfinite(v) and math.isfinite(best_base["_seeds"].get(s, float("nan")))
        ]
        diffs = [sign * (r["_seeds"][s] - best_base["_seeds"][s]) for s in common]
        if diffs:
            r["diff_vs_best_baseline"] = statistics.fmean(diffs)
            r["diff_se"] = _se(diffs)
            if r["diff_se"] > 0:
                r["z"] = r["diff_vs_best_baseline"] / r["diff_se"]
    complete = [r for r in rows if r["complete"]]
    chosen = max(complete, key=lambda r: sign * r["mean"]) if complete else None
    for r in rows:
        r["chosen"] = r is chosen
        r["best_baseline"] = best_base["label"] if best_base else ""
        del r["_seeds"]
    return rows


def write_final(run_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    rf.atomic_write_text(run_dir / rf.FINAL, rf.csv_text(rf.FINAL_COLUMNS, rows))


def verdict(rows: Sequence[Mapping[str, Any]], objective: rf.Objective) -> str:
    """One sentence: did the best searched plan beat the best baseline, by how many SEs."""
    metric = objective.metric
    searched = [
        r for r in rows if r["kind"] == "searched" and r.get("complete", True) and math.isfinite(float(r["mean"]))
    ]
    base = next((r for r in rows if r["kind"] == "baseline" and r["label"] == r.get("best_baseline")), None)
    if not searched:
        return "Verdict: no searched plan finished the final re-training; nothing to compare."
    sign = 1.0 if objective.mode == "max" else -1.0
    top = max(searched, key=lambda r: sign * float(r["mean"]))
    if base is None:
        return (
            f"Verdict: the best searched plan ({top['label']}) has {metric} {top['mean']:.4f}; "
            "no baseline finished, so there is nothing to compare with."
        )
    diff, z = float(top["diff_vs_best_baseline"]), float(top["z"])
    word = "beat" if diff > 0 else ("tied with" if diff == 0 else "fell short of")
    ses = f"{abs(z):.1f} standard errors" if math.isfinite(z) else "an unknown number of standard errors"
    strength = (
        ""
        if not math.isfinite(z)
        else " (a clear difference)"
        if abs(z) >= 2
        else " (within noise: not a reliable difference)"
    )
    return (
        f"Verdict: the best searched plan ({top['label']}, {metric} {top['mean']:.4f} +- {top['se']:.4f}) "
        f"{word} the best baseline ({base['label']}, {base['mean']:.4f} +- {base['se']:.4f}) "
        f"by {abs(diff):.4f} in paired comparison over {int(top['seeds'])} seeds, {ses}{strength}."
        + (
            f" With {int(top['seeds'])} seeds the standard error itself is rough: confirm with more "
            "(--final-seeds, or python -m results retrain on the test split)."
            if int(top["seeds"]) < FEW_SEEDS
            else ""
        )
    )
