"""``retrain``'s verdicts: each plan's test metric over seeds, compared in pairs with the best
baseline on test, the words corrected for the number of comparisons.

Why Holm: retraining four plans and calling each "better" when its own 95% interval clears 0
finds a "better" plan by chance far more often than 5% of the time. Holm's step-down
correction (``controller.stats.holm``) keeps the chance of any false "better" or "worse" over
all the comparisons at 5%, and is never less powerful than Bonferroni. The intervals and
p-values stay each comparison's own; only the words follow the correction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from controller import run_folder as rf
from controller.final import SEARCHED
from controller.run_folder import Objective
from controller.run_folder.columns import COMPARISON_COLUMNS
from controller.stats import BETTER, CANNOT_TELL, TOO_FEW, WORSE, Paired, holm, paired, sign_of, standard_error

__all__ = ["test_metric", "holm_word", "summarize_retrain"]

test_metric = rf.test_metric  # val_acc -> test_acc, val_ppl -> test_ppl


def holm_word(cmp: Paired, rejected: bool) -> str:
    """The word after Holm's correction: "better" / "worse" only for a comparison whose null
    hypothesis Holm rejects (by the sign of the mean difference); too few seeds stays so."""
    if cmp.word == TOO_FEW:
        return TOO_FEW
    if rejected:
        return BETTER if cmp.mean > 0 else WORSE
    return CANNOT_TELL


def summarize_retrain(rows: pd.DataFrame, objective: Objective | None = None) -> pd.DataFrame:
    """Per plan, in the order plans were given: the test metric's mean, standard deviation and
    standard error over seeds (``<test>`` shows "mean +- se"), the validation mean, and the
    paired comparison with the best baseline on test (``diff_ci95_low/high``, ``p_value``;
    positive = better for max- and min-mode metrics alike). ``comparison_uncorrected`` is each
    comparison's own word; ``comparison`` follows Holm's correction over all of them
    (``holm_family`` comparisons, ``holm_rejected``). Columns: ``rf.retrain_summary_columns``."""
    o = objective or Objective()
    test, val = test_metric(o), o.metric
    order = list(dict.fromkeys(rows["plan"]))
    ok = rows[rows["status"] == "ok"]
    g = rows.groupby("plan", sort=False)
    gok = ok.groupby("plan", sort=False)
    out = pd.DataFrame(
        {
            "seeds": g.size(),
            "ok": g["status"].apply(lambda s: int((s == "ok").sum())),
            f"{test}_mean": gok[test].mean(),
            f"{test}_std": gok[test].std(ddof=1),
            f"{test}_se": gok[test].apply(standard_error),
            f"{val}_mean": gok[val].mean(),
            "summary": g["summary"].first(),
        }
    ).reindex(order)
    out = out.reset_index().rename(columns={"index": "plan"})
    out.insert(
        1,
        test,
        [
            f"{m:.4f} +- {s:.4f}" if not np.isnan(s) else f"{m:.4f}"
            for m, s in zip(out[f"{test}_mean"], out[f"{test}_se"])
        ],
    )
    values = {label: dict(zip(part["seed"], part[test])) for label, part in ok.groupby("plan", sort=False)}
    kinds = dict(zip(rows["plan"], rows["kind"])) if "kind" in rows.columns else {}
    complete = [
        p
        for p in order
        if kinds.get(p, "baseline") != SEARCHED and len(values.get(p, {})) == out.set_index("plan").loc[p, "seeds"]
    ]
    sign = sign_of(o.mode)
    best = max(complete, key=lambda p: sign * float(np.mean(list(values[p].values())))) if complete else ""
    family = [p for p in out["plan"] if best and p != best]
    cmps = {p: paired(values.get(p, {}), values.get(best, {}), o.mode) for p in family}
    rejected = dict(zip(family, holm([cmps[p].p_value for p in family])))
    cols: dict[str, list[Any]] = {k: [] for k in COMPARISON_COLUMNS}
    for label in out["plan"]:
        cmp = cmps.get(label)
        cols["diff_vs_best_baseline"].append(cmp.mean if cmp else np.nan)
        cols["diff_ci95_low"].append(cmp.ci95_low if cmp else np.nan)
        cols["diff_ci95_high"].append(cmp.ci95_high if cmp else np.nan)
        cols["p_value"].append(cmp.p_value if cmp else np.nan)
        cols["paired_seeds"].append(cmp.n if cmp else 0)
        none = "best baseline" if label == best else ""
        cols["comparison_uncorrected"].append(cmp.word if cmp else none)
        cols["holm_family"].append(len(family) if cmp else 0)
        cols["holm_rejected"].append(bool(rejected[label]) if cmp else False)
        cols["comparison"].append(holm_word(cmp, rejected[label]) if cmp else none)
    out.insert(2, "kind", [kinds.get(p, "") for p in out["plan"]])
    out["best_baseline"] = best
    for k, v in cols.items():
        out[k] = v
    return out[rf.retrain_summary_columns(o)]
