"""How much the search machinery (Ray Tune + controller + bookkeeping) costs per trial.

    python benchmarks/search.py                   # overhead figures (~1-2 min on 2 cores)
    python benchmarks/search.py --default-search  # + trials/hour of `python launch_search.py`

Measured in one run, trials one at a time (--max-concurrent 1, so nothing hides overhead):
1. marginal overhead per trial with trivial children (a child that does no work): the
   difference between a long and a short search divided by the extra trials, so Ray's
   start-up and the first worker's imports are not counted; target < 0.3 s;
2. a search of real tiny children (digits_cnn, 1 epoch, 100 images) versus calling
   `train_child` on the same plans in a plain loop in this process.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.helpers import CHILDREN  # noqa: E402 (after the path set-up)

TRIVIAL = f"{CHILDREN}:trivial"  # the tests' stand-in child that does no work


def search(storage: Path, name: str, trials: int, child: str | None, *extra: str) -> float:
    """Wall seconds of launch_search.main (Ray already running) for `trials` serial trials."""
    import launch_search

    # trials serial and nothing but the sampled plans: the overhead per trial, not the product's
    # default stages (baselines, final re-training)
    stages = ["--baselines", "", "--final-top-k", "0", *(["--child", child] if child else [])]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the end-of-search summary
        rc = launch_search.main(
            [
                "--storage-path",
                str(storage),
                "--name",
                name,
                "--max-concurrent",
                "1",
                "--num-samples",
                str(trials),
                *stages,
                *extra,
            ]
        )
    seconds = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"search {name} failed with exit code {rc}")
    return seconds


def plans_of(run: Path) -> list[str]:
    with (run / "trials.csv").open(newline="") as f:
        return [row["plan_json"] for row in csv.DictReader(f)]


def plain_loop(plans: list[str], train: dict) -> float:
    """train_child on the same plans, no Ray: the floor a search is compared with."""
    from child_trainer.train import TrainConfig, train_child
    from search_space.plan import Plan

    cfg = TrainConfig.from_dict(train)
    train_child(cfg, Plan.from_json(plans[0]))  # warm-up: imports, data, first kernels
    start = time.perf_counter()
    for text in plans:
        train_child(cfg, Plan.from_json(text))
    return time.perf_counter() - start


def default_search(storage: Path) -> None:
    """`python launch_search.py` exactly as the README runs it (fresh process, own Ray)."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "launch_search.py"), "--storage-path", str(storage), "--name", "default"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"default search failed:\n{proc.stderr[-3000:]}")
    run = storage / "default"
    trials = len(plans_of(run))
    cfg = json.loads((run / "search_config.json").read_text())["settings"]
    print(
        f"default digits search: {trials} trials ({cfg['train']['epochs']} epochs, "
        f"{cfg['train']['train_size']} images) in {wall:.1f} s wall incl. Ray start-up "
        f"-> {3600 * trials / wall:.0f} trials/hour"
    )


def marginal(
    storage: Path, name: str, short: int, long: int, child: str | None, *extra: str
) -> tuple[float, float, float]:
    """(short seconds, long seconds, extra seconds per extra trial): fixed costs cancel."""
    t_short = search(storage, f"{name}-short", short, child, *extra)
    t_long = search(storage, f"{name}-long", long, child, *extra)
    return t_short, t_long, (t_long - t_short) / (long - short)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--short", type=int, default=5, help="trials of the short searches")
    p.add_argument("--long", type=int, default=35, help="trials of the long trivial search")
    p.add_argument("--real", type=int, default=15, help="trials of the long real tiny-children search")
    p.add_argument("--default-search", action="store_true", help="also time `python launch_search.py`")
    args = p.parse_args()
    import ray
    import torch

    import launch_search

    launch_search._setup_logging = lambda: None  # keep the figures readable
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, ray {ray.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp)
        t0 = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        print(f"Ray start-up (once per search): {time.perf_counter() - t0:.1f} s")
        warm = search(storage, "warm-up", 3, TRIVIAL, "--epochs", "1")
        print(f"warm-up search (3 trials, first worker's imports): {warm:.2f} s")
        short, long, per = marginal(storage, "trivial", args.short, args.long, TRIVIAL, "--epochs", "1")
        print(
            f"trivial children: {args.short} trials {short:.2f} s, {args.long} trials {long:.2f} s "
            f"-> overhead {per:.3f} s per extra trial (target < 0.3); "
            f"{long / args.long:.3f} s/trial incl. each search's fixed costs"
        )
        tiny = ["--epochs", "1", "--train-size", "100"]
        short, long, per = marginal(storage, "real", args.short, args.real, None, *tiny)
        ray.shutdown()
        run = storage / "real-long"
        train = json.loads((run / "search_config.json").read_text())["settings"]["train"]
        plans = plans_of(run)
        loop = plain_loop(plans, train) / len(plans)
        print(
            f"tiny real children (digits_cnn, 1 epoch, 100 images): search {per:.3f} s per extra "
            f"trial vs plain train_child loop {loop:.3f} s/trial on the same plans "
            f"-> overhead {per - loop:+.3f} s/trial"
        )
        if args.default_search:
            default_search(storage)


if __name__ == "__main__":
    main()
