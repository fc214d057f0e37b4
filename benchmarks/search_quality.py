"""Does a search earn its compute, and from which budget? The budget curve (issues 19 and 25).

    python benchmarks/search_quality.py --out runs/curve                  # the planted problems (minutes)
    python benchmarks/search_quality.py --out runs/curve --problems digits200,mnist1d   # hours
    python benchmarks/search_quality.py --out runs/curve --problems digits200 --budgets 16 \\
        --searchers controller --epochs digits200=2 --test-seeds 2         # a smoke run
    python benchmarks/search_quality.py --out runs/curve --report-only    # tables from what is there

For every problem, budget (search trainings: ``num_samples``, tuned global recipes included)
and searcher (controller, random, TPE), ``--repeats`` whole searches with search seeds
``seed + 100 * repeat``, each with the hand-set baselines and the same final stage, each a run
folder ``OUT/runs/PROBLEM/SEARCHER-bBUDGET-rREPEAT`` (a finished one is reused, an
interrupted one resumed). Then each search's EXPORTED plan (best_plan.json) is judged:

- planted problems (``tests/helpers/planted.py``: nothing trains, the answer is known) by its
  TRUE value, beside the best one-method-at-every-site recipe's, ``none``'s, the hand-set
  baselines' and the tuned recipes the search found; intervals over the repeats;
- trained problems (digits with 200 images, MNIST-1D, ...) by retraining it on
  ``--test-seeds`` fresh seeds (``TEST_SEED_OFFSET`` above the search seed, never used by a
  search) and testing once, beside ``none``, the hand-set and the tuned global baselines of the
  same budget and repeat (``results.retrain.retrain``, into ``OUT/retrain/...``; a finished
  retraining is reused); each compared in pairs with the best tuned global baseline.

Written to OUT: ``numbers.csv`` (every number: one row per plan and test seed, or per plan's
true value), ``curve.csv`` and ``curve.md`` (the table) and ``curve.png`` (budget against the
test metric, the tuned global line, 95% intervals). A problem is one entry of ``PROBLEMS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _machine import cpu_model  # noqa: E402 (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("search_quality")

SEARCHERS = ("controller", "random", "tpe")
REPEAT_STRIDE = 100  # search seed of repeat r: seed + 100 r (its final seeds sit 1000 above)
TEST_SEED_OFFSET = 50_000  # test seeds: search seed + 50,000 + i, above every seed a search uses


@dataclass(frozen=True)
class Problem:
    """One row of the curve: a planted task (``planted``: PlantedTask settings) or a problem
    trained by ``launch_search.py`` with ``flags``; ``needs``: a child_trainer dataset it
    requires (the problem is skipped, saying so, until it exists)."""

    name: str
    flags: tuple[str, ...] = ()
    planted: dict[str, Any] | None = None
    budgets: tuple[int, ...] = (16, 48, 144)
    repeats: int = 1
    test_seeds: int = 10
    epochs: int | None = None  # None: launch_search.py's recipe for the dataset
    needs: str = ""
    note: str = ""


PROBLEMS: dict[str, Problem] = {
    p.name: p
    for p in (
        Problem("planted-1", planted={"margin": 0.01}, repeats=5, note="best plan 1 point above every global recipe"),
        Problem("planted-2.5", planted={"margin": 0.025}, repeats=5, note="2.5 points above"),
        Problem("planted-null", planted={"null": True}, repeats=10, note="every plan equal"),
        # launch_search.py's DIGITS_DEFAULTS: 200 training images, 150 epochs
        Problem("digits200", flags=("--dataset", "digits"), note="digits_cnn, 200 images, 150 epochs"),
        Problem(
            "mnist1d",
            flags=("--dataset", "mnist1d", "--model", "mnist1d_cnn"),
            needs="mnist1d",
            note="MNIST-1D, its 1-D CNN",
        ),
        Problem(
            "mnist1d-mlp", flags=("--dataset", "mnist1d", "--model", "mnist1d_mlp"), needs="mnist1d", note="its MLP"
        ),
        # issue 19's other two tasks, one budget each
        Problem("digits500", flags=("--dataset", "digits", "--train-size", "500"), epochs=60, budgets=(16,)),
        Problem(
            "lm",
            flags=("--model", "transformer_lm", "--dataset", "builtin_text"),
            epochs=20,
            budgets=(12,),
            test_seeds=5,
        ),
    )
}
DEFAULT_PROBLEMS = ("planted-1", "planted-2.5", "planted-null")


def run_name(searcher: str, budget: int, repeat: int) -> str:
    return f"{searcher}-b{budget}-r{repeat}"


def state(run: Path) -> dict[str, Any]:
    try:
        return json.loads((run / "run_state.json").read_text())
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------- searches
def search(problem: Problem, searcher: str, budget: int, repeat: int, args: argparse.Namespace) -> Path:
    """One whole search (a finished run folder is reused, an interrupted one resumed)."""
    storage = args.out / "runs" / problem.name
    name = run_name(searcher, budget, repeat)
    run = storage / name
    if state(run).get("status") == "finished":
        return run
    seed = args.seed + REPEAT_STRIDE * repeat
    start = time.time()
    if problem.planted is not None:
        from controller import run_search
        from tests.helpers.planted import PlantedTask

        task = PlantedTask(**problem.planted)
        how: dict[str, Any] = (
            {"resume": True}
            if run.exists()
            else {
                "num_samples": budget,
                "search": searcher,
                "seed": seed,
                **final_settings(args),
            }
        )
        status = run_search(**task.search_kwargs(), storage_path=storage, name=name, **how).status
    else:
        import launch_search

        epochs = args.epochs.get(problem.name, problem.epochs)
        flags = [
            *problem.flags,
            *(["--epochs", str(epochs)] if epochs else []),
            "--search", searcher,
            "--num-samples", str(budget),
            *(f for k, v in final_settings(args).items() for f in (f"--{k.replace('_', '-')}", str(v))),
            "--seed", str(seed),
        ]  # fmt: skip
        if run.exists():
            flags = ["--resume"]
        rc = launch_search.main([*flags, "--storage-path", str(storage), "--name", name])
        status = "finished" if rc == 0 else f"exit code {rc}"
    log.info("[%s] %s: %s after %.0f s", problem.name, name, status, time.time() - start)
    if state(run).get("status") != "finished":
        raise SystemExit(f"search {run} did not finish ({status}); run the same command again to resume it")
    return run


def final_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The final-stage settings given on the command line (the product's defaults otherwise)."""
    given = {"final_top_k": args.final_top_k, "final_stage": args.final_stage, "final_budget": args.final_budget}
    return {k: v for k, v in given.items() if v is not None}


# ----------------------------------------------------------------------------- judging
def role_of(label: str, baselines: Any = ()) -> str:
    """none, hand-set, tuned, learned (the learned-rates plan) or searched (a final-stage or
    retraining label)."""
    if label == "none":
        return "none"
    if label == "learned-rates":
        return "learned"
    if label.startswith("tuned-"):
        return "tuned"
    return "hand-set" if label in baselines or label in ("dropout", "dropblock", "disout") else "searched"


def judge_planted(problem: Problem, searcher: str, budget: int, repeat: int, run: Path) -> list[dict[str, Any]]:
    """Rows of numbers.csv for one planted search: true values of its exported plan, of the
    baselines and tuned recipes it trained, of the best global recipe and the best plan, and of
    the best plan it sampled (did the search find one, whatever it exported?)."""
    import pandas as pd

    from search_space import Plan
    from tests.helpers.planted import PlantedTask

    task = PlantedTask(**problem.planted)
    best_global = task.best_global_value
    base = {"problem": problem.name, "budget": budget, "repeat": repeat, "searcher": searcher, "seed": ""}
    base["metric"] = "true " + task.metric
    rows = []

    def add(role: str, label: str, plan: Any, **more: Any) -> None:
        value = task.true_value(plan)
        rows.append({**base, "role": role, "label": label, "value": value, "summary": plan.summary(), **more})

    exported = Plan.load(run / "best_plan.json")
    info = state(run).get("exported") or {}
    add(
        "exported",
        str(info.get("label", "?")),
        exported,
        exported_kind=info.get("kind", "?"),
        exported_label=info.get("label", "?"),
        seconds=state(run).get("seconds_this_session"),
        beats_global=task.beats_global(exported),
    )
    final = pd.read_csv(run / "final.csv", keep_default_na=True)
    for label, text in zip(final["label"], final["plan_json"]):
        role = role_of(str(label))
        if role != "searched":
            add(role, str(label), Plan.from_json(str(text)))
    trials = pd.read_csv(run / "trials.csv", keep_default_na=True)
    sampled = [Plan.from_json(str(t)) for t, b in zip(trials["plan_json"], trials["baseline"].fillna("")) if not b]
    if sampled:
        found = max(sampled, key=task.true_value)
        add("found", "best sampled (true value)", found, beats_global=task.beats_global(found))
    add("best-global", "best global recipe", max(task.global_recipes().values(), key=lambda pv: pv[1])[0])
    add("best-plan", "best plan", task.best_plan())
    for r in rows:
        r.setdefault("beats_global", r["value"] > best_global + 1e-12)
    return rows


def judge_trained(
    problem: Problem, budget: int, repeat: int, runs: dict[str, Path], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Retrain on fresh seeds ``none``, the hand-set and tuned baselines (once per budget and
    repeat, from the first search: the searches of one point train the same baselines) and
    each search's exported plan unless it is one of those (``results.retrain``, into
    ``OUT/retrain/PROBLEM/bBUDGET-rREPEAT/{baselines,SEARCHER}``); rows of numbers.csv."""
    from results import open_run
    from results.retrain import RetrainConfig, test_metric
    from search_space import Plan
    from search_space.plan import plan_key

    n = args.test_seeds.get(problem.name, problem.test_seeds)
    offset = args.seed + REPEAT_STRIDE * repeat + TEST_SEED_OFFSET
    where = args.out / "retrain" / problem.name / f"b{budget}-r{repeat}"
    trained: dict[str, tuple[str, str, dict[int, float]]] = {}  # plan key -> (label, role, seed -> value)
    rows: list[dict[str, Any]] = []
    first = open_run(next(iter(runs.values())))
    metric = test_metric(first.objective)
    common = {"seeds": n, "train_size": "search", "seed_offset": offset, "num_threads": 1}
    names = tuple(first.config.get("baselines") or ())
    _retrain(first, RetrainConfig(top=0, baselines=names, tuned=True, **common), where / "baselines", "", trained)
    for searcher, path in runs.items():
        run = open_run(path)
        exported = plan_key(Plan.load(path / "best_plan.json"))
        if exported not in trained:  # a searched plan, or a tuned recipe other than the first search's
            final = run.final
            searched = final[final["kind"] == "searched"].sort_values("mean", ascending=run.objective.mode == "min")
            keys = [plan_key(Plan.from_json(str(t))) for t in searched["plan_json"]]
            top = keys.index(exported) + 1 if exported in keys else 0
            cfg = RetrainConfig(top=top, baselines=(), tuned=not top, learned=False, **common)
            _retrain(run, cfg, where / searcher, searcher, trained, only=exported)
        if exported not in trained:
            raise SystemExit(f"{path}: its exported plan was not retrained (best_plan.json matches no plan)")
        label, _, values = trained[exported]
        info = state(path).get("exported") or {}
        for seed, value in sorted(values.items()):
            rows.append(_trained_row(problem, budget, repeat, searcher, "exported", label, seed, value, metric))
            rows[-1].update(
                exported_kind=info.get("kind", "?"),
                exported_label=info.get("label", "?"),
                seconds=state(path).get("seconds_this_session"),
            )
    for label, role, values in trained.values():
        if role != "searched":
            for seed, value in sorted(values.items()):
                rows.append(_trained_row(problem, budget, repeat, "", role, label, seed, value, metric))
    return rows


def _retrain(run: Any, cfg: Any, dest: Path, searcher: str, trained: dict, only: str | None = None) -> None:
    """``results.retrain.retrain`` into ``dest`` unless it finished there before; every plan it
    trained lands in ``trained`` (plan key -> label, role, seed -> test value), or only the
    plan ``only`` (a plan key)."""
    import pandas as pd

    from results.retrain import retrain, test_metric
    from search_space import Plan
    from search_space.plan import plan_key

    done = dest / "retrain.csv"
    if not done.is_file():
        log.info("[%s] retraining into %s: %s", run.name, dest, cfg)
        retrain(run, cfg, dest)
    metric = test_metric(run.objective)
    per_seed = pd.read_csv(done)
    some = Plan.load(next((dest / "plans").glob("*.json")))
    none_key = plan_key(Plan.none(list(some.sites), model=some.model))
    for label, part in per_seed.groupby("plan", sort=False):
        key = plan_key(Plan.load(dest / "plans" / f"{str(label).replace('#', '_')}.json"))
        if key in trained or (only is not None and key != only):
            continue
        ok = part[part["status"] == "ok"]
        role = role_of(str(label), cfg.baselines)
        if role != "none" and key == none_key:  # e.g. learned rates that round to 0 at every site
            role, label = "none", f"none (= {label})"
        name = f"{searcher} exported" if role == "searched" else f"{label} ({searcher})" if searcher else str(label)
        trained[key] = (name, role, {int(s): float(v) for s, v in zip(ok["seed"], ok[metric])})


def _trained_row(problem: Problem, budget: int, repeat: int, searcher: str, role: str, label: str, seed: int,
                 value: float, metric: str) -> dict[str, Any]:  # fmt: skip
    return {"problem": problem.name, "budget": budget, "repeat": repeat, "searcher": searcher, "role": role,
            "label": label, "seed": seed, "value": value, "metric": metric}  # fmt: skip


# ----------------------------------------------------------------------------- command line
def _listed(text: str, kind: type, name: str) -> tuple[list[Any], dict[str, list[Any]]]:
    """``"16,48"`` (every problem) and/or ``"digits200=16,lm=12"`` (per problem)."""
    every: list[Any] = []
    per: dict[str, list[Any]] = {}
    for part in [p.strip() for p in str(text).split(",") if p.strip()]:
        problem, sep, value = part.rpartition("=")
        if sep and problem not in PROBLEMS:
            raise SystemExit(
                f"search_quality.py: error: {name}: bad problem {problem!r}; allowed: {', '.join(PROBLEMS)}"
            )
        try:
            (per.setdefault(problem, []) if sep else every).append(kind(value))
        except ValueError:
            raise SystemExit(f"search_quality.py: error: {name}: bad value {value!r}") from None
    return every, per


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "search_quality", help="folder of everything")
    p.add_argument(
        "--problems",
        "--tasks",
        default=",".join(DEFAULT_PROBLEMS),
        help="; ".join(f"{n}: {p.note or ' '.join(p.flags)}" for n, p in PROBLEMS.items()),
    )
    p.add_argument("--searchers", default=",".join(SEARCHERS))
    p.add_argument(
        "--budgets", "--num-samples", default="", help="16,48,144 and/or PROBLEM=N,... (default per problem)"
    )
    p.add_argument("--repeats", default="", help="whole searches per point: N and/or PROBLEM=N,...")
    p.add_argument("--test-seeds", "--seeds", default="", help="fresh retraining seeds: N and/or PROBLEM=N,...")
    p.add_argument("--epochs", default="", help="PROBLEM=N,... (default: the problem's recipe)")
    p.add_argument("--final-top-k", type=int, default=None, help="default: the product's")
    p.add_argument("--final-stage", choices=("race", "fixed"), default=None, help="default: the product's (race)")
    p.add_argument("--final-budget", default=None, help="default: the product's (auto)")
    p.add_argument("--seed", type=int, default=0, help="search seed of repeat 0")
    p.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--report-only", action="store_true", help="tables and figure from OUT, no training")
    args = p.parse_args(argv)
    args.problems = [s.strip() for s in args.problems.split(",") if s.strip()]
    bad = [s for s in args.problems if s not in PROBLEMS]
    if bad:
        raise SystemExit(f"search_quality.py: error: --problems: bad value {bad[0]!r}; allowed: {', '.join(PROBLEMS)}")
    args.searchers = [s.strip() for s in args.searchers.split(",") if s.strip()]
    bad = [s for s in args.searchers if s not in SEARCHERS] or ([] if args.searchers else [""])
    if bad:
        raise SystemExit(
            f"search_quality.py: error: --searchers: bad value {bad[0]!r}; allowed: {', '.join(SEARCHERS)}"
        )
    budgets, per_budget = _listed(args.budgets, int, "--budgets")
    args.budgets = {n: per_budget.get(n) or budgets or list(PROBLEMS[n].budgets) for n in args.problems}
    repeats, per_repeats = _listed(args.repeats, int, "--repeats")
    args.repeats = {n: (per_repeats.get(n) or repeats or [PROBLEMS[n].repeats])[-1] for n in args.problems}
    seeds, per_seeds = _listed(args.test_seeds, int, "--test-seeds")
    args.test_seeds = {n: (per_seeds.get(n) or seeds or [PROBLEMS[n].test_seeds])[-1] for n in args.problems}
    _, per_epochs = _listed(args.epochs, int, "--epochs")
    args.epochs = {n: v[-1] for n, v in per_epochs.items()}
    return args


def available(problem: Problem) -> str:
    """'' when the problem can run in this checkout, else why not."""
    if problem.needs:
        from child_trainer.data import DATASETS

        if problem.needs not in DATASETS:
            return f"child_trainer has no dataset {problem.needs!r} yet (datasets: {', '.join(DATASETS)})"
    return ""


def main(argv: list[str] | None = None) -> int:
    import quality_report

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)  # this script's lines; the searches' own stay quiet (their run folders say it all)
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    log.info("CPU: %s, %d cores", cpu_model(), os.cpu_count() or 0)
    numbers = args.out / "numbers.csv"
    if not args.report_only:
        import ray

        ray.init(
            num_cpus=args.workers, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="WARNING"
        )
        try:
            for name in args.problems:
                problem = PROBLEMS[name]
                why = available(problem)
                if why:
                    log.warning("[%s] skipped: %s", name, why)
                    continue
                for budget in args.budgets[name]:
                    for repeat in range(args.repeats[name]):
                        runs = {s: search(problem, s, budget, repeat, args) for s in args.searchers}
                        if problem.planted is not None:
                            rows = [
                                r for s, run in runs.items() for r in judge_planted(problem, s, budget, repeat, run)
                            ]
                        else:
                            rows = judge_trained(problem, budget, repeat, runs, args)
                        quality_report.merge(numbers, rows, problem.name, budget, repeat, args.searchers)
        finally:
            ray.shutdown()
    if not numbers.is_file():
        raise SystemExit(f"no {numbers}: run without --report-only first")
    quality_report.write(numbers, args.out, problems=args.problems, cpu=cpu_model())
    return 0


if __name__ == "__main__":
    sys.exit(main())
