"""A new user's bad day: full disks, failing bookkeeping, two drivers on one run folder, a
resumed run whose best plan changed, a moved run folder, a killed worker (issue 14)."""

from __future__ import annotations

import csv
import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller import run_folder as rf
from search_space import Plan

REPO = Path(__file__).resolve().parents[1]
CHILDREN = Path(__file__).parent / "helpers" / "children.py"


def rows(run: Path) -> list[dict[str, str]]:
    if not (run / "trials.csv").is_file():
        return []
    with (run / "trials.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def search(tmp_path: Path, *args: str, child: str = "quick") -> int:
    import launch_search

    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    return launch_search.main(
        [
            "--storage-path",
            str(tmp_path),
            "--data-dir",
            str(scratch),
            "--child",
            f"{CHILDREN}:{child}",
            "--baselines",
            "none",
            "--final-top-k",
            "0",
            "--epochs",
            "2",
            "--max-concurrent",
            "1",
            *args,
        ]
    )


def test_full_disk_stops_the_search_keeps_what_was_written_and_resume_finishes(
    ray_session, tmp_path, monkeypatch, capsys
):
    real = rf.atomic_write_text
    full = {"on": False}

    def write(path, text, **kw):
        if full["on"] or (Path(path).name == "trials.csv" and text.count("\n") > 4):
            full["on"] = True  # from the 4th finished trial on, the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, text, **kw)

    monkeypatch.setattr(rf, "atomic_write_text", write)
    rc = search(tmp_path, "--name", "full", "--num-samples", "7", "--controller-batch", "2")
    out, err = capsys.readouterr()
    assert rc == 1
    assert "disk full while writing the run folder" in out + err
    kept = rows(tmp_path / "full")
    assert len(kept) == 3  # written before the disk filled, intact and parseable
    monkeypatch.setattr(rf, "atomic_write_text", real)  # the disk was grown
    assert search(tmp_path, "--name", "full", "--resume") == 0
    done = rows(tmp_path / "full")
    assert len(done) == 8 and done[:3] == kept


def test_resume_refuses_a_snapshot_older_than_trials_csv_and_touches_nothing(ray_session, tmp_path, capsys):
    assert search(tmp_path, "--name", "r", "--num-samples", "3") == 0
    run = tmp_path / "r"
    table = rows(run)
    # what a full disk leaves: the searcher snapshot lost its last trials, trials.csv has them
    import pickle

    snap = sorted(run.glob("searcher-state-*.pkl"))[-1]
    state = pickle.loads(snap.read_bytes())
    state["records"] = state["records"][:1]
    snap.write_bytes(pickle.dumps(state))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert search(tmp_path, "--name", "r", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "older than trials.csv" in err and "nothing was changed" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert len(rows(run)) == len(table)
    # damaged Ray state: refused the same way
    state_json = sorted(run.glob("experiment_state-*.json"))[-1]
    state_json.write_text(state_json.read_text()[:100])
    assert search(tmp_path, "--name", "r", "--resume") == 2
    assert "damaged" in capsys.readouterr().err


def test_an_error_while_recording_a_trial_is_fatal_and_loses_nothing(ray_session, tmp_path, monkeypatch, capsys):
    from controller.reinforce import Reinforce

    def broken(self, tokens, rewards):
        raise FloatingPointError("controller update produced NaN")

    monkeypatch.setattr(Reinforce, "update", broken)
    rc = search(tmp_path, "--name", "rec", "--num-samples", "4", "--controller-batch", "2")
    assert rc == 1  # not 130 "interrupted": the search failed
    out, err = capsys.readouterr()
    assert "FloatingPointError: controller update produced NaN" in out + err
    table = rows(tmp_path / "rec")
    assert len(table) >= 3  # the baseline and both trials of the failed batch are recorded
    # their rewards are still waiting for an update: nothing was taken off the buffer
    import pickle

    state = pickle.loads(sorted((tmp_path / "rec").glob("searcher-state-*.pkl"))[-1].read_bytes())
    assert len(state["buffer"]) >= 2


def test_a_second_driver_on_one_run_folder_is_refused_before_ray(tmp_path, capsys):
    lock = rf.RunFolderLock(tmp_path / "busy").acquire()  # the first driver
    try:
        code = (
            "import sys, launch_search; sys.exit(launch_search.main(['--storage-path', sys.argv[1], "
            "'--name', 'busy', '--num-samples', '1', '--epochs', '1']))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=120
        )
    finally:
        lock.release()
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "--name: bad value 'busy'" in err[0] and "in use by another driver" in err[0]
    assert not (tmp_path / "busy").exists()


def test_fp16_without_cuda_is_refused(tmp_path, capsys):
    import torch

    import launch_search

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert launch_search.main(["--storage-path", str(tmp_path), "--amp", "fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--amp: bad value 'fp16'" in err and "CUDA" in err
    assert not list(tmp_path.iterdir())


def test_resume_of_a_moved_run_folder_writes_there(ray_session, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "sleep").write_text("0.05")
    first = tmp_path / "a"
    first.mkdir()
    import signal
    import threading
    import time

    def interrupt() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and len(rows(first / "run")) < 2:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    assert search(first, "--name", "run", "--num-samples", "5", "--data-dir", str(scratch)) == 130
    moved = tmp_path / "b"
    moved.mkdir()
    shutil.move(str(first / "run"), str(moved / "run"))
    n_before = len(rows(moved / "run"))
    assert search(moved, "--name", "run", "--resume") == 0
    table = rows(moved / "run")
    assert len(table) == 6 and not (first / "run").exists()
    trial_dirs = {p.name for p in (moved / "run").iterdir() if p.name.startswith("trial_")}
    assert {f"trial_{r['trial_id']}" for r in table} <= trial_dirs  # new trials' results landed here too
    assert n_before < 6
    best = max((r for r in table if r["status"] == "ok"), key=lambda r: float(r["val_acc"]))
    assert Plan.load(moved / "run" / "best_plan.json").metadata["trial_id"] == best["trial_id"]
