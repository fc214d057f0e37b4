"""Every flag of every command through bad values: one line on stderr naming the flag and the
value, exit status 2, no traceback, and nothing written (issue 14's 189-case probe, as a table)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

NO_CUDA = not torch.cuda.is_available()
BIG = str(2**70)
SEED_MAX = 2**31 - 1


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _one_line(capsys, prefix: str, needle: str) -> None:
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.match(rf"{re.escape(prefix)}( \w+)?: error: ", lines[0]) and needle in lines[0], err
    assert "Traceback" not in err and out == ""


@pytest.fixture
def places(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "a_file").write_text("not a folder")
    (tmp_path / "binary.json").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "bad_plan.json").write_text('{"sites": {"bn1": {"method": "teleport", "params": {}}}}')
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    return {
        "DEEP": str(tmp_path / "deep.json"),
        "LOOP": str(tmp_path / "loop"),
        "FILE": str(tmp_path / "a_file"),
        "DIR": str(tmp_path / "a_dir"),
        "BIN": str(tmp_path / "binary.json"),
        "BADPLAN": str(tmp_path / "bad_plan.json"),
        "MISSING": str(tmp_path / "missing.json"),
    }


def _fill(args: list[str], places: dict[str, str]) -> list[str]:
    return [places.get(a, a) for a in args]


LAUNCH = [
    (["--num-samples", "0"], "--num-samples: bad value 0"),
    (["--num-samples", "x"], "--num-samples: bad value 'x'"),
    (["--epochs", "0"], "--epochs: bad value 0"),
    (["--batch-size", "0"], "--batch-size: bad value 0"),
    (["--lr", "nan"], "--lr: bad value nan"),
    (["--lr", "-1"], "--lr: bad value -1"),
    (["--amp", "fp8"], "--amp: bad value 'fp8'"),
    (["--dataset", "imagenet"], "--dataset: bad value 'imagenet'"),
    (["--model", "resnet7"], "--model: bad value 'resnet7'"),
    (["--model", "transformer_lm", "--dataset", "digits"], "--dataset: bad value 'digits'"),
    (["--train-size", "0"], "--train-size: bad value 0"),
    (["--train-size", "5"], "--train-size: bad value 5"),
    (["--train-size", "100000"], "--train-size: bad value 100000"),
    (["--seq-len", "1"], "--seq-len: bad value 1"),
    (["--dataset", "cifar10", "--data-dir", "MISSING"], "--data-dir: cifar10 not found"),
    (["--search", "bayes"], "--search: bad value 'bayes'"),
    (["--scheduler", "hyperband"], "--scheduler: bad value 'hyperband'"),
    (["--reward-seeds", "0"], "--reward-seeds: bad value 0"),
    (["--baselines", "cutout"], "--baselines: bad value 'cutout'"),
    (["--baselines", "none,none"], "--baselines: bad value 'none,none'"),
    (["--final-top-k", "-1"], "--final-top-k: bad value -1"),
    (["--final-seeds", "2000"], "--final-seeds: bad value 2000"),
    (["--max-concurrent", "0"], "--max-concurrent: bad value 0"),
    (["--cpus-per-trial", "0"], "--cpus-per-trial: bad value 0"),
    (["--cpus-per-trial", "inf"], "--cpus-per-trial: bad value inf"),
    (["--gpus-per-trial", "-1"], "--gpus-per-trial: bad value -1"),
    (["--gpus-per-trial", "1.5"], "--gpus-per-trial: bad value 1.5"),
    (["--controller-batch", "0"], "--controller-batch: bad value 0"),
    (["--controller-lr", "1e300"], "--controller-lr: bad value 1e+300"),
    (["--controller-lr", "0"], "--controller-lr: bad value 0"),
    (["--sites", "nosuchlayer"], "--sites: bad value 'nosuchlayer'"),
    (["--child", "no_such_module_here:f"], "--child: bad value 'no_such_module_here:f'"),
    (["--child", "os:no_such_function"], "--child: bad value 'os:no_such_function'"),
    (["--child", "nocolon"], "--child: bad value 'nocolon'"),
    (["--address", "127.0.0.1:1"], "--address: bad value '127.0.0.1:1'"),
    (["--address", "nonsense"], "--address: bad value 'nonsense'"),
    (["--name", "a/b"], "--name: bad value 'a/b'"),
    (["--name", "x" * 300], "--name: bad value 'xxxx"),
    (["--name", ".hidden"], "--name: bad value '.hidden'"),
    (["--resume"], "--resume: needs --name"),
    (["--resume", "--name", "never-ran"], "--resume: no resumable run"),
    (["--seed", "-1"], "--seed: bad value -1"),
    (["--seed", BIG], f"--seed: bad value {BIG}"),
    (["--storage-path", "FILE"], "--storage-path: bad value"),
    (["--storage-path", "/proc/sys/no_such_place"], "--storage-path: bad value '/proc/sys/no_such_place'"),
    (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["--trial-timeout", "0"], "--trial-timeout: bad value 0"),
    (["--trial-timeout", "inf"], "--trial-timeout: bad value inf"),
    (["--trial-timeout", "nan"], "--trial-timeout: bad value nan"),
    (["--storage-path", "LOOP"], "--storage-path: bad value"),
    (["--lr", "1e308"], "--lr: bad value 1e+308"),
    (["--num-samples", BIG], f"--num-samples: bad value {BIG}"),
    (
        ["--final-seeds", "0", "--final-top-k", "2", "--final-stage", "fixed"],
        "--final-seeds: bad value 0; allowed: at least 1",
    ),
    (["--final-stage", "grid"], "--final-stage: bad value 'grid'; allowed: race, fixed"),
    (["--final-budget", "3"], "--final-budget: bad value 3; allowed: auto or an integer >= "),
    (["--race-growth", "*2"], "--race-growth: bad value '*2'"),
    (["--confirm-seeds", "2"], "--confirm-seeds: bad value 2; allowed: an integer >= 3"),
    (
        ["--seed", str(SEED_MAX - 1000), "--final-stage", "fixed"],
        f"--seed: bad value {SEED_MAX - 1000}; allowed: an integer in [0, {SEED_MAX - 1002}]",
    ),
    (["--seed", str(SEED_MAX - 1000)], f"--seed: bad value {SEED_MAX - 1000}; allowed: an integer in [0, "),
    (
        ["--child", "os:getcwd"],
        "--child: bad value 'os:getcwd' (too many positional arguments); allowed: a function taking (config, "
        "plan, report)",
    ),
    (["--cpus-per-trial", str((os.cpu_count() or 1) + 1)], "--cpus-per-trial: bad value"),
] + (
    [(["--amp", "fp16"], "--amp: bad value 'fp16'"), (["--gpus-per-trial", "0.5"], "--gpus-per-trial: bad value 0.5")]
    if NO_CUDA
    else []
)


@pytest.mark.parametrize("args,needle", LAUNCH, ids=[" ".join(a)[:40] for a, _ in LAUNCH])
def test_launch_search_bad_input(args, needle, tmp_path, places, capsys):
    import launch_search

    storage = tmp_path / "runs"
    storage.mkdir()
    before = _files(tmp_path)
    argv = ["--storage-path", str(storage), *_fill(args, places)]
    try:
        rc = launch_search.main(argv)
    except SystemExit as exc:  # argparse's own errors (unknown flags, bad types)
        rc = exc.code
    assert rc == 2
    _one_line(capsys, "launch_search.py", needle)
    assert _files(tmp_path) == before  # nothing written: no run folder, no lock


def test_resume_with_a_garbage_search_config_changes_nothing(tmp_path, capsys):
    import launch_search

    run = tmp_path / "r"
    run.mkdir()
    (run / "search_config.json").write_text("{ not json")
    (run / "tuner.pkl").write_bytes(b"\x80")
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    assert launch_search.main(["--storage-path", str(tmp_path), "--resume", "--name", "r"]) == 2
    _one_line(capsys, "launch_search.py", "--resume:")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


CHILD = [
    (["--epochs", "0"], "--epochs: bad value 0"),
    (["--epochs", "x"], "--epochs: bad value 'x'"),
    (["--batch-size", "0"], "--batch-size: bad value 0"),
    (["--lr", "nan"], "--lr: bad value nan"),
    (["--schedule", "step"], "--schedule: bad value 'step'"),
    (["--warmup-fraction", "1.5"], "--warmup-fraction: bad value 1.5"),
    (["--weight-decay", "-1"], "--weight-decay: bad value -1"),
    (["--label-smoothing", "1"], "--label-smoothing: bad value 1"),
    (["--momentum", "2"], "--momentum: bad value 2"),
    (["--seed", BIG], f"--seed: bad value {BIG}"),
    (["--split-seed", "-1"], "--split-seed: bad value -1"),
    (["--device", "tpu"], "--device: bad value 'tpu'"),
    (["--channels-last", "maybe"], "--channels-last: bad value 'maybe'"),
    (["--augment", "rotate"], "--augment: bad value 'rotate'"),
    (["--train-size", "0"], "--train-size: bad value 0"),
    (["--num-threads", "0"], "--num-threads: bad value 0"),
    (["--threads", "100000"], "--num-threads: bad value 100000"),  # used to segfault inside OpenMP
    (["--eval-batch-size", "0"], "--eval-batch-size: bad value 0"),
    (["--dataset", "synthetic", "--synthetic-classes", "1"], "--synthetic-classes: bad value 1"),
    (["--optimizer", "adam"], "--optimizer: bad value 'adam'"),
    (["--seq-len", "0"], "--seq-len: bad value 0"),
    (["--model", "nope"], "--model: bad value 'nope'"),
    (["--dataset", "mnist"], "--dataset: bad value 'mnist'"),
    (["--model", "transformer_lm", "--dataset", "ptb", "--data-dir", "MISSING"], "ptb"),
    (["--plan", "DIR"], "--plan: bad value"),
    (["--plan", "BIN"], "--plan: bad value"),
    (["--plan", "MISSING"], "--plan: bad value"),
    (["--plan", "BADPLAN"], "plan.format_version: missing"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--epochs", BIG], f"--epochs: bad value {BIG}"),
    (["--lr", "1e308"], "--lr: bad value 1e+308"),
    (["--plan", "DEEP"], "nested too deeply"),
] + (
    [(["--device", "cuda"], "--device: bad value 'cuda'"), (["--amp", "fp16"], "--amp: bad value 'fp16'")]
    if NO_CUDA
    else []
)


@pytest.mark.parametrize("args,needle", CHILD, ids=[" ".join(a)[:40] for a, _ in CHILD])
def test_child_trainer_bad_input(args, needle, tmp_path, places, capsys):
    from child_trainer.__main__ import main

    before = _files(tmp_path)
    try:
        rc = main([*_fill(args, places), "--epochs", "1"] if "--epochs" not in args else _fill(args, places))
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2
    _one_line(capsys, "python -m child_trainer", needle)
    assert _files(tmp_path) == before


@pytest.fixture
def fake_run(tmp_path: Path) -> Path:
    """A finished run folder written by a searcher without Ray (4 digits_cnn trials)."""
    from child_trainer import build_model
    from child_trainer.train import TrainConfig
    from controller.policies import RandomSearcher
    from search_space import SearchSpace

    space = SearchSpace.for_model(build_model("digits_cnn", 10, 1), share="stage", model_name="digits_cnn")
    run = tmp_path / "run"
    run.mkdir()
    (run / "search_config.json").write_text(
        json.dumps(
            {
                "version": 2,
                "searcher": "random",
                "space": space.to_dict(),
                "objective": {"metric": "val_acc", "mode": "max"},
                "train": TrainConfig(epochs=1, train_size=100).to_dict(),
            }
        )
    )
    s = RandomSearcher(space, num_samples=4, run_dir=run, seed=0)
    for i in range(4):
        s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", {"final": True, "status": "ok", "val_acc": 0.5 + i / 10, "epoch": 1})
    return run


RESULTS = [
    (["summarize", "RUN", "--top", "0"], "--top: bad value 0"),
    (["summarize", "RUN", "--top", "x"], "--top: bad value 'x'"),
    (["summarize", "RUN", "--format", "xml"], "--format: bad value 'xml'"),
    (["summarize", "MISSING"], "run directory not found"),
    (["summarize", "FILE"], "not a directory"),
    (["summarize", "DIR"], "run directory is empty"),
    (["plot", "RUN", "--seed", BIG], f"--seed: bad value {BIG}"),
    (["plot", "RUN", "--out", "FILE"], "--out: bad value"),
    (["plot", "RUN", "--out", "/proc/sys/no_such_place"], "--out: bad value '/proc/sys/no_such_place'"),
    (["export", "RUN", "--out", ""], "--out: bad value ''"),
    (["export", "RUN", "--out", "DIR"], "--out: bad value"),
    (["export", "RUN", "--out", "x.json", "--rank", "0"], "--rank: bad value 0"),
    (["export", "RUN", "--out", "x.json", "--rank", "99"], "rank: bad value 99"),
    (["export", "RUN", "--out", "x.json", "--rank", "x"], "--rank: bad value 'x'"),
    (["export", "RUN"], "the following arguments are required: --out"),
    (["retrain", "RUN", "--seeds", "0"], "--seeds: bad value 0"),
    (["retrain", "RUN", "--top", "-1"], "--top: bad value -1"),
    (["retrain", "RUN", "--epochs", "0"], "--epochs: bad value 0"),
    (["retrain", "RUN", "--train-size", "0"], "--train-size: bad value 0"),
    (["retrain", "RUN", "--train-size", "x"], "--train-size: bad value 'x'"),
    (["retrain", "RUN", "--baselines", "x"], "--baselines: bad value 'x'"),
    (["retrain", "RUN", "--device", "tpu"], "--device: bad value 'tpu'"),
    (["retrain", "RUN", "--num-threads", "0"], "--num-threads: bad value 0"),
    (["retrain", "RUN", "--seed-offset", "-1"], "--seed-offset: bad value -1"),
    (["retrain", "RUN", "--out", "FILE"], "--out: bad value"),
    (["retrain", "RUN", "--cpus-per-trial", "0"], "--cpus-per-trial: bad value 0"),
    (["retrain", "RUN", "--cpus-per-trial", "x"], "--cpus-per-trial: bad value 'x'"),
    (["retrain", "RUN", "--gpus-per-trial", "-1"], "--gpus-per-trial: bad value -1"),
    (["retrain", "RUN", "--gpus-per-trial", "1.5"], "--gpus-per-trial: bad value 1.5"),
    (["retrain", "RUN", "--address", "nohost"], "--address: bad value 'nohost'; allowed: host:port or auto"),
    (["retrain", "RUN", "--address", "127.0.0.1:1"], "--address: bad value '127.0.0.1:1'; cannot reach Ray"),
    (["nope", "RUN"], "invalid choice: 'nope'"),
] + (
    [
        (["retrain", "RUN", "--device", "cuda"], "--device: bad value 'cuda'"),
        (["retrain", "RUN", "--gpus-per-trial", "0.5"], "--gpus-per-trial: bad value 0.5; allowed here: 0"),
    ]
    if NO_CUDA
    else []
)


@pytest.mark.parametrize("args,needle", RESULTS, ids=[" ".join(a)[:40] for a, _ in RESULTS])
def test_results_bad_input(args, needle, fake_run, places, capsys, monkeypatch):
    from results.cli import main

    monkeypatch.chdir(fake_run.parent)
    root = fake_run.parent
    before = _files(root)
    try:
        rc = main(_fill(args, {**places, "RUN": str(fake_run)}))
    except SystemExit as exc:
        rc = exc.code
    assert rc == 2
    _one_line(capsys, "python -m results", needle)
    assert _files(root) == before
    assert not os.path.exists(root / "x.json")


def test_a_child_reporting_1e308_is_recorded_failed_and_the_search_goes_on(tmp_path, monkeypatch):
    """1e308 used to stop the search with OverflowError (the mean of two seeds, the batch's
    mean reward); now the trial is recorded as failed, naming the value and the bound."""
    from ray import tune

    from child_trainer import build_model
    from controller import run_folder as rf
    from controller import trainable
    from controller.policies import make_searcher
    from search_space import SearchSpace

    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", reports.append)
    monkeypatch.setattr(trainable, "_node_name", lambda: "here")
    trainable.run_trial({"plan": None, "seeds": [0, 1]}, lambda plan, seed, report: {"val_acc": 1e308}, rf.Objective())
    assert reports[-1]["status"] == "failed" and "1e+308" in reports[-1]["error"]

    space = SearchSpace.for_model(build_model("digits_cnn", 10, 1), share="stage", model_name="digits_cnn")
    s = make_searcher("controller", space, num_samples=4, run_dir=tmp_path, seed=0, controller_batch=2)
    for i in range(4):
        s.suggest(f"t{i}")
        value = 1e308 if i % 2 else 0.5
        s.on_trial_complete(f"t{i}", {"final": True, "status": "ok", "val_acc": value, "epoch": 1})
    assert s.fatal_error is None
    trials = rf.read_trials(tmp_path / rf.TRIALS, rf.Objective())
    assert list(trials["status"]) == ["ok", "failed", "ok", "failed"]
    assert "val_acc: bad value 1e+308" in trials["error"][1]


@pytest.mark.parametrize("command", ["summarize", "export"])
def test_results_final_csv_missing_a_column_is_one_line(command, fake_run, capsys, monkeypatch):
    from results.cli import main

    monkeypatch.chdir(fake_run.parent)
    (fake_run / "final.csv").write_text(
        "label,kind,seeds,se,values,chosen,methods,plan_json\nnone,baseline,3,0.1,[],0,,{}\n"
    )
    before = _files(fake_run.parent)
    assert main([command, str(fake_run), *(["--out", "x.json"] if command == "export" else [])]) == 2
    _one_line(capsys, "python -m results", "column(s) mean missing")
    assert _files(fake_run.parent) == before


def test_results_deeply_nested_json_is_one_line(fake_run, capsys):
    from results.cli import main

    (fake_run / "search_config.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main(["summarize", str(fake_run)]) == 2
    _one_line(capsys, "python -m results", "cannot read")


def test_results_count_a_duplicated_trials_row_once(fake_run):
    from results import load_run

    lines = (fake_run / "trials.csv").read_text().splitlines(keepends=True)
    (fake_run / "trials.csv").write_text("".join(lines + lines[-1:]))
    trials = load_run(fake_run)
    assert len(trials) == 4 and trials["trial_id"].is_unique


def test_next_commands_are_shell_quoted(tmp_path):
    import shlex

    import pandas as pd

    from controller import run_folder as rf
    from controller.api import SearchResult, summary_text

    run = tmp_path / "my runs" / "a run"
    empty = pd.DataFrame(columns=rf.trial_columns(rf.Objective()))
    text = summary_text(SearchResult(run, "finished", rf.Objective(), None, empty))
    assert f"python -m results summarize {shlex.quote(str(run))}" in text
    assert shlex.split(text.splitlines()[-1])[-1] == str(run)


def test_child_trainer_ctrl_c_stops_with_130_and_one_line(monkeypatch, capsys):
    import child_trainer.__main__ as child_main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(child_main, "train_child", interrupted)
    assert child_main.main(["--epochs", "1"]) == 130
    _, err = capsys.readouterr()
    assert err.strip() == "python -m child_trainer: interrupted"
