"""Summary tables of a search (pandas): best plans, method statistics, searcher comparison, cost.

Each function takes the trials DataFrame (``run.combined_trials``) and returns a DataFrame, so
the same numbers feed the text/markdown/csv output, the plots and a user's own notebook.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from controller import run_folder as rf
from search_space.errors import user_error

from .run import FAILED_STATUSES, OK_STATUSES, SITE_PREFIX, Run

__all__ = [
    "ranked",
    "objective_of",
    "top_plans",
    "final_table",
    "method_stats",
    "method_share_table",
    "searcher_comparison",
    "failed_trials",
    "compute_cost",
    "render",
    "FORMATS",
]

FORMATS = ("text", "markdown", "csv")


def objective_of(df: pd.DataFrame) -> rf.Objective:
    """The metric a trials table is ranked by (``combined_trials`` records it; val_acc/max else)."""
    return df.attrs.get("objective") or rf.Objective()


def ranked(df: pd.DataFrame, objective: rf.Objective | None = None) -> pd.DataFrame:
    """Finished (ok) trials with a real value, best first, with a 1-based ``rank``.

    The same rule as ``run_folder.best_row`` (what best_plan.json holds when there is no final
    stage): a trial stopped early by a scheduler is never ranked, nor the ``learned`` baseline
    (a way to train: its rates and their plan are ``results.learned``'s). Ties keep completion order.
    """
    o = objective or objective_of(df)
    baseline = df["baseline"] if "baseline" in df.columns else pd.Series("", index=df.index)
    learned = baseline.fillna("").astype(str) == rf.LEARNED_TRIAL
    ok = df[df["status"].isin(OK_STATUSES) & df[o.metric].notna() & ~learned]
    ok = ok.sort_values([o.metric, "order"], ascending=[o.mode == "min", True], kind="stable")
    ok = ok.reset_index(drop=True)
    return ok.assign(rank=np.arange(1, len(ok) + 1))


def _with_se(mean: pd.Series, se: pd.Series) -> list[str]:
    return [f"{m:.4f} +- {s:.4f}" if pd.notna(s) else (f"{m:.4f}" if pd.notna(m) else "") for m, s in zip(mean, se)]


def top_plans(df: pd.DataFrame, k: int = 5) -> pd.DataFrame:
    """The ``k`` best plans: rank, trial, searcher (or baseline), the metric +- its standard
    error over the reward seeds, epochs and the compact per-site methods."""
    if k < 1:
        raise user_error("top", k, "an integer >= 1")
    o = objective_of(df)
    out = ranked(df, o).head(k)
    if "group" in out.columns:  # says "baseline:<name>" for the baselines
        out = out.assign(searcher=out["group"])
    se = out[o.se_column] if o.se_column in out.columns else pd.Series(np.nan, index=out.index)
    out = out.assign(**{f"{o.metric} +- se": _with_se(out[o.metric], se)})
    cols = ["rank", "run", "trial_id", "searcher", o.metric, f"{o.metric} +- se", "epochs", "methods"]
    if out["run"].nunique() <= 1:
        cols.remove("run")
    return out[cols].reset_index(drop=True)


def final_table(run: Run) -> pd.DataFrame:
    """The final re-training (final.csv): mean +- standard error per finalist, the paired 95%
    interval of its difference from the best baseline (positive = better), the words that
    interval allows, and which plan best_plan.json holds; best first. Empty without a final stage."""
    if run.final is None or not len(run.final):
        return pd.DataFrame()
    o = run.objective
    f = run.final.copy()
    f = f.sort_values("mean", ascending=o.mode == "min", kind="stable").reset_index(drop=True)

    def col(name: str) -> pd.Series:
        return f[name] if name in f.columns else pd.Series(np.nan, index=f.index)

    interval = [
        f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]"
        if np.isfinite(lo) and np.isfinite(hi)
        else (f"{d:+.4f}" if np.isfinite(d) else "")
        for d, lo, hi in zip(
            pd.to_numeric(col("diff_vs_best_baseline"), errors="coerce"),
            pd.to_numeric(col("diff_ci95_low"), errors="coerce"),
            pd.to_numeric(col("diff_ci95_high"), errors="coerce"),
        )
    ]
    best = f["best_baseline"].fillna("") if "best_baseline" in f.columns else pd.Series("", index=f.index)
    words = col("comparison").fillna("").astype(str)
    words = words.where(f["label"] != best, "best baseline")
    if col("left").notna().any() and (col("left").astype(str).str.strip() != "").any():
        return _race_table(f, o, col, best)
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(f) + 1),
            "plan": f["label"],
            "kind": f["kind"],
            "seeds": f["seeds"],
            f"{o.metric} +- se": _with_se(f["mean"], f["se"]),
            "vs best baseline [95%]": interval,
            "p": [f"{p:.3g}" if np.isfinite(p) else "" for p in pd.to_numeric(col("p_value"), errors="coerce")],
            "verdict": words,
            "exported": f["chosen"].astype(bool).map({True: "best_plan.json", False: ""}).fillna(""),
            "methods": f["methods"],
        }
    )


def _race_table(f: pd.DataFrame, o: Any, col: Any, best: pd.Series) -> pd.DataFrame:
    """final_table of a raced final stage: the race's seeds and means, the round each plan left,
    and the confirmation on fresh seeds that decided the export (controller.race)."""
    num = {k: pd.to_numeric(col(k), errors="coerce") for k in ("confirm_diff", "confirm_ci95_low", "confirm_ci95_high")}
    interval = [
        f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}] ({int(n)} seeds)" if np.isfinite(lo) and np.isfinite(hi) else ""
        for d, lo, hi, n in zip(
            num["confirm_diff"],
            num["confirm_ci95_low"],
            num["confirm_ci95_high"],
            pd.to_numeric(col("confirm_seeds"), errors="coerce").fillna(0),
        )
    ]
    p = pd.to_numeric(col("confirm_p"), errors="coerce")
    q = pd.to_numeric(col("confirm_p_holm"), errors="coerce")
    words = col("confirm_word").fillna("").astype(str).where(f["label"] != best, "best baseline")
    left = [
        "" if pd.isna(v) else (str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)) for v in col("left")
    ]
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(f) + 1),
            "plan": f["label"],
            "kind": f["kind"],
            "seeds": f["seeds"],
            f"{o.metric} +- se (race)": _with_se(f["mean"], f["se"]),
            "left the race": [f"round {v}" if v.isdigit() else v for v in left],
            "confirmation vs best baseline [95%]": interval,
            "p (Holm)": [f"{a:.3g} ({b:.3g})" if np.isfinite(a) else "" for a, b in zip(p, q)],
            "verdict": words,
            "exported": f["chosen"].astype(bool).map({True: "best_plan.json", False: ""}).fillna(""),
            "methods": f["methods"],
        }
    )


def _site_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(SITE_PREFIX)]


def method_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Per site and method: how often chosen, share of the site's trials, mean reward when chosen.

    Rows with ``site == "(all sites)"`` pool every site. Failed trials count as chosen (the
    controller did choose them) with the reward the search gave them; the reference trial
    and the baselines (hand-set, not chosen by any searcher) are left out.
    """
    rows = []
    site_cols = _site_columns(df)
    if "reference" in df.columns:
        df = df[~df["reference"].astype(bool)]
    long = (
        pd.concat(
            [
                pd.DataFrame({"site": c[len(SITE_PREFIX) :], "method": df[c].astype(str), "reward": df["reward"]})
                for c in site_cols
            ],
            ignore_index=True,
        )
        if site_cols and len(df)
        else pd.DataFrame(columns=["site", "method", "reward"])
    )
    for label, part in [(s, long[long["site"] == s]) for s in long["site"].unique()] + [("(all sites)", long)]:
        if not len(part):
            continue
        g = part.groupby("method", sort=True)["reward"]
        stats = pd.DataFrame({"count": g.size(), "mean_reward": g.mean()}).reset_index()
        stats["share"] = stats["count"] / len(part)
        stats.insert(0, "site", label)
        rows.append(stats[["site", "method", "count", "share", "mean_reward"]])
    if not rows:
        return pd.DataFrame(columns=["site", "method", "count", "share", "mean_reward"])
    return pd.concat(rows, ignore_index=True)


def method_share_table(stats: pd.DataFrame) -> pd.DataFrame:
    """Compact pivot of :func:`method_stats`: one row per site, cell = "share% / mean reward"."""
    if not len(stats):
        return pd.DataFrame()
    cell = [
        f"{s:.0%} / {r:.3f}" if not math.isnan(r) else f"{s:.0%} / -"
        for s, r in zip(stats["share"], stats["mean_reward"])
    ]
    pivot = stats.assign(cell=cell).pivot(index="site", columns="method", values="cell").fillna("")
    order = list(dict.fromkeys(stats["site"]))
    return pivot.reindex(order).reset_index().rename_axis(columns=None)


def _quarter_mean(rewards: pd.Series, last: bool) -> float:
    n = len(rewards)
    if n == 0:
        return float("nan")
    q = max(1, n // 4)
    part = rewards.iloc[-q:] if last else rewards.iloc[:q]
    return float(part.mean())


def searcher_comparison(df: pd.DataFrame) -> pd.DataFrame:
    """Per searcher group: trials, failures, mean reward overall / first quarter / last quarter, best.

    The last-quarter mean is the fair "did the controller learn" figure: a random search's
    quarters differ only by noise.
    """
    rows = []
    o = objective_of(df)
    key = "group" if "group" in df.columns else "searcher"  # load_run() output has no group yet
    for group, part in df.groupby(key, sort=True):
        part = part.sort_values("order", kind="stable")
        rewards = part["reward"].astype(float)
        rows.append(
            {
                "searcher": group,
                "trials": len(part),
                "failed": int(part["status"].isin(FAILED_STATUSES).sum()),
                "mean_reward": float(rewards.mean()) if len(rewards) else float("nan"),
                "first_quarter_reward": _quarter_mean(rewards.dropna(), last=False),
                "last_quarter_reward": _quarter_mean(rewards.dropna(), last=True),
                o.best_column: _best(part[part["status"].isin(OK_STATUSES)][o.metric], o),
            }
        )
    return pd.DataFrame(
        rows,
        columns=[
            "searcher",
            "trials",
            "failed",
            "mean_reward",
            "first_quarter_reward",
            "last_quarter_reward",
            o.best_column,
        ],
    )


def _best(values: pd.Series, o: rf.Objective) -> float:
    values = values.dropna()
    if not len(values):
        return float("nan")
    return float(values.max() if o.mode == "max" else values.min())


def failed_trials(df: pd.DataFrame, width: int = 100) -> pd.DataFrame:
    """Trials that failed or diverged, with the last line of their error (never silently dropped)."""
    bad = df[df["status"].isin(FAILED_STATUSES)]
    last_line = [e.strip().splitlines()[-1][:width] if e.strip() else "" for e in bad["error"]]
    out = bad.assign(error=last_line)[["trial_id", "searcher", "status", "error", "methods"]]
    return out.reset_index(drop=True)


def _resource(args: dict, *names: str, default: float) -> float:
    for name in names:
        value = args.get(name)
        if value is not None:
            try:
                return float(value)
            except (TypeError, ValueError):
                continue
    return default


def _wall_hours(run: Run) -> float:
    try:
        start = datetime.fromisoformat(str(run.config["started_at"]))
        end = datetime.fromisoformat(str(run.state["updated_at"]))
    except (KeyError, ValueError):
        return float("nan")
    if (start.tzinfo is None) != (end.tzinfo is None):
        return float("nan")
    return max(0.0, (end - start).total_seconds() / 3600.0)


def compute_cost(runs: list[Run]) -> pd.DataFrame:
    """Per run: trial seconds times the resources each trial held -> CPU and GPU hours."""
    rows = []
    for run in runs:
        # resolved resources if the search recorded them, else its arguments; an "auto" GPU
        # share that was never recorded is unknown (NaN), not silently zero
        args = {**run.args, **(run.config.get("resources") or {})}
        cpus = _resource(args, "cpu", "cpus_per_trial", default=1.0)
        gpus = _resource(args, "gpu", "gpus_per_trial", default=float("nan"))
        seconds = float(run.trials["seconds"].fillna(0).sum())
        rows.append(
            {
                "run": run.name,
                "status": run.status,
                "trials": len(run.trials),
                "trial_hours": seconds / 3600.0,
                "cpus_per_trial": cpus,
                "gpus_per_trial": gpus,
                "cpu_hours": seconds * cpus / 3600.0,
                "gpu_hours": seconds * gpus / 3600.0,
                "wall_hours": _wall_hours(run),
            }
        )
    return pd.DataFrame(rows)


def _markdown(df: pd.DataFrame) -> str:
    """GitHub table without the optional ``tabulate`` dependency."""

    def fmt(v: object) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, sep, *body])


def _text(df: pd.DataFrame) -> str:
    """Plain table; text columns left-aligned so long per-site method lists stay readable."""
    fmt = {}
    for col in df.columns:
        if df[col].dtype == object or pd.api.types.is_string_dtype(df[col]):
            width = int(df[col].astype(str).str.len().max())
            fmt[col] = lambda v, w=width: str(v).ljust(w)
    return df.to_string(index=False, formatters=fmt, float_format=lambda v: f"{v:.4f}", justify="left")


def render(tables: list[tuple[str, pd.DataFrame]], fmt: str = "text") -> str:
    """Render titled tables as plain text, GitHub markdown, or CSV blocks separated by ``# title``."""
    if fmt not in FORMATS:
        raise user_error("format", fmt, ", ".join(FORMATS))
    parts = []
    for title, df in tables:
        if fmt == "csv":
            parts.append(f"# {title}\n" + df.to_csv(index=False).rstrip("\n"))
        elif fmt == "markdown":
            parts.append(f"### {title}\n\n" + (_markdown(df) if len(df) else "_none_"))
        else:
            body = _text(df) if len(df) else "(none)"
            parts.append(f"== {title} ==\n{body}")
    return "\n\n".join(parts) + "\n"
