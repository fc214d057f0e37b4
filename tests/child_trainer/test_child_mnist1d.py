"""MNIST-1D: generated offline and deterministically, honest splits, its ConvNet and MLP children."""

from __future__ import annotations

import json
import random
import socket

import numpy as np
import pytest
import torch

from child_trainer import mnist1d as mnist1d_module
from child_trainer.__main__ import main
from child_trainer.data import DataError, load_data
from child_trainer.models import MNIST1DCNN, build_model
from child_trainer.train import TrainConfig, train_child
from search_space import SearchSpace, apply_plan
from search_space.apply import find_sites
from search_space.describe import describe


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread (two are far slower on a busy 2-core machine); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(len(x), -1)}


def _no_network(*_args, **_kwargs):
    raise AssertionError("MNIST-1D touched the network")


def test_generated_offline_without_files_and_global_random_state_kept(monkeypatch, tmp_path) -> None:
    import requests

    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    monkeypatch.setattr(requests, "get", _no_network)
    monkeypatch.setattr(requests.Session, "request", _no_network)
    monkeypatch.chdir(tmp_path)  # get_dataset would write ./mnist1d_data.pkl here
    mnist1d_module._generated.cache_clear()  # really generate, not the process's copy
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.random())
    random.seed(7)
    np.random.seed(7)
    x, y, x_test, y_test = mnist1d_module.generate_mnist1d()
    assert (random.random(), np.random.random()) == expected  # make_dataset's seed(42) was undone
    assert list(tmp_path.iterdir()) == []
    assert x.shape == (4000, 1, 40) and x_test.shape == (1000, 1, 40) and x.dtype == np.float32
    assert y.shape == (4000,) and y_test.shape == (1000,) and set(np.unique(y)) == set(range(10))
    # Every class is present in about its share (400 / 100 each), so accuracy means something.
    assert np.bincount(y, minlength=10).min() >= 380 and np.bincount(y_test, minlength=10).min() >= 80
    x[0, 0, 0] = 1e6  # callers get copies: the process's copy stays intact
    assert mnist1d_module.generate_mnist1d()[0][0, 0, 0] != 1e6


def test_splits_fixed_disjoint_stratified_and_normalised() -> None:
    d = load_data("mnist1d", seed=0)
    assert d.train_x.shape == (3000, 1, 40) and d.val_x.shape == (1000, 1, 40) and d.test_x.shape == (1000, 1, 40)
    assert d.in_channels == 1 and d.num_classes == 10 and d.image_shape == (1, 40) and d.augment == "none"
    tr, va, te = _rows(d.train_x), _rows(d.val_x), _rows(d.test_x)
    assert len(tr) == 3000 and not tr & va and not tr & te and not va & te
    assert abs(d.train_x.mean().item()) < 1e-4 and abs(d.train_x.std().item() - 1.0) < 1e-2
    counts = torch.bincount(d.val_y, minlength=10).double()
    assert (counts - 100).abs().max() <= 3  # stratified: 400 +- 11 per class in the 4,000, 1/4 of it here
    again, other = load_data("mnist1d", seed=0), load_data("mnist1d", seed=1)
    assert torch.equal(again.train_x, d.train_x) and torch.equal(again.val_y, d.val_y)
    assert not torch.equal(other.val_x, d.val_x)
    assert torch.equal(other.test_y, d.test_y)  # the package's own test split, whatever the seed
    torch.testing.assert_close(other.test_x, d.test_x, atol=0.01, rtol=0.0)  # normalised by other statistics


def test_train_size_subset_and_unused_sequences_join_validation() -> None:
    full = load_data("mnist1d", with_test=False)
    small = load_data("mnist1d", train_size=500, with_test=False)
    assert full.test_x is None and small.test_x is None
    assert len(small.train_y) == 500 and len(small.val_y) == 1000 + 2500
    assert torch.equal(small.val_x[:1000], full.val_x)  # the fixed validation split first
    assert _rows(small.train_x) <= _rows(full.train_x) and not _rows(small.train_x) & _rows(small.val_x)
    assert torch.bincount(small.train_y, minlength=10).min() >= 45
    with pytest.raises(DataError, match="train_size"):
        load_data("mnist1d", train_size=3001)


@pytest.mark.parametrize("name", ["mnist1d_cnn", "mnist1d_mlp"])
def test_forward_backward_and_plans_leave_eval_unchanged(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 10, in_channels=1, image_size=40)
    x = torch.randn(8, 1, 40)
    model.eval()
    with torch.no_grad():
        reference = model(x)
        torch.testing.assert_close(model(x.view(8, 40)), reference)  # (N, L) works too
    space = SearchSpace.for_model(model, example_input=x[:1])
    apply_plan(model, space.uniform_plan("dropout", drop_prob=0.5), total_steps=10)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference)
    model.train()
    out = model(x)
    assert out.shape == (8, 10) and not torch.allclose(out, model(x))  # dropout is on in training
    out.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_sites_are_the_batchnorm_maps_and_the_hidden_layers_never_the_logits() -> None:
    x = torch.randn(1, 1, 40)
    cnn = build_model("mnist1d_cnn", 10, in_channels=1, image_size=40)
    table = describe(cnn, x)
    assert list(table["site"]) == ["bn1", "bn2", "bn3"]
    assert list(table["shape"]) == ["(N, 25, 19)", "(N, 25, 10)", "(N, 25, 5)"]  # N, C, L maps
    assert "fc" not in find_sites(cnn)
    mlp = build_model("mnist1d_mlp", 10, in_channels=1, image_size=40)
    table = describe(mlp, x)
    assert list(table["site"]) == ["fc1", "fc2"] and list(table["shape"]) == ["(N, 100)", "(N, 100)"]
    paper = MNIST1DCNN(10, 1, 40, batch_norm=False)  # the repository's ConvBase: 5,210 parameters
    assert sum(p.numel() for p in paper.parameters()) == 5210 and "fc" not in list(describe(paper, x)["site"])
    with pytest.raises(ValueError, match="image_size"):
        build_model("mnist1d_cnn", 10, in_channels=1, image_size=2)


def test_a_few_steps_lower_the_loss_on_a_tiny_subset() -> None:
    d = load_data("mnist1d", train_size=64, with_test=False)
    for name in ("mnist1d_cnn", "mnist1d_mlp"):
        torch.manual_seed(0)
        model = build_model(name, 10, in_channels=1, image_size=40)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(40):
            loss = torch.nn.functional.cross_entropy(model(d.train_x), d.train_y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert losses[-1] < 0.5 * losses[0], (name, losses[0], losses[-1])


def test_train_child_learns_and_reports_test_only_when_asked() -> None:
    cfg = TrainConfig(model="mnist1d_cnn", dataset="mnist1d", train_size=300, epochs=6, num_threads=1)
    result = train_child(cfg)
    assert result["status"] == "ok" and result["val_acc"] > 0.3 and "test_acc" not in result  # chance: 0.1
    again = train_child(cfg)
    assert again["val_acc"] == result["val_acc"]  # same seed, same result


def test_models_and_datasets_must_match() -> None:
    with pytest.raises(ValueError, match="model.*mnist1d_cnn, mnist1d_mlp"):
        TrainConfig(model="digits_cnn", dataset="mnist1d")
    with pytest.raises(ValueError, match="dataset.*allowed: mnist1d"):
        TrainConfig(model="mnist1d_mlp", dataset="digits")
    with pytest.raises(ValueError, match="augment"):
        train_child(TrainConfig(model="mnist1d_cnn", dataset="mnist1d", augment="shift", epochs=1))
    TrainConfig(model="my_models:factory", dataset="mnist1d")  # a user's model may take sequences


def test_cli_picks_the_1d_child_for_mnist1d(capsys) -> None:
    argv = ["--dataset", "mnist1d", "--train-size", "100", "--epochs", "1", "--threads", "1", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == "mnist1d_cnn" and result["dataset"] == "mnist1d"
    assert main(["--model", "mnist1d_mlp", "--train-size", "100", "--epochs", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["dataset"] == "mnist1d"
