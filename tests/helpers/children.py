"""Fast stand-ins for `child_trainer.train.train_child`, loaded by the search tests and
benchmarks/search.py through ``launch_search.py --child "<this file>:<function>"`` (the path
is ``tests.helpers.CHILDREN``).

The reward is a deterministic function of the plan, so a search has something to learn.
Settings travel in the trial config, not the environment: ``train.data_dir`` (unused by the
digits data) names a scratch folder that may hold ``sleep`` (seconds per epoch) and
``together`` (a number N: a trial waits, up to 2 minutes, until N trials have started, so N
run at once whatever the machine's load), and gets
``calls.log`` (one line "trial_id start|end" per call) and ``counter`` (numbers the calls
across workers for `flaky`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

ReportFn = Callable[[int, dict], None]


def _scratch(train: Any) -> Path | None:
    return Path(train.data_dir) if train.data_dir else None


def _log(train: Any, event: str) -> None:
    scratch = _scratch(train)
    if scratch is not None:
        from ray import tune

        with open(scratch / "calls.log", "a", encoding="utf-8") as f:
            f.write(f"{tune.get_context().get_trial_id()} {event}\n")


def _score(plan: Any) -> float:
    """Fraction of sites using spatial_dropout, mapped to [0.5, 0.9]."""
    methods = list(plan.methods().values())
    return 0.5 + 0.4 * sum(m == "spatial_dropout" for m in methods) / len(methods)


def quick(train: Any, plan: Any, report: ReportFn | None = None) -> dict:
    _log(train, "start")
    acc = _score(plan)
    scratch = _scratch(train)
    pause = float((scratch / "sleep").read_text()) if scratch and (scratch / "sleep").is_file() else 0.0
    if scratch and (scratch / "together").is_file():
        _wait_for_starts(scratch, int((scratch / "together").read_text()))
    for epoch in range(1, train.epochs + 1):
        time.sleep(pause)
        if report is not None:
            report(epoch, {"epoch": epoch, "val_acc": acc * epoch / train.epochs, "train_loss": 1.0})
    _log(train, "end")
    return {
        "val_acc": acc,
        "best_val_acc": acc,
        "train_loss": 1.0,
        "epochs": train.epochs,
        "seconds": pause * train.epochs,
        "status": "ok",
        "message": "",
    }


def _wait_for_starts(scratch: Path, n: int, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (scratch / "calls.log").read_text().count(" start\n") >= n:
            return
        time.sleep(0.05)


def noisy(train: Any, plan: Any, report: ReportFn | None = None) -> dict:
    """Like `quick`, but the final accuracy is a hash of the plan in [0.2, 1.0): widely spread
    scores, so an early-stopping scheduler has weak trials to stop."""
    import zlib

    acc = 0.2 + 0.8 * zlib.crc32(plan.to_json().encode()) / 2**32
    for epoch in range(1, train.epochs + 1):
        if report is not None:
            report(epoch, {"epoch": epoch, "val_acc": acc * epoch / train.epochs, "train_loss": 1.0})
    return {
        "val_acc": acc,
        "best_val_acc": acc,
        "train_loss": 1.0,
        "epochs": train.epochs,
        "seconds": 0.0,
        "status": "ok",
        "message": "",
    }


def trivial(train: Any, plan: Any, report: ReportFn | None = None) -> dict:
    """No work at all: what is left of a trial's time is the search machinery's overhead."""
    if report is not None:
        report(1, {"epoch": 1, "val_acc": 0.5, "train_loss": 1.0})
    return {
        "val_acc": 0.5,
        "best_val_acc": 0.5,
        "train_loss": 1.0,
        "epochs": 1,
        "seconds": 0.0,
        "status": "ok",
        "message": "",
    }


def _next_call(train: Any) -> int:
    with open(Path(train.data_dir) / "counter", "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        n = len(f.read().splitlines())
        f.write("call\n")
        return n


def flaky(train: Any, plan: Any, report: ReportFn | None = None) -> dict:
    """Call 3 kills its worker process; otherwise call n raises when n % 3 == 1 and
    diverges when n % 3 == 2; the rest behave like `quick`."""
    n = _next_call(train)
    if n == 3:
        os._exit(1)  # the worker dies: Ray sees an errored trial without a final report
    if n % 3 == 1:
        if report is not None:
            report(1, {"epoch": 1, "val_acc": 0.3, "train_loss": 2.0})
        raise RuntimeError(f"child {n} exploded on purpose")
    if n % 3 == 2:
        return {
            "val_acc": 0.1,
            "best_val_acc": 0.1,
            "train_loss": float("nan"),
            "epochs": 1,
            "seconds": 0.0,
            "status": "diverged",
            "message": "epoch 1: loss is nan",
        }
    return quick(train, plan, report)


def hangs_once(train: Any, plan: Any, report: ReportFn | None = None) -> dict:
    """The first call (across workers) hangs forever without reporting, as a deadlocked data
    loader would; the rest behave like `quick`. For --trial-timeout."""
    if _next_call(train) == 0:
        time.sleep(1e9)
    return quick(train, plan, report)


def counted(train: Any, plan: Any, report: ReportFn | None = None) -> dict:
    """`quick` that also tests when asked (``eval_test``: ``results retrain``), so a test can
    count and time what was trained: each test call appends "plan_hash seed pid start end" to
    trainings.log in the scratch folder. A file ``die_once`` there makes the first test call
    that claims it end its worker process (Ray sees a trial without a result), and a file
    ``term_driver`` holding a pid makes the first one send that process SIGTERM; a file ``sleep``
    holds seconds to wait. Accuracy: ``_score(plan)`` plus a seed's offset, 0.002 * (seed % 5)."""
    from results.retrain_ledger import plan_hash

    scratch = _scratch(train)
    if not train.eval_test or scratch is None:
        return quick(train, plan, report)
    die = scratch / "die_once"
    with contextlib.suppress(FileNotFoundError):
        os.rename(die, scratch / f"died.{os.getpid()}")  # one caller wins the rename
        os._exit(1)
    term = scratch / "term_driver"
    with contextlib.suppress(FileNotFoundError):
        os.rename(term, scratch / "termed")
        os.kill(int((scratch / "termed").read_text()), signal.SIGTERM)  # as `kill DRIVER` would
    start = time.time()
    pause = float((scratch / "sleep").read_text()) if (scratch / "sleep").is_file() else 0.0
    time.sleep(pause)
    key = plan_hash(plan)
    acc = _score(plan) + 0.002 * (train.seed % 5)
    with open(scratch / "trainings.log", "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"{key} {train.seed} {os.getpid()} {start:.6f} {time.time():.6f}\n")
    return {
        "val_acc": acc,
        "test_acc": acc,
        "epochs": train.epochs,
        "seconds": time.time() - start,
        "status": "ok",
        "message": "",
    }
