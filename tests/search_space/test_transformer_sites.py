"""Transformer sites: our vit_tiny / transformer_lm and torch's nn.TransformerEncoder(Layer)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from child_trainer.models import build_model
from search_space import (
    SEQUENCE_METHODS,
    Plan,
    PlanError,
    SearchSpace,
    SiteSpec,
    apply_plan,
    find_sites,
    regularizers,
    remove_plan,
    step_schedulers,
    transformer_sites,
)
from search_space.apply import RegularizedMultiheadAttention, unwrap_regularizer

BLOCK_SITES = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.act", "mlp.fc2"]
TORCH_SITES = ["self_attn:q", "self_attn:k", "self_attn:v", "dropout1", "dropout", "dropout2"]
SEQ = SiteSpec("seq_pattern", {"drop_prob": 0.3, "size": 2, "stride": 4, "share_t": True, "share_c": False})


def _lm() -> nn.Module:
    torch.manual_seed(0)
    return build_model("transformer_lm", 50, max_len=16)


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return build_model("vit_tiny", 10, in_channels=1, image_size=8)


def _encoder(batch_first: bool = True, norm_first: bool = False) -> nn.Module:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=batch_first, norm_first=norm_first)
    return nn.Sequential(nn.Embedding(30, 32), nn.TransformerEncoder(layer, 2, enable_nested_tensor=False))


def test_our_models_expose_the_paper_sites() -> None:
    lm, vit = _lm(), _vit()
    expected = ["embed"] + [f"blocks.{i}.{s}" for i in range(2) for s in BLOCK_SITES]
    assert find_sites(lm) == transformer_sites(lm) == expected
    assert find_sites(vit) == ["embed"] + [f"blocks.{i}.{s}" for i in range(4) for s in BLOCK_SITES]


def test_torch_encoder_sites_include_virtual_qkv_and_embedding() -> None:
    model = _encoder()
    assert find_sites(model) == ["0"] + [f"1.layers.{i}.{s}" for i in range(2) for s in TORCH_SITES]


@pytest.mark.parametrize("share", [None, "stage"])
@pytest.mark.parametrize("make", [_lm, _vit, _encoder])
def test_space_is_none_dropout_seq_pattern_per_site_or_block(make, share) -> None:
    model = make()
    space = SearchSpace.for_model(model, share=share, model_name="m")
    assert space.methods == SEQUENCE_METHODS
    params = [d.param for d in space.decisions[:7]]
    assert params == ["method", "drop_prob", "ramp", "size", "stride", "share_t", "share_c"]
    sites = find_sites(model)
    if share is None:
        assert len(space.groups) == len(sites)
    else:  # the embedding alone, then one group per block
        assert [k for k, _ in space.groups][0] in ("embed", "0")
        assert all(k.endswith(".*") for k, _ in space.groups[1:]) and len(space.groups) == 1 + (len(sites) - 1) // 6
        assert all(len(members) == 6 for _, members in space.groups[1:])
    for seed in range(20):  # random plans: JSON round trip, encode/decode inverse, apply and train a step
        plan = space.random_plan(seed)
        again = Plan.from_json(plan.to_json())
        assert again == plan and space.decode(space.encode(again)) == plan
    apply_plan(model, space.random_plan(3))
    model.train()
    x = torch.randint(0, 30, (2, 16)) if make is not _vit else torch.randn(2, 1, 8, 8)
    model(x).float().sum().backward()


@pytest.mark.parametrize("make", [_lm, _vit, _encoder])
def test_state_dict_unchanged_and_eval_identical(make) -> None:
    plain, model = make(), make()
    keys = list(plain.state_dict())
    space = SearchSpace.for_model(model)
    plan = Plan({s: SEQ for s in space.sites})
    apply_plan(model, plan)
    assert list(model.state_dict()) == keys
    model.load_state_dict(plain.state_dict())  # a checkpoint of the plain model loads
    x = torch.randint(0, 30, (3, 16)) if make is not _vit else torch.randn(3, 1, 8, 8)
    plain.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(plain(x), model(x))  # eval: identity (torch's fused fast path included)
    model.train(), plain.train()
    torch.manual_seed(1)
    assert not torch.allclose(plain(x), model(x))  # training: the patterns act
    assert len(regularizers(model)) == len(space.sites)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("norm_first", [False, True])
def test_unfused_attention_equals_stock_module_in_training(batch_first: bool, norm_first: bool) -> None:
    """With q/k/v regularizers active but never dropping, training outputs equal torch's own,
    with key padding and causal masks (the unfused path reproduces MultiheadAttention)."""
    plain, model = _encoder(batch_first, norm_first), _encoder(batch_first, norm_first)
    plan = Plan(
        {f"1.layers.{i}.self_attn:{x}": SiteSpec("dropout", {"drop_prob": 0.1}) for i in range(2) for x in "qkv"}
    )
    apply_plan(model, plan)
    for reg in regularizers(model).values():
        unwrap_regularizer(reg).drop_prob = 1e-12  # active (unfused path), drops nothing
    assert isinstance(model[1].layers[0].self_attn, RegularizedMultiheadAttention)
    ids = torch.randint(0, 30, (3, 7))
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 5:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(7)
    plain.train(), model.train()

    def run(m: nn.Module, kwargs: dict) -> torch.Tensor:
        return m[1](m[0](ids if batch_first else ids.T), **kwargs)

    for kwargs in ({}, {"src_key_padding_mask": pad}, {"mask": causal, "is_causal": True}):
        assert torch.allclose(run(plain, kwargs), run(model, kwargs), atol=1e-5), kwargs
    # need_weights=True path of a direct call
    mha, ref = model[1].layers[0].self_attn, plain[1].layers[0].self_attn
    q = torch.randn(3, 7, 32) if batch_first else torch.randn(7, 3, 32)
    out, w = mha(q, q, q, need_weights=True)
    out_ref, w_ref = ref(q, q, q, need_weights=True)
    assert torch.allclose(out, out_ref, atol=1e-5) and torch.allclose(w, w_ref, atol=1e-6)


def test_qkv_regularizer_acts_only_while_active_and_remove_plan_restores() -> None:
    plain, model = _encoder(), _encoder()
    plan = Plan({"1.layers.0.self_attn:q": SEQ}, ramp_fraction=0.5)
    apply_plan(model, plan, total_steps=10)
    ids = torch.randint(0, 30, (2, 9))
    plain.train(), model.train()
    assert torch.equal(plain(ids), model(ids))  # ramp at 0: the stock module runs
    for _ in range(6):
        step_schedulers(model)
    out = model(ids)
    assert not torch.allclose(plain(ids), out)
    out.sum().backward()
    assert model[1].layers[0].self_attn.in_proj_weight.grad is not None
    # deepcopy and pickle keep the switched class and its regularizers
    clone = pickle.loads(pickle.dumps(copy.deepcopy(model)))
    assert type(clone[1].layers[0].self_attn) is RegularizedMultiheadAttention
    assert "1.layers.0.self_attn:q" in regularizers(clone)
    remove_plan(model)
    assert type(model[1].layers[0].self_attn) is nn.MultiheadAttention and not regularizers(model)
    assert list(model.state_dict()) == list(plain.state_dict())


def test_batch_first_false_sites_tile_along_dim0() -> None:
    model = _encoder(batch_first=False)
    apply_plan(model, Plan({"1.layers.0.dropout1": SEQ, "1.layers.0.self_attn:q": SEQ}))
    regs = {k: unwrap_regularizer(v) for k, v in regularizers(model).items()}
    assert regs["1.layers.0.dropout1"].batch_first is False
    assert regs["1.layers.0.self_attn:q"].batch_first is True  # q/k/v are computed batch first


def test_methods_that_do_not_fit_the_site_fail_at_apply() -> None:
    with pytest.raises(PlanError, match=r"blocks.0.mlp.act.*dropblock.*allowed: \['none', 'dropout', 'seq_pattern'\]"):
        apply_plan(
            _lm(),
            Plan(
                {
                    "blocks.0.mlp.act": SiteSpec(
                        "dropblock", {"drop_prob": 0.1, "block_size": 3, "share_channels": False}
                    )
                }
            ),
        )
    cnn = build_model("digits_cnn", 10, 1)
    with pytest.raises(PlanError, match="bn1.*seq_pattern"):
        apply_plan(cnn, Plan({"bn1": SEQ}))
    with pytest.raises(PlanError, match="unknown site"):
        apply_plan(_encoder(), Plan({"1.layers.0.self_attn:x": SEQ}))


def test_baseline_plans() -> None:
    space = SearchSpace.for_model(_lm(), share="stage", model_name="transformer_lm")
    plans = space.baseline_plans()
    assert set(plans) == {"none", "dropout"}
    assert all(s.method == "none" for s in plans["none"].sites.values())
    assert all(s == SiteSpec("dropout", {"drop_prob": 0.1, "ramp": 0.0}) for s in plans["dropout"].sites.values())
    assert space.decode(space.encode(plans["dropout"])) == plans["dropout"]


def test_sequence_masks_for_the_figure(tmp_path) -> None:
    import numpy as np

    from results.masks import plot_masks, regularizer_masks

    model = _lm()
    apply_plan(model, Plan({"embed": SEQ, "blocks.1.mlp.act": SiteSpec("dropout", {"drop_prob": 0.3})}))
    ids = torch.randint(0, 50, (1, 16))
    masks = [regularizer_masks(model, ids, seed=s) for s in range(20)]
    assert masks[0]["embed"].shape == (16, 64) and masks[0]["blocks.1.mlp.act"].shape == (16, 256)
    assert abs(np.mean([m["embed"].mean() for m in masks]) - 0.3) < 0.05
    enc = _encoder(batch_first=False)
    apply_plan(enc, Plan({"1.layers.0.self_attn:k": SEQ, "1.layers.1.dropout": SEQ}))
    got = regularizer_masks(enc, torch.randint(0, 30, (9, 1)))  # (T, N) ids: seq-first model
    assert got["1.layers.0.self_attn:k"].shape == (9, 32) and got["1.layers.1.dropout"].shape == (9, 64)
    plan = Plan({s: SEQ for s in find_sites(_vit())[:4]}, model="vit_tiny")
    out = plot_masks(plan, {"model": "vit_tiny", "dataset": "digits"}, tmp_path / "masks.png")
    assert out is not None and out.stat().st_size > 10_000
