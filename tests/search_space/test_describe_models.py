"""Sites from shapes on models this project did not write: the preview, per-site methods,
stages, a sampled plan's forward/backward, and the refusals before any search starts."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from search_space import Plan, SearchSpace, SiteSpec, apply_plan, check_plans, describe, regularizers, remove_plan
from search_space.apply import RegularizedDropout
from search_space.errors import FieldError

BLOCK = {"dropblock", "disout", "pattern"}


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16), nn.BatchNorm1d(16),
        nn.ReLU(), nn.Linear(16, 10),
    )  # fmt: skip


class _CNN(nn.Module):
    """A custom CNN without residual blocks or numeric module paths: three resolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(8)
        self.mid = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.mid_bn = nn.BatchNorm2d(16)
        self.mid2 = nn.Conv2d(16, 16, 3, padding=1)
        self.mid2_bn = nn.BatchNorm2d(16)
        self.low = nn.Conv2d(16, 32, 3, padding=1, stride=4)
        self.low_bn = nn.BatchNorm2d(32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = torch.relu(self.mid_bn(self.mid(x)))
        x = torch.relu(self.mid2_bn(self.mid2(x)))
        x = torch.relu(self.low_bn(self.low(x)))  # 16x16 -> 4x4... and at 1x1 below
        return self.head(x.mean((2, 3)))


def _vit() -> nn.Module:
    return torchvision.models.VisionTransformer(
        image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    )


def _transformer() -> nn.Module:
    return nn.Transformer(16, 2, 1, 1, 32, dropout=0.0, batch_first=False)


torch.manual_seed(0)
CASES = {
    "mlp": (_mlp, torch.randn(4, 1, 8, 8)),
    "cnn": (_CNN, torch.randn(2, 3, 16, 16)),
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), torch.randn(2, 3, 64, 64)),
    "mobilenet_v3_small": (lambda: torchvision.models.mobilenet_v3_small(num_classes=10), torch.randn(2, 3, 64, 64)),
    "vit": (_vit, torch.randn(2, 3, 16, 16)),
    "transformer": (_transformer, (torch.randn(6, 2, 16), torch.randn(5, 2, 16))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_preview_methods_fit_shapes_and_a_sampled_plan_trains(name: str) -> None:
    make, x = CASES[name]
    torch.manual_seed(0)
    model = make()
    table = describe(model, x)
    assert list(table.columns) == ["site", "module", "shape", "layout", "stage", "methods", "note"]
    sites = table[table["methods"] != "-"]
    assert len(sites) > 0
    for row in sites.itertuples():
        methods = set(row.methods.split(", "))
        if row.layout == "N,C,H,W":
            smallest = min(int(d) for d in row.shape.strip("()").split(", ")[2:])
            assert (BLOCK <= methods) == (smallest >= 2), row
            assert "seq_pattern" not in methods
        else:  # tokens or features: never a 2-D block method
            assert not methods & BLOCK, row
            assert ("seq_pattern" in methods) == (row.layout in ("N,T,C", "T,N,C")), row
    space = SearchSpace.for_model(model, share="stage", example_input=x)
    assert set(space.sites) == set(sites["site"])
    keys = list(model.state_dict())
    check_plans(model, space, x, samples=2)  # every method at its largest values + 2 sampled plans
    plan = space.random_plan(1)
    apply_plan(model, plan)
    assert list(model.state_dict()) == keys  # checkpoints load with or without a plan
    model.train()
    out = model(*x) if isinstance(x, tuple) else model(x)
    out.float().sum().backward()


def test_mlp_sites_are_its_batchnorm1d_outputs_with_element_dropout() -> None:
    model, x = _mlp(), CASES["mlp"][1]
    space = SearchSpace.for_model(model, example_input=x)
    assert space.sites == ["2", "5"]
    assert space.methods == ("none", "dropout")
    with pytest.raises(FieldError, match=r"sites: none found in Sequential .*pass example_input"):
        SearchSpace.for_model(model)  # without an example input: today's finder, and a clear refusal
    with pytest.raises(FieldError, match=r"methods: bad value 'dropblock' fits no site of Sequential"):
        SearchSpace.for_model(model, methods=["none", "dropblock"], example_input=x)
    # any module path can be named: a hidden Linear
    assert SearchSpace.for_model(model, sites=["1", "4"], example_input=x).sites == ["1", "4"]


def test_stages_follow_resolution_for_any_model() -> None:
    cnn = SearchSpace.for_model(_CNN(), share="stage", example_input=CASES["cnn"][1])
    assert [members for _, members in cnn.groups] == [("stem_bn",), ("mid_bn", "mid2_bn"), ("low_bn",)]
    # the 4x4 map still takes blocks; tokens from a smaller input leave the 1x1 map without them
    tiny = SearchSpace.for_model(_CNN(), share="stage", example_input=torch.randn(2, 3, 8, 8))
    assert "dropblock" not in tiny.group_methods[tiny.groups[-1][0]]
    assert "dropblock" in tiny.group_methods[tiny.groups[0][0]]
    mobile = SearchSpace.for_model(
        torchvision.models.mobilenet_v3_small(num_classes=10), share="stage", example_input=torch.randn(1, 3, 64, 64)
    )
    # 32, 16, 8, 4, 2: one group per resolution, not one for all; then the hidden Linear of the classifier
    assert len(mobile.groups) == 6 and mobile.groups[-1][1] == ("classifier.0",)
    assert mobile.layouts["classifier.0"] == "NC" and mobile.methods_of("classifier.0") == ("none", "dropout")
    resnet = SearchSpace.for_model(
        torchvision.models.resnet18(num_classes=10), share="stage", example_input=torch.randn(1, 3, 64, 64)
    )
    assert [m[0] for _, m in resnet.groups] == ["bn1", "layer1.0.bn1", "layer2.0.bn1", "layer3.0.bn1", "layer4.0.bn1"]
    restored = SearchSpace.from_dict(resnet.to_dict())
    assert restored.to_dict() == resnet.to_dict() and restored.vocab_sizes == resnet.vocab_sizes


def test_vit_token_sites_get_sequence_methods_only_one_group_per_block() -> None:
    model, x = _vit(), CASES["vit"][1]
    space = SearchSpace.for_model(model, example_input=x, share="stage")
    tokens = [s for s in space.sites if s != "conv_proj"]  # the patch embedding is a (N, 16, 2, 2) map
    assert {space.layouts[s] for s in tokens} == {"NTC"} and space.layouts["conv_proj"] == "NCHW"
    assert all(space.methods_of(s) == ("none", "dropout", "seq_pattern") for s in tokens)
    assert any(s.endswith("mlp") for s in space.sites)
    blocks = [members for _, members in space.groups if members != ("conv_proj",)]
    assert blocks == [tuple(s for s in tokens if f"encoder_layer_{i}" in s) for i in range(2)]  # one group per block
    plan = Plan({s: SiteSpec("dropblock", {"drop_prob": 0.1, "block_size": 3, "share_channels": False})
                 for s in space.sites})  # fmt: skip
    with pytest.raises(ValueError, match="sites"):
        space.encode(plan)  # dropblock is not in the space at rank-3 sites


class _Picky(nn.Module):
    """Refuses zeros in training: any dropout-like plan at its input fails."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and bool((x == 0).any()):
            raise RuntimeError("zeros reached the head")
        return x.mean((2, 3))


def test_a_plan_that_cannot_train_is_refused_naming_site_method_and_shape() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), _Picky())
    x = torch.randn(1, 3, 8, 8)
    space = SearchSpace.for_model(model, example_input=x)
    with pytest.raises(FieldError) as info:
        check_plans(model, space, x)
    text = str(info.value)
    assert text.startswith("sites: method 'dropout' at '1' (output shape (2, 4, 8, 8))") and "zeros" in text
    assert "\n" not in text
    assert regularizers(model) == {}  # the model itself was never changed


def test_no_sites_is_refused_with_what_to_do() -> None:
    with pytest.raises(FieldError, match=r"sites: none found in Sequential.*feature tensor"):
        SearchSpace.for_model(nn.Sequential(nn.Flatten()), example_input=torch.randn(2, 4))
    with pytest.raises(FieldError, match=r"example_input: the model's forward pass failed"):
        SearchSpace.for_model(_mlp(), example_input=torch.randn(2, 3))


# ------------------------------------------------------------------ torch Transformer layers
def test_encoder_eval_is_the_plain_model_exactly_with_masks() -> None:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)
    plain = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    model = copy.deepcopy(plain)
    sites = [f"layers.{i}.{d}" for i in range(2) for d in ("dropout1", "dropout", "dropout2")]
    apply_plan(model, Plan({s: SiteSpec("dropout", {"drop_prob": 0.3}) for s in sites}))
    assert all(type(model.get_submodule(s)) is RegularizedDropout for s in sites)
    assert not any(m._forward_hooks for m in model.modules())  # hooks would leave the fused fast path
    x = torch.randn(3, 10, 32)
    causal = nn.Transformer.generate_square_subsequent_mask(10)
    pad = torch.zeros(3, 10, dtype=torch.bool)
    pad[0, 7:] = True
    plain.eval(), model.eval()
    with torch.no_grad():
        assert torch.equal(plain(x, mask=causal, is_causal=True), model(x, mask=causal, is_causal=True))
        assert torch.equal(plain(x, src_key_padding_mask=pad), model(x, src_key_padding_mask=pad))
    model.train()
    torch.manual_seed(1)
    assert not torch.equal(plain.train()(x), model(x))  # training: the plan acts
    remove_plan(model)
    assert all(type(model.get_submodule(s)) is nn.Dropout for s in sites)


def test_root_layer_batch_first_false_and_decoder_layers_get_sequence_sites() -> None:
    root = nn.TransformerEncoderLayer(16, 2, 32, batch_first=False)
    seq = SiteSpec("seq_pattern", {"drop_prob": 0.3, "size": 2, "stride": 4, "share_t": True, "share_c": False})
    apply_plan(root, Plan({"dropout1": seq}))
    assert regularizers(root)["dropout1"].batch_first is False  # tokens are (T, N, C) at the root too
    table = describe(root, torch.randn(6, 2, 16))
    assert set(table["layout"]) == {"T,N,C", "N,T,C"}  # q/k/v are computed batch first
    decoder = nn.TransformerDecoderLayer(16, 2, 32, batch_first=False)
    x = (torch.randn(6, 2, 16), torch.randn(5, 2, 16))
    space = SearchSpace.for_model(decoder, example_input=x)
    assert {"multihead_attn:q", "dropout3"} <= set(space.sites)
    check_plans(decoder, space, x)
