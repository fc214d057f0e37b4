"""Searchers without Ray (batches, out-of-order completion, save/restore) and launch_search
end to end on one shared local Ray session (controller, random, failures, bad arguments)."""

from __future__ import annotations

import csv
import json
import signal
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from controller.config import SearchConfig
from controller.outcome import NO_REPORT_ERROR, PARTIAL_ERROR, trial_outcome
from controller.policies import ControllerSearcher, RandomSearcher
from controller.run_folder import HISTORY_COLUMNS, Objective, trial_columns
from search_space.plan import Plan
from search_space.space import SearchSpace
from tests.helpers import CHILDREN
from tests.helpers.drivers import interrupt_when, launch

REPO = Path(__file__).resolve().parents[2]

PENALTY = 0.1
TRIAL_COLUMNS = trial_columns(Objective())


def read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def tiny_space() -> SearchSpace:
    return SearchSpace([("s1", ["s1"]), ("s2", ["s2"]), ("s3", ["s3"])], model="m")


def none_baseline(space: SearchSpace) -> dict[str, Plan]:
    return {"none": Plan.none(space.sites, model=space.model)}


def ok(val: float) -> dict:
    return {
        "final": True,
        "status": "ok",
        "val_acc": val,
        "best_val_acc": val,
        "epoch": 2,
        "seconds": 1.0,
        "node": "n1",
    }


# ----------------------------------------------------------------------- outcomes
@pytest.mark.parametrize(
    "result,errored,expect",
    [
        (ok(0.8), False, ("ok", 0.8, "")),
        ({"final": False, "val_acc": 0.4, "epoch": 1}, False, ("stopped", 0.4, "")),  # ASHA stop
        (
            {"final": True, "status": "diverged", "val_acc": 0.2, "message": "loss nan"},
            False,
            ("diverged", PENALTY, "loss nan"),
        ),
        (
            {"final": True, "status": "failed", "error": "ValueError: x", "val_acc": float("nan")},
            False,
            ("failed", PENALTY, "ValueError: x"),
        ),
        (
            {"final": False, "val_acc": 0.4, "epoch": 1},
            True,  # a worker killed after an epoch
            ("failed", None, PARTIAL_ERROR.format(epochs=1, metric="val_acc", value="0.4")),
        ),
        (None, True, ("failed", None, NO_REPORT_ERROR)),
        (None, False, ("stopped", None, "")),  # removed before it ever reported
    ],
)
def test_trial_outcome_statuses_and_rewards(result, errored, expect):
    out = trial_outcome(result, errored, PENALTY)
    assert (out.status, out.reward, out.error) == expect


# ----------------------------------------------------------------------- searchers, no Ray
def test_out_of_order_completions_form_batches_in_completion_order(tmp_path):
    s = ControllerSearcher(
        tiny_space(),
        num_samples=6,
        controller_batch=2,
        run_dir=tmp_path,
        seed=1,
        penalty_reward=PENALTY,
        baselines=none_baseline(tiny_space()),
    )
    configs = {f"t{i}": s.suggest(f"t{i}") for i in range(7)}
    assert s.suggest("t7") == s.FINISHED
    ref = configs["t0"]["plan"]
    assert set(ref.methods().values()) == {"none"}  # the baseline comes first
    for cfg in configs.values():
        assert cfg["searcher"] == "controller" and cfg["seeds"] == [0]
        assert s.space.decode(cfg["tokens"]).sites == cfg["plan"].sites
    vals = {f"t{i}": 0.5 + 0.05 * i for i in range(7)}
    for tid in ["t3", "t1", "t0", "t5", "t2", "t6", "t4"]:
        s.on_trial_complete(tid, ok(vals[tid]))
    hist = read_csv(tmp_path / "controller_history.csv")
    rows = read_csv(tmp_path / "trials.csv")
    assert list(hist[0]) == HISTORY_COLUMNS
    assert list(rows[0])[: len(TRIAL_COLUMNS)] == TRIAL_COLUMNS
    assert [r["trial_id"] for r in rows] == ["t3", "t1", "t0", "t5", "t2", "t6", "t4"]
    update_of = {t: h["update"] for h in hist for t in json.loads(h["trials"])}
    assert [update_of.get(r["trial_id"], "") for r in rows] == ["0", "0", "", "1", "1", "2", "2"]
    assert [int(h["step"]) for h in hist] == [1, 2, 3]
    assert [int(h["trials_seen"]) for h in hist] == [2, 5, 7]
    for h, batch in zip(hist, (["t3", "t1"], ["t5", "t2"], ["t6", "t4"])):
        assert float(h["mean_reward"]) == pytest.approx(np.mean([vals[t] for t in batch]), abs=1e-6)
    assert rows[2]["reference"] == "1" and rows[2]["baseline"] == "none" and rows[2]["site:s1"] == "none"
    best = Plan.load(tmp_path / "best_plan.json")
    assert best.metadata["trial_id"] == "t6" and best.metadata["val_acc"] == pytest.approx(0.8)
    state = json.loads((tmp_path / "run_state.json").read_text())
    assert (state["status"], state["completed"], state["num_samples"]) == ("finished", 7, 7)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_errored_trial_without_report_is_recorded_but_not_learned(tmp_path):
    s = ControllerSearcher(
        tiny_space(),
        num_samples=2,
        controller_batch=1,
        run_dir=tmp_path,
        penalty_reward=PENALTY,
        baselines=none_baseline(tiny_space()),
    )
    for tid in ("a", "b", "c"):
        s.suggest(tid)
    s.on_trial_result("b", {"final": False, "val_acc": 0.3, "epoch": 1, "node": "n2"})
    s.on_trial_complete("b", None, error=True)  # what Ray sends when the worker died
    s.on_trial_complete("c", {"final": True, "status": "failed", "error": "KeyError: 'x'", "val_acc": float("nan")})
    s.on_trial_complete("a", ok(0.9))  # the baseline: recorded, never learned from
    rows = {r["trial_id"]: r for r in read_csv(tmp_path / "trials.csv")}
    assert (rows["b"]["status"], rows["b"]["reward"], rows["b"]["node"]) == ("failed", "", "n2")
    # item: a killed worker's trial says what it reached, labelled partial, and is not learned from
    assert rows["b"]["error"] == PARTIAL_ERROR.format(epochs=1, metric="val_acc", value="0.3")
    assert float(rows["b"]["val_acc"]) == pytest.approx(0.3)
    assert (rows["c"]["status"], float(rows["c"]["reward"])) == ("failed", PENALTY)
    hist = read_csv(tmp_path / "controller_history.csv")
    assert len(hist) == 1 and float(hist[0]["mean_reward"]) == pytest.approx(PENALTY)


def _drive(s, ids, complete, vals):
    out = [s.suggest(t)["tokens"] for t in ids]
    for t in complete:
        s.on_trial_complete(t, ok(vals[t]))
    return out


def _strip_time(rows):
    return [{k: v for k, v in r.items() if k not in ("time", "seconds")} for r in rows]


@pytest.mark.parametrize("cls", [ControllerSearcher, RandomSearcher])
def test_resume_from_the_run_folder_continues_exactly(tmp_path, cls):
    """A copy of the run folder taken mid-search (as a hard kill leaves it) resumes to the same
    plans, records and controller steps as the search that went on; nothing is unpickled."""
    import shutil

    vals = {f"t{i}": 0.4 + 0.03 * i for i in range(9)}
    kw = dict(num_samples=8, seed=5, penalty_reward=PENALTY, baselines=none_baseline(tiny_space()))
    if cls is ControllerSearcher:
        kw["controller_batch"] = 2
    a = cls(tiny_space(), run_dir=tmp_path / "a", **kw)
    first = _drive(a, ["t0", "t1", "t2", "t3", "t4"], ["t2", "t0", "t4"], vals)  # t1, t3 running
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = cls(tiny_space(), run_dir=tmp_path / "b", **kw)
    b.resume()
    assert [r["trial_id"] for r in b.records] == ["t2", "t0", "t4"] and b.finished == 3
    again = [b.suggest(t)["tokens"] for t in ("r1", "r3")]  # the running trials run again first
    assert again == [first[1], first[3]]
    vals.update(r1=vals["t1"], r3=vals["t3"])
    rest_a = (["t5", "t6", "t7", "t8"], ["t1", "t5", "t3", "t6", "t8", "t7"])
    rest_b = (["t5", "t6", "t7", "t8"], ["r1", "t5", "r3", "t6", "t8", "t7"])
    assert _drive(a, *rest_a, vals) == _drive(b, *rest_b, vals)

    def same(rows):
        return [
            {k: v for k, v in r.items() if k not in ("time", "seconds", "trial_id", "trials", "plan")} for r in rows
        ]

    assert same(a.records) == same(b.records)
    assert same(a.history) == same(b.history)
    if cls is ControllerSearcher:
        assert [h["step"] for h in b.history] == [1, 2, 3, 4]
        assert a.reinforce.sample(3) == b.reinforce.sample(3)


def test_restore_refuses_a_different_space_or_searcher(tmp_path):
    a = ControllerSearcher(tiny_space(), num_samples=2)
    a.save(str(tmp_path / "s.pkl"))
    other = SearchSpace([("s1", ["s1"])], model="m")
    with pytest.raises(ValueError, match="space"):
        ControllerSearcher(other, num_samples=2).restore(str(tmp_path / "s.pkl"))
    with pytest.raises(ValueError, match="searcher"):
        RandomSearcher(tiny_space(), num_samples=2).restore(str(tmp_path / "s.pkl"))


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_tune_restore_of_a_checkpoint_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    """Without a run folder, Ray's checkpoint of our searcher is plain values loaded with
    weights_only=True: an object that would run code on loading is refused, not run."""
    import torch

    marker = tmp_path / "code-ran"
    torch.save({"version": 2, "searcher": "random", "policy": _RunsCode(marker)}, tmp_path / "s.pt")
    with pytest.raises(ValueError, match="searcher state: bad value .*UnpicklingError"):
        RandomSearcher(tiny_space(), num_samples=2).restore(str(tmp_path / "s.pt"))
    assert not marker.exists()
    a = ControllerSearcher(tiny_space(), num_samples=3, seed=2)  # and our own checkpoint loads
    for t in ("t0", "t1"):
        a.suggest(t)
    a.on_trial_complete("t0", ok(0.6))
    a.save(str(tmp_path / "ok.pt"))
    b = ControllerSearcher(tiny_space(), num_samples=3, seed=2)
    b.restore(str(tmp_path / "ok.pt"))
    assert [r["trial_id"] for r in b.records] == ["t0"] and set(b._pending) == {"t1"}
    assert a.reinforce.sample(2) == b.reinforce.sample(2)


def test_searcher_rejects_bad_counts():
    with pytest.raises(ValueError, match="controller_batch"):
        ControllerSearcher(tiny_space(), num_samples=2, controller_batch=0)
    with pytest.raises(ValueError, match="num_samples"):
        RandomSearcher(tiny_space(), num_samples=0)


# ----------------------------------------------------------------------- launch_search + Ray
def run_search(monkeypatch, tmp_path, child: str | None, *args: str) -> tuple[int, Path]:
    """launch_search.main in this process; the fake child's scratch folder is --data-dir."""
    import launch_search

    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    hook = ["--child", f"{CHILDREN}:{child}"] if child else []
    if "--baselines" not in args:
        hook += ["--baselines", "none"]
    if "--final-top-k" not in args:
        hook += ["--final-top-k", "0"]
    if child and "--learned-rates" not in args:
        hook += ["--no-learned-rates"]  # the fake children learn no rates
    rc = launch_search.main(
        ["--storage-path", str(tmp_path), "--name", "run", "--data-dir", str(scratch), *hook, *args]
    )
    return rc, tmp_path / "run"


def test_controller_search_with_real_children(ray_session, monkeypatch, tmp_path, capsys):
    rc, run = run_search(
        monkeypatch,
        tmp_path,
        None,
        "--num-samples",
        "5",
        "--epochs",
        "1",
        "--train-size",
        "100",
        "--controller-batch",
        "2",
        "--max-concurrent",
        "2",
        "--no-learned-rates",  # the controller's search alone (the learned baseline: test_learned_baseline.py)
    )
    assert rc == 0
    config = json.loads((run / "search_config.json").read_text())
    assert config["searcher"] == "controller" and config["version"] == 4 and "learned" not in config
    assert config["settings"]["train"]["epochs"] == 1 and config["settings"]["train"]["train_size"] == 100
    assert config["settings"]["num_samples"] == 5 and config["settings"]["max_concurrent"] == 2
    space = SearchSpace.from_dict(config["space"])
    rows = read_csv(run / "trials.csv")
    assert len(rows) == 6 and len({r["trial_id"] for r in rows}) == 6
    assert [int(r["order"]) for r in rows] == list(range(6))
    assert [c for c in rows[0] if c.startswith("site:")] == [f"site:{s}" for s in space.sites]
    assert all(r["status"] in ("ok", "diverged") and r["node"] for r in rows)
    assert {r["precision"] for r in rows} <= {"fp32", "bf16"} and len({r["precision"] for r in rows}) == 1
    refs = [r for r in rows if r["reference"] == "1"]
    assert len(refs) == 1 and all(refs[0][f"site:{s}"] == "none" for s in space.sites)
    for r in rows:
        plan = Plan.from_json(r["plan_json"])
        assert space.decode(json.loads(r["tokens"])).sites == plan.sites
        if r["status"] == "ok":
            assert 0.0 <= float(r["val_acc"]) <= 1.0 and float(r["reward"]) == float(r["val_acc"])
    hist = read_csv(run / "controller_history.csv")  # 5 sampled trials, batch 2: 2 + 2 + 1
    assert [int(h["step"]) for h in hist] == [1, 2, 3]
    for h in hist:
        used = [float(r["reward"]) for r in rows if r["trial_id"] in json.loads(h["trials"])]
        assert float(h["mean_reward"]) == pytest.approx(np.mean(used), abs=1e-6)
    best = Plan.load(run / "best_plan.json")
    ok_vals = [float(r["val_acc"]) for r in rows if r["status"] == "ok"]
    assert best.metadata["val_acc"] == pytest.approx(max(ok_vals))
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"
    out = capsys.readouterr().out
    assert "Best in search" in out and "No regularization: val_acc" in out
    assert "python -m results summarize" in out


def test_random_search_samples_the_seeded_uniform_plans(ray_session, monkeypatch, tmp_path):
    rc, run = run_search(
        monkeypatch,
        tmp_path,
        "quick",
        "--search",
        "random",
        "--num-samples",
        "4",
        "--epochs",
        "2",
        "--seed",
        "3",
        "--sites",
        "layer1.*",
    )
    assert rc == 0
    config = json.loads((run / "search_config.json").read_text())
    space = SearchSpace.from_dict(config["space"])
    assert space.sites and all(s.startswith("layer1.") for s in space.sites)
    rows = read_csv(run / "trials.csv")
    rng = np.random.default_rng(3)
    expected = [space.encode(Plan.none(space.sites, model=space.model))]
    expected += [space.random_tokens(rng) for _ in range(4)]
    assert sorted(json.loads(r["tokens"]) for r in rows) == sorted(expected)
    assert {r["searcher"] for r in rows} == {"random"} and {r["status"] for r in rows} == {"ok"}
    for r in rows:  # the fake child's reward: 0.5 + 0.4 * share of spatial_dropout sites
        methods = [r[f"site:{s}"] for s in space.sites]
        assert float(r["val_acc"]) == pytest.approx(0.5 + 0.4 * methods.count("spatial_dropout") / len(methods))
    assert read_csv(run / "controller_history.csv") == []


def test_failed_diverged_and_crashed_trials_never_stop_the_search(ray_session, monkeypatch, tmp_path):
    rc, run = run_search(
        monkeypatch,
        tmp_path,
        "flaky",
        "--num-samples",
        "6",
        "--epochs",
        "1",
        "--controller-batch",
        "2",
        "--max-concurrent",
        "1",
    )
    assert rc == 0
    rows = read_csv(run / "trials.csv")
    by_status = {s: [r for r in rows if r["status"] == s] for s in ("ok", "failed", "diverged")}
    assert [len(by_status[s]) for s in ("ok", "failed", "diverged")] == [2, 3, 2]
    raised = [r for r in by_status["failed"] if "exploded on purpose" in r["error"]]
    crashed = [r for r in by_status["failed"] if r["error"] == NO_REPORT_ERROR]
    assert len(raised) == 2 and len(crashed) == 1
    assert all(float(r["reward"]) == pytest.approx(PENALTY) for r in raised + by_status["diverged"])
    assert crashed[0]["reward"] == ""  # a dead worker says nothing about the plan
    assert all("loss is nan" in r["error"] for r in by_status["diverged"])
    hist = read_csv(run / "controller_history.csv")
    used = {t for h in read_csv(run / "controller_history.csv") for t in json.loads(h["trials"])}
    learned = [r for r in rows if r["trial_id"] in used]
    assert len(learned) == 5 and sum(1 for _ in hist) == 3  # 5 rewards, batch 2: 2 + 2 + 1
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"


def test_asha_stops_weak_trials_and_rewards_their_last_accuracy(ray_session, monkeypatch, tmp_path):
    rc, run = run_search(
        monkeypatch,
        tmp_path,
        "noisy",
        "--scheduler",
        "asha",
        "--num-samples",
        "7",
        "--epochs",
        "4",
        "--max-concurrent",
        "1",
        "--controller-batch",
        "3",
    )
    assert rc == 0
    rows = read_csv(run / "trials.csv")
    stopped = [r for r in rows if r["status"] == "stopped"]
    assert len(rows) == 8 and {r["status"] for r in rows} == {"ok", "stopped"}
    for r in stopped:  # ended at a rung before the last epoch, rewarded with what it reached
        assert int(r["epochs"]) < 4 and float(r["reward"]) == float(r["val_acc"])
    assert all(int(r["epochs"]) == 4 for r in rows if r["status"] == "ok")
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--num-samples", "0"], "--num-samples: bad value 0"),
        (["--epochs", "-2"], "--epochs: bad value -2"),
        (["--controller-batch", "0"], "--controller-batch"),
        (["--cpus-per-trial", "0"], "--cpus-per-trial"),
        (["--model", "resnet7"], "--model"),
        (["--dataset", "imagenet"], "--dataset"),
        (["--sites", "nosuchlayer"], "--sites: bad value 'nosuchlayer' (matches no site)"),
        (["--address", "127.0.0.1:1"], "--address: bad value '127.0.0.1:1'; cannot reach Ray"),
        (["--resume", "--name", "never-ran"], "--resume: no resumable run"),
        (["--resume"], "--resume: needs --name"),
        (["--search", "bayes"], "--search: bad value 'bayes'; allowed: controller, random, tpe"),
        (["--batch-size", "0"], "--batch-size: bad value 0"),
        (["--lr", "nan"], "--lr: bad value nan"),
        (["--controller-lr", "-0.1"], "--controller-lr: bad value -0.1"),
        (["--amp", "fp8"], "--amp: bad value 'fp8'; allowed: auto, none, bf16, fp16"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, tmp_path, capsys):
    import launch_search

    with pytest.raises(SystemExit) as exc:
        raise SystemExit(launch_search.main(["--storage-path", str(tmp_path), *args]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not list(tmp_path.iterdir())  # nothing was started or written


def test_gpus_requested_without_gpus_exit_2(tmp_path, capsys):
    import torch

    import launch_search

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert launch_search.main(["--storage-path", str(tmp_path), "--gpus-per-trial", "0.5"]) == 2
    assert "no GPU" in capsys.readouterr().err


def test_existing_run_folder_needs_resume(tmp_path, capsys):
    import launch_search

    (tmp_path / "taken").mkdir()
    assert launch_search.main(["--storage-path", str(tmp_path), "--name", "taken"]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_then_resume_finishes_only_the_remaining_trials(ray_session, tmp_path, sig):
    run, scratch, total = tmp_path / "run", tmp_path / "scratch", 10
    scratch.mkdir()
    (scratch / "sleep").write_text("0.3")
    proc = launch(
        tmp_path,
        ray_session,
        "--num-samples",
        str(total - 1),
        "--epochs",
        "2",
        "--controller-batch",
        "2",
        "--max-concurrent",
        "1",
        "--data-dir",
        str(scratch),
    )
    out = interrupt_when(proc, lambda: len(read_csv(run / "trials.csv")) >= 4, sig)
    assert proc.returncode == 130, out[-3000:]
    state = json.loads((run / "run_state.json").read_text())
    first = read_csv(run / "trials.csv")
    hist1 = read_csv(run / "controller_history.csv")
    assert state["status"] == "interrupted" and state["completed"] == len(first)
    assert 4 <= len(first) < total and hist1

    proc = launch(tmp_path, ray_session, "--resume")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    rows = read_csv(run / "trials.csv")
    hist = read_csv(run / "controller_history.csv")
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"
    assert len(rows) == total and len({r["trial_id"] for r in rows}) == total
    assert rows[: len(first)] == first  # appended, never rewritten
    starts = Counter(
        line.split()[0] for line in (scratch / "calls.log").read_text().splitlines() if line.endswith(" start")
    )
    ids = {r["trial_id"] for r in rows}
    assert ids <= set(starts) and len(set(starts) - ids) <= 1  # the interrupted trial ran again under a new id
    assert all(starts[r["trial_id"]] == 1 for r in first)  # finished trials never ran again
    assert sum(starts.values()) <= total + 1  # at most the one interrupted trial ran twice
    # The controller went on from its saved step: the history extends the first run's rows.
    assert hist[: len(hist1)] == hist1
    assert [int(h["step"]) for h in hist] == list(range(1, len(hist) + 1))
    assert [int(h["update"]) for h in hist] == list(range(len(hist)))
    assert len(hist) == 5  # 9 sampled trials, batch 2: 4 full batches + the last one
    dirs = {p.name for p in run.iterdir() if p.name.startswith("trial_")}
    assert {f"trial_{i}" for i in ids} <= dirs and len(dirs) <= total + 1
    assert "Best in search" in out


@pytest.mark.parametrize("flag, expected", [([], "auto"), (["--amp", "none"], "none"), (["--amp", "bf16"], "bf16")])
def test_amp_flag_reaches_every_child(flag, expected):
    import launch_search

    args = launch_search.build_parser().parse_args(["--epochs", "3", *flag])
    assert launch_search.resolve(args)["amp"] == expected


def test_final_stage_is_resumed_without_repeating_finished_retrainings(ray_session, tmp_path):
    run, scratch = tmp_path / "run", tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "sleep").write_text("0.3")
    # launch() turns the final stage off; the later flags turn it back on (argparse: last one wins)
    proc = launch(
        tmp_path,
        ray_session,
        "--num-samples",
        "3",
        "--epochs",
        "2",
        "--final-top-k",
        "1",
        "--final-stage",
        "fixed",
        "--final-seeds",
        "2",
        "--max-concurrent",
        "1",
        "--data-dir",
        str(scratch),
    )  # fmt: skip (the race's resume: test_ledger_kill.py)
    out = interrupt_when(proc, lambda: len(read_csv(run / "final_trials.csv")) >= 1)
    assert proc.returncode == 130, out[-3000:]
    partial = read_csv(run / "final_trials.csv")  # the final stage's ledger; final.csv comes when it is done
    assert 1 <= len(partial) < 4 and not (run / "final.csv").exists()
    proc = launch(tmp_path, ray_session, "--resume")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    final = read_csv(run / "final.csv")
    assert sorted(r["label"] for r in final) == ["none", "searched#1"]
    assert all(int(r["seeds"]) == 2 and sorted(json.loads(r["values"])) == ["1000", "1001"] for r in final)
    starts = Counter(
        line.split()[0] for line in (scratch / "calls.log").read_text().splitlines() if line.endswith(" start")
    )
    assert all(starts[r["trial_id"]] == 1 for r in partial)  # finished re-trainings never ran again
    assert 8 <= len(starts) <= 9 and sum(starts.values()) <= 9  # 4 search + 4 final; at most one ran twice
    assert "Verdict:" in out


def test_tpe_search_end_to_end(ray_session, monkeypatch, tmp_path):
    rc, run = run_search(
        monkeypatch,
        tmp_path,
        "quick",
        "--search",
        "tpe",
        "--num-samples",
        "6",
        "--epochs",
        "1",
        "--max-concurrent",
        "1",
    )
    assert rc == 0
    rows = read_csv(run / "trials.csv")
    assert len(rows) == 7 and {r["searcher"] for r in rows} == {"tpe"} and {r["status"] for r in rows} == {"ok"}
    config = json.loads((run / "search_config.json").read_text())
    space = SearchSpace.from_dict(config["space"])
    for r in rows:  # every TPE plan is a plan of the conditional space
        assert space.decode(json.loads(r["tokens"])).sites == Plan.from_json(r["plan_json"]).sites


def test_final_stage_shrinks_when_fewer_distinct_plans_finished(tmp_path):
    """top-k 2 but every sampled plan is the same: one searched finalist, and the run finishes."""
    s = RandomSearcher(
        tiny_space(),
        num_samples=3,
        run_dir=tmp_path,
        baselines=none_baseline(tiny_space()),
        final_top_k=2,
        final_seeds=[1000, 1001],
        settings=SearchConfig(final_stage="fixed"),
    )
    one = s.space.encode(s.space.uniform_plan("dropout", drop_prob=0.1, ramp=0.0))
    s._sample_tokens = lambda trial_id: list(one)  # always one plan
    ids = [f"t{i}" for i in range(4)]
    for tid in ids:
        s.suggest(tid)
    for tid in ids:
        s.on_trial_complete(tid, ok(0.7))
    finals = []
    while (cfg := s.suggest(f"f{len(finals)}")) not in (s.FINISHED, None):
        finals.append(cfg["label"])
    assert sorted(finals) == ["none", "none", "searched#1", "searched#1"]
    assert s.total_trials == 4 + 4
    for i in range(len(finals)):
        s.on_trial_complete(f"f{i}", ok(0.7))
    assert json.loads((tmp_path / "run_state.json").read_text())["status"] == "finished"


def test_review_fixes_final_stage_asha_partial_finalists_numpy_metrics_and_late_worker_errors():
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from controller.final import final_rows
    from controller.ray_session import _scheduler
    from controller.trainable import _scalars

    # ASHA never cuts a final re-training (one fresh seed, judged against nothing)
    asha = _scheduler("asha", {"max_epochs": 4, "reward_seeds": [0]})
    final = SimpleNamespace(config={"stage": "final"}, trial_id="f")
    assert asha.on_trial_result(None, final, {"epoch": 1, "val_acc": 0.0}) == TrialScheduler.CONTINUE
    # a finalist with 1 of its 3 seeds is incomplete and cannot be chosen
    rec = [
        {"label": "a", "plan_json": "{}", "methods": "", "status": "ok", "val_acc": 0.9, "seed": 1000},
        *(
            {"label": "b", "plan_json": "{}", "methods": "", "status": "ok", "val_acc": 0.8, "seed": s}
            for s in (1000, 1001, 1002)
        ),
    ]
    rows = {r["label"]: r for r in final_rows(rec, Objective(), [], expected_seeds=3)}
    assert not rows["a"]["complete"] and not rows["a"]["chosen"] and rows["b"]["chosen"]
    # numpy and 0-d torch numbers are metrics like Python's
    import torch

    assert _scalars({"v": np.float32(0.5), "e": np.int64(3), "t": torch.tensor(0.25)}) == {"v": 0.5, "e": 3, "t": 0.25}
    # a worker that fails after the child's final ok report: the value stands
    out = trial_outcome(ok(0.8), True, PENALTY)
    assert (out.status, out.reward) == ("ok", 0.8) and "after the child's final report" in out.error
