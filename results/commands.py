"""What each ``python -m results`` command does once its flags are checked: summarize,
plot, export and retrain a run folder, printing what a user reads.

The flags and their checks are ``results.cli_args``; exit statuses are ``results.cli``'s.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.final import LEARNED
from controller.ray_session import code_runtime_env
from search_space.errors import user_error

from .learned import learned_rates_table, learned_value
from .run import Run, RunError, combined_trials, open_run, open_runs
from .tables import (
    compute_cost,
    failed_trials,
    final_table,
    method_share_table,
    method_stats,
    ranked,
    render,
    searcher_comparison,
    top_plans,
)

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger("results")


def _header(runs: list[Run]) -> str:
    parts = []
    for r in runs:
        st = r.state
        space = r.config.get("space") if isinstance(r.config.get("space"), dict) else {}
        model = r.train_config.get("model") or space.get("model")  # an API run: its model_name
        data = r.train_config.get("dataset")
        what = f", model {model}" + (f" on {data}" if data else "") if model else ""
        parts.append(
            f"{r.path}: {r.searcher} search, {r.status}, {len(r.trials)} trials finished "
            f"(run_state: {st.get('completed', '?')}/{st.get('num_samples', '?')}){what}"
        )
        exported = st.get("exported") or {}
        if exported:
            kind = {"searched": "a searched plan", "baseline": "the hand-set baseline", "tuned": "the tuned baseline"}
            if exported.get("label") == LEARNED:
                kind["baseline"] = "the baseline"
            parts.append(
                f"  best_plan.json holds {kind.get(exported.get('kind'), exported.get('kind'))} "
                f"{exported.get('label', '')} (chosen by the {exported.get('selected_by', '?')} stage)"
            )
    return "\n".join(parts)


def _need_trials(runs: list[Run]) -> None:
    if not any(len(r.trials) for r in runs):
        raise user_error(
            detail=f"no finished trials yet in {', '.join(str(r.path) for r in runs)} (trials.csv empty or missing)",
            hint="wait for the search to finish a trial, or resume it with launch_search.py --resume",
            cls=RunError,
        )


def cmd_summarize(args: argparse.Namespace) -> int:
    runs = open_runs(args.run_dir, args.allow_running)
    _need_trials(runs)
    df = combined_trials(runs)
    stats = method_stats(df)
    groups = sorted(df["group"].unique())
    compare_title = "controller vs random" if {"controller", "random"} <= set(df["searcher"]) else "by searcher"
    o = runs[0].objective
    tables = [
        (
            f"top {args.top} plans (by {o.metric}, {'highest' if o.mode == 'max' else 'lowest'} first; "
            "+- se over the reward seeds)",
            top_plans(df, args.top),
        )
    ]
    for run in runs:
        table = final_table(run)
        if len(table):
            title = "final re-training" + (f" of {run.name}" if len(runs) > 1 else "")
            what = (
                "a race on shared seeds, then a confirmation on seeds the race never used: paired difference "
                "from the best baseline, 95% interval by Student's t at n - 1 df, Holm over the plans confirmed"
                if "left the race" in table.columns
                else "fresh seeds, validation split; paired difference from the best baseline, "
                "95% interval by Student's t at n - 1 df"
            )
            tables.append((f"{title} ({what}, positive = better)", table))
    for run in runs:
        table = learned_rates_table(run)
        if len(table):
            title = "learned rate per site" + (f" of {run.name}" if len(runs) > 1 else "")
            value = f"{o.metric} {learned_value(run):.4f}" if learned_value(run) is not None else ""
            tables.append((f"{title} (one training with Concrete Dropout: {value}; mean over the reward seeds), "
                           "the learned-rates plan they make, and the searched plan", table))  # fmt: skip
    tables += [
        ("methods per site: count, share, mean reward when chosen", stats)
        if args.format == "csv"
        else (
            "methods per site (cell = share of trials choosing it / mean reward when chosen)",
            method_share_table(stats),
        ),
        (f"{compare_title} ({', '.join(groups)}; quarters in completion order)", searcher_comparison(df)),
        ("failed or diverged trials", failed_trials(df)),
        ("compute (trial seconds x resources per trial)", compute_cost(runs)),
    ]
    if args.format != "csv":
        print(_header(runs) + "\n")
    sys.stdout.write(render(tables, args.format))
    return 0


def _best_regularizing_plan(runs: list[Run], df: "pd.DataFrame") -> tuple[Any, Run | None]:
    """The best-ranked plan that regularizes at least one site (the 'none' baseline does not)."""
    from search_space import Plan

    from .retrain import plan_at_rank

    table = ranked(df)
    for rank, text in zip(table["rank"], table["plan_json"]):
        if any(spec.method != "none" for spec in Plan.from_json(str(text)).sites.values()):
            plan = plan_at_rank(df, int(rank))
            run = next(r for r in runs if r.trials["run"].eq(plan.metadata["run"]).any())
            return plan, run
    return None, None


def cmd_plot(args: argparse.Namespace) -> int:
    from .masks import plot_masks
    from .plots import plot_controller, plot_method_heatmap, plot_rewards

    runs = open_runs(args.run_dir, args.allow_running)
    _need_trials(runs)
    df = combined_trials(runs)
    out = Path(args.out) if args.out else runs[0].path / "results"
    sites = list(dict.fromkeys(s for r in runs for s in r.sites))
    controller_df = df[df["searcher"] == "controller"]
    written = [
        plot_rewards(df, out / "reward.png"),
        plot_controller(runs, out / "controller.png"),
        plot_method_heatmap(controller_df if len(controller_df) else df, sites, out / "methods_heatmap.png"),
    ]
    plan, run = _best_regularizing_plan(runs, df)
    if plan is None:
        log.warning("no finished trial regularizes any site: no masks.png")
    elif not run.train_config:  # a run_search() of the user's own model: we cannot rebuild it
        log.warning("%s searched a model of its own (no TrainConfig saved): no masks.png", run.path)
    else:
        written.append(plot_masks(plan, run.train_config, out / "masks.png", seed=args.seed))
    for path in written:
        if path is not None:
            print(path)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .retrain import plan_at_rank

    run = open_run(args.run_dir, args.allow_running)
    _need_trials([run])
    plan = plan_at_rank(run, args.rank)
    out = Path(args.out)
    plan.save(out)
    metric, meta = run.objective.metric, plan.metadata
    kind = {"searched": "a searched plan", "baseline": "a hand-set baseline", "tuned": "a tuned baseline"}
    value = meta.get(metric)
    print(
        f"wrote {out}: rank {args.rank}, {kind.get(meta.get('kind'), 'a plan')}"
        + (f" {meta['label']}" if meta.get("label") else (f" {meta['baseline']}" if meta.get("baseline") else ""))
        + (f", {metric} {value:.4f}" if isinstance(value, float) else "")
        + f", trial {meta['trial_id']}"
        + (
            ", from the final re-training"
            if meta.get("selected_by") == "final"
            else " (unproven: the run has no complete final stage, so this is its best single search-stage value)"
        )
    )
    print(plan.summary())
    return 0


def _retrain_table(summary: "pd.DataFrame", test: str) -> "pd.DataFrame":
    """The printed retrain table: mean +- se, the paired interval against the best baseline, words."""
    import math

    def interval(low: float, high: float) -> str:
        return f"[{low:+.4f}, {high:+.4f}]" if math.isfinite(low) and math.isfinite(high) else ""

    table = summary[["plan", "kind", test, "seeds", "ok"]].copy()
    table["vs best baseline (95%)"] = [
        interval(lo, hi) for lo, hi in zip(summary["diff_ci95_low"], summary["diff_ci95_high"])
    ]
    table["p"] = [f"{p:.3g}" if math.isfinite(p) else "" for p in summary["p_value"]]
    table["verdict"] = summary["comparison"]
    table["summary"] = summary["summary"]
    return table


def cmd_retrain(args: argparse.Namespace) -> int:
    from .retrain import RayOptions, RetrainConfig, retrain, test_metric

    run = open_run(args.run_dir, args.allow_running)
    _need_trials([run])
    if not run.train_config:
        raise user_error(
            "RUN_DIR",
            str(run.path),
            "a run of our built-in children (launch_search.py)",
            detail=f"bad value {str(run.path)!r} (it searched a model of its own)",
            hint="retrain a run_search() of your own model with your own train_fn",
        )
    cfg = RetrainConfig(
        top=args.top,
        seeds=args.seeds,
        epochs=args.epochs,
        train_size=args.train_size,
        baselines=tuple(args.baselines),
        seed_offset=args.seed_offset,
        tuned=not args.no_tuned,
        learned=not args.no_learned,
        device=args.device,
        num_threads=args.num_threads,
    )
    out = Path(args.out) if args.out else run.path / "results"
    log.setLevel(logging.INFO)
    options = RayOptions(
        address=args.address,
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=args.gpus_per_trial,
        runtime_env=code_runtime_env(args.address, out),
    )
    per_seed, summary = retrain(run, cfg, out, options)
    test = test_metric(run.objective)
    seeds = sorted(set(int(s) for s in per_seed["seed"]))
    fresh = bool(per_seed["fresh"].all())
    print(
        render(
            [(f"retrained plans: {test} mean +- standard error over {cfg.seeds} seeds", _retrain_table(summary, test))],
            "text",
        )
    )
    print(
        f"seeds {seeds}: "
        + (
            "fresh (the search never trained with them)"
            if fresh
            else "NOT all fresh: the search trained with some of them"
        )
    )
    best = str(summary["best_baseline"].iloc[0]) if len(summary) else ""
    if best:
        print(
            f"intervals: paired 95% (Student's t, n - 1 df) of each plan's difference from {best}, "
            "the best baseline on test; positive = better"
        )
        print(_holm_line(summary, best))
    print(f"wrote {out / 'retrain.csv'}, {out / 'retrain_summary.csv'}, {out / 'retrain.png'}")
    return 0


def _holm_line(summary: "pd.DataFrame", best: str) -> str:
    """What the verdicts mean: Holm-corrected over the comparisons made, and which words it changed."""
    compared = summary[summary["holm_family"] > 0]
    m = len(compared)
    if m <= 1:
        return "verdict: one comparison, at 5% (nothing to correct for)"
    changed = [
        f"{p} ({a} -> {b})"
        for p, a, b in zip(compared["plan"], compared["comparison_uncorrected"], compared["comparison"])
        if a != b
    ]
    return (
        f"verdicts: Holm-corrected over the {m} comparisons with {best} (family-wise 5%); the intervals and p "
        "are each comparison's own" + (f"; the correction changed {', '.join(changed)}" if changed else "")
    )
