"""Retrain the best searched plans and the baselines with several fresh seeds; test once.

The search only ever saw validation accuracy; this is where the held-out test set is used,
once per (plan, seed), so the comparison with the baselines is honest:
- seeds are **fresh**: by default the first integers the search never trained with (its
  reward and final seeds, read from the run folder);
- every plan trains on the same seeds, and each is compared in pairs with the best baseline
  on test (hand-set or tuned; ``controller.stats.paired``: Student's t at n - 1 df);
- a plan is trained once even when it appears under two names (a searched plan that is a
  baseline).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from controller.final import LEARNED, SEARCHED, TUNED_PREFIX
from controller.run_folder import Objective
from controller.stats import paired, sign_of, standard_error
from search_space.baselines import BASELINES, baseline_plans
from search_space.errors import user_error
from search_space.plan import plan_key

from .learned import learned_rates_plan
from .plots import plot_retrain
from .run import Run
from .tables import ranked

__all__ = [
    "RetrainConfig",
    "retrain",
    "retrain_plans",
    "summarize_retrain",
    "plan_at_rank",
    "search_seeds",
    "fresh_seeds",
]

log = logging.getLogger(__name__)


@dataclass
class RetrainConfig:
    """What to retrain and how. ``train_size``: "full" (whole training split), "search" (the
    subset the search used) or a number of images. ``epochs`` None = the search's epochs."""

    top: int = 1
    seeds: int = 3
    epochs: int | None = None
    train_size: str | int = "full"
    baselines: tuple[str, ...] = BASELINES
    seed_offset: int | None = None  # None: fresh seeds (never used by the search)
    tuned: bool = True  # retrain the search's tuned global recipes too
    learned: bool = True  # retrain the search's learned-rates plan too (results.learned)
    device: str | None = None
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.top < 0:
            raise user_error("top", self.top, "an integer >= 0")
        if self.seeds < 1:
            raise user_error("seeds", self.seeds, "an integer >= 1")
        if self.epochs is not None and self.epochs < 1:
            raise user_error("epochs", self.epochs, "an integer >= 1")
        if not (self.train_size in ("full", "search") or (isinstance(self.train_size, int) and self.train_size > 0)):
            raise user_error("train_size", self.train_size, "full, search, or a positive integer")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise user_error("baselines", unknown[0], ", ".join(BASELINES))


def plan_at_rank(run_or_df: Run | pd.DataFrame, rank: int = 1) -> Any:
    """The Plan ranked ``rank`` with its metadata; rank 1 is what best_plan.json holds.

    A run whose final stage finished is ranked by its final.csv (the chosen plan first, then
    the means); otherwise finished (ok) trials are ranked by their value (``tables.ranked``).
    The metadata is best_plan.json's (``controller.final.best_plan_of``) plus rank and run.
    """
    from controller.final import best_plan_of

    if isinstance(run_or_df, Run) and _final_complete(run_or_df):
        run = run_or_df
        o = run.objective
        f = run.final.sort_values(["chosen", "mean"], ascending=[False, o.mode == "min"], kind="stable")
        if not 1 <= rank <= len(f):
            raise user_error("rank", detail=f"bad value {rank}", allowed=f"1..{len(f)} (plans of the final stage)")
        row = {**_plain(f.iloc[rank - 1]), "chosen": True}
        plan, _ = best_plan_of([row], None, o, run.searcher)
        plan.metadata = {**plan.metadata, "rank": int(rank), "run": run.name}
        return plan
    df = run_or_df.trials if isinstance(run_or_df, Run) else run_or_df
    o = df.attrs.get("objective") or (run_or_df.objective if isinstance(run_or_df, Run) else Objective())
    table = ranked(df, o)
    if not 1 <= rank <= len(table):
        raise user_error(
            "rank", detail=f"bad value {rank}", allowed=f"1..{len(table)} (the run has {len(table)} ranked trials)"
        )
    row = _plain(table.iloc[rank - 1])
    plan, _ = best_plan_of([], row, o, str(row.get("searcher") or ""))
    plan.metadata = {**plan.metadata, "rank": int(rank), "run": str(row.get("run") or "")}
    return plan


def _plain(row: pd.Series) -> dict[str, Any]:
    """A table row as plain values (NaN -> None), as best_plan_of reads rows."""
    return {k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in row.items()}


def search_seeds(run: Run) -> set[int]:
    """Every seed the search trained with: its reward seeds and final seeds (search_config.json)
    and those final.csv records."""
    used = {int(s) for key in ("reward_seeds", "final_seeds") for s in (run.config.get(key) or [])}
    if run.final is not None and "values" in run.final.columns:
        import json

        for text in run.final["values"].dropna():
            try:
                used |= {int(k) for k in json.loads(str(text))}
            except (ValueError, TypeError):
                continue
    return used


def fresh_seeds(run: Run, n: int) -> list[int]:
    """The first ``n`` non-negative integers the search never trained with."""
    used, out, s = search_seeds(run), [], 0
    while len(out) < n:
        if s not in used:
            out.append(s)
        s += 1
    return out


def retrain_seeds(run: Run, cfg: RetrainConfig) -> tuple[list[int], list[int]]:
    """(seeds to use, those among them the search used: empty unless --seed-offset chose them)."""
    if cfg.seed_offset is None:
        return fresh_seeds(run, cfg.seeds), []
    seeds = [cfg.seed_offset + i for i in range(cfg.seeds)]
    return seeds, sorted(set(seeds) & search_seeds(run))


def _final_complete(run: Run) -> bool:
    """final.csv exists and the run finished (a half-done final stage ranks nothing yet)."""
    return run.final is not None and len(run.final) > 0 and run.status == "finished"


def _train_config(run: Run, cfg: RetrainConfig, seed: int) -> dict[str, Any]:
    base = run.train_config
    out = {**base, "seed": seed, "eval_test": True}
    if cfg.epochs is not None:
        out["epochs"] = cfg.epochs
    if cfg.train_size == "full":
        out["train_size"] = None
    elif cfg.train_size != "search":
        out["train_size"] = int(cfg.train_size)
    if cfg.device is not None:
        out["device"] = cfg.device
    if cfg.num_threads is not None:
        out["num_threads"] = cfg.num_threads
    return out


def retrain_plans(run: Run, cfg: RetrainConfig) -> dict[str, Any]:
    """Label -> Plan: ``searched#k`` for the k best searched plans, then the requested baselines.

    The search's baseline trials are skipped even when they rank first: the baselines are
    retrained under their own names.
    """
    from search_space import Plan

    if _final_complete(run):  # the final stage's order: re-trained means, not one lucky draw
        f = run.final[run.final["kind"] == "searched"].sort_values("mean", ascending=run.objective.mode == "min")
        plans = {}
        for k, text in enumerate(f["plan_json"].head(cfg.top), start=1):
            plan = Plan.from_json(str(text))
            plan.metadata = {**plan.metadata, "rank_in_final": k}
            plans[f"searched#{k}"] = plan
    else:
        table = ranked(run.trials, run.objective)
        searched = [int(r) for r, ref in zip(table["rank"], table["reference"]) if not ref][: cfg.top]
        plans = {
            f"searched#{k}": plan_at_rank(run.trials.assign(run=run.name), rank)
            for k, rank in enumerate(searched, start=1)
        }
    if cfg.top and not plans:
        raise user_error(
            "top", detail=f"bad value {cfg.top}", hint=f"the run has no finished searched trial to retrain ({run.path})"
        )
    if len(plans) < cfg.top:
        log.warning("only %d searched plans finished; retraining those", len(plans))
    plans.update(_tuned_plans(run) if cfg.tuned else {})
    learned = learned_rates_plan(run) if cfg.learned else None
    if learned is not None:
        plans[LEARNED] = learned
    space = run.config.get("space") or {}
    from search_space import SearchSpace
    from search_space.baselines import available_baselines, convnet_baselines

    searched_space = SearchSpace.from_dict(space) if space else None
    names = tuple(cfg.baselines)
    if names and searched_space is not None:
        applies = available_baselines(searched_space)
        skipped = [b for b in names if b not in applies]
        if skipped:
            log.warning(
                "baselines %s do not apply to this model (%s); retraining %s",
                ", ".join(skipped),
                "a Transformer or recurrent model" if not convnet_baselines(searched_space) else "no 2-D maps",
                ", ".join(b for b in names if b in applies) or "none of them",
            )
        names = tuple(b for b in names if b in applies)
    if names and searched_space is not None and not convnet_baselines(searched_space):
        available = searched_space.baseline_plans()
        plans.update({b: available[b] for b in names})
    elif names:
        from child_trainer.trial import model_and_example

        model, x, _, _ = model_and_example(run.train_config)
        layouts = searched_space.layouts if searched_space is not None else None
        plans.update(baseline_plans(model, run.sites, x, run.train_config.get("model", ""), names, layouts))
    if not plans:
        raise user_error(detail="nothing to retrain: top is 0 and no baselines were requested")
    return _distinct(plans)


def _tuned_plans(run: Run) -> dict[str, Any]:
    """The search's tuned global recipes: final.csv's ``tuned-*`` rows, else each tuned label's
    best search-stage trial."""
    from search_space import Plan

    out: dict[str, Any] = {}
    if run.final is not None and len(run.final) and "kind" in run.final.columns:
        for label, text in zip(run.final["label"], run.final["plan_json"]):
            if str(label).startswith(TUNED_PREFIX):
                out[str(label)] = Plan.from_json(str(text))
        if out:
            return out
    df = run.trials
    if "baseline" not in df.columns or not len(df):
        return out
    table = ranked(df, run.objective)
    for label, text in zip(table["baseline"].fillna(""), table["plan_json"]):
        if str(label).startswith(TUNED_PREFIX) and label not in out:
            out[str(label)] = Plan.from_json(str(text))
    return out


def _distinct(plans: dict[str, Any]) -> dict[str, Any]:
    """Each plan once: a plan equal to another is trained under the baseline's name (a searched
    plan that is a baseline is that baseline), and its other names are kept in its metadata."""
    order = sorted(plans, key=lambda label: label.startswith("searched#"))  # baselines first, stable
    kept: dict[str, str] = {}  # plan key -> label kept
    out: dict[str, Any] = {}
    for label in order:
        key = plan_key(plans[label])
        if key in kept:
            first = out[kept[key]]
            first.metadata = {**first.metadata, "same_as": [*first.metadata.get("same_as", []), label]}
            log.info("%s is the same plan as %s: trained once", label, kept[key])
            continue
        kept[key] = label
        out[label] = plans[label]
    return {label: out[label] for label in plans if label in out}


def _kind(label: str) -> str:
    if label.startswith("searched#"):
        return SEARCHED
    return "tuned" if label.startswith(TUNED_PREFIX) else "baseline"


def test_metric(objective: Objective) -> str:
    """The test split's name for the search metric: val_acc -> test_acc, val_ppl -> test_ppl."""
    return "test_" + objective.metric.removeprefix("val_")


def summarize_retrain(rows: pd.DataFrame, objective: Objective | None = None) -> pd.DataFrame:
    """Per plan, in the order plans were given: the test metric's mean, standard deviation and
    standard error over seeds (``<test>`` shows "mean +- se"), the validation mean, and the
    paired comparison with the best baseline on test (``diff_ci95_low/high``, ``p_value``,
    ``comparison``; positive = better for max- and min-mode metrics alike)."""
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
    cols: dict[str, list[Any]] = {
        k: []
        for k in ("diff_vs_best_baseline", "diff_ci95_low", "diff_ci95_high", "p_value", "paired_seeds", "comparison")
    }
    for label in out["plan"]:
        cmp = paired(values.get(label, {}), values.get(best, {}), o.mode) if best and label != best else None
        cols["diff_vs_best_baseline"].append(cmp.mean if cmp else np.nan)
        cols["diff_ci95_low"].append(cmp.ci95_low if cmp else np.nan)
        cols["diff_ci95_high"].append(cmp.ci95_high if cmp else np.nan)
        cols["p_value"].append(cmp.p_value if cmp else np.nan)
        cols["paired_seeds"].append(cmp.n if cmp else 0)
        cols["comparison"].append(cmp.word if cmp else ("best baseline" if label == best else ""))
    out.insert(2, "kind", [kinds.get(p, "") for p in out["plan"]])
    out["best_baseline"] = best
    for k, v in cols.items():
        out[k] = v
    return out


def retrain(run: Run, cfg: RetrainConfig, out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train every plan with every seed; write retrain.csv, retrain_summary.csv, retrain.png, plans/.

    Returns (one row per plan and seed, the per-plan summary).
    """
    from child_trainer import train_child
    from child_trainer.train import TrainConfig, resolve_device

    o = run.objective
    test, val = test_metric(o), o.metric
    seeds, reused = retrain_seeds(run, cfg)
    resolve_device(TrainConfig.from_dict(_train_config(run, cfg, seeds[0])).device)  # bad flags fail here
    plans = retrain_plans(run, cfg)
    if reused:
        log.warning("seeds %s were used by the search: those trainings are not fresh", reused)
    else:
        log.info("fresh seeds (never used by the search): %s", seeds)
    out_dir.mkdir(parents=True, exist_ok=True)
    for label, plan in plans.items():
        plan.save(out_dir / "plans" / f"{label.replace('#', '_')}.json")
    rows = []
    for label, plan in plans.items():
        for seed in seeds:
            train = _train_config(run, cfg, seed)
            result = train_child(train, plan)
            rows.append(
                {
                    "plan": label,
                    "kind": _kind(label),
                    "same_as": ",".join(plan.metadata.get("same_as", [])),
                    "fresh": seed not in reused,
                    "seed": seed,
                    "train_size": train.get("train_size"),
                    "status": result["status"],
                    test: result.get(test, float("nan")),
                    val: result.get(val, float("nan")),
                    "epochs": result["epochs"],
                    "seconds": result["seconds"],
                    "message": result["message"],
                    "summary": plan.summary(),
                }
            )
            log.info(
                "retrain %s seed %d: %s %s=%.4f (%.1fs)",
                label,
                seed,
                result["status"],
                test,
                rows[-1][test],
                result["seconds"],
            )
    per_seed = pd.DataFrame(rows)
    summary = summarize_retrain(per_seed, o)
    per_seed.to_csv(out_dir / "retrain.csv", index=False)
    summary.to_csv(out_dir / "retrain_summary.csv", index=False)
    plot_retrain(summary, out_dir / "retrain.png", test)
    return per_seed, summary
