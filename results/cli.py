"""``python -m results summarize|plot|export|retrain RUN_DIR``: the commands users run after a search.

Any unusable input (bad RUN_DIR, bad rank, unknown option value) ends with one line on
stderr and exit status 2, like argparse's own usage errors. A retrain that did not finish
says so in one line, with exit status 130 (Ctrl+C, SIGTERM) or 1 (trainings that ended
without a result); run the same command again to finish it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.final import LEARNED
from search_space.errors import (
    SEED_MAX,
    FieldError,
    OneLineParser,
    UserError,
    check_number,
    choice_of,
    typed,
    user_error,
)

from .learned import learned_rates_table, learned_value
from .retrain_ray import RetrainIncomplete
from .run import Run, RunError, combined_trials, open_run, open_runs
from .tables import (
    FORMATS,
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

__all__ = ["main", "build_parser"]

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


def _train_size(text: str) -> str | int:
    if text in ("full", "search"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad value {text!r}; allowed: full, search, or a positive integer") from None


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
        runtime_env=_runtime_env(args.address, out),
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


def _runtime_env(address: str | None, out: Path) -> dict[str, Any] | None:
    """On a cluster the code travels as the job's working_dir, as launch_search.py ships it."""
    from launch_search import _runtime_env as ship

    return ship(address, out.resolve())


PROG = "python -m results"
EXIT_INTERRUPTED = 130  # as launch_search.py: Ctrl+C or SIGTERM; the same command goes on


def _writable_dir(flag: str, text: str | None) -> Path | None:
    """--out of plot/retrain: a folder that exists or can be created, and is writable."""
    from search_space.files import writable_folder

    if text is None:
        return None
    writable_folder(flag, text)
    return Path(text)


def _writable_file(flag: str, text: str) -> Path:
    """--out of export: a file path whose folder exists or can be created."""
    if text == "" or text.endswith(("/", os.sep)):
        raise user_error(flag, text, "a file path such as plan.json")
    path = Path(text)
    if path.is_dir():
        raise user_error(flag, text, "a file path such as plan.json", detail=f"bad value {text!r} (a folder)")
    _writable_dir(flag, str(path.parent) if str(path.parent) else ".")
    return path


def _int_in(flag: str, value: int, low: int, high: int | None = None) -> int:
    check_number(flag, value, low, high, integer=True)
    return value


def build_parser() -> argparse.ArgumentParser:
    from search_space.baselines import BASELINES

    p = OneLineParser(
        prog=PROG,
        description="Tables, figures, plan export and retraining against baselines "
        "for a search run written by launch_search.py.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    p.commands = {}  # name -> its parser (whose .flags name its settings)

    def add(name: str, help_: str, many: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        p.commands[name] = sp
        sp.add_argument(
            "run_dir",
            nargs="+" if many else None,
            metavar="RUN_DIR",
            help="STORAGE/NAME written by launch_search.py" + (" (several to compare searches)" if many else ""),
        )
        sp.add_argument(
            "--allow-running",
            action="store_true",
            help="read a run whose run_state.json still says running (its process died)",
        )
        return sp

    s = add("summarize", "tables: top plans, methods per site, searcher comparison, failures, compute", many=True)
    s.add_argument("--top", type=typed(int), default=5, help="number of best plans to list (default 5)")
    s.add_argument("--format", type=choice_of(FORMATS), default="text", help=f"{', '.join(FORMATS)} (default text)")
    s.set_defaults(func=cmd_summarize)
    pl = add("plot", "PNG figures: rewards, controller entropy, method heatmap, masks of the best plan", many=True)
    pl.add_argument("--out", help="output folder (default RUN_DIR/results)")
    pl.add_argument("--seed", type=typed(int), default=0, help="seed of the example masks")
    pl.set_defaults(func=cmd_plot)
    e = add("export", "write the plan of a ranked trial as a loadable Plan JSON")
    e.add_argument("--out", required=True, help="plan file to write, e.g. plan.json")
    e.add_argument("--rank", type=typed(int), default=1, help="1 = best validation accuracy (default)")
    e.set_defaults(func=cmd_export)
    r = add("retrain", "retrain top plans and baselines with several seeds; test once")
    r.add_argument("--top", type=typed(int), default=1, help="number of best searched plans (default 1)")
    r.add_argument("--seeds", type=typed(int), default=3, help="seeds per plan (default 3)")
    r.add_argument("--epochs", type=typed(int), default=None, help="epochs (default: the search's)")
    r.add_argument(
        "--train-size",
        type=_train_size,
        default="full",
        help="full (whole training split, default), search (the search's subset) or N images",
    )
    r.add_argument(
        "--baselines",
        nargs="*",
        default=list(BASELINES),
        type=choice_of(BASELINES),
        help=f"baselines to include (default all: {' '.join(BASELINES)})",
    )
    r.add_argument(
        "--seed-offset",
        type=typed(int),
        default=None,
        help="first seed, seeds offset..offset+S-1 (default: the first S seeds the search never used)",
    )
    r.add_argument("--no-tuned", action="store_true", help="leave out the search's tuned global recipes")
    r.add_argument("--no-learned", action="store_true", help="leave out the search's learned-rates plan")
    r.add_argument("--device", default=None, help="override the run's device (cpu, cuda, auto)")
    r.add_argument(
        "--num-threads", type=typed(int), default=None, help="torch CPU threads per training (default: its CPUs)"
    )
    r.add_argument("--address", default=None, help="join a running Ray cluster (host:port or auto); default: local Ray")
    r.add_argument(
        "--cpus-per-trial", type=typed(float), default=1.0, help="CPUs per training, also its torch threads (default 1)"
    )
    r.add_argument(
        "--gpus-per-trial",
        type=typed(float),
        default=None,
        help="fractional allowed, e.g. 0.25 (default 0.25 if the cluster has GPUs, else 0)",
    )
    r.add_argument("--out", help="output folder (default RUN_DIR/results)")
    r.set_defaults(func=cmd_retrain)
    return p


def _check(args: argparse.Namespace) -> None:
    """Every flag, before any file is read or written."""
    if args.command == "summarize":
        _int_in("--top", args.top, 1)
    elif args.command == "plot":
        _int_in("--seed", args.seed, 0, SEED_MAX)
        _writable_dir("--out", args.out)
    elif args.command == "export":
        _int_in("--rank", args.rank, 1)
        _writable_file("--out", args.out)
    elif args.command == "retrain":
        _int_in("--top", args.top, 0)
        _int_in("--seeds", args.seeds, 1, 1000)
        if args.seed_offset is not None:
            _int_in("--seed-offset", args.seed_offset, 0, SEED_MAX - 1000)
        if args.epochs is not None:
            _int_in("--epochs", args.epochs, 1)
        if args.num_threads is not None:
            _int_in("--num-threads", args.num_threads, 1, 1024)
        if args.device is not None and not (
            args.device in ("auto", "cpu", "cuda") or (args.device.startswith("cuda:") and args.device[5:].isdigit())
        ):
            raise user_error("--device", args.device, "auto, cpu, cuda, cuda:N")
        _check_ray_flags(args)
        _writable_dir("--out", args.out)


def _check_ray_flags(args: argparse.Namespace) -> None:
    """--address, --cpus-per-trial and --gpus-per-trial as the search checks them, before Ray starts."""
    from controller.checks import _check_local_cpus, check_address, check_resources

    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    check_resources(resources)
    check_address(args.address)
    if args.address is None:
        _check_local_cpus(resources)
        if (args.gpus_per_trial or 0) > 0:
            import torch

            if not torch.cuda.is_available():  # on a cluster the nodes may have what this machine lacks
                raise user_error(
                    "--gpus-per-trial",
                    detail=f"bad value {args.gpus_per_trial:g}; allowed here: 0 (this machine has no GPU; "
                    "use --address to join a GPU cluster)",
                )


def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 on success, 2 (one line on stderr) on unusable input; for retrain also
    130 when interrupted and 1 when trainings ended without a result (the same command goes on)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check(args)
        return int(args.func(args))
    except FieldError as exc:  # a setting named by its flag where the command has one
        flag = "--" + exc.field.replace("_", "-")
        msg = str(exc.renamed(flag) if flag in parser.commands[args.command].flags else exc)
        print(f"{PROG}: error: {' '.join(msg.split())}", file=sys.stderr)
        return 2
    except (UserError, ValueError) as exc:  # ValueError: results/retrain.py's own checks, for now
        msg = " ".join(str(exc).split())
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; what finished is kept: run the same command again to go on", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RetrainIncomplete as exc:
        print(f"{PROG}: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_INTERRUPTED if exc.interrupted else 1
