"""``python -m child_trainer``: one-line errors with exit code 2, JSON result as last line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "child_trainer", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_json_result_is_last_stdout_line(tmp_path) -> None:
    from search_space import Plan, SiteSpec

    plan = tmp_path / "plan.json"
    Plan({"layer2.0": SiteSpec("spatial_dropout", {"drop_prob": 0.1})}, model="digits_cnn").save(plan)
    proc = _run("--epochs", "1", "--train-size", "100", "--threads", "1", "--plan", str(plan), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "ok" and result["epochs"] == 1 and 0.0 <= result["val_acc"] <= 1.0


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--model", "resnet99"], "allowed"),
        (["--dataset", "mnist"], "allowed: digits"),
        (["--dataset", "cifar10", "--data-dir", "/nonexistent/cifar"], "/nonexistent/cifar/cifar-10-batches-py"),
        (["--plan", "PLAN"], "plan"),
    ],
)
def test_bad_arguments_one_line_error_exit_2(tmp_path, args: list[str], needle: str) -> None:
    bad_plan = tmp_path / "bad.json"
    bad_plan.write_text('{"sites": {"bn1": {"method": "teleport", "params": {}}}}')
    proc = _run(*[str(bad_plan) if a == "PLAN" else a for a in args], "--epochs", "1")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m child_trainer: error: ") and needle in lines[0], (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr and proc.stdout == ""
