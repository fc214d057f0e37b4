"""Issue 21: the run folder is a ledger. While a search runs its ledger files only grow (earlier
bytes never change); a SIGKILL of the driver at any moment is followed by a ``--resume`` that
finishes the run without refusing and without re-running any trial that had finished."""

from __future__ import annotations

import csv
import io
import signal
from collections import Counter
from pathlib import Path

import pytest

from controller import run_folder as rf
from tests.helpers.drivers import interrupt_when, launch

LEDGER = (rf.TRIALS, rf.HISTORY, rf.FINAL_TRIALS)


def _rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    text = path.read_text()
    return list(csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1])))


class AppendOnly:
    """Polled while the search runs: each ledger file's old bytes must stay a prefix of its new ones."""

    def __init__(self, run: Path) -> None:
        self.run, self.seen, self.checks = run, {name: b"" for name in LEDGER}, 0

    def __call__(self) -> None:
        for name, old in self.seen.items():
            path = self.run / name
            new = path.read_bytes() if path.is_file() else b""
            assert new.startswith(old), f"{name} was rewritten while the search ran"
            self.seen[name] = new
        self.checks += 1


@pytest.mark.parametrize(
    "moment, ready",
    [
        ("after a controller update", lambda run: len(_rows(run / rf.HISTORY)) >= 1),
        ("in the final stage", lambda run: len(_rows(run / rf.FINAL_TRIALS)) >= 1),
    ],
)
def test_sigkill_then_resume_finishes_and_reruns_nothing_finished(ray_session, tmp_path, moment, ready):
    run, scratch = tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "sleep").write_text("0.2")
    proc = launch(tmp_path, ray_session, "--num-samples", "6", "--epochs", "2", "--controller-batch", "2",
                  "--final-top-k", "1", "--confirm-seeds", "3", "--max-concurrent", "1",
                  "--data-dir", str(scratch))  # fmt: skip
    watch = AppendOnly(run)

    def killed_when_ready() -> bool:
        watch()
        return ready(run)

    interrupt_when(proc, killed_when_ready, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL and watch.checks > 3
    done_before = {r["trial_id"] for name in (rf.TRIALS, rf.FINAL_TRIALS) for r in _rows(run / name)}
    before = {name: (run / name).read_bytes() if (run / name).is_file() else b"" for name in LEDGER}

    proc = launch(tmp_path, ray_session, "--resume")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, f"{moment}: {out[-3000:]}"
    for name, old in before.items():  # resumed by appending: what was there is still there
        text = old[: old.rfind(b"\n") + 1]
        assert (run / name).read_bytes().startswith(text), name
    trials, finals = _rows(run / rf.TRIALS), _rows(run / rf.FINAL_TRIALS)
    assert len(trials) == 7 and len({r["trial_id"] for r in trials}) == 7  # none + 6 sampled, each once
    pairs = [(r["label"], r["seed"]) for r in finals]  # the race: each (finalist, seed) trained once
    assert len(set(pairs)) == len(pairs) and {label for label, _ in pairs} == {"none", "searched#1"}
    final = _rows(run / rf.FINAL)
    assert sum(int(r["seeds"]) + int(r["confirm_seeds"] or 0) for r in final) == len(finals)  # replayed in full
    starts = Counter(
        line.split()[0] for line in (scratch / "calls.log").read_text().splitlines() if line.endswith(" start")
    )
    assert all(starts[t] == 1 for t in done_before)  # nothing that had finished ran again
    history = _rows(run / rf.HISTORY)
    assert [int(h["step"]) for h in history] == list(range(1, len(history) + 1)) and len(history) == 3
    assert "Verdict:" in out
