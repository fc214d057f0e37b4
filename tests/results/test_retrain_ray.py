"""Issue 25 item 6: ``results retrain`` trains on Ray on every CPU, records each finished
(plan, seed) in its ledger, resumes without training a finished pair again, and says "better"
only where Holm's correction over its comparisons allows.

The run folder is written without Ray (a RandomSearcher, as tests/launch_search does); its
child is ``tests/helpers/children.py:counted``, which logs every training it is asked to test
(plan, seed, process, start, end), so the tests count and time what retrain trained.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

from controller import run_folder as rf
from results.cli import main
from results.retrain import summarize_retrain
from tests.helpers import CHILDREN


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A finished digits_cnn run of 3 searched trials whose child is `counted` (scratch: data_dir)."""
    from child_trainer import build_model
    from child_trainer.train import TrainConfig
    from controller.policies import RandomSearcher
    from search_space import SearchSpace

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    space = SearchSpace.for_model(build_model("digits_cnn", 10, 1), share="stage", model_name="digits_cnn")
    path = tmp_path / "run"
    path.mkdir()
    train = TrainConfig(epochs=1, train_size=100, data_dir=str(scratch), num_threads=1).to_dict()
    config = {
        "version": 3,
        "searcher": "random",
        "space": space.to_dict(),
        "objective": {"metric": "val_acc", "mode": "max"},
        "reward_seeds": [0],
        "train": train,
        "args": {"child": f"{CHILDREN}:counted"},
    }
    (path / rf.SEARCH_CONFIG).write_text(json.dumps(config))
    s = RandomSearcher(space, num_samples=3, run_dir=path, seed=0)
    for i in range(3):
        s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", {"final": True, "status": "ok", "val_acc": 0.5 + i / 10, "epoch": 1})
    rf.write_run_state(path, "finished", 3, 3)
    return path


def _retrain(run: Path, out: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str, str]:
    argv = ["retrain", str(run), "--out", str(out), "--baselines", "none", "dropout", "--no-tuned", *flags]
    rc = main(argv)
    o, e = capsys.readouterr()
    return rc, o, e


def _trainings(run: Path) -> list[tuple[str, int, int, float, float]]:
    """Every test-time training of the child: (plan hash, seed, pid, start, end)."""
    log = run.parent / "scratch" / "trainings.log"
    if not log.is_file():
        return []
    out = []
    for line in log.read_text().splitlines():
        head, seed, pid, start, end = line.split(" ")
        out.append((head, int(seed), int(pid), float(start), float(end)))
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_retrain_runs_its_trainings_on_ray_on_every_cpu(ray_session, run: Path, tmp_path: Path, capsys):
    (run.parent / "scratch" / "sleep").write_text("0.25")  # long enough for two trainings to overlap
    out = tmp_path / "out"
    rc, o, e = _retrain(run, out, capsys, "--top", "2", "--seeds", "3")
    assert rc == 0, e
    rows = _csv(out / rf.RETRAIN)
    plans = list(dict.fromkeys(r["plan"] for r in rows))
    assert plans == ["searched#1", "searched#2", "none", "dropout"]
    assert [(r["plan"], r["seed"]) for r in rows] == [(p, s) for p in plans for s in ("1", "2", "3")]
    assert list(rows[0]) == rf.retrain_columns(rf.Objective())
    assert "seeds [1, 2, 3]: fresh (the search never trained with them)" in o
    # every (plan, seed) trained exactly once, each in a Ray task of its own, recorded in the ledger
    trained = _trainings(run)
    assert len(trained) == 12 and len(Counter((k, s) for k, s, *_ in trained)) == 12
    ledger = _csv(out / rf.RETRAIN_TRIALS)
    assert list(ledger[0]) == rf.retrain_trial_columns(rf.Objective())
    assert len(ledger) == 12 and len({r["task_id"] for r in ledger}) == 12 and all(r["node"] for r in ledger)
    same = {(r["plan"], r["seed"], r["test_acc"]) for r in rows}
    assert {(r["plan"], r["seed"], r["test_acc"]) for r in ledger} == same
    # both CPUs of the session's Ray trained at once: two worker processes, overlapping trainings
    assert len({pid for *_, pid, _, _ in trained}) == 2
    spans = sorted((start, end) for *_, start, end in trained)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))
    summary = _csv(out / rf.RETRAIN_SUMMARY)
    assert list(summary[0]) == rf.retrain_summary_columns(rf.Objective())
    assert {r["holm_family"] for r in summary if r["plan"] != r["best_baseline"]} == {"3"}
    assert "verdicts: Holm-corrected over the 3 comparisons with" in o
    assert (out / rf.RETRAIN_PLOT).is_file() and (out / "plans" / "searched_2.json").is_file()


def test_an_interrupted_retrain_resumes_without_training_a_finished_pair_again(
    ray_session, run: Path, tmp_path: Path, capsys, caplog
):
    scratch, out = run.parent / "scratch", tmp_path / "out"
    # 1. a worker dies in one training: the others are recorded, the command says what to do (exit 1)
    (scratch / "die_once").write_text("")
    rc, o, e = _retrain(run, out, capsys, "--seeds", "3")
    assert rc == 1 and e.count("\n") == 1 and "1 training(s) ended without a result" in e
    assert "8 of 9 trainings are recorded" in e and "run the same command again to retry the other 1" in e
    assert not (out / rf.RETRAIN).exists() and len(_csv(out / rf.RETRAIN_TRIALS)) == 8
    # 2. the same command trains only the missing one
    rc, o, e = _retrain(run, out, capsys, "--seeds", "3")
    assert rc == 0, e
    assert len(_trainings(run)) == 9
    first = pd.read_csv(out / rf.RETRAIN).drop(columns="seconds")
    # 3. a SIGKILL left 4 rows and half of a fifth (a torn last line): 5 trainings again, not 9
    text = (out / rf.RETRAIN_TRIALS).read_text()
    lines = text.splitlines(keepends=True)
    (out / rf.RETRAIN_TRIALS).write_text("".join(lines[:5]) + lines[5][:40])
    (scratch / "trainings.log").unlink()
    rc, o, e = _retrain(run, out, capsys, "--seeds", "3")
    assert rc == 0, e
    assert len(_trainings(run)) == 5
    assert any("torn last line" in r.message for r in caplog.records)
    ledger = _csv(out / rf.RETRAIN_TRIALS)
    assert len(ledger) == 9 and (out / rf.RETRAIN_TRIALS).read_text().endswith("\n")
    assert all(len(r) == len(rf.retrain_trial_columns(rf.Objective())) and None not in r.values() for r in ledger)
    pd.testing.assert_frame_equal(pd.read_csv(out / rf.RETRAIN).drop(columns="seconds"), first)
    # 4. everything recorded: nothing is trained; more seeds train only the new seed of each plan
    rc, o, e = _retrain(run, out, capsys, "--seeds", "3")
    assert rc == 0 and len(_trainings(run)) == 5
    rc, o, e = _retrain(run, out, capsys, "--seeds", "4")
    assert rc == 0, e
    assert [seed for _, seed, *_ in _trainings(run)[5:]] == [4, 4, 4]
    # 5. another recipe in the same folder is refused in one line naming the flag; nothing trains
    rc, o, e = _retrain(run, out, capsys, "--seeds", "3", "--epochs", "2")
    assert rc == 2 and e.count("\n") == 1 and len(_trainings(run)) == 8
    assert e.startswith("python -m results: error: --epochs: bad value 2 (") and "holds trainings with epochs 1" in e
    # 6. SIGTERM (as Ctrl+C) mid-retrain: exit 130, one line; the same command then trains only what
    # the ledger lacks (a training cut short may run again; a recorded one never does)
    (scratch / "sleep").write_text("0.5")
    (scratch / "term_driver").write_text(str(os.getpid()))
    rc, o, e = _retrain(run, out, capsys, "--seeds", "6")
    assert rc == 130 and e.count("\n") == 1 and e.startswith("python -m results: interrupted: ")
    assert "run the same command again to train the other" in e and not (scratch / "term_driver").exists()
    recorded = {(r["plan_hash"], int(r["seed"])) for r in _csv(out / rf.RETRAIN_TRIALS)}
    assert len(recorded) < 18
    before = len(_trainings(run))
    rc, o, e = _retrain(run, out, capsys, "--seeds", "6")
    assert rc == 0, e
    again = {(k, s) for k, s, *_ in _trainings(run)[before:]}
    assert not again & recorded and len(_csv(out / rf.RETRAIN_TRIALS)) == 18


def _rows(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"plan": p, "kind": "baseline" if p == "none" else "searched", "seed": s, "status": "ok",
             "test_acc": v, "val_acc": v, "summary": p}
            for p, vs in values.items()
            for s, v in enumerate(vs)
        ]
    )  # fmt: skip


def test_holm_turns_a_lucky_better_into_cannot_tell_and_keeps_a_clear_one():
    """Three plans against the baseline: two are "better" on their own (p 0.03 and 0.04) but
    not below 0.05/2 once the clear one (p < 0.001 < 0.05/3) is taken, so Holm stops: it keeps
    the clear "better" and makes the lucky ones "cannot tell"."""
    base = [0.90, 0.91, 0.92, 0.93, 0.94]
    d_clear = [0.030, 0.031, 0.029, 0.030, 0.032]
    d_lucky1 = [0.010, 0.002, 0.020, 0.005, 0.012]  # the same differences as d_lucky2, shuffled
    d_lucky2 = [0.012, 0.005, 0.010, 0.020, 0.002]
    values = {
        "none": base,
        "searched#1": [b + d for b, d in zip(base, d_clear)],
        "searched#2": [b + d for b, d in zip(base, d_lucky1)],
        "searched#3": [b + d for b, d in zip(base, d_lucky2)],
    }
    p_own = {k: stats.ttest_1samp(d, 0).pvalue for k, d in (("clear", d_clear), ("lucky", d_lucky1))}
    assert p_own["clear"] < 0.05 / 3 and 0.025 < p_own["lucky"] < 0.05  # the case is what it says
    out = summarize_retrain(_rows(values), rf.Objective()).set_index("plan")
    assert out.loc["searched#1", "comparison"] == "better" and bool(out.loc["searched#1", "holm_rejected"])
    for p in ("searched#2", "searched#3"):
        assert out.loc[p, "comparison_uncorrected"] == "better" and out.loc[p, "p_value"] == pytest.approx(
            p_own["lucky"]
        )
        assert out.loc[p, "comparison"] == "cannot tell" and not out.loc[p, "holm_rejected"]
        assert out.loc[p, "holm_family"] == 3
    assert out.loc["none", "comparison"] == "best baseline" and out.loc["none", "holm_family"] == 0
    # alone against the baseline, a lucky one stays "better": one comparison, nothing to correct
    one = summarize_retrain(_rows({"none": base, "searched#2": values["searched#2"]}), rf.Objective())
    assert list(one["comparison"]) == ["best baseline", "better"] and math.isclose(
        one["p_value"].iloc[1], p_own["lucky"]
    )


def test_two_retrains_into_one_folder_cannot_run_at_once(run: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    with rf.RunFolderLock(out):  # another retrain holds the folder
        rc, o, e = _retrain(run, out, capsys)
    assert rc == 2 and e.count("\n") == 1 and e.startswith(f"python -m results: error: --out: bad value '{out}'")
    assert "another retrain" in e and not _trainings(run) and not (out / rf.RETRAIN_TRIALS).exists()
