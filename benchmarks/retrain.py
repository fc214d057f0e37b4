"""How fast does ``python -m results retrain`` train? One training after another in the driver
(what it did before issue 25) against its Ray path (every core at once), on the same jobs.

    python benchmarks/retrain.py                  # digits, 200 images, 150 epochs, 2 plans x 5 seeds
    python benchmarks/retrain.py --seeds 3 --repeats 2

A run folder is made first (a 1-epoch search of digits_cnn with the ``none`` baseline, in
--work); then per repeat, interleaved, each path as a whole process (imports, data and Ray
start included): SEQUENTIAL trains the best searched plan and ``none`` on the same fresh seeds
with ``train_child`` in its driver, one after another (as results/retrain.py did), and RAY is
``python -m results retrain`` (a local Ray with every CPU, one CPU and one torch thread a
training) into a new folder. Printed: wall seconds of each, each training's own seconds (the
child's clock), how many trainings ran at once on average (the sum of their own seconds over
the wall time: about 1 for the old path, up to the CPU count on Ray), the CPU model and the
load average (other users of the machine slow both).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import cpu_model  # noqa: E402 (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def make_run(work: Path) -> Path:
    run = work / "digits"
    if not (run / "run_state.json").is_file():
        cmd = [sys.executable, "launch_search.py", "--num-samples", "2", "--epochs", "1", "--train-size", "200",
               "--final-top-k", "0", "--baselines", "none", "--tuned-trials", "0",
               "--storage-path", str(work), "--name", "digits"]  # fmt: skip
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return run


# The old path, as a process of its own: every (plan, seed) with train_child in the driver,
# one after another (results/retrain.py before issue 25). Prints each training's seconds.
SEQUENTIAL = """
import json, sys
from child_trainer import train_child
from results import open_run
from results.retrain import RetrainConfig, _train_config, retrain_plans, retrain_seeds
run = open_run(sys.argv[1])
cfg = RetrainConfig(**json.loads(sys.argv[2]))
seeds, _ = retrain_seeds(run, cfg)
plans = retrain_plans(run, cfg).values()
each = [train_child(_train_config(run, cfg, s), plan)["seconds"] for plan in plans for s in seeds]
print(json.dumps(each))
"""


def sequential(run: Path, cfg: dict) -> tuple[float, list[float]]:
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", SEQUENTIAL, str(run), json.dumps(cfg)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return time.time() - start, [float(s) for s in json.loads(proc.stdout.strip().splitlines()[-1])]


def on_ray(run: Path, cfg: dict, out: Path) -> tuple[float, list[float]]:
    """The new path: the command itself (a local Ray with every CPU, 1 CPU a training)."""
    start = time.time()
    cmd = [sys.executable, "-m", "results", "retrain", str(run), "--top", "1", "--baselines", "none", "--no-tuned",
           "--seeds", str(cfg["seeds"]), "--epochs", str(cfg["epochs"]), "--train-size", "search",
           "--cpus-per-trial", "1", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    with open(out / "retrain.csv", newline="") as f:
        return time.time() - start, [float(r["seconds"]) for r in csv.DictReader(f)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--work", default=None, help="folder for the run and the outputs (default: a temporary one)")
    args = p.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="retrain-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    run = make_run(work)
    cfg = {"top": 1, "seeds": args.seeds, "epochs": args.epochs, "train_size": "search", "baselines": ["none"],
           "tuned": False, "num_threads": 1}  # fmt: skip
    print(
        f"CPU: {cpu_model()} x {os.cpu_count()}; 2 plans x {args.seeds} seeds, digits 200 images, {args.epochs} epochs"
    )
    for r in range(args.repeats):
        for name in ("sequential", "ray"):
            load = os.getloadavg()[0]
            if name == "sequential":
                wall, each = sequential(run, cfg)
            else:
                wall, each = on_ray(run, cfg, work / f"out-{r}")
            print(
                f"repeat {r} {name:10s}: wall {wall:6.1f} s for {len(each)} trainings "
                f"({wall / len(each):5.1f} s each); a training's own time median {statistics.median(each):5.1f} s "
                f"[{min(each):.1f}, {max(each):.1f}]; trainings at once {sum(each) / wall:.2f} (their own seconds "
                f"/ wall); load average before {load:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
