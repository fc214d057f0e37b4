"""The driver's own cost per trial stays flat as a search grows (issue 21).

    python benchmarks/ledger.py                      # 10,000 trials per searcher, then 200 through Ray
    python benchmarks/ledger.py --trials 2000 --ray 0

1. **Our part**: a searcher with a run folder is driven as Ray Tune drives it (``suggest``,
   then ``on_trial_complete`` with a trivial result), one trial at a time, for ``--trials``
   trials: ledger appends (fsynced), the state snapshot, best_plan.json and run_state.json,
   controller updates. Printed: the mean cost per trial over trials 100-200 and over the last
   100, their ratio (target: within 1.2x), and the run folder's size.
2. **Ray's part**, separately: ``--ray`` trivial trials through ``tune.Tuner`` with the same
   searcher; the wall time per trial minus our part is what Ray adds (scheduling, actors,
   result processing, its own experiment snapshots).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model  # noqa: E402 (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _space():
    from search_space.space import SearchSpace

    # the digits CNN's stage space: 3 groups, every ConvNet method (plans rarely repeat)
    return SearchSpace([("stem", ["bn1"]), ("stage1", ["layer1.0.bn1"]), ("stage2", ["layer2.0.bn1"])], model="m")


def drive(search: str, trials: int, run_dir: Path) -> list[float]:
    """Seconds of our code per trial (suggest + record), trial by trial."""
    from controller.policies import make_searcher
    from search_space.plan import Plan

    space = _space()
    s = make_searcher(
        search,
        space,
        num_samples=trials - 1,
        run_dir=run_dir,
        baselines={"none": Plan.none(space.sites, model="m")},
        seed=0,
    )
    costs = []
    for i in range(trials):
        tid = f"t{i:06d}"
        start = time.perf_counter()
        s.suggest(tid)
        value = 0.5 + 0.4 * ((i * 7919) % 1000) / 1000
        s.on_trial_complete(tid, {"final": True, "status": "ok", "val_acc": value, "epoch": 1, "seconds": 0.0})
        costs.append(time.perf_counter() - start)
    return costs


def ray_part(trials: int, run_dir: Path, ours_per_trial: float) -> tuple[float, float]:
    """(wall seconds per trial through Tune, of which Ray's part) with a trivial trainable."""
    import logging

    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    from controller.policies import make_searcher
    from search_space.plan import Plan

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    space = _space()
    s = make_searcher(
        "random",
        space,
        num_samples=trials - 1,
        run_dir=run_dir / "run",
        baselines={"none": Plan.none(space.sites, model="m")},
        seed=0,
    )

    def trivial(config: dict) -> None:
        tune.report({"val_acc": 0.5, "final": True, "status": "ok", "epoch": 1})

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        start = time.perf_counter()
        tune.Tuner(
            trivial,
            tune_config=tune.TuneConfig(
                search_alg=ConcurrencyLimiter(s, max_concurrent=2),
                metric="val_acc",
                mode="max",
                num_samples=trials,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(name="ray", storage_path=str(run_dir), verbose=0),
        ).fit()
        wall = (time.perf_counter() - start) / trials
    finally:
        ray.shutdown()
    return wall, wall - ours_per_trial


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=10_000)
    p.add_argument("--searchers", default="random,controller")
    p.add_argument("--ray", type=int, default=200, help="trials through Ray Tune (0: skip)")
    args = p.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; {args.trials} trials per searcher")
    ours = {}
    for search in args.searchers.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            costs = drive(search, args.trials, Path(tmp) / "run")
            size = sum(f.stat().st_size for f in (Path(tmp) / "run").iterdir())
        early = statistics.fmean(costs[100:200])
        late = statistics.fmean(costs[-100:])
        ours[search] = statistics.fmean(costs)
        print(
            f"{search:<10} our cost per trial: trials 100-200 {1e3 * early:.2f} ms, last 100 {1e3 * late:.2f} ms "
            f"-> ratio {late / early:.2f} (target <= 1.2); median {1e3 * statistics.median(costs):.2f} ms; "
            f"run folder {size / 1e6:.1f} MB"
        )
    if args.ray:
        with tempfile.TemporaryDirectory() as tmp:
            wall, ray_only = ray_part(args.ray, Path(tmp), ours.get("random", 0.0))
        print(
            f"through Ray Tune ({args.ray} trivial trials, 2 at a time): {1e3 * wall:.1f} ms per trial wall, "
            f"of which Ray's part ~{1e3 * ray_only:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
