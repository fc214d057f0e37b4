"""Does a search earn its compute? Controller vs random vs TPE at equal budget, then test accuracy.

    python benchmarks/search_quality.py                     # digits, 200 images, ~30 min on 2 cores
    python benchmarks/search_quality.py --num-samples 16 --seeds 5 --epochs 60   # a quick look

1. Three searches of the same budget on digits (``launch_search.py`` with the same flags, one
   after the other on one local Ray): ``--search controller``, ``random`` and ``tpe``, each
   with the four baselines inside and the final re-training (so each picks its best plan
   from re-trained means, not from one lucky draw).
2. The best searched plan of each search (its best finalist) and the four baselines at their papers' settings are
   re-trained with ``--seeds`` fresh seeds on the search's training subset and tested once
   (what ``python -m results retrain`` does, run two at a time here).
3. Printed: the test table (mean +- standard error), each plan's paired difference with
   ``none`` and with the best baseline in standard errors, and the searchers' mean reward in
   the first and last quarter of their sampled plans. Targets (issue 11): the controller's
   plan beats the best baseline's mean and beats ``none`` by >= 2 standard errors; the
   controller's last-quarter reward beats random search's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _machine import cpu_model  # noqa: E402 (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEARCHES = ("controller", "random", "tpe")
BASELINES = ("none", "dropout", "dropblock", "disout")


def run_search(search: str, args: argparse.Namespace, out: Path) -> Path:
    import launch_search

    name = f"{search}"
    run = out / name
    if (run / "run_state.json").is_file() and json.loads((run / "run_state.json").read_text())["status"] == "finished":
        print(f"[{search}] already finished: {run}", flush=True)
        return run
    flags = [
        "--search",
        search,
        "--num-samples",
        str(args.num_samples),
        "--train-size",
        str(args.train_size),
        "--epochs",
        str(args.epochs),
        "--seed",
        str(args.seed),
        "--storage-path",
        str(out),
        "--name",
        name,
        "--final-top-k",
        str(args.final_top_k),
        "--final-seeds",
        str(args.final_seeds),
        "--controller-batch",
        str(args.controller_batch),
        "--sites",
        args.sites,
    ]
    if args.controller_lr is not None:
        flags += ["--controller-lr", str(args.controller_lr)]
    if run.exists():
        flags = ["--resume", "--name", name, "--storage-path", str(out)]
    start = time.time()
    rc = launch_search.main(flags)
    print(f"[{search}] exit {rc} after {time.time() - start:.0f} s", flush=True)
    if rc != 0:
        raise SystemExit(f"search {search} ended with exit code {rc}")
    return run


def best_searched_plan(run: Path):
    """The search's own best proposal: the searched finalist with the best re-trained mean
    (best_plan.json may be a baseline when one wins the final stage)."""
    import csv

    from search_space import Plan

    with (run / "final.csv").open(newline="") as f:
        searched = [r for r in csv.DictReader(f) if r["kind"] == "searched"]
    if not searched:
        return Plan.load(run / "best_plan.json")
    return Plan.from_json(max(searched, key=lambda r: float(r["mean"]))["plan_json"])


def _train(job: tuple[str, dict, dict]) -> tuple[str, int, float, str]:
    import torch

    from child_trainer import train_child
    from search_space import Plan

    label, train, plan = job
    torch.set_num_threads(1)
    result = train_child(train, Plan.from_dict(plan))
    return label, int(train["seed"]), float(result.get("test_acc", float("nan"))), result["status"]


def retrain_all(runs: dict[str, Path], args: argparse.Namespace) -> dict[str, dict[int, float]]:
    """The best plan of each search (best_plan.json) and the baselines, ``--seeds`` seeds each,
    tested once; two trainings at a time."""
    from results import open_run
    from results.retrain import RetrainConfig, _train_config, retrain_plans

    base_run = open_run(runs["controller"])
    cfg = RetrainConfig(
        top=0,
        seeds=args.seeds,
        train_size="search",
        baselines=BASELINES,
        seed_offset=args.test_seed_offset,
        num_threads=1,
    )
    plans = {name: plan for name, plan in retrain_plans(base_run, cfg).items()}
    for search, run in runs.items():
        plans[f"{search} best"] = best_searched_plan(run)
    jobs = [
        (label, _train_config(base_run, cfg, cfg.seed_offset + i), plan.to_dict())
        for label, plan in plans.items()
        for i in range(cfg.seeds)
    ]
    print(f"retraining {len(plans)} plans x {cfg.seeds} seeds = {len(jobs)} trainings", flush=True)
    scores: dict[str, dict[int, float]] = {label: {} for label in plans}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for label, seed, acc, status in pool.map(_train, jobs):
            scores[label][seed] = acc if status == "ok" else float("nan")
    for label, plan in plans.items():
        scores[label]["summary"] = plan.summary()  # type: ignore[assignment]
    return scores


def _mean_se(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return statistics.fmean(values), se


def _paired(a: dict, b: dict) -> tuple[float, float]:
    seeds = [s for s in a if isinstance(s, int) and s in b and math.isfinite(a[s]) and math.isfinite(b[s])]
    diffs = [a[s] - b[s] for s in seeds]
    return _mean_se(diffs)


def quarter_rewards(run: Path) -> tuple[float, float, int]:
    from results import load_run

    df = load_run(run)
    sampled = df[df["baseline"] == ""].sort_values("order")
    rewards = sampled["reward"].astype(float).dropna().tolist()
    q = max(1, len(rewards) // 4)
    return statistics.fmean(rewards[:q]), statistics.fmean(rewards[-q:]), len(rewards)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-samples", type=int, default=32)
    p.add_argument("--train-size", type=int, default=200)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--final-top-k", type=int, default=2)
    p.add_argument("--final-seeds", type=int, default=3)
    p.add_argument("--controller-batch", type=int, default=4)
    p.add_argument("--controller-lr", type=float, default=None)
    p.add_argument("--sites", default="stage")
    p.add_argument("--seeds", type=int, default=10, help="test re-trainings per plan")
    p.add_argument("--test-seed-offset", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "search_quality")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray

    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; {args}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    ray.init(num_cpus=args.workers, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    start = time.time()
    try:
        runs = {s: run_search(s, args, args.out) for s in SEARCHES}
    finally:
        ray.shutdown()
    search_minutes = (time.time() - start) / 60
    scores = retrain_all(runs, args)
    (args.out / "retrain_scores.json").write_text(json.dumps(scores, indent=2))
    none = scores["none"]
    base_means = {b: _mean_se([v for k, v in scores[b].items() if isinstance(k, int)])[0] for b in BASELINES}
    best_base = max(base_means, key=base_means.get)
    print(
        f"\nTest accuracy, {args.seeds} seeds each (digits test split, 360 images; train subset "
        f"{args.train_size}, {args.epochs} epochs); searches took {search_minutes:.1f} min"
    )
    print(f"{'plan':<18} {'test acc':>17} {'vs none':>19} {'vs ' + best_base:>19}  plan")
    for label, vals in scores.items():
        m, se = _mean_se([v for k, v in vals.items() if isinstance(k, int)])
        d0, s0 = _paired(vals, none)
        d1, s1 = _paired(vals, scores[best_base])

        def z(d, s):
            return f"{d:+.4f} ({d / s:+.1f} se)" if s and math.isfinite(s) and s > 0 else f"{d:+.4f}"

        print(f"{label:<18} {m:.4f} +- {se:.4f} {z(d0, s0):>19} {z(d1, s1):>19}  {vals['summary'][:90]}")
    print("\nSampled plans' mean reward (validation accuracy), first vs last quarter:")
    for search, run in runs.items():
        first, last, n = quarter_rewards(run)
        print(f"  {search:<11} first {first:.4f}  last {last:.4f}  ({n} sampled plans)")
    ctl = scores["controller best"]
    m_ctl = _mean_se([v for k, v in ctl.items() if isinstance(k, int)])[0]
    d0, s0 = _paired(ctl, none)
    print("\nTargets:")
    print(
        f"  controller plan beats the best baseline ({best_base}) on mean test accuracy: "
        f"{'MET' if m_ctl > base_means[best_base] else 'MISSED'} ({m_ctl:.4f} vs {base_means[best_base]:.4f})"
    )
    print(
        f"  controller plan beats none by >= 2 se: {'MET' if s0 > 0 and d0 / s0 >= 2 else 'MISSED'} "
        f"({d0:+.4f}, {d0 / s0 if s0 else float('nan'):+.1f} se)"
    )
    c_last, r_last = quarter_rewards(runs["controller"])[1], quarter_rewards(runs["random"])[1]
    print(
        f"  controller's last-quarter reward beats random's: {'MET' if c_last > r_last else 'MISSED'} "
        f"({c_last:.4f} vs {r_last:.4f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
