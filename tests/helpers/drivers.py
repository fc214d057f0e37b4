"""Drive ``python launch_search.py`` as a user does, in a subprocess joined to the tests' Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import CHILDREN

REPO = Path(__file__).resolve().parents[2]


def launch(tmp_path: Path, address: str, *extra: str) -> subprocess.Popen:
    """`python launch_search.py ...` as a user runs it, joining the test's Ray."""
    env = dict(os.environ)
    child = (
        ["--child", f"{CHILDREN}:quick"]  # a resume takes the code from the command line, never the folder
        if "--resume" in extra
        else ["--child", f"{CHILDREN}:quick", "--baselines", "none", "--final-top-k", "0", "--tuned-trials", "0"]
        + ["--no-learned-rates"]  # the fake children learn no rates
    )
    cmd = [
        sys.executable,
        str(REPO / "launch_search.py"),
        "--storage-path",
        str(tmp_path),
        "--name",
        "run",
        "--address",
        address,
        *child,
        *extra,
    ]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def interrupt_when(proc: subprocess.Popen, ready, sig: int = signal.SIGINT) -> str:
    """Send ``sig`` to a running launch_search.py once ``ready()`` holds; its output."""
    try:
        deadline = time.time() + 120
        while not ready() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return out
