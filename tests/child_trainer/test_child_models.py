"""Every child model: site naming for the search, forward pass under a random plan."""

from __future__ import annotations

import pytest
import torch

from child_trainer.models import build_model
from search_space import SearchSpace, apply_plan, find_sites

# (name, in_channels, input side): big models get a tiny input so the test stays cheap.
MODELS = [
    ("digits_cnn", 1, 8),
    ("resnet20", 3, 16),
    ("resnet56", 3, 8),
    ("wrn28_2", 3, 8),
    ("wrn28_10", 3, 8),
    ("tv:resnet18", 3, 32),
]


@pytest.mark.parametrize("name,in_ch,side", MODELS)
def test_forward_with_random_plan(name: str, in_ch: int, side: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=7, in_channels=in_ch)
    keys = list(model.state_dict())
    x = torch.randn(4, in_ch, side, side)
    model.eval()
    with torch.no_grad():
        reference = model(x)
    plan = SearchSpace.for_model(model).random_plan(seed=3)
    apply_plan(model, plan, total_steps=10)
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference)  # regularizers are identity in eval
    model.train()
    out = model(x)
    assert out.shape == (4, 7) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name,blocks", [("resnet20", 9), ("resnet56", 27), ("wrn28_2", 12), ("digits_cnn", 2)])
def test_sites_are_bn_outputs_and_residual_blocks_in_stages(name: str, blocks: int) -> None:
    model = build_model(name, 10, in_channels=1 if name == "digits_cnn" else 3)
    sites = find_sites(model)
    block_sites = [s for s in sites if s.count(".") == 1]
    assert len(block_sites) == blocks
    assert all(s.split(".")[0] in ("layer1", "layer2", "layer3") for s in block_sites)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert len(sites) == n_bn + blocks
    shared, per_site = SearchSpace.for_model(model, share="stage"), SearchSpace.for_model(model)
    assert len(shared.decisions) < len(per_site.decisions)


def test_parameter_counts_match_the_papers() -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(build_model("resnet20", 10)) / 0.27e6 - 1) < 0.05
    assert abs(count(build_model("resnet56", 10)) / 0.85e6 - 1) < 0.05
    assert abs(count(build_model("wrn28_10", 10)) / 36.5e6 - 1) < 0.05


@pytest.mark.parametrize("name", ["resnet21", "wrn27_2", "vgg", "tv:not_a_model"])
def test_unknown_models_name_the_allowed_ones(name: str) -> None:
    with pytest.raises(ValueError, match="allowed"):
        build_model(name, 10)


def test_torchvision_grey_input_and_no_download() -> None:
    model = build_model("tv:resnet18", 10, in_channels=1)
    assert model.conv1.in_channels == 1 and model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("in_ch,side,tokens", [(1, 8, 16), (3, 32, 64)])
def test_vit_tiny_patch_tokens_and_random_sequence_plan(in_ch: int, side: int, tokens: int) -> None:
    torch.manual_seed(0)
    model = build_model("vit_tiny", num_classes=10, in_channels=in_ch, image_size=side)
    x = torch.randn(3, in_ch, side, side)
    assert model.embed(x).shape == (3, tokens, 64)
    model.eval()
    with torch.no_grad():
        reference = model(x)
    apply_plan(model, SearchSpace.for_model(model, share="stage").random_plan(seed=2))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference)
    model.train()
    model(x).sum().backward()


def test_transformer_lm_is_causal_and_tied() -> None:
    torch.manual_seed(0)
    model = build_model("transformer_lm", num_classes=40, max_len=12).eval()
    ids = torch.randint(0, 40, (2, 12))
    changed = ids.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % 40
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert a.shape == (2, 12, 40)
    torch.testing.assert_close(a[:, :7], b[:, :7])  # a token never sees later tokens
    assert not torch.allclose(a[:, 7:], b[:, 7:])
    assert model.head.weight is model.embed.tok.weight
    with pytest.raises(ValueError, match="longer than max_len"):
        model(torch.zeros(1, 13, dtype=torch.long))
