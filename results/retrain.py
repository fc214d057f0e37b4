"""Retrain the best searched plans and the hand-set baselines with several seeds; test once.

The search only ever saw validation accuracy; this is where the held-out test set is used,
once per (plan, seed), so the comparison with the baselines is honest. Every plan trains on
the same seeds (paired comparison) with the run's own training recipe.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .baselines import BASELINES, baseline_plans
from .masks import model_and_example
from .plots import plot_retrain
from .run import Run
from .tables import ranked

__all__ = ["RetrainConfig", "retrain", "retrain_plans", "summarize_retrain", "plan_at_rank"]

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
    seed_offset: int = 0
    device: str | None = None
    num_threads: int | None = None

    def __post_init__(self) -> None:
        if self.top < 0:
            raise ValueError(f"top: must be >= 0 (got {self.top})")
        if self.seeds < 1:
            raise ValueError(f"seeds: must be >= 1 (got {self.seeds})")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs: must be >= 1 (got {self.epochs})")
        if not (self.train_size in ("full", "search") or (isinstance(self.train_size, int) and self.train_size > 0)):
            raise ValueError(f"train_size: bad value {self.train_size!r}; allowed: full, search, or a positive integer")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ValueError(f"baselines: unknown {', '.join(unknown)}; allowed: {', '.join(BASELINES)}")


def plan_at_rank(run_or_df: Run | pd.DataFrame, rank: int = 1) -> Any:
    """The Plan of the trial ranked ``rank`` (1 = best validation accuracy), with its metadata."""
    from search_space import Plan

    df = run_or_df.trials if isinstance(run_or_df, Run) else run_or_df
    table = ranked(df)
    if not 1 <= rank <= len(table):
        raise ValueError(f"rank: must be in [1, {len(table)}] (the run has {len(table)} ranked trials; got {rank})")
    row = table.iloc[rank - 1]
    plan = Plan.from_json(str(row["plan_json"]))
    plan.metadata = {**plan.metadata, "val_acc": float(row["val_acc"]), "trial_id": str(row["trial_id"]),
                     "rank": int(rank), "run": str(row["run"]), "searcher": str(row["searcher"])}
    return plan


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

    The search's all-"none" reference trial is skipped even when it ranks first: the ``none``
    baseline already retrains it.
    """
    table = ranked(run.trials)
    searched = [int(r) for r, ref in zip(table["rank"], table["reference"]) if not ref][:cfg.top]
    if cfg.top and not searched:
        raise ValueError(f"top: the run has no finished searched trial to retrain ({run.path})")
    if len(searched) < cfg.top:
        log.warning("only %d searched plans finished; retraining those", len(searched))
    plans = {f"searched#{k}": plan_at_rank(run, rank) for k, rank in enumerate(searched, start=1)}
    if cfg.baselines:
        model, x, _, _ = model_and_example(run.train_config)
        plans.update(baseline_plans(model, run.sites, x, run.train_config.get("model", ""), cfg.baselines))
    if not plans:
        raise ValueError("nothing to retrain: top is 0 and no baselines were requested")
    return plans


def summarize_retrain(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean +- std (sample std over seeds) of test accuracy per plan, in the order plans were given."""
    order = list(dict.fromkeys(rows["plan"]))
    g = rows.groupby("plan", sort=False)
    out = pd.DataFrame({
        "seeds": g.size(), "ok": g["status"].apply(lambda s: int((s == "ok").sum())),
        "test_acc_mean": g["test_acc"].mean(), "test_acc_std": g["test_acc"].std(ddof=1),
        "val_acc_mean": g["val_acc"].mean(), "summary": g["summary"].first()}).reindex(order)
    out = out.reset_index().rename(columns={"index": "plan"})
    out.insert(1, "test_acc", [f"{m:.4f} +- {s:.4f}" if not np.isnan(s) else f"{m:.4f}"
                               for m, s in zip(out["test_acc_mean"], out["test_acc_std"])])
    return out


def retrain(run: Run, cfg: RetrainConfig, out_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train every plan with every seed; write retrain.csv, retrain_summary.csv, retrain.png, plans/.

    Returns (one row per plan and seed, the per-plan summary).
    """
    from child_trainer import train_child

    plans = retrain_plans(run, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    for label, plan in plans.items():
        plan.save(out_dir / "plans" / f"{label.replace('#', '_')}.json")
    rows = []
    seeds = [cfg.seed_offset + i for i in range(cfg.seeds)]
    for label, plan in plans.items():
        for seed in seeds:
            train = _train_config(run, cfg, seed)
            result = train_child(train, plan)
            rows.append({"plan": label, "seed": seed, "train_size": train.get("train_size"), "status": result["status"],
                         "test_acc": result.get("test_acc", float("nan")), "val_acc": result["val_acc"],
                         "epochs": result["epochs"], "seconds": result["seconds"], "message": result["message"],
                         "summary": plan.summary()})
            log.info("retrain %s seed %d: %s test_acc=%.4f (%.1fs)", label, seed, result["status"],
                     rows[-1]["test_acc"], result["seconds"])
    per_seed = pd.DataFrame(rows)
    summary = summarize_retrain(per_seed)
    per_seed.to_csv(out_dir / "retrain.csv", index=False)
    summary.to_csv(out_dir / "retrain_summary.csv", index=False)
    plot_retrain(summary, out_dir / "retrain.png")
    return per_seed, summary
