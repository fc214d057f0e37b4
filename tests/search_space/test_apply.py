"""apply_plan on real models: unchanged state_dict, eval identity, Disout wiring, ramps."""

from __future__ import annotations

import copy
import io
import itertools

import pytest
import torch
import torch.nn as nn
import torchvision

from child_trainer.models import build_model
from search_space import (
    VOCAB,
    Disout,
    LinearScheduler,
    PatternDropout,
    Plan,
    PlanError,
    SearchSpace,
    SiteSpec,
    apply_plan,
    build_layer,
    find_sites,
    regularizers,
    remove_plan,
    step_schedulers,
)
from search_space.apply import REG_ATTR

torch.set_num_threads(1)

# One example per method, cycled over the sites so every method is exercised on every model.
SPECS = [
    SiteSpec("dropout", {"drop_prob": 0.2}),
    SiteSpec("spatial_dropout", {"drop_prob": 0.2}),
    SiteSpec("dropblock", {"drop_prob": 0.2, "block_size": 3, "share_channels": False}),
    SiteSpec("disout", {"dist_prob": 0.2, "block_size": 3, "alpha": 5.0}),
    SiteSpec(
        "pattern",
        {
            "size": 2,
            "stride": 4,
            "repeat": 2,
            "rotate": 30.0,
            "shear_x": 0.1,
            "shear_y": 0.0,
            "share_channels": True,
            "residual": True,
        },
    ),
    SiteSpec("none", {}),
]


def _mixed_plan(model: nn.Module, **kwargs) -> Plan:
    return Plan({s: copy.deepcopy(spec) for s, spec in zip(find_sites(model), itertools.cycle(SPECS))}, **kwargs)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.fixture(scope="module", params=["resnet18", "resnet50"])
def tv_model(request) -> nn.Module:
    torch.manual_seed(0)
    return getattr(torchvision.models, request.param)(num_classes=10).eval()


def test_find_sites_resnet18() -> None:
    sites = find_sites(torchvision.models.resnet18())
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    bns = ["bn1"] + [f"{b}.bn{k}" for b in blocks for k in (1, 2)] + [f"layer{i}.0.downsample.1" for i in (2, 3, 4)]
    assert sorted(sites) == sorted(blocks + bns)
    assert sites.index("layer1.0") < sites.index("layer1.0.bn1") < sites.index("layer1.1")


def test_find_sites_on_our_models_finds_blocks() -> None:
    sites = find_sites(build_model("resnet20", 10))
    assert len(sites) == 1 + 9 + 9 * 2 + 2  # stem BN, 9 blocks, 2 BNs each, 2 shortcut BNs
    assert "layer3.2" in sites and "layer2.0.shortcut.1" in sites
    assert "layer2.0" in find_sites(build_model("wrn16_2", 10))


def test_apply_keeps_state_dict_eval_identity_and_changes_train(tv_model: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    plain = copy.deepcopy(tv_model)
    planned = apply_plan(copy.deepcopy(tv_model), _mixed_plan(tv_model))
    assert len(regularizers(planned)) > 10
    assert list(planned.state_dict()) == list(plain.state_dict())
    # Checkpoints move both ways, strictly.
    buf = io.BytesIO()
    torch.save(plain.state_dict(), buf)
    buf.seek(0)
    planned.load_state_dict(torch.load(buf))
    plain.load_state_dict(planned.state_dict())
    assert find_sites(planned) == find_sites(plain)
    with torch.no_grad():
        assert torch.equal(planned.eval()(x), plain.eval()(x))
        torch.manual_seed(1)
        y_train = planned.train()(x)
        y_plain = plain.train()(x)
    assert torch.isfinite(y_train).all()
    assert (y_train - y_plain).abs().mean() > 1e-3 * y_plain.abs().mean()
    plain.load_state_dict(planned.state_dict())  # BN stats moved differently in train mode
    with torch.no_grad():
        assert torch.equal(planned.eval()(x), plain.eval()(x))


def test_every_vocabulary_value_builds_and_runs() -> None:
    x = torch.randn(2, 4, 8, 8)
    for method, params in VOCAB.items():
        if method == "none":
            continue
        base = {p: c[len(c) // 2] for p, c in params.items()}
        for p, choices in params.items():
            for value in choices:
                layer = build_layer(SiteSpec(method, {**base, p: value})).train()
                assert torch.isfinite(layer(x)).all(), (method, p, value)
                assert not list(layer.parameters()) and not list(layer.buffers())


def test_disout_weight_behind_follows_next_conv() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=10)
    spec = SiteSpec("disout", {"dist_prob": 0.1, "block_size": 3, "alpha": 1.0})
    sites = ["layer1.0.bn1", "layer1.0.bn3", "layer1.0", "layer4.2.bn3"]
    apply_plan(model, Plan({s: copy.deepcopy(spec) for s in sites}))
    regs = regularizers(model)
    model.train()(torch.randn(2, 3, 32, 32))
    # bn1 (64 ch) -> conv2 of the same block; bn3 (256 ch) skips downsample.0 (in 64) and
    # reaches the next block's conv1; the last BN has no following conv.
    expected = {
        "layer1.0.bn1": model.layer1[0].conv2,
        "layer1.0.bn3": model.layer1[1].conv1,
        "layer1.0": model.layer1[1].conv1,
    }
    for site, conv in expected.items():
        assert regs[site].weight_behind.data_ptr() == conv.weight.data_ptr()
    assert regs["layer4.2.bn3"].weight_behind is None
    # It follows in-place updates and replaced tensors (e.g. .to(), load_state_dict).
    conv = model.layer1[0].conv2
    conv.weight.data = conv.weight.data * 2
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(regs["layer1.0.bn1"].weight_behind, conv.weight)
    # ... and a deep copy points at its own convolution.
    clone = copy.deepcopy(model)
    clone(torch.randn(2, 3, 32, 32))
    assert (
        regularizers(clone)["layer1.0.bn1"].weight_behind.data_ptr()
        == clone.layer1[0].conv2.weight.data_ptr()
        != conv.weight.data_ptr()
    )


def test_ramp_wraps_in_schedulers_and_steps() -> None:
    model = build_model("resnet20", 10)
    plan = _mixed_plan(model, ramp_fraction=0.5)
    apply_plan(model, plan, total_steps=10)
    regs = regularizers(model)
    ramped = [r for r in regs.values() if isinstance(r, LinearScheduler)]
    assert len(ramped) == len(regs) > 0
    targets = {k: plan.sites[k.split(":")[0]].params for k in regs}
    assert all(r.value == 0.0 for r in ramped)
    history = []
    wrapper = nn.Sequential(model)  # no cached list there: found by walking the modules
    for i in range(7):
        step_schedulers(model if i < 3 else wrapper)
        history.append(regs["layer1.0.bn1"].value)  # spatial_dropout, target 0.2
        if i == 1:
            clone = copy.deepcopy(model)
    assert history == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2, 0.2, 0.2])
    step_schedulers(clone)  # a copy steps its own schedulers only
    assert regularizers(clone)["layer1.0.bn1"].value == pytest.approx(0.1)
    for key, r in regs.items():
        layer = r.layer
        target = 1.0 if isinstance(layer, PatternDropout) else targets[key][type(layer).prob_attr]
        assert r.value == pytest.approx(target), key
    # Without total_steps (or with ramp 0) the values are constant from the start.
    apply_plan(model, plan)
    assert not any(isinstance(r, LinearScheduler) for r in regularizers(model).values())
    step_schedulers(nn.Linear(2, 2))  # no plan: no-op


def test_apply_twice_replaces_and_remove_restores() -> None:
    model = build_model("resnet20", 10).eval()
    plain = copy.deepcopy(model)
    hooks0 = _hooks(model)
    apply_plan(model, _mixed_plan(model))
    apply_plan(model, Plan({"layer2.1.bn1": SiteSpec("dropout", {"drop_prob": 0.3}), "layer3.0": SiteSpec("none", {})}))
    assert list(regularizers(model)) == ["layer2.1.bn1"]
    assert _hooks(model) == hooks0 + 1
    remove_plan(model)
    assert regularizers(model) == {} and _hooks(model) == hooks0
    assert not any(REG_ATTR in n for n, _ in model.named_modules())
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model.train()(x), plain.train()(x))


def test_pattern_residual_goes_to_enclosing_block() -> None:
    model = build_model("resnet20", 10)
    spec = SiteSpec(
        "pattern",
        {
            "size": 2,
            "stride": 4,
            "repeat": 2,
            "rotate": 0.0,
            "shear_x": 0.0,
            "shear_y": 0.0,
            "share_channels": False,
            "residual": True,
        },
    )
    apply_plan(model, Plan({"bn1": spec, "layer2.1.bn2": copy.deepcopy(spec)}))
    regs = regularizers(model)
    assert set(regs) == {"bn1", "layer2.1.bn2", "layer2.1.bn2:residual"}  # stem: no block
    holder = getattr(model.layer2[1], REG_ATTR)
    assert list(holder) == [regs["layer2.1.bn2:residual"]]
    assert regs["layer2.1.bn2:residual"] is not regs["layer2.1.bn2"]
    # The block output is patterned: a share-channels-free pattern zeroes whole
    # rectangles per channel, so the block output has exact zeros it did not have before.
    calls = []
    model.layer2[1].register_forward_hook(lambda m, i, o: calls.append((o == 0).float().mean()))
    model.train()(torch.randn(2, 3, 16, 16))
    remove_plan(model)
    model(torch.randn(2, 3, 16, 16))
    assert calls[0] > calls[1] + 0.05


def test_unknown_site_is_plan_error_and_leaves_model_alone() -> None:
    model = build_model("resnet20", 10)
    apply_plan(model, Plan({"layer1.0.bn1": SiteSpec("dropout", {"drop_prob": 0.1})}))
    with pytest.raises(PlanError, match=r"sites\['layer4.0.bn1'\]: unknown site.*allowed: .*'bn1'"):
        apply_plan(model, Plan({"layer4.0.bn1": SiteSpec("dropout", {"drop_prob": 0.1})}))
    with pytest.raises(ValueError, match=r"total_steps: bad value -1; allowed: None or an int >= 0"):
        apply_plan(model, Plan({"bn1": SiteSpec("dropout", {"drop_prob": 0.1})}), total_steps=-1)
    assert list(regularizers(model)) == ["layer1.0.bn1"]
    with pytest.raises(PlanError, match="allowed: a Plan"):
        apply_plan(model, {"sites": {}})  # type: ignore[arg-type]


def test_container_site_and_whole_model_pickle() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        nn.Conv2d(8, 8, 1),
    )
    keys = list(model.state_dict())
    apply_plan(
        model,
        Plan(
            {
                "2": SiteSpec("disout", {"dist_prob": 0.3, "block_size": 2, "alpha": 1.0}),
                "1": SiteSpec("dropout", {"drop_prob": 0.5}),
            }
        ),
    )
    assert list(model.state_dict()) == keys and set(regularizers(model)) == {"1", "2"}
    x = torch.randn(2, 3, 8, 8)
    y = model.train()(x)  # the Sequential site still runs only its own layers
    assert y.shape == (2, 8, 8, 8)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert torch.equal(again.eval()(x), model.eval()(x))
    assert not regularizers(again)["2"].training  # hidden holder follows eval at forward
    again.train()(x)
    assert regularizers(again)["2"].training
    assert regularizers(again)["2"].weight_behind.data_ptr() == again[3].weight.data_ptr()


def test_random_plans_from_space_apply_and_train(tv_model: nn.Module) -> None:
    space = SearchSpace.for_model(tv_model, share="stage")
    model = copy.deepcopy(tv_model).train()
    x = torch.randn(2, 3, 32, 32)
    for seed in range(3):
        apply_plan(model, space.random_plan(seed))
        with torch.no_grad():
            assert torch.isfinite(model(x)).all()


@pytest.mark.gpu
def test_apply_on_cuda_channels_last_autocast() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    apply_plan(model, _mixed_plan(model))
    model = model.cuda().to(memory_format=torch.channels_last).train()
    x = torch.randn(8, 3, 32, 32, device="cuda").to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = model(x)
    assert torch.isfinite(y.float()).all()
    behind = [r.weight_behind for r in regularizers(model).values() if isinstance(r, Disout)]
    assert behind and all(w is None or w.is_cuda for w in behind)
    assert any(w is not None for w in behind)


def test_disout_weight_behind_skips_depthwise_conv() -> None:
    """MobileNet-style blocks: a depthwise conv follows the BN; Disout must take the next
    dense conv (one weight row per input channel), never the depthwise one."""
    import torchvision

    model = torchvision.models.mobilenet_v2(num_classes=10)
    sites = [s for s in find_sites(model) if s.startswith("features.2.")]
    plan = Plan({s: SiteSpec("disout", {"dist_prob": 0.1, "block_size": 3, "alpha": 1.0}) for s in sites})
    apply_plan(model, plan)
    model.train()
    out = model(torch.randn(2, 3, 32, 32))
    assert torch.isfinite(out).all()
    expected_in = {"features.2.conv.0.1": 96, "features.2.conv.1.1": 96, "features.2.conv.3": 24}
    behind = {site: layer.weight_behind for site, layer in regularizers(model).items()}
    assert set(behind) == set(expected_in)
    for site, weight in behind.items():
        assert weight is not None, site
        assert weight.shape[1] == expected_in[site], (site, tuple(weight.shape))  # dense conv
