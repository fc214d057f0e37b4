"""Whole planted searches without Ray: the same searcher, stages, race and export as
``run_search``, driven in this process, so a design question costs seconds, not hours.

    python benchmarks/planted_sim.py --out /tmp/planted_sim --problems planted-1,planted-null \\
        --searchers controller,random,tpe --budgets 16,48 --repeats 20
    python benchmarks/planted_sim.py --out /tmp/planted_sim --report-only

``run_search`` on the planted task spends its 17-52 s per search in Ray (workers, Tune's
bookkeeping), none in the task. Here the searcher (``controller.run_folder.resume.
searcher_from_config``, built from the same ``search_config.json`` a run writes) is asked for
trials as Tune's ``ConcurrencyLimiter`` would (``--concurrency`` running at once, each finishing
in suggestion order), and the task's value is what the trial reports. What is exported is
``controller.final.best_plan_of`` on the final stage's table, as the run folder's
best_plan.json. The numbers are the curve's (``search_quality.py``): whether the exported
plan's TRUE value beats every global recipe's, and whether the search sampled such a plan.
Not a substitute for the Ray runs in ``search_quality.py`` (completion order there depends on
timing), but the same code decides.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from _machine import cpu_model  # noqa: E402 (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("planted_sim")

REPEAT_STRIDE = 100  # as search_quality.py: search seed of repeat r = seed + 100 r
PROBLEMS: dict[str, dict[str, Any]] = {
    "planted-1": {"margin": 0.01},
    "planted-2.5": {"margin": 0.025},
    "planted-null": {"null": True},
    # other answers than the planted task's (``other_task``): is the design general?
    "rates-1": {"margin": 0.01, "variant": "rates"},
    "hidden-1": {"margin": 0.01, "variant": "hidden"},
}


def other_task(margin: float, variant: str, **kw: Any) -> Any:
    """A planted task with another answer (judged by the same true value and best global recipe):

    - ``rates``: dropout in both stages, p 0.1 early and p 0.4 late (the tuned dropout grid has
      both; the best global dropout reaches 0.625 of the gain, so the gain is ``margin / 0.375``);
    - ``hidden``: DropBlock early, spatial dropout p 0.2 late: a method no tuned recipe uses, so
      no recombination of the recipes wins and only the policy's draws can find it.
    """
    from dataclasses import dataclass

    from tests.helpers.planted import PlantedTask, Preference

    @dataclass(frozen=True)
    class Other(PlantedTask):
        def __post_init__(self) -> None:
            super().__post_init__()
            g, m = self.gain, self.margin
            if variant == "rates":
                prefs = {"early": {"dropout": Preference(g, 0.1)}, "late": {"dropout": Preference(g, 0.4)}}
            else:
                prefs = {
                    "early": {"dropblock": Preference(g, 0.1, 3), "spatial_dropout": Preference(g - 2 * m, 0.2)},
                    "late": {"spatial_dropout": Preference(g, 0.2), "dropblock": Preference(g - 2 * m, 0.1, 3)},
                }
            object.__setattr__(self, "_prefs", prefs)

    headroom = margin / 0.375 if variant == "rates" else None
    return Other(margin=margin, headroom=headroom, **kw)


def make_task(settings: Mapping[str, Any]) -> Any:
    from tests.helpers.planted import PlantedTask

    settings = dict(settings)
    variant = settings.pop("variant", "")
    return other_task(variant=variant, **settings) if variant else PlantedTask(**settings)


COLUMNS = ["problem", "searcher", "budget", "repeat", "variant", "exported_kind", "exported_label", "exported_true",
           "beats_global", "found_true", "found_beats", "finalist_beats", "best_global", "final_trainings",
           "cpu_s"]  # fmt: skip


_CONSTANTS = ("PER_GROUP", "AUTO_PER_GROUP", "AUTO_SHARE")
_DEFAULTS: dict[str, dict[str, Any]] = {}


def simulate(task: Any, settings: Mapping[str, Any], concurrency: int = 2) -> dict[str, Any]:
    """One whole search of ``task`` (a ``PlantedTask``) under ``settings`` (``SearchConfig``
    fields, e.g. num_samples, search, seed): what it exported and what it sampled."""
    from controller.api import _configs, _space_and_baselines, tuned_recipes
    from controller.final import SEARCHED, best_plan_of
    from controller.run_folder.resume import searcher_from_config
    from controller.run_folder.settings import config_json
    from controller.stages import neighbours
    from search_space.plan import Plan

    settings = dict(settings)
    for name, value in _DEFAULTS.setdefault("neighbours", {n: getattr(neighbours, n) for n in _CONSTANTS}).items():
        setattr(neighbours, name, value)
    for key in [k for k in settings if k.startswith("_")]:  # module constants of the recombinations, for trials
        setattr(neighbours, key[1:].upper(), settings.pop(key))
    kw = task.search_kwargs()
    config, _, _ = _configs(None, None, {k: kw[k] for k in ("metric", "mode", "model_name", "sites", "baselines")})
    config = config.replace(**settings)
    space, baselines = _space_and_baselines(kw["model_fn"], config, kw["example_input"])
    tuned = tuned_recipes(space, config.tuned_trials, config.num_samples, exclude=list(baselines.values()))
    started = config_json(config, space=space, baselines=baselines, tuned=tuned)
    searcher = searcher_from_config(config, started, None)
    o = searcher.objective
    pending: list[tuple[str, dict[str, Any]]] = []
    n = 0
    start = time.process_time()
    while True:
        suggestion = None
        if len(pending) < concurrency:
            tid = f"t{n:05d}"
            suggestion = searcher.suggest(tid)
            if isinstance(suggestion, dict):
                pending.append((tid, suggestion))
                n += 1
                continue
        if not pending:
            if suggestion == searcher.FINISHED or suggestion is None:
                break
        tid, cfg = pending.pop(0)
        values = [task.evaluate(cfg["plan"], int(s)) for s in cfg["seeds"]]
        mean = statistics.fmean(values)
        result = {"final": True, "status": "ok", o.metric: mean, o.best_column: mean, "epoch": 1,
                  o.seeds_column: json.dumps(values), "error": ""}  # fmt: skip
        searcher.on_trial_result(tid, result)
        searcher.on_trial_complete(tid, result)
    final = searcher.final_table()
    plan, exported = best_plan_of(final, searcher.best(), o, searcher.name)
    sampled = [r["plan"] for r in searcher.records if r.get("kind") == SEARCHED]
    found = max(sampled, key=task.true_value) if sampled else None
    finalists = [Plan.from_json(str(r["plan_json"])) for r in final if r.get("kind") == SEARCHED]
    return {
        "exported_kind": exported.get("kind", "?"),
        "exported_label": exported.get("label", "?"),
        "exported_true": task.true_value(plan),
        "beats_global": task.beats_global(plan),
        "found_true": task.true_value(found) if found is not None else float("nan"),
        "found_beats": bool(found is not None and task.beats_global(found)),
        "finalist_beats": any(task.beats_global(p) for p in finalists),
        "best_global": task.best_global_value,
        "final_trainings": len(searcher.final_records),
        "cpu_s": round(time.process_time() - start, 2),
    }


def _variants(text: str) -> dict[str, dict[str, Any]]:
    """``name:key=value;key=value`` items, comma-separated ... parsed as JSON values; '' = defaults."""
    out: dict[str, dict[str, Any]] = {}
    for item in [t for t in text.split(",") if t.strip()] or ["default"]:
        name, _, rest = item.partition(":")
        kw = {}
        for pair in [p for p in rest.split(";") if p]:
            k, _, v = pair.partition("=")
            try:
                kw[k] = json.loads(v)
            except ValueError:
                kw[k] = v
        out[name.strip()] = kw
    return out


def report(rows: list[dict[str, str]]) -> str:
    """A markdown table: per problem, variant, budget and searcher, the counts."""
    groups: dict[tuple, list[dict[str, str]]] = {}
    for r in rows:
        groups.setdefault((r["problem"], r["variant"], int(r["budget"]), r["searcher"]), []).append(r)
    lines = ["| problem | variant | budget | searcher | searches | exported searched | ... truly beats global | "
             "a finalist beats | sampled one | mean true - global | final trainings |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for (p, v, b, s), rs in sorted(groups.items()):
        k = len(rs)

        def count(col: str, rs: list = rs) -> int:
            return sum(r[col] in ("True", True) for r in rs)

        searched = sum(r["exported_kind"] == "searched" for r in rs)
        gap = statistics.fmean(float(r["exported_true"]) - float(r["best_global"]) for r in rs)
        fin = statistics.fmean(float(r["final_trainings"]) for r in rs)
        lines.append(
            f"| {p} | {v} | {b} | {s} | {k} | {searched}/{k} | {count('beats_global')}/{k} | "
            f"{count('finalist_beats')}/{k} | {count('found_beats')}/{k} | {100 * gap:+.2f} pt | {fin:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--problems", default=",".join(PROBLEMS))
    p.add_argument("--searchers", default="controller,random,tpe")
    p.add_argument("--budgets", default="16,48")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--first-repeat", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--variants", default="", help="NAME:field=json;field=json,... (SearchConfig fields)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log.setLevel(logging.INFO)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "sim.csv"
    rows: list[dict[str, str]] = []
    if path.is_file():
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    done = {(r["problem"], r["variant"], r["searcher"], r["budget"], r["repeat"]) for r in rows}
    if not args.report_only:
        log.info("CPU: %s", cpu_model())
        new = not path.is_file()
        with path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                w.writeheader()
            for variant, extra in _variants(args.variants).items():
                for problem in [s for s in args.problems.split(",") if s]:
                    task = make_task(PROBLEMS[problem])
                    for budget in [int(b) for b in args.budgets.split(",")]:
                        for repeat in range(args.first_repeat, args.first_repeat + args.repeats):
                            for searcher in [s for s in args.searchers.split(",") if s]:
                                key = (problem, variant, searcher, str(budget), str(repeat))
                                if key in done:
                                    continue
                                settings = {"num_samples": budget, "search": searcher,
                                            "seed": args.seed + REPEAT_STRIDE * repeat, **extra}  # fmt: skip
                                out = simulate(task, settings, args.concurrency)
                                row = {"problem": problem, "searcher": searcher, "budget": budget, "repeat": repeat,
                                       "variant": variant, **out}  # fmt: skip
                                w.writerow(row)
                                f.flush()
                                rows.append({k: str(v) for k, v in row.items()})
                                log.info("%s %s %s b%d r%d: %s %s (%.1f s CPU)", problem, variant, searcher, budget,
                                         repeat, out["exported_kind"], out["beats_global"], out["cpu_s"])  # fmt: skip
    table = report(rows)
    (args.out / "sim.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
