"""--trial-timeout: a child that hangs forever is recorded as "timeout" with the penalty reward,
its worker is ended, and the search goes on (issue 21)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from controller import run_folder as rf
from controller.outcome import trial_outcome

CHILDREN = Path(__file__).resolve().parents[1] / "helpers" / "children.py"


def test_a_hung_child_is_recorded_as_timeout_and_the_search_goes_on(ray_session, tmp_path, capsys):
    import launch_search

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    start = time.time()
    rc = launch_search.main(
        ["--storage-path", str(tmp_path), "--name", "run", "--data-dir", str(scratch),
         "--child", f"{CHILDREN}:hangs_once", "--baselines", "none", "--no-learned-rates", "--final-top-k", "0",
         "--tuned-trials", "0", "--epochs", "1", "--num-samples", "3", "--max-concurrent", "2",
         "--trial-timeout", "2"]
    )  # fmt: skip
    took = time.time() - start
    assert rc == 0
    run = tmp_path / "run"
    trials = rf.read_trials(run / rf.TRIALS, rf.Objective())
    assert sorted(trials["status"]) == ["ok", "ok", "ok", "timeout"]
    hung = trials[trials["status"] == "timeout"].iloc[0]
    assert "trial_timeout" in hung["error"] and "2 s" in hung["error"]
    settings = json.loads((run / rf.SEARCH_CONFIG).read_text())["settings"]
    if hung["baseline"] != "none":  # a sampled plan: it teaches the controller the penalty
        assert hung["reward"] == pytest.approx(settings["penalty_reward"])
    assert settings["trial_timeout"] == 2.0
    assert "1 timeout" in capsys.readouterr().out
    assert took < 45, took


def test_timeout_outcome_gets_the_penalty_even_when_the_worker_then_died():
    final = {"final": True, "status": rf.TIMEOUT, "val_acc": float("nan"), "error": "trial_timeout: 2 s"}
    out = trial_outcome(final, errored=True, penalty=0.1)
    assert (out.status, out.reward, out.error) == (rf.TIMEOUT, 0.1, "trial_timeout: 2 s")
    assert rf.TIMEOUT in rf.FAILED_STATUSES and rf.TIMEOUT in rf.STATUSES
