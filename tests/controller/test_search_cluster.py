"""A real two-node Ray cluster on this machine (`ray start --head` + a second `ray start`,
each with its own temp dir), searched with --address: trials run on both nodes.
Only the Ray processes this test started are stopped (found by their temp dirs)."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHILDREN = Path(__file__).resolve().parents[1] / "helpers" / "children.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_using(dirs: list[str]) -> list[int]:
    """Processes whose command line or open files mention one of `dirs` (Ray's daemons
    rename themselves, e.g. "ray::RuntimeEnvAgent", but keep their logs open there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            text = (entry / "cmdline").read_bytes().decode(errors="replace")
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if any(d in text or any(link.startswith(d) for link in links) for d in dirs):
            found.append(int(entry.name))
    return found


def stop_processes(dirs: list[str]) -> None:
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 1.0)):
        pids = pids_using(dirs)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if pids:
            time.sleep(wait)


@pytest.mark.slow
def test_search_runs_trials_on_both_nodes_of_a_two_node_cluster(tmp_path):
    if not shutil.which("ray"):
        pytest.skip("the `ray` command is not on PATH")
    # Short temp dirs: Ray's unix sockets live there and socket paths are length-limited.
    dirs = [tempfile.mkdtemp(prefix="rh", dir="/tmp"), tempfile.mkdtemp(prefix="rw", dir="/tmp")]
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    port = free_port()
    address = f"127.0.0.1:{port}"

    def ray_start(*args: str) -> None:
        subprocess.run(
            ["ray", "start", "--num-cpus=1", "--disable-usage-stats", *args],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )

    try:
        ray_start("--head", f"--port={port}", f"--temp-dir={dirs[0]}", "--include-dashboard=false")
        ray_start(f"--address={address}", f"--temp-dir={dirs[1]}")
        scratch = tmp_path / "scratch"
        scratch.mkdir()
        (scratch / "together").write_text("2")  # the first two trials run at once: one on each node

        def search(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [
                    sys.executable,
                    str(REPO / "launch_search.py"),
                    "--address",
                    address,
                    "--storage-path",
                    str(tmp_path),
                    "--data-dir",
                    str(scratch),
                    "--child",
                    f"{CHILDREN}:quick",
                    "--baselines",
                    "none",
                    "--no-learned-rates",  # the fake children learn no rates
                    "--final-top-k",
                    "0",
                    *args,
                ],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
            )

        bad = search("--name", "gpu", "--gpus-per-trial", "1")
        assert bad.returncode == 2 and "has no GPUs" in bad.stderr, bad.stderr[-2000:]
        assert not (tmp_path / "gpu").exists()

        done = search("--name", "run", "--num-samples", "5", "--epochs", "2")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        with (tmp_path / "run" / "trials.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
        nodes = {r["node"] for r in rows}
        assert len(nodes) == 2, nodes
    finally:
        stop_processes(dirs)
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    assert not pids_using(dirs)
