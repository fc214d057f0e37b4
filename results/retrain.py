"""Retrain the best searched plans and the baselines with several fresh seeds; test once.

The search only ever saw validation accuracy; this is where the held-out test set is used,
once per (plan, seed), so the comparison with the baselines is honest:
- seeds are **fresh**: by default the first integers the search never trained with (its
  reward and final seeds, read from the run folder);
- every plan trains on the same seeds, and each is compared in pairs with the best baseline
  on test (hand-set or tuned; ``controller.stats.paired``: Student's t at n - 1 df);
- a plan is trained once even when it appears under two names (a searched plan that is a
  baseline);
- where several plans are compared with the best baseline, the words "better" and "worse"
  follow Holm's correction over those comparisons (``controller.stats.holm``): the family-wise
  error stays at 5% however many plans are retrained.

The trainings run on Ray (``results.retrain_ray``: every core of a laptop, or a cluster) and
each finished one is appended to OUT/retrain_trials.csv (``results.retrain_ledger``), so an
interrupted retrain resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from controller import run_folder as rf
from controller.final import LEARNED, SEARCHED, TUNED_PREFIX
from controller.run_folder import Objective
from search_space.baselines import BASELINES, baseline_plans
from search_space.errors import user_error
from search_space.plan import plan_key

from .learned import learned_rates_plan
from .plots import plot_retrain
from .retrain_ledger import RetrainLedger, disk_full, folder_lock, plan_hash, recipe_of
from .retrain_ray import Job, RayOptions, RetrainIncomplete, run_jobs
from .retrain_summary import holm_word, summarize_retrain, test_metric
from .run import Run
from .tables import ranked

__all__ = [
    "RetrainConfig",
    "RayOptions",
    "RetrainIncomplete",
    "retrain",
    "retrain_plans",
    "summarize_retrain",
    "holm_word",
    "test_metric",
    "plan_at_rank",
    "search_seeds",
    "fresh_seeds",
]

log = logging.getLogger(__name__)


@dataclass
class RetrainConfig:
    """What to retrain and how. ``train_size``: "full" (whole training split), "search" (the
    subset the search used) or a number of images. ``epochs`` None = the search's epochs;
    ``num_threads`` None = a training's CPUs (``RayOptions.cpus_per_trial``). Where the
    trainings run is ``RayOptions``."""

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


def retrain(
    run: Run, cfg: RetrainConfig, out_dir: Path, options: RayOptions | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train every plan with every seed on Ray; write retrain.csv, retrain_summary.csv,
    retrain.png and plans/ once all have finished.

    Trainings already in OUT/retrain_trials.csv (same plan, seed and recipe) are not trained
    again; a recipe other than the folder's is refused (``results.retrain_ledger``). Raises
    ``RetrainIncomplete`` when some did not finish. Returns (one row per plan and seed, the
    per-plan summary). ``options``: where to train (default: a local Ray, 1 CPU a training).
    """
    from dataclasses import replace

    from child_trainer.train import TrainConfig, resolve_device
    from child_trainer.trial import ChildTrain

    options = options or RayOptions()
    if cfg.num_threads is None:  # as the search: a trial's torch threads are its CPUs
        cfg = replace(cfg, num_threads=max(1, int(options.cpus_per_trial)))
    o = run.objective
    test, val = test_metric(o), o.metric
    seeds, reused = retrain_seeds(run, cfg)
    train = _train_config(run, cfg, seeds[0])
    if options.address is None:  # a cluster's nodes may have what this machine lacks
        resolve_device(TrainConfig.from_dict(train).device)  # bad flags fail here
    plans = retrain_plans(run, cfg)
    if reused:
        log.warning("seeds %s were used by the search: those trainings are not fresh", reused)
    else:
        log.info("fresh seeds (never used by the search): %s", seeds)
    child = run.args.get("child") or None
    keys = {label: plan_hash(plan) for label, plan in plans.items()}
    total = len(plans) * len(seeds)
    with folder_lock(out_dir):
        ledger = RetrainLedger(out_dir, o, recipe_of(train, child))
        with disk_full(out_dir):
            finished = ledger.open()
            for label, plan in plans.items():
                plan.save(out_dir / "plans" / f"{label.replace('#', '_')}.json")
        jobs = [
            Job(label, _kind(label), seed, keys[label], plan.to_dict())
            for label, plan in plans.items()
            for seed in seeds
            if (keys[label], seed) not in finished
        ]
        if total > len(jobs):
            log.info("%d of %d trainings are in %s already: not trained again", total - len(jobs), total, ledger.path)
        done = [total - len(jobs)]

        def record(job: Job, result: dict[str, Any]) -> None:
            row = {
                "plan_hash": job.plan_hash,
                "seed": job.seed,
                "plan": job.label,
                "kind": job.kind,
                "train_size": train.get("train_size"),
                "plan_json": json.dumps(job.plan, sort_keys=True),
                **{k: result.get(k) for k in ("status", test, val, "epochs", "seconds", "message", "node", "task_id")},
            }
            with disk_full(out_dir):
                ledger.append(row)
            finished[(job.plan_hash, job.seed)] = row
            done[0] += 1
            log.info(
                "retrain [%d/%d] %s seed %d: %s %s=%.4f (%.1f s)",
                done[0],
                total,
                job.label,
                job.seed,
                row["status"],
                test,
                rf.as_float(row[test]),
                rf.as_float(row["seconds"]),
            )

        train_fn = ChildTrain({**train, "eval_test": True}, child, paths=[str(Path.cwd())])
        outcome = run_jobs(jobs, train_fn, o, record, options)
        recorded = sum((keys[label], seed) in finished for label in plans for seed in seeds)
        if recorded < total:
            raise RetrainIncomplete(recorded, total, outcome.errors, outcome.interrupted, ledger.path)
        per_seed = _per_seed(plans, keys, seeds, reused, finished, train, o)
        summary = summarize_retrain(per_seed, o)
        with disk_full(out_dir):
            rf.atomic_write_text(out_dir / rf.RETRAIN, per_seed.to_csv(index=False))
            rf.atomic_write_text(out_dir / rf.RETRAIN_SUMMARY, summary.to_csv(index=False))
            plot_retrain(summary, out_dir / rf.RETRAIN_PLOT, test)
    return per_seed, summary


def _per_seed(
    plans: dict[str, Any],
    keys: dict[str, str],
    seeds: list[int],
    reused: list[int],
    finished: dict[tuple[str, int], dict[str, Any]],
    train: dict[str, Any],
    o: Objective,
) -> pd.DataFrame:
    """retrain.csv: one row per plan and seed, in the order of the plans, then of the seeds."""
    test, val = test_metric(o), o.metric
    rows = []
    for label, plan in plans.items():
        for seed in seeds:
            r = finished[(keys[label], seed)]
            rows.append(
                {
                    "plan": label,
                    "kind": _kind(label),
                    "same_as": ",".join(plan.metadata.get("same_as", [])),
                    "fresh": seed not in reused,
                    "seed": seed,
                    "train_size": train.get("train_size"),
                    "status": r["status"],
                    test: rf.as_float(r.get(test)),
                    val: rf.as_float(r.get(val)),
                    "epochs": int(r.get("epochs") or 0),
                    "seconds": rf.as_float(r.get("seconds")),
                    "message": str(r.get("message") or ""),
                    "summary": plan.summary(),
                }
            )
    return pd.DataFrame(rows, columns=rf.retrain_columns(o))
