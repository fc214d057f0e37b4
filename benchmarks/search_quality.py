"""Does a search earn its compute? Controller vs random vs TPE at an equal number of trainings,
then every search's exported plan against tuned global baselines on the test split (issue 19).

    python benchmarks/search_quality.py                      # digits200, lm, digits500 (~80 min, 2 shared cores)
    python benchmarks/search_quality.py --tasks digits200 --num-samples 16 --seeds 5   # a quick look
    python benchmarks/search_quality.py --report-only        # re-print the tables from --out

Per task (``digits200``, ``digits500``: ``digits_cnn`` on 200 / 500 training images;
``lm``: ``transformer_lm`` on ``builtin_text``):

1. Three searches with the same flags (``launch_search.py``, one after the other on one local
   Ray): ``--search controller``, ``random`` and ``tpe``, each with the same
   ``--num-samples`` (of which ``--tuned-trials`` tune one method at every site on a grid),
   the hand-set baselines and the same final stage (``--final-top-k``, ``--final-seeds``).
   A finished search (run_state.json) is not run again; an interrupted one is resumed.
2. Re-trained on the test split with ``--seeds`` seeds that no search used (above every
   seed of ``results.retrain.search_seeds`` of the three runs): ``none`` and the other
   hand-set baselines, each search's ``tuned-*`` finalists (identical plans, by
   ``search_space.plan.plan_key``, are trained once) and each search's EXPORTED plan, its
   best_plan.json (a searched plan only when the final stage found it wholly better than the
   best baseline, else that baseline: do no harm). Every (plan, seed) lands in
   ``OUT/TASK/retrain.json`` as it finishes, so an interrupted retraining resumes and
   ``--report-only`` re-prints without training.
3. Printed per task: test mean +- standard error of every plan, and its paired 95% Student-t
   interval against the BEST TUNED GLOBAL baseline (by test mean; ``controller.stats.paired``,
   positive = better) with the word (better / worse / cannot tell). Targets: on every task,
   no searcher's exported plan is worse than the best tuned global baseline (its interval is
   not wholly on the worse side); moonshot: one is wholly better on at least one task.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from _machine import cpu_model  # noqa: E402 (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEARCHES = ("controller", "random", "tpe")
# The product's flags per task; num_samples / epochs / seeds are the benchmark's defaults
# (sized for ~100 minutes on 2 cores), each overridable with --num-samples etc.
TASKS: dict[str, dict[str, Any]] = {
    "digits200": {"flags": ["--dataset", "digits", "--train-size", "200"], "num_samples": 16, "epochs": 150},
    # 500 images x 60 epochs: about the 1,000 SGD steps of digits200's 150 epochs
    "digits500": {"flags": ["--dataset", "digits", "--train-size", "500"], "num_samples": 16, "epochs": 60},
    "lm": {"flags": ["--model", "transformer_lm", "--dataset", "builtin_text"], "num_samples": 12, "epochs": 20},
}
for _task, _seeds in (("digits200", 10), ("digits500", 10), ("lm", 5)):
    TASKS[_task]["seeds"] = _seeds
ORDER = ("digits200", "lm", "digits500")
RESULTS = "retrain.json"


# ----------------------------------------------------------------------------- arguments
def per_task(text: str, kind: type, name: str) -> dict[str, Any]:
    """``"24"`` (every task) or ``"digits200=24,lm=12"`` (others keep their defaults)."""
    out: dict[str, Any] = {}
    for part in [p.strip() for p in str(text).split(",") if p.strip()]:
        task, sep, value = part.rpartition("=")
        tasks = [task] if sep else list(TASKS)
        for t in tasks:
            if t not in TASKS:
                raise SystemExit(f"search_quality.py: error: {name}: bad task {t!r}; allowed: {', '.join(TASKS)}")
            try:
                out[t] = kind(value)
            except ValueError:
                raise SystemExit(f"search_quality.py: error: {name}: bad value {value!r}") from None
    return out


def setting(args: argparse.Namespace, key: str, task: str) -> Any:
    return getattr(args, key).get(task, TASKS[task][key])


# ----------------------------------------------------------------------------- searches
def _state(run: Path) -> dict[str, Any]:
    try:
        return json.loads((run / "run_state.json").read_text())
    except (OSError, ValueError):
        return {}


def run_search(task: str, search: str, args: argparse.Namespace, out: Path, log: dict[str, Any]) -> Path:
    """One search of ``task``; its wall time is kept in ``log`` (searches.json)."""
    import launch_search

    run = out / search
    if _state(run).get("status") == "finished":
        print(f"[{task} {search}] already finished: {run}", flush=True)
        return run
    flags = [
        *TASKS[task]["flags"],
        "--search", search,
        "--num-samples", str(setting(args, "num_samples", task)),
        "--tuned-trials", str(args.tuned_trials),
        "--epochs", str(setting(args, "epochs", task)),
        "--final-top-k", str(args.final_top_k),
        "--final-seeds", str(args.final_seeds),
        "--seed", str(args.seed),
        "--storage-path", str(out),
        "--name", search,
    ]  # fmt: skip
    if run.exists():
        flags = ["--resume", "--name", search, "--storage-path", str(out)]
    print(f"[{task} {search}] python launch_search.py {' '.join(flags)}", flush=True)
    start = time.time()
    rc = launch_search.main(flags)
    seconds = time.time() - start
    print(f"[{task} {search}] exit {rc} after {seconds:.0f} s", flush=True)
    log.setdefault(search, {"seconds": 0.0, "sessions": 0})
    log[search]["seconds"] += seconds
    log[search]["sessions"] += 1
    (out / "searches.json").write_text(json.dumps(log, indent=2))
    if rc != 0:
        raise SystemExit(f"search {task}/{search} ended with exit code {rc}")
    return run


# ----------------------------------------------------------------------------- retraining
def _train(job: tuple[str, int, dict, dict, str, str]) -> tuple[str, int, dict[str, Any]]:
    import torch

    from child_trainer import train_child
    from search_space import Plan

    key, seed, train, plan, test, val = job
    torch.set_num_threads(1)
    r = train_child(train, Plan.from_dict(plan))
    return (
        key,
        seed,
        {
            "value": float(r.get(test, float("nan"))),
            "val": float(r.get(val, float("nan"))),
            "status": str(r["status"]),
            "seconds": float(r.get("seconds", float("nan"))),
        },
    )


def _add(plans: dict[str, dict[str, Any]], plan: Any, label: str, kind: str, source: str) -> str:
    """Register ``plan`` under its plan_key; an identical plan is kept once, with every name."""
    from search_space.plan import plan_key

    key = plan_key(plan)
    entry = plans.setdefault(
        key, {"label": label, "kind": kind, "names": [], "summary": plan.summary(), "plan": plan.to_dict()}
    )
    name = f"{label} ({source})" if source else label
    if name not in entry["names"]:
        entry["names"].append(name)
    return key


def collect_plans(runs: dict[str, Path]) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """(plan key -> entry, searcher -> its exported plan's label, kind, selected_by and key)."""
    from results import open_run
    from results.retrain import RetrainConfig, retrain_plans
    from search_space import Plan

    plans: dict[str, dict[str, Any]] = {}
    tuned: dict[str, dict[str, list[str]]] = {}  # tuned label -> plan key -> searchers
    for search, path in runs.items():
        run = open_run(path)
        cfg = RetrainConfig(top=0, seeds=1, train_size="search", baselines=tuple(run.config.get("baselines") or ()))
        for label, plan in retrain_plans(run, cfg).items():
            kind = "tuned" if label.startswith("tuned-") else "hand-set"
            key = _add(plans, plan, label, kind, search if kind == "tuned" else "")
            if kind == "tuned":
                tuned.setdefault(label, {}).setdefault(key, []).append(search)
    for label, keys in tuned.items():  # the three searches tuned different winners: name them apart
        if len(keys) > 1:
            for key, searches in keys.items():
                plans[key]["label"] = f"{label} ({'/'.join(searches)})"
    exported: dict[str, dict[str, Any]] = {}
    for search, path in runs.items():
        info = dict(_state(path).get("exported") or {})
        plan = Plan.load(path / "best_plan.json")
        kind = info.get("kind", "?")
        label = f"{search} exported" if kind == "searched" else info.get("label", "?")
        key = _add(plans, plan, label, {"searched": "searched", "tuned": "tuned"}.get(kind, "hand-set"), search)
        exported[search] = {**info, "key": key}
    return plans, exported


def retrain(task: str, runs: dict[str, Path], args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Train every distinct plan on every test seed that retrain.json does not hold yet."""
    from results import open_run
    from results.retrain import RetrainConfig, _train_config, search_seeds, test_metric

    path = out / RESULTS
    data = json.loads(path.read_text()) if path.is_file() else {}
    opened = {s: open_run(p) for s, p in runs.items()}
    base = opened["controller"]
    o = base.objective
    used = set().union(*(search_seeds(r) for r in opened.values()))
    n = setting(args, "seeds", task)
    seeds = [max(used) + 1 + i for i in range(n)]
    plans, exported = collect_plans(runs)
    old = data.get("plans", {})
    for key, entry in plans.items():
        entry["results"] = {s: v for s, v in (old.get(key, {}).get("results") or {}).items() if int(s) in seeds}
    cfg = RetrainConfig(top=0, seeds=n, train_size="search", num_threads=1)
    trains = {s: {k: v for k, v in _train_config(r, cfg, 0).items() if k != "seed"} for s, r in opened.items()}
    if any(t != trains["controller"] for t in trains.values()):
        print(f"[{task}] WARNING: the searches' training recipes differ; retraining with the controller's", flush=True)
    data = {
        "task": task,
        "metric": test_metric(o),
        "val_metric": o.metric,
        "mode": o.mode,
        "seeds": seeds,
        "search_seeds": sorted(used),
        "train": trains["controller"],
        "runs": {s: str(p) for s, p in runs.items()},
        "exported": exported,
        "plans": plans,
        "cpu": cpu_model(),
        "retrain_seconds": float(data.get("retrain_seconds", 0.0)),
    }
    jobs = [
        (key, seed, _train_config(base, cfg, seed), entry["plan"], data["metric"], o.metric)
        for key, entry in plans.items()
        for seed in seeds
        if str(seed) not in entry["results"]
    ]
    print(
        f"[{task}] retraining {len(plans)} distinct plans x {n} seeds {seeds[0]}..{seeds[-1]} "
        f"(search seeds: {sorted(used)}): {len(jobs)} trainings to go",
        flush=True,
    )
    _write(path, data)
    start = time.time()
    import multiprocessing

    # spawn, not fork: the driver holds a live Ray session (its threads do not survive a fork)
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_train, job) for job in jobs]
        for i, fut in enumerate(as_completed(futures), start=1):
            key, seed, result = fut.result()
            plans[key]["results"][str(seed)] = result
            _write(path, {**data, "retrain_seconds": data["retrain_seconds"] + time.time() - start})
            print(
                f"[{task}] {i}/{len(jobs)} {plans[key]['label']} seed {seed}: {result['status']} "
                f"{data['metric']}={result['value']:.4f} ({result['seconds']:.0f} s)",
                flush=True,
            )
    data["retrain_seconds"] += time.time() - start
    _write(path, data)
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


# ----------------------------------------------------------------------------- report
def _values(entry: dict[str, Any]) -> dict[int, float]:
    return {
        int(s): float(r["value"])
        for s, r in entry["results"].items()
        if r["status"] == "ok" and math.isfinite(float(r["value"]))
    }


def _mean_se(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return statistics.fmean(values), se


def _search_facts(run: Path) -> dict[str, Any]:
    """Sampled plans (distinct by plan_key), seconds, and the final stage's table."""
    import pandas as pd

    from search_space import Plan
    from search_space.plan import plan_key

    facts: dict[str, Any] = {"seconds": _state(run).get("seconds_this_session")}
    trials = run / "trials.csv"
    if trials.is_file():
        df = pd.read_csv(trials, keep_default_na=True)
        sampled = df[df["baseline"].fillna("") == ""]
        keys = [plan_key(Plan.from_json(str(t))) for t in sampled["plan_json"]]
        facts.update(sampled=len(keys), distinct=len(set(keys)), trials=len(df))
    final = run / "final.csv"
    if final.is_file():
        facts["final"] = pd.read_csv(final, keep_default_na=True).to_dict("records")
        facts["final_trainings"] = int(sum(int(r["seeds"]) for r in facts["final"]))
    return facts


def _true(value: Any) -> bool:
    """final.csv's ``chosen``: 1/0 (or True/False in older run folders)."""
    return str(value).strip().lower() in ("true", "1", "1.0")


def report(task: str, data: dict[str, Any], out: Path) -> dict[str, Any]:
    """Print the task's table; return its targets (searcher -> word against the best tuned)."""
    from controller.stats import WORSE, paired, sign_of

    metric, mode = data["metric"], data["mode"]
    sign = sign_of(mode)
    fmt = "{:.4f}" if metric.endswith("acc") else "{:.2f}"
    plans = data["plans"]
    values = {k: _values(e) for k, e in plans.items()}
    means = {k: _mean_se(list(v.values())) for k, v in values.items()}
    n = len(data["seeds"])
    complete = {k for k, v in values.items() if len(v) == n}
    tuned = [k for k, e in plans.items() if e["kind"] == "tuned" and k in complete]
    ref_kind = "tuned global baseline"
    if not tuned:  # --tuned-trials 0, or not finished: the best baseline of any kind
        tuned = [k for k, e in plans.items() if e["kind"] != "searched" and k in complete]
        ref_kind = "baseline (no tuned global baseline finished)"
    best = max(tuned, key=lambda k: sign * means[k][0]) if tuned else None
    searches = json.loads((out / "searches.json").read_text()) if (out / "searches.json").is_file() else {}
    train = data.get("train", {})
    print(
        f"\n=== {task}: {train.get('model')} on {train.get('dataset')}, train_size {train.get('train_size')}, "
        f"{train.get('epochs')} epochs; {metric} ({'higher' if mode == 'max' else 'lower'} is better), "
        f"{n} test seeds {data['seeds'][0]}..{data['seeds'][-1]} (search seeds {data['search_seeds']})"
    )
    print(f"CPU: {data.get('cpu', '?')}")
    for s in SEARCHES:
        run = Path(data["runs"][s])
        f = _search_facts(run)
        wall = searches.get(s, {}).get("seconds") or f.get("seconds")  # run_state's when run elsewhere
        print(
            f"  search {s:<10} wall {wall / 60 if wall else float('nan'):5.1f} min "
            f"({f.get('trials', '?')} + {f.get('final_trainings', '?')} final trainings); "
            f"sampled plans {f.get('sampled', '?')}, distinct {f.get('distinct', '?')}; exported "
            f"{data['exported'][s].get('kind', '?')} {data['exported'][s].get('label', '?')} "
            f"(by the {data['exported'][s].get('selected_by', '?')} stage)"
        )
    print(f"  retraining wall {data.get('retrain_seconds', 0) / 60:.1f} min")
    print(f"\nReference: the best {ref_kind} by test mean: {plans[best]['label'] if best else 'none finished'}")
    head = f"{'plan':<34} {'kind':<9} {metric + ' (mean +- se)':>22} {'vs reference: diff [95% interval]':>38}  word"
    print(head)
    print("-" * len(head))
    order = sorted(plans, key=lambda k: ({"hand-set": 0, "tuned": 1}.get(plans[k]["kind"], 2), plans[k]["label"]))
    words: dict[str, Any] = {}
    for k in order:
        e = plans[k]
        m, se = means[k]
        cell = f"{fmt.format(m)} +- {fmt.format(se)}" + ("" if len(values[k]) == n else f" ({len(values[k])}/{n})")
        if best is None or k == best:
            cmp_text, word = "(reference)" if k == best else "", ""
        else:
            c = paired(values[k], values[best], mode)
            cmp_text = f"{fmt.format(c.mean)} [{fmt.format(c.ci95_low)}, {fmt.format(c.ci95_high)}]"
            word = c.word
            words[k] = c
        print(f"{e['label'][:34]:<34} {e['kind']:<9} {cell:>22} {cmp_text:>38}  {word}")
    print("(diff: plan minus reference, signed so that positive = better; paired over the test seeds)")
    print("\nExported plans (best_plan.json of each search):")
    targets: dict[str, Any] = {}
    for s in SEARCHES:
        ex = data["exported"][s]
        k = ex["key"]
        e = plans[k]
        if k == best:
            word, verdict = "is the reference", True
        elif k in words:
            word, verdict = words[k].word, words[k].word != WORSE
        else:
            word, verdict = "not measured", False
        others = ", ".join(x for x in e["names"] if not x.endswith(f"({s})")) or "-"
        print(
            f"  {s:<10} exported {ex.get('kind', '?'):<8} {ex.get('label', '?'):<22} -> trained as '{e['label']}' "
            f"(same plan as: {others}); vs reference: {word}"
        )
        targets[s] = {
            "word": word,
            "not_worse": verdict,
            "better": k in words and words[k].word == "better",
            "exported": f"{ex.get('kind', '?')} {ex.get('label', '?')}",
            "searched": ex.get("kind") == "searched",
        }
    print("\nFinal stage of each search (validation, fresh search-side seeds): label, mean, word vs its best baseline")
    for s in SEARCHES:
        rows = _search_facts(Path(data["runs"][s])).get("final") or []
        text = "; ".join(
            f"{r['label']}{'*' if _true(r.get('chosen')) else ''} {fmt.format(float(r['mean']))}"
            f"{' ' + str(r['comparison']) if isinstance(r.get('comparison'), str) and r['comparison'] else ''}"
            for r in rows
        )
        print(f"  {s:<10} {text}   (* = exported)")
    for s in SEARCHES:
        t = targets[s]
        print(f"  target {task}/{s}: exported plan not worse than the best tuned global baseline: "
              f"{'MET' if t['not_worse'] else 'MISSED'} ({t['word']})")  # fmt: skip
    return targets


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(ORDER), help=f"comma-separated, run in this order ({', '.join(ORDER)})")
    p.add_argument("--num-samples", default="", help="N or TASK=N,...: trainings of each search (defaults: " +
                   ", ".join(f"{t} {c['num_samples']}" for t, c in TASKS.items()) + ")")  # fmt: skip
    p.add_argument("--epochs", default="", help="N or TASK=N,... (defaults: " +
                   ", ".join(f"{t} {c['epochs']}" for t, c in TASKS.items()) + ")")  # fmt: skip
    p.add_argument("--seeds", default="", help="test seeds per plan, N or TASK=N,... (defaults: " +
                   ", ".join(f"{t} {c['seeds']}" for t, c in TASKS.items()) + ")")  # fmt: skip
    p.add_argument("--tuned-trials", default="auto", help="launch_search.py --tuned-trials, the same for every search")
    p.add_argument("--final-top-k", type=int, default=2)
    p.add_argument("--final-seeds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="trainings at once (Ray CPUs and retraining processes)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "search_quality")
    p.add_argument("--report-only", action="store_true", help="print the tables from OUT/TASK/retrain.json")
    args = p.parse_args()
    args.num_samples = per_task(args.num_samples, int, "--num-samples")
    args.epochs = per_task(args.epochs, int, "--epochs")
    args.seeds = per_task(args.seeds, int, "--seeds")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        if t not in TASKS:
            raise SystemExit(f"search_quality.py: error: --tasks: bad value {t!r}; allowed: {', '.join(TASKS)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores", flush=True)
    targets: dict[str, dict[str, Any]] = {}
    if args.report_only:
        for task in tasks:
            path = args.out / task / RESULTS
            if not path.is_file():
                print(f"[{task}] no {path}: run without --report-only first")
                continue
            targets[task] = report(task, json.loads(path.read_text()), args.out / task)
    else:
        import ray

        args.out.mkdir(parents=True, exist_ok=True)
        ray.init(
            num_cpus=args.workers, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="WARNING"
        )
        try:
            for task in tasks:
                out = args.out / task
                out.mkdir(parents=True, exist_ok=True)
                log = json.loads((out / "searches.json").read_text()) if (out / "searches.json").is_file() else {}
                start = time.time()
                runs = {s: run_search(task, s, args, out, log) for s in SEARCHES}
                print(f"[{task}] searches done ({(time.time() - start) / 60:.1f} min this session)", flush=True)
                data = retrain(task, runs, args, out)
                targets[task] = report(task, data, out)
        finally:
            ray.shutdown()
    if targets:
        print("\n=== Targets (issue 19)")
        for task, t in targets.items():
            ok = all(v["not_worse"] for v in t.values())
            words = "; ".join(f"{s}: {v['word']}, exports {v['exported']}" for s, v in t.items())
            print(f"  {task:<10} every searcher's exported plan not worse than the best tuned global baseline: "
                  f"{'MET' if ok else 'MISSED'} ({words})")  # fmt: skip
        better = [f"{task}/{s}" for task, t in targets.items() for s, v in t.items() if v["better"]]
        print(f"  moonshot: an exported plan wholly better than the best tuned global baseline on some task: "
              f"{'MET (' + ', '.join(better) + ')' if better else 'MISSED'}")  # fmt: skip
        # the same, counting only exported plans the search found (not a baseline it fell back to)
        found = [f"{task}/{s}" for task, t in targets.items() for s, v in t.items() if v["better"] and v["searched"]]
        print(f"  moonshot by a searched plan (best_plan.json kind 'searched'): "
              f"{'MET (' + ', '.join(found) + ')' if found else 'MISSED'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
