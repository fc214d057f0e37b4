"""The user's own model from the command line: --model package.module:factory and --child's
child_model(config) with --describe (no Ray) and a real search; refusals before Ray; the
child_trainer CLI's language-model defaults and text-data messages."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import launch_search
from child_trainer.__main__ import build_parser
from child_trainer.__main__ import main as child_main

USER_NETS = """
import torch
from torch import nn


def mlp(num_classes, in_channels, image_size):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, 32), nn.BatchNorm1d(32),
                         nn.ReLU(), nn.Linear(32, num_classes))


class Picky(nn.Module):
    def forward(self, x):
        if self.training and bool((x == 0).any()):
            raise RuntimeError("zeros reached the head")
        return x.mean((2, 3))


def picky(num_classes):
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), Picky(), nn.Linear(4, num_classes))


def not_a_model():
    return "model"
"""

CHILD = """
from torch import nn
from child_trainer.train import train_child


def child_model(config):
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(6, 10))


def train(config, plan, report):
    return train_child(config, plan, report)
"""


@pytest.fixture
def user_folder(tmp_path: Path, monkeypatch) -> Path:
    (tmp_path / "usernets").mkdir()
    (tmp_path / "usernets" / "__init__.py").write_text("")
    (tmp_path / "usernets" / "nets.py").write_text(USER_NETS)
    (tmp_path / "mychild.py").write_text(CHILD)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_describe_a_users_model_prints_its_sites_and_starts_nothing(user_folder: Path, capsys) -> None:
    rc = launch_search.main(["--model", "usernets.nets:mlp", "--describe", "--storage-path", "runs"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["site", "module", "shape", "layout", "stage", "methods", "note"]
    assert lines[1].split()[:5] == ["2", "BatchNorm1d", "(N,", "32)", "N,C"]
    assert lines[1].rstrip().endswith("none, dropout")
    assert not (user_folder / "runs").exists()


def test_describe_the_model_of_a_child_file(user_folder: Path, capsys) -> None:
    rc = launch_search.main(["--child", "mychild.py:train", "--describe"])
    out = capsys.readouterr().out
    assert rc == 0
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["1"]  # child_model's BatchNorm2d, not digits_cnn's
    assert "dropblock" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "usernets.nets:nope"], "--model: bad value 'usernets.nets:nope' (usernets.nets has no function"),
        (["--model", "usernets.nets:not_a_model"], "--model: bad value 'usernets.nets:not_a_model' (returned a str)"),
        (["--model", "usernets.nets:mlp", "--sites", "1.nothing"], "--sites: bad value '1.nothing'"),
        (
            ["--model", "usernets.nets:picky"],
            "--sites: method 'dropout' at '1' (output shape (2, 4, 8, 8)) fails in a training forward/backward",
        ),
    ],
)
def test_refused_before_ray_with_one_line_and_nothing_written(user_folder: Path, capsys, args, message) -> None:
    rc = launch_search.main([*args, "--storage-path", "runs", "--name", "r", "--baselines", "none"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith(f"launch_search.py: error: {message}") and err.count("\n") == 1, err
    assert not (user_folder / "runs" / "r").exists()


def test_search_a_users_model_with_the_built_in_trainer(ray_session, user_folder: Path, capsys) -> None:
    rc = launch_search.main(
        ["--model", "usernets.nets:mlp", "--epochs", "1", "--train-size", "40", "--num-samples", "1",
         "--search", "random", "--final-top-k", "0", "--storage-path", "runs", "--name", "r"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    config = json.loads((user_folder / "runs" / "r" / "search_config.json").read_text())
    assert config["space"]["groups"] == [["stage1", ["2"]]] and config["space"]["methods"] == ["none", "dropout"]
    assert set(config["baselines"]) == {"none", "dropout"}  # no feature maps: the block baselines do not apply
    assert "Search finished: 4 trials (4 ok)" in out  # none, dropout, learned (our trainer learns the rates), 1 sampled
    rows = list(csv.DictReader((user_folder / "runs" / "r" / "trials.csv").open()))
    learned = next(r for r in rows if r["baseline"] == "learned")
    assert set(json.loads(learned["learned_rates"])) == {"2"}  # the MLP's hidden layer: elementwise


def test_child_trainer_language_model_uses_its_own_defaults() -> None:
    args = build_parser().parse_args(["--model", "transformer_lm"])
    assert args.lr is None and args.label_smoothing is None and args.dataset is None
    from child_trainer.train import TrainConfig

    cfg = TrainConfig(model="transformer_lm", dataset="builtin_text")
    assert (cfg.lr, cfg.label_smoothing, cfg.resolved_optimizer) == (3e-3, 0.0, "adamw")
    assert "builtin_text" in build_parser().format_help() and "wikitext2" in build_parser().format_help()


def test_child_trainer_missing_text_corpus_names_the_folder(tmp_path: Path, capsys) -> None:
    rc = child_main(["--model", "transformer_lm", "--dataset", "ptb", "--data-dir", str(tmp_path), "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(f"python -m child_trainer: error: --data-dir: bad value {str(tmp_path)!r} (ptb not found")
    assert "bad value None" not in err
