"""The budget curve's outputs from numbers.csv: curve.csv, curve.md (the table) and curve.png.

numbers.csv holds one row per number: ``problem, budget, repeat, searcher, role, label, seed,
value, metric`` (+ ``exported_kind``, ``exported_label``, ``beats_global``, ``summary``).
``role`` is ``exported`` (a search's best_plan.json; ``searcher`` says whose), ``none``,
``hand-set``, ``tuned``, and for a planted problem ``found`` (the best plan the search
sampled), ``best-global`` and ``best-plan``. A planted problem's values are TRUE values (no
seed, one per search); a trained problem's are test values, one per fresh seed.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = ("problem", "budget", "repeat", "searcher", "role", "label", "seed", "value", "metric",
           "exported_kind", "exported_label", "beats_global", "seconds", "summary")  # fmt: skip
PLANTED_PREFIX = "true "  # metric of a planted problem's rows: "true val_acc"


def merge(path: Path, rows: Sequence[dict[str, Any]], problem: str, budget: int, repeat: int, searchers: Any) -> None:
    """Replace one point's rows (these searchers', and the point's baselines) in numbers.csv."""
    old = _read(path)
    if len(old):
        same = (old["problem"] == problem) & (old["budget"] == budget) & (old["repeat"] == repeat)
        mine = old["searcher"].isin(list(searchers)) | (old["searcher"] == "")
        old = old[~(same & mine)]
    new = pd.DataFrame(list(rows)).reindex(columns=list(COLUMNS))
    out = pd.concat([old, new], ignore_index=True) if len(old) else new
    tmp = path.with_suffix(".tmp")
    out.to_csv(tmp, index=False)
    tmp.replace(path)


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame(columns=list(COLUMNS))
    df = pd.read_csv(path, keep_default_na=True)
    df["searcher"] = df["searcher"].fillna("")
    return df


def t_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, 95% Student-t low, high); NaN bounds below 2 values."""
    from scipy import stats

    vals = [float(v) for v in values if math.isfinite(float(v))]
    if not vals:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(vals) - 1)) * statistics.stdev(vals) / math.sqrt(len(vals))
    return mean, mean - half, mean + half


# ----------------------------------------------------------------------------- planted
def planted_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per problem, budget and searcher: how often the exported plan was a searched one and
    beat every global recipe on its true value, and that value's mean [95%] over the searches."""
    out = []
    for (problem, budget, searcher), g in df[df["searcher"] != ""].groupby(["problem", "budget", "searcher"]):
        ex = g[g["role"] == "exported"]
        found = g[g["role"] == "found"]
        tuned = g[g["role"] == "tuned"].groupby("repeat")["value"].max()
        mean, low, high = t_interval(ex["value"])
        out.append(
            {
                "problem": problem,
                "budget": int(budget),
                "searcher": searcher,
                "searches": len(ex),
                "exported_searched": int((ex["exported_kind"] == "searched").sum()),
                "exported_beats_global": int(ex["beats_global"].astype(str).str.lower().eq("true").sum()),
                "found_beats_global": int(found["beats_global"].astype(str).str.lower().eq("true").sum()),
                "mean": mean,
                "ci95_low": low,
                "ci95_high": high,
                "tuned_mean": statistics.fmean(tuned) if len(tuned) else math.nan,
                "best_global": float(g[g["role"] == "best-global"]["value"].max()),
                "best_plan": float(g[g["role"] == "best-plan"]["value"].max()),
                "search_seconds": float(pd.to_numeric(ex["seconds"], errors="coerce").mean()),
            }
        )
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- trained
def trained_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per problem, budget and repeat: every plan's test mean +- se, and its paired 95%
    interval against the best tuned global baseline of that point (positive = better)."""
    from controller.stats import paired, standard_error

    out = []
    for (problem, budget, repeat), g in df.groupby(["problem", "budget", "repeat"]):
        mode = "min" if str(g["metric"].iloc[0]).endswith(("loss", "ppl")) else "max"
        sign = 1 if mode == "max" else -1
        plans = {}
        for (searcher, role, label), part in g.groupby(["searcher", "role", "label"], sort=False):
            name = f"{searcher}: exported" if role == "exported" else label
            plans[name] = (searcher, role, part, dict(zip(part["seed"].astype(int), part["value"].astype(float))))
        tuned = [k for k, v in plans.items() if v[1] == "tuned"]
        ref = max(tuned, key=lambda k: sign * statistics.fmean(plans[k][3].values())) if tuned else None
        for name, (searcher, role, part, values) in plans.items():
            row = {
                "problem": problem,
                "budget": int(budget),
                "repeat": int(repeat),
                "plan": name,
                "role": role,
                "searcher": searcher,
                "trained_as": part["label"].iloc[0],
                "exported": f"{part['exported_kind'].iloc[0]} {part['exported_label'].iloc[0]}"
                if role == "exported"
                else "",
                "seeds": len(values),
                "mean": statistics.fmean(values.values()),
                "se": standard_error(values.values()),
                "metric": part["metric"].iloc[0],
                "reference": ref or "",
            }
            _, row["ci95_low"], row["ci95_high"] = t_interval(list(values.values()))
            if ref and name != ref:
                c = paired(values, plans[ref][3], mode)
                row.update(vs_tuned=c.mean, vs_tuned_low=c.ci95_low, vs_tuned_high=c.ci95_high, word=c.word)
            out.append(row)
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- outputs
def _f(x: Any, digits: int = 4) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _signed(x: Any, digits: int = 4) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{digits}f}"


def markdown(planted: pd.DataFrame, trained: pd.DataFrame, cpu: str) -> str:
    lines = [f"Measured on: {cpu}", ""]
    for problem, g in planted.groupby("problem", sort=False) if len(planted) else []:
        first = g.iloc[0]
        lines += [
            f"**{problem}** (true values; best plan {_f(first['best_plan'])}, best global recipe "
            f"{_f(first['best_global'])})",
            "",
            "| budget | searcher | searches | exported a searched plan | exported plan beats the best global | "
            "sampled one that does | exported true value [95%] | best tuned found | seconds a search |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for _, r in g.sort_values(["budget", "searcher"]).iterrows():
            n = r["searches"]
            lines.append(
                f"| {r['budget']} | {r['searcher']} | {n} | {r['exported_searched']}/{n} | "
                f"{r['exported_beats_global']}/{n} | {r['found_beats_global']}/{n} | {_f(r['mean'])} "
                f"[{_f(r['ci95_low'])}, {_f(r['ci95_high'])}] | {_f(r['tuned_mean'])} | {_f(r['search_seconds'], 0)} |"
            )
        lines.append("")
    for (problem, budget, repeat), g in trained.groupby(["problem", "budget", "repeat"]) if len(trained) else []:
        metric = g["metric"].iloc[0]
        lines += [
            f"**{problem}**, budget {budget}, repeat {repeat} ({metric}, {int(g['seeds'].max())} fresh test seeds; "
            f"reference: the best tuned global baseline, {g['reference'].iloc[0] or 'none finished'})",
            "",
            f"| plan | exported as | {metric} (mean +- se) | vs best tuned [95%] | words |",
            "|---|---|---|---|---|",
        ]
        order = {"exported": 0, "none": 1, "hand-set": 2, "tuned": 3}
        for _, r in g.sort_values("role", key=lambda s: s.map(order)).iterrows():
            cmp = (
                f"{_signed(r.get('vs_tuned'))} [{_signed(r.get('vs_tuned_low'))}, {_signed(r.get('vs_tuned_high'))}]"
                if isinstance(r.get("word"), str)
                else ("(reference)" if r["plan"] == r["reference"] else "")
            )
            word = r["word"] if isinstance(r.get("word"), str) else ""
            exported = f"{r['exported']} (trained as {r['trained_as']})" if r["role"] == "exported" else ""
            lines.append(f"| {r['plan']} | {exported} | {_f(r['mean'])} +- {_f(r['se'])} | {cmp} | {word} |")
        lines.append("")
    return "\n".join(lines)


def figure(planted: pd.DataFrame, trained: pd.DataFrame, path: Path) -> Path | None:
    """One panel per problem: budget against the metric, one line per searcher (95% intervals),
    the tuned global line (and for a planted problem the best global recipe and the best plan)."""
    from matplotlib.figure import Figure

    problems = list(dict.fromkeys([*planted.get("problem", []), *trained.get("problem", [])]))
    if not problems:
        return None
    fig = Figure(figsize=(4.2 * len(problems), 3.6), layout="constrained")
    axes = fig.subplots(1, len(problems), squeeze=False)[0]
    colours = {"controller": "C0", "random": "C1", "tpe": "C2"}
    shift = {"controller": 0.94, "random": 1.0, "tpe": 1.06}
    for ax, problem in zip(axes, problems):
        if len(planted) and problem in set(planted["problem"]):
            g = planted[planted["problem"] == problem]
            for searcher, s in g.groupby("searcher"):
                s = s.sort_values("budget")
                x = s["budget"] * shift.get(searcher, 1.0)
                err = [s["mean"] - s["ci95_low"], s["ci95_high"] - s["mean"]]
                ax.errorbar(x, s["mean"], yerr=err, marker="o", capsize=3, label=searcher, color=colours.get(searcher))
            t = g.groupby("budget")["tuned_mean"].mean()
            ax.plot(t.index, t.values, "k--s", label="tuned global (found)")
            ax.axhline(g["best_global"].max(), color="grey", ls=":", label="best global recipe")
            ax.axhline(g["best_plan"].max(), color="green", ls=":", label="best plan")
            ax.set_ylabel("true value of the exported plan")
        else:
            g = trained[trained["problem"] == problem]
            per = g.groupby(["budget", "plan", "role", "searcher"], as_index=False).agg(
                mean=("mean", "mean"), low=("ci95_low", "mean"), high=("ci95_high", "mean")
            )
            for searcher, s in per[per["role"] == "exported"].groupby("searcher"):
                s = s.sort_values("budget")
                err = [s["mean"] - s["low"], s["high"] - s["mean"]]
                ax.errorbar(s["budget"] * shift.get(searcher, 1.0), s["mean"], yerr=err, marker="o", capsize=3,
                            label=searcher, color=colours.get(searcher))  # fmt: skip
            ref = g[g["plan"] == g["reference"]].groupby("budget")[["mean", "ci95_low", "ci95_high"]].mean()
            if len(ref):
                err = [ref["mean"] - ref["ci95_low"], ref["ci95_high"] - ref["mean"]]
                ax.errorbar(ref.index, ref["mean"], yerr=err, fmt="k--s", capsize=3, label="best tuned global")
            none = g[g["role"] == "none"].groupby("budget")["mean"].mean()
            if len(none):
                ax.plot(none.index, none.values, color="grey", ls=":", marker="x", label="none")
            ax.set_ylabel(f"{g['metric'].iloc[0]} of the exported plan")
        ax.set_xscale("log", base=2)
        budgets = sorted({int(b) for t in (planted, trained) if len(t) for b in t[t["problem"] == problem]["budget"]})
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.minorticks_off()
        ax.set_xlabel("search trainings (budget)")
        ax.set_title(problem)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def write(numbers: Path, out: Path, problems: Sequence[str] | None = None, cpu: str = "") -> str:
    """curve.csv, curve.md and curve.png in ``out`` from numbers.csv; returns the markdown."""
    df = _read(numbers)
    if problems:
        df = df[df["problem"].isin(list(problems))]
    is_planted = df["metric"].astype(str).str.startswith(PLANTED_PREFIX)
    planted, trained = planted_table(df[is_planted]), trained_table(df[~is_planted])
    table = pd.concat([planted.assign(kind="planted"), trained.assign(kind="trained")], ignore_index=True)
    for col in ("budget", "repeat", "searches", "exported_searched", "exported_beats_global", "found_beats_global",
                "seeds"):  # fmt: skip
        if col in table:
            table[col] = table[col].astype("Int64")
    table.to_csv(out / "curve.csv", index=False)
    text = markdown(planted, trained, cpu)
    (out / "curve.md").write_text(text + "\n")
    figure(planted, trained, out / "curve.png")
    print(text)
    return text
