"""A new user's bad day: full disks, failing bookkeeping, two drivers on one run folder, a
resumed run whose best plan changed, a moved run folder, a killed worker (issue 14)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from controller import run_folder as rf
from search_space import Plan

REPO = Path(__file__).resolve().parents[2]
CHILDREN = Path(__file__).resolve().parents[1] / "helpers" / "children.py"


def rows(run: Path) -> list[dict[str, str]]:
    """trials.csv as the product reads it (a torn last line is not a row)."""
    from controller.run_folder.ledger import read_rows

    return read_rows(run / "trials.csv")


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
            "--no-learned-rates",  # the fake children learn no rates
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
    from controller.run_folder import ledger, snapshot

    real_append, real_write = ledger.Ledger.append, snapshot.atomic_write_text
    full = {"on": False}

    def append(self, name, row):
        if full["on"] or (name == rf.TRIALS and len(rows(self.run_dir)) >= 3):
            with rf.disk_full_is_fatal(self.run_dir):
                if not full["on"]:  # a real full disk: part of the line made it, then ENOSPC
                    with (self.run_dir / name).open("a") as f:
                        f.write("t_torn,3,controller,searc")
                full["on"] = True
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_append(self, name, row)

    def write(path, text, **kw):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, text, **kw)

    monkeypatch.setattr(ledger.Ledger, "append", append)
    monkeypatch.setattr(snapshot, "atomic_write_text", write)
    rc = search(tmp_path, "--name", "full", "--num-samples", "7", "--controller-batch", "2")
    out, err = capsys.readouterr()
    assert rc == 1
    assert "disk full while writing the run folder" in out + err
    kept = rows(tmp_path / "full")
    assert len(kept) == 3  # written before the disk filled, intact; the torn line is not a row
    assert (tmp_path / "full" / "trials.csv").read_text().endswith("searc")
    monkeypatch.setattr(ledger.Ledger, "append", real_append)  # the disk was grown
    monkeypatch.setattr(snapshot, "atomic_write_text", real_write)
    assert search(tmp_path, "--name", "full", "--resume") == 0
    done = rows(tmp_path / "full")
    assert len(done) == 8 and done[:3] == kept and "t_torn" not in (tmp_path / "full" / "trials.csv").read_text()


def test_a_snapshot_one_trial_behind_the_ledger_resumes_without_refusal(tmp_path):
    """A hard kill between a trial's ledger line and the next state snapshot: the ledger wins."""
    import shutil

    from controller.policies import ControllerSearcher
    from search_space.space import SearchSpace

    space = SearchSpace([("s1", ["s1"]), ("s2", ["s2"])], model="m")
    run = tmp_path / "run"
    kw = dict(num_samples=6, controller_batch=2, baselines={"none": Plan.none(space.sites, model="m")}, seed=1)
    a = ControllerSearcher(space, run_dir=run, **kw)
    ok = {"final": True, "status": "ok", "val_acc": 0.7, "epoch": 1}
    for t in ("t0", "t1", "t2", "t3"):
        a.suggest(t)
    for t in ("t0", "t1", "t2"):
        a.on_trial_complete(t, ok)
    behind = (run / rf.SNAPSHOT).read_bytes()
    a.on_trial_complete("t3", ok)  # its line is in the ledger ...
    (run / rf.SNAPSHOT).write_bytes(behind)  # ... but the kill came before the snapshot
    shutil.rmtree(run / "unused", ignore_errors=True)
    b = ControllerSearcher(space, run_dir=run, **kw)
    b.resume()
    assert [r["trial_id"] for r in b.records] == ["t0", "t1", "t2", "t3"] and not b._requeue
    assert len(b.history) == len(a.history) and [t for t, _, _ in b._buffer] == [t for t, _, _ in a._buffer]


class _RunsCode:
    """Unpickling this touches a file: what a policy file from someone else could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_tampered_state_file_is_refused_without_running_it(ray_session, tmp_path, capsys):
    import hashlib
    import io
    import json

    import torch

    assert search(tmp_path, "--name", "t", "--num-samples", "3", "--controller-batch", "2") == 0
    run = tmp_path / "t"
    state = json.loads((run / rf.SNAPSHOT).read_text())
    marker = tmp_path / "code-ran"
    buf = io.BytesIO()
    torch.save({"policy": _RunsCode(marker)}, buf)
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    name = f"searcher_policy-{digest[:16]}.pt"
    (run / name).write_bytes(buf.getvalue())
    (run / rf.SNAPSHOT).write_text(json.dumps({**state, "policy": {**state["policy"], "file": name, "sha256": digest}}))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    capsys.readouterr()
    assert search(tmp_path, "--name", "t", "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--resume: " in err and "not plain tensors" in err
    assert not marker.exists()  # nothing from the folder ran
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    for bad, words in (
        ("{not json", "unreadable"),
        (
            json.dumps({**state, "pending": {"x": {"stage": "search", "tokens": "rm -rf /", "plan": {}}}}),
            "does not hold",
        ),
        (json.dumps({**state, "policy": {**state["policy"], "file": "../../etc/passwd"}}), "outside the run folder"),
    ):
        (run / rf.SNAPSHOT).write_text(bad)
        assert search(tmp_path, "--name", "t", "--resume") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err, err


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
    # their rewards are still waiting for an update: no update was logged
    assert (
        not (tmp_path / "rec" / rf.HISTORY).is_file()
        or len((tmp_path / "rec" / rf.HISTORY).read_text().splitlines()) <= 1
    )


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
