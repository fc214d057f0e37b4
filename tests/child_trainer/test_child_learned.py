"""train_child with ``learned=True``: Concrete Dropout at the sites, its regularizer in every
step's loss, its logits without weight decay, and the rate each site learned in the result."""

from __future__ import annotations

import pytest
import torch

import search_space.learned as learned_mod
from child_trainer import TrainConfig, train_child
from child_trainer.train import _LMRun, _Run
from search_space import Plan, SiteSpec
from search_space.learned import learned_layers, learned_plan

SMALL = dict(train_size=100, epochs=3, batch_size=25, num_threads=1, amp="none")


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_learned_training_reports_a_moved_rate_per_site_and_adds_the_regularizer(monkeypatch) -> None:
    calls = []
    real = learned_mod.learned_regularizer
    monkeypatch.setattr(learned_mod, "learned_regularizer", lambda m: calls.append(1) or real(m))
    result = train_child(TrainConfig(learned=True, **SMALL))
    assert result["status"] == "ok"
    rates = result["learned_rates"]
    assert {"bn1", "layer1.0", "layer2.0"} <= set(rates)
    assert all(0 < r < 1 for r in rates.values())
    assert max(abs(r - 0.1) for r in rates.values()) > 0.005  # trained from the initial 0.1
    assert len(calls) == 3 * 4  # every step: 3 epochs of 100 // 25 steps
    plan = learned_plan(rates, dict.fromkeys(rates, 1), model="digits_cnn")
    again = train_child(TrainConfig(**SMALL), plan)  # the derived plan trains like any plan
    assert again["status"] == "ok" and "learned_rates" not in again


def test_same_seed_same_rates_and_a_plan_chooses_the_sites() -> None:
    plan = Plan({"bn1": SiteSpec("dropblock", {"drop_prob": 0.1, "block_size": 3, "share_channels": False}),
                 "layer2.0": SiteSpec("none", {})})  # fmt: skip
    a, b = (train_child(TrainConfig(learned=True, **SMALL), plan) for _ in range(2))
    assert set(a["learned_rates"]) == {"bn1", "layer2.0"}  # the plan's sites, its methods ignored
    assert a["learned_rates"] == b["learned_rates"] and a["val_acc"] == b["val_acc"]


def test_logits_train_without_weight_decay() -> None:
    run = _Run(TrainConfig(learned=True, **SMALL), None)
    groups = run.optimizer.param_groups
    logits = {id(p) for p in run.learned_parameters}
    assert groups[0]["weight_decay"] == 5e-4 and not logits & {id(p) for p in groups[0]["params"]}
    assert groups[1]["weight_decay"] == 0.0 and {id(p) for p in groups[1]["params"]} == logits
    assert all(site == 1 for site in run.learned_sites.values())  # digits maps: per channel


def test_language_model_learns_elementwise_rates_per_token() -> None:
    lm = dict(model="transformer_lm", dataset="builtin_text", train_size=3000, seq_len=32, batch_size=16)
    cfg = TrainConfig(epochs=1, learned=True, num_threads=1, amp="none", **lm)
    result = train_child(cfg)
    assert result["status"] == "ok" and "embed" in result["learned_rates"]
    run = _LMRun(cfg, None)  # one data point per token: N = training tokens, K = channels
    assert set(run.learned_sites.values()) == {None}
    layers = learned_layers(run.model)
    assert all(layer.n_train == run.windows * 32 and layer.example_dims == 2 for layer in layers.values())
