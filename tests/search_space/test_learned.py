"""`search_space.learned`: Concrete Dropout at a model's sites, its loss term, the learned
rates (they respond to the data, the planted structure and N as the paper says), and the
ordinary plan they make."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from child_trainer.models import build_model
from search_space import Plan, apply_plan, regularizers, remove_plan
from search_space.errors import FieldError
from search_space.layers import ConcreteDropout
from search_space.learned import (
    LEARNED,
    apply_learned,
    channel_dim_of_layout,
    learned_layers,
    learned_param_groups,
    learned_parameters,
    learned_plan,
    learned_rates,
    learned_regularizer,
    learned_sites,
    round_to_grid,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny trainings: one thread is fastest, and steady on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def digits_cnn() -> nn.Module:
    torch.manual_seed(0)
    return build_model("digits_cnn", 10, in_channels=1)


def test_layouts_map_to_channel_axes() -> None:
    assert channel_dim_of_layout("N,C,H,W") == 1
    assert channel_dim_of_layout("N,H,W,C") == 3
    assert channel_dim_of_layout("N,C,L") == 1
    assert channel_dim_of_layout("N,C,D,H,W") == 1
    assert channel_dim_of_layout("NDHWC") == 4 and channel_dim_of_layout("NCL") == 1
    for flat in ("N,C", "N,T,C", "T,N,C", "unknown"):
        assert channel_dim_of_layout(flat) is None


def test_sites_from_shapes_or_modules() -> None:
    model = digits_cnn()
    by_shape = learned_sites(model, torch.randn(1, 1, 8, 8))
    assert "bn1" in by_shape and "layer2.0" in by_shape and set(by_shape.values()) == {1}
    assert learned_sites(model, sites=["bn1", "layer1.0"]) == {"bn1": 1, "layer1.0": 1}
    lm = build_model("transformer_lm", 50, max_len=8)
    tokens = learned_sites(lm, torch.randint(0, 50, (1, 8)))
    assert tokens and set(tokens.values()) == {None}  # token sites: elementwise
    with pytest.raises(ValueError, match="nope"):
        learned_sites(model, sites=["nope"])


def test_inserted_like_a_plan_identity_in_eval_and_removable() -> None:
    model = digits_cnn().eval()
    x = torch.randn(4, 1, 8, 8)
    before = model(x)
    sites = learned_sites(model, x)
    apply_learned(model, sites, n_train=200, weight_decay=5e-4)
    assert set(regularizers(model)) == set(sites) == set(learned_rates(model))
    assert torch.equal(model.eval()(x), before)
    assert all(r == pytest.approx(0.1) for r in learned_rates(model).values())
    logits = {id(p) for p in learned_parameters(model)}
    assert logits <= {id(p) for p in model.parameters()} and len(logits) == len(sites)
    model.train()(x)
    assert learned_regularizer(model).requires_grad
    remove_plan(model)
    assert regularizers(model) == {} and not any("logit" in k for k in model.state_dict())


def test_loss_term_is_the_sum_of_the_sites_terms_with_the_following_conv() -> None:
    model = digits_cnn().train()
    sites = {"bn1": 1, "layer2.0": 1}
    apply_learned(model, sites, n_train=200, weight_decay=5e-4)
    model(torch.randn(4, 1, 8, 8))
    layers = learned_layers(model)
    # bn1 feeds layer1.0.conv1; the last block feeds the pooled linear head: no conv, no weight term
    expected = layers["bn1"].regularizer(model.layer1[0].conv1.weight, decayed=True)
    expected = expected + layers["layer2.0"].regularizer()
    torch.testing.assert_close(learned_regularizer(model), expected)
    assert layers["bn1"].weight_regularizer == pytest.approx(5e-4 / 2)  # l^2 = wd * tau * N
    flat = digits_cnn()
    apply_learned(flat, sites, n_train=200)  # no weight decay: a flat prior, no weight term
    flat.train()(torch.randn(4, 1, 8, 8))
    assert all(layer.weight_regularizer == 0 for layer in learned_layers(flat).values())


def test_torch_transformer_sites_and_virtual_qkv_sites() -> None:
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True), 1)
    x = torch.randn(3, 5, 16)
    before = model.eval()(x)
    sites = learned_sites(model, x)
    assert "layers.0.self_attn:q" in sites and set(sites.values()) == {None}
    apply_learned(model, sites, n_train=100)
    assert torch.equal(model.eval()(x), before)  # eval: the stock fused path, exactly
    model.train()
    (model(x).pow(3).sum() + learned_regularizer(model)).backward()
    layers = learned_layers(model)
    assert set(layers) == set(sites) and all(torch.isfinite(layer.logit.grad) for layer in layers.values())
    assert layers["layers.0.dropout"].units == 5 * 32  # K: one example's units (example_dims=1)
    remove_plan(model)
    assert type(model.layers[0].self_attn) is nn.MultiheadAttention and type(model.layers[0].dropout) is nn.Dropout


def test_container_site_logits_are_handed_out() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Sequential(nn.ReLU()), nn.Linear(8, 2))
    apply_learned(model, {"1": None}, n_train=10)
    assert len(learned_parameters(model)) == 1  # kept outside the container's modules
    groups = learned_param_groups(model)
    assert groups[1] == {"params": learned_parameters(model), "weight_decay": 0.0}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())) + 1


def test_bad_arguments_name_the_field() -> None:
    model = digits_cnn()
    with pytest.raises(FieldError, match="sites"):
        apply_learned(model, {}, n_train=10)
    with pytest.raises(FieldError, match="n_train"):
        apply_learned(model, {"bn1": 1}, n_train=0)
    with pytest.raises(FieldError, match="weight_decay"):
        apply_learned(model, {"bn1": 1}, n_train=10, weight_decay=-1.0)
    with pytest.raises(FieldError, match="channel_dim"):
        apply_learned(model, {"bn1": "1"}, n_train=10)
    zero = learned_regularizer(model)  # no ConcreteDropout: a loop may always add it
    assert zero.item() == 0.0 and not zero.requires_grad


def test_rates_make_an_ordinary_plan_on_the_grid_that_round_trips(tmp_path) -> None:
    rates = {"bn1": 0.59, "layer1.0": 0.124, "layer1.0.bn1": 0.126, "fc_in": 0.02, "layer2.0": 0.3}
    sites = {"bn1": 1, "layer1.0": 1, "layer1.0.bn1": 1, "fc_in": None, "layer2.0": None}
    plan = learned_plan(rates, sites, model="digits_cnn")
    got = {s: (spec.method, spec.params.get("drop_prob")) for s, spec in plan.sites.items()}
    assert got == {
        "bn1": ("spatial_dropout", 0.5),  # above the grid: its largest value
        "layer1.0": ("spatial_dropout", 0.1),
        "layer1.0.bn1": ("spatial_dropout", 0.15),
        "fc_in": ("none", None),  # rounds to 0
        "layer2.0": ("dropout", 0.3),
    }
    assert plan.metadata["source"] == LEARNED and plan.metadata["learned_rates"]["bn1"] == 0.59
    loaded = Plan.load(plan.save(tmp_path / "learned.json"))
    assert loaded.to_dict() == plan.to_dict()
    assert round_to_grid(0.075, (0.0, 0.05, 0.1)) == 0.05  # a tie goes down
    with pytest.raises(FieldError, match="rates"):
        learned_plan({"x": 0.1}, {})


def test_derived_plan_applies_and_trains() -> None:
    model = digits_cnn()
    x = torch.randn(4, 1, 8, 8)
    sites = learned_sites(model, x)
    plan = learned_plan(dict.fromkeys(sites, 0.2), sites)
    apply_plan(model, plan)
    model.train()(x).sum().backward()
    assert set(regularizers(model)) == set(sites)


def _fit(n_train: int, steps: int = 150) -> dict[str, float]:
    """A small MLP on 3 noisy classes, its hidden activations a learned site."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (96,), generator=g)
    x = torch.randn(3, 10, generator=g)[y] + torch.randn(96, 10, generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 3))
    apply_learned(model, {"1": None}, n_train=n_train)
    opt = torch.optim.Adam(learned_param_groups(model), lr=0.03)
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y) + learned_regularizer(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return learned_rates(model)


def test_rates_shrink_as_the_data_set_grows() -> None:
    """The paper: the regularizer is 1/N, so a larger N leaves the data term in charge and
    the rate falls; a tiny N lets the entropy term pull it toward 1/2."""
    small, large = _fit(10)["1"], _fit(100_000)["1"]
    assert small > 0.3 and large < 0.05, (small, large)  # (0.48 and 0.028)


class _Planted(nn.Module):
    """Two sites of 16 units with the same K and N: at ``a`` the signal is copied into every
    unit (dropping units costs little), at ``b`` it lives in one unit (dropping it is costly)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Identity(), nn.Identity()

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        a = self.a(s.expand(-1, 16))
        b = self.b(torch.cat([s, torch.zeros(len(s), 15)], 1))
        return a.mean(1) + b[:, 0]


def test_rates_follow_planted_structure() -> None:
    torch.manual_seed(0)
    s = torch.randn(256, 1)
    model = _Planted()
    apply_learned(model, {"a": None, "b": None}, n_train=200)
    opt = torch.optim.Adam(learned_parameters(model), lr=0.05)
    model.train()
    for _ in range(200):
        loss = (model(s) - 2 * s[:, 0]).pow(2).mean() + learned_regularizer(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    rates = learned_rates(model)
    assert rates["a"] > 0.15 and rates["b"] < 0.05, rates  # (0.26 and 0.007; without a data gradient both 0.5)


def test_layer_is_exported() -> None:
    import search_space.layers as layers

    assert layers.ConcreteDropout is ConcreteDropout and "ConcreteDropout" in layers.__all__
