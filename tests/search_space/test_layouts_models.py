"""Layouts from evidence on models this project did not write: timm's channels-last ConvNeXt
and Swin, Conv1d and Conv3d models, recurrent classifiers, MLPs, a model that declares its
head first. `describe` labels each site with its true layout; a sampled plan's regularizer,
looked at in the model itself, acts on the right axes; a user can state a layout."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search_space import Plan, SearchSpace, SiteSpec, apply_plan, check_plans, describe, regularizers
from search_space.apply import unwrap_regularizer
from search_space.errors import FieldError
from search_space.layouts import LAYOUTS, channel_axis, get_layout, methods_for, spatial_axes
from search_space.plan import PlanError
from search_space.probe import call_model, probe_sites


def _convnext() -> nn.Module:  # timm's default for convnext_tiny and up: conv_mlp=False (N,H,W,C inside blocks)
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "convnext_tiny", pretrained=False, num_classes=3, depths=(1, 1, 1, 1), dims=(8, 16, 32, 64), conv_mlp=False
    )


def _swin() -> nn.Module:  # timm's Swin keeps N,H,W,C maps between blocks
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, num_classes=3, img_size=32, window_size=4, embed_dim=8,
        depths=(1, 1), num_heads=(1, 1),
    )  # fmt: skip


class Recurrent(nn.Module):
    """Embedding + LSTM/GRU + Linear: a text classifier."""

    def __init__(self, cell: type = nn.LSTM, batch_first: bool = True) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 12)
        self.rnn = cell(12, 16, batch_first=batch_first)
        self.fc = nn.Linear(16, 3)
        self.batch_first = batch_first

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.emb(ids))
        return self.fc(out[:, -1] if self.batch_first else out[-1])


class HeadFirst(nn.Module):
    """Declares its logits layer before the body: the logits are still not a site."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(16, 3)
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _conv1d() -> nn.Module:  # an MNIST-1D-style CNN: (N, C, L)
    return nn.Sequential(
        nn.Conv1d(1, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(), nn.Conv1d(8, 16, 3, padding=1, stride=2),
        nn.BatchNorm1d(16), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


def _conv3d() -> nn.Module:
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 8, 3, padding=1, stride=2),
        nn.BatchNorm3d(8), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip


def _table(model: nn.Module, x, **kw) -> dict[str, dict]:
    return {row["site"]: row for row in describe(model, x, **kw).to_dict("records")}


def _site_output(model: nn.Module, site: str, x, plan: Plan, seed: int = 0) -> torch.Tensor:
    """The regularized output of ``site`` in one training forward of ``model`` under ``plan``."""
    apply_plan(model, plan)
    seen = {}

    def grab(_m, _i, out):
        seen["out"] = out[0] if isinstance(out, tuple) else out

    handle = model.get_submodule(site).register_forward_hook(grab)  # runs after the plan's hook
    model.train()
    torch.manual_seed(seed)
    with torch.no_grad():
        call_model(model, x)
    handle.remove()
    return seen["out"]


def _one(space: SearchSpace, site: str, method: str, **params) -> Plan:
    specs = {s: SiteSpec(method, params) if s == site else SiteSpec("none") for s in space.sites}
    return space.with_layouts(Plan(specs))


def _square_blocks(dropped: torch.Tensor, k: int) -> bool:
    """Union of k x k squares (clipped at the border) per (M, H, W) mask: opening keeps it."""
    x = F.pad(dropped.float()[:, None], [k - 1] * 4, value=1.0)
    opened = F.max_pool2d(F.pad(-F.max_pool2d(-x, k, stride=1), [k - 1] * 4), k, stride=1)
    return bool(torch.equal(opened[:, 0, k - 1 : 1 - k, k - 1 : 1 - k] > 0, dropped))


# ---- the layout vocabulary other engineers call ------------------------------------------------
def test_the_layout_vocabulary_names_channel_and_map_axes() -> None:
    assert {n: (channel_axis(n), spatial_axes(n)) for n in LAYOUTS} == {
        "NCHW": (1, (2, 3)), "NHWC": (3, (1, 2)), "NCL": (1, (2,)), "NCDHW": (1, (2, 3, 4)),
        "NDHWC": (4, (1, 2, 3)), "NTC": (2, (1,)), "TNC": (2, (0,)), "NC": (1, ()), "unknown": (None, ()),
    }  # fmt: skip
    assert get_layout("N,H,W,C") is LAYOUTS["NHWC"] and get_layout("Unknown").name == "unknown"
    x = torch.randn(2, 5, 6, 3)
    view = get_layout("NHWC").to_channels_first(x)
    assert view.shape == (2, 3, 5, 6) and view.data_ptr() == x.data_ptr()
    assert torch.equal(get_layout("NHWC").from_channels_first(view), x)
    assert methods_for("NCL", (2, 8, 20))[0] == ("none", "dropout", "spatial_dropout", "dropblock", "seq_pattern")
    assert methods_for("NHWC", (2, 1, 1, 768)) == (("none", "dropout", "spatial_dropout"), "map 1x1: no blocks")
    assert methods_for("unknown", (2, 3, 4, 5))[0] == ("none", "dropout")
    with pytest.raises(FieldError, match=r"layout: bad value 'NWHC'; allowed: NCHW, NHWC, NCL"):
        get_layout("NWHC")


# ---- channels-last maps ----------------------------------------------------------------------
def test_convnext_blocks_mlp_outputs_are_nhwc_and_a_stage_is_not_its_last_block_again() -> None:
    model, x = _convnext(), torch.randn(2, 3, 32, 32)
    rows = _table(model, x)
    assert rows["stages.0.blocks.0.mlp"]["layout"] == "N,H,W,C"  # (N, 8, 8, 8): H = W = C, told by the Linear
    assert rows["stages.1.blocks.0.mlp"]["shape"] == "(N, 4, 4, 16)"
    assert rows["stages.1.blocks.0"]["layout"] == "N,C,H,W" and rows["stem.1"]["layout"] == "N,C,H,W"
    assert not any(s.startswith("stages.") and s.count(".") == 1 for s in rows)  # the stage's tensor is its block's
    assert rows["stages.3.blocks.0.mlp"]["methods"] == "none, dropout, spatial_dropout"  # (N, 1, 1, 64): no blocks
    assert "head.fc" not in rows
    space = SearchSpace.for_model(model, example_input=x)
    assert space.layouts["stages.1.blocks.0.mlp"] == "NHWC"
    # a shared DropBlock mask at the N,H,W,C site drops whole positions, in squares of H, W
    plan = _one(space, "stages.0.blocks.0.mlp", "dropblock", drop_prob=0.25, block_size=3, share_channels=True)
    out = _site_output(model, "stages.0.blocks.0.mlp", x, plan)
    dropped = out == 0
    assert dropped.any() and torch.equal(dropped.all(-1), dropped.any(-1))
    assert _square_blocks(dropped[..., 0], 3)
    # spatial_dropout there drops channels, Disout distorts blocks in H, W
    out = _site_output(model, "stages.1.blocks.0.mlp", x, _one(space, "stages.1.blocks.0.mlp", "spatial_dropout",
                                                                     drop_prob=0.5))  # fmt: skip
    dropped = out == 0
    assert dropped.any() and torch.equal(dropped.all((1, 2)), dropped.any((1, 2)))
    layer = unwrap_regularizer(regularizers(model)["stages.1.blocks.0.mlp"])
    assert layer.layout == "NHWC"


def test_swin_blocks_are_nhwc_maps_and_their_mlp_tokens() -> None:
    model, x = _swin(), torch.randn(2, 3, 32, 32)
    rows = _table(model, x)
    assert rows["layers.0.blocks.0"]["layout"] == "N,H,W,C" and rows["layers.0.blocks.0"]["shape"] == "(N, 8, 8, 8)"
    assert rows["layers.0.blocks.0.mlp"]["layout"] == "N,T,C"
    attn = rows["layers.0.blocks.0.attn"]  # (windows x batch, tokens, C): the batch axis is not shown
    assert attn["layout"] == "unknown" and attn["methods"] == "none, dropout" and "state NTC or TNC" in attn["note"]
    assert attn["shape"].startswith("(8, 16")  # not "N": it is not the batch
    # stated: the windows are the examples of the attention's tokens
    stated = _table(model, x, layouts={"*.attn": "NTC"})
    assert stated["layers.0.blocks.0.attn"]["methods"] == "none, dropout, seq_pattern"
    assert stated["layers.0.blocks.0.attn"]["note"] == "layout stated"
    space = SearchSpace.for_model(model, example_input=x, share="stage", layouts={"*.attn": "NTC"})
    groups = dict(space.groups)
    assert any(set(m) == {"layers.0.blocks.0.attn", "layers.0.blocks.0.mlp"} for m in groups.values())  # one block
    out = _site_output(model, "layers.1.blocks.0", x, _one(space, "layers.1.blocks.0", "spatial_dropout",
                                                             drop_prob=0.5))  # fmt: skip
    dropped = out == 0
    assert dropped.any() and torch.equal(dropped.all((1, 2)), dropped.any((1, 2)))  # whole channels of N,H,W,C
    check_plans(model, space, x, samples=1)


# ---- 1-D and 3-D maps --------------------------------------------------------------------------
def test_conv1d_maps_are_ncl_with_blocks_along_l_and_the_pattern_along_l() -> None:
    model, x = _conv1d(), torch.randn(4, 1, 48)
    infos = {i.path: i for i in probe_sites(model, x)}
    assert list(infos) == ["1", "4"] and {i.layout for i in infos.values()} == {"NCL"}
    assert infos["1"].methods == ("none", "dropout", "spatial_dropout", "dropblock", "seq_pattern")
    space = SearchSpace.for_model(model, example_input=x, share="stage")
    assert [m for _, m in space.groups] == [("1",), ("4",)]  # by length (48, 24), not by channels
    out = _site_output(model, "1", x, _one(space, "1", "dropblock", drop_prob=0.2, block_size=5, share_channels=False))
    assert type(unwrap_regularizer(regularizers(model)["1"])).__name__ == "DropBlock1d"
    dropped = (out == 0).reshape(-1, 1, 48)
    runs = F.max_pool1d(F.pad(-F.max_pool1d(-F.pad(dropped.float(), [4, 4], value=1.0), 5, 1), [4, 4]), 5, 1)
    assert dropped.any() and torch.equal(runs[..., 4:-4] > 0, dropped)  # runs of 5 along L
    seq = {"drop_prob": 0.5, "size": 2, "stride": 4, "share_t": True, "share_c": True}
    dropped = _site_output(model, "4", x, _one(space, "4", "seq_pattern", **seq)) == 0
    assert dropped.any() and torch.equal(dropped.all(1), dropped.any(1))  # share_c: whole positions of L
    check_plans(model, space, x, samples=2)


def test_conv3d_maps_are_sites_with_dropblock3d() -> None:
    model, x = _conv3d(), torch.randn(2, 1, 8, 8, 8)
    rows = _table(model, x)
    assert list(rows) == ["1", "4"] and {r["layout"] for r in rows.values()} == {"N,C,D,H,W"}
    assert rows["1"]["methods"] == "none, dropout, spatial_dropout, dropblock"
    space = SearchSpace.for_model(model, example_input=x)
    out = _site_output(model, "1", x, _one(space, "1", "dropblock", drop_prob=0.2, block_size=3, share_channels=True))
    assert type(unwrap_regularizer(regularizers(model)["1"])).__name__ == "DropBlock3d"
    dropped = out == 0
    assert dropped.any() and torch.equal(dropped.all(1), dropped.any(1))


# ---- recurrent models, MLPs, the logits --------------------------------------------------------
@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
@pytest.mark.parametrize("batch_first", [True, False])
def test_embeddings_and_recurrent_outputs_are_token_sites(cell: type, batch_first: bool) -> None:
    model = Recurrent(cell, batch_first)
    ids = torch.randint(0, 40, (4, 9) if batch_first else (9, 4))
    infos = {i.path: i for i in probe_sites(model, ids)}
    want = "NTC" if batch_first else "TNC"
    assert list(infos) == ["emb", "rnn"] and {i.layout for i in infos.values()} == {want}
    assert infos["rnn"].shape == ((4, 9, 16) if batch_first else (9, 4, 16))  # the output tensor, not the state
    space = SearchSpace.for_model(model, example_input=ids)
    assert space.methods == ("none", "dropout", "seq_pattern")
    seq = {"drop_prob": 0.5, "size": 2, "stride": 3, "share_t": True, "share_c": True}
    plain = copy.deepcopy(model)
    out = _site_output(model, "rnn", ids, _one(space, "rnn", "seq_pattern", **seq))
    dropped = out == 0
    assert dropped.any() and torch.equal(dropped.all(-1), dropped.any(-1))  # share_c: whole tokens
    tokens = dropped.all(-1) if batch_first else dropped.all(-1).T  # (N, T)
    runs = [len(r) for row in tokens.tolist() for r in "".join("x" if d else " " for d in row).split()]
    assert max(runs) == 2  # blocks of 2 tokens every 3 along T, never longer: the pattern runs along T
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(ids), plain(ids))  # eval: bit-identical
    model.train()
    model(ids).sum().backward()  # the state tuple passes through; training works


def test_the_logits_are_never_a_site_even_when_the_head_is_declared_first() -> None:
    assert [i.path for i in probe_sites(HeadFirst(), torch.randn(4, 8))] == ["body.0", "body.2"]


def test_every_hidden_layer_of_an_mlp_is_a_site_with_or_without_a_norm() -> None:
    x = torch.randn(4, 8)
    with_norm = nn.Sequential(nn.Linear(8, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(),
                              nn.Linear(16, 3))  # fmt: skip
    assert [i.path for i in probe_sites(with_norm, x)] == ["1", "3"]  # the norm's output, then the plain Linear
    plain = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3))
    infos = probe_sites(plain, x)
    assert [i.path for i in infos] == ["0", "2"] and {i.layout for i in infos} == {"NC"}


def test_one_tensor_is_one_site_and_named_sites_say_why_they_are_not() -> None:
    model, x = _convnext(), torch.randn(2, 3, 32, 32)
    infos = {i.path: i for i in probe_sites(model, x, sites=["stages.1.blocks.0", "stages.1", "head.fc"])}
    assert infos["stages.1"].methods == () and infos["stages.1"].note == "the same tensor as stages.1.blocks.0"
    with pytest.raises(FieldError, match=r"sites: bad value 'stages.1' .*the same tensor as stages.1.blocks.0"):
        SearchSpace.for_model(model, sites=["stages.1.blocks.0", "stages.1"], example_input=x)


# ---- evidence missing or contradictory: only layout-free methods, and why ---------------------
class _Scale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0


class _NoEvidence(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = _Scale()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(x).mean((1, 2, 3))


class _Contradicts(nn.Module):
    """One (N, 8, 4, 8) tensor taken by a Conv2d (channels at axis 1) and a Linear (axis 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = _Scale()
        self.conv = nn.Conv2d(8, 2, 1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.scale(x)
        return self.conv(y).mean() + self.fc(y).mean()


def test_missing_or_contradictory_evidence_offers_only_layout_free_methods_and_says_why() -> None:
    x = torch.randn(2, 8, 4, 8)
    none = _table(_NoEvidence(), x, sites=["scale"])["scale"]
    assert none["layout"] == "unknown" and none["methods"] == "none, dropout"
    assert "no module around it shows which axis holds the channels" in none["note"]
    both = _table(_Contradicts(), x, sites=["scale"])["scale"]
    assert both["layout"] == "unknown" and both["methods"] == "none, dropout"
    assert "evidence contradicts: Conv2d 'conv' (input) acts on axis 1, Linear 'fc' (input) on axis 3" in both["note"]
    # stating the layout decides, and it is checked against the shape
    assert _table(_Contradicts(), x, sites=["scale"], layouts={"scale": "NCHW"})["scale"]["methods"].endswith("pattern")
    with pytest.raises(FieldError, match=r"layouts\['scale'\]: bad value 'NTC' for site 'scale' with output "
                                         r"\(2, 8, 4, 8\); allowed: a layout of rank 4"):  # fmt: skip
        describe(_NoEvidence(), x, sites=["scale"], layouts={"scale": "NTC"})
    with pytest.raises(FieldError, match=r"layouts: bad value 'nothing\.\*' \(matches no site\)"):
        describe(_NoEvidence(), x, sites=["scale"], layouts={"nothing.*": "NCHW"})


# ---- plans carry layouts; apply_plan checks them -----------------------------------------------
def test_plans_carry_layouts_through_json_and_apply_refuses_a_method_of_another_layout() -> None:
    model, x = _conv1d(), torch.randn(4, 1, 48)
    space = SearchSpace.for_model(model, example_input=x)
    plan = space.random_plan(3)
    assert plan.layouts == {"1": "NCL", "4": "NCL"}
    assert Plan.from_json(plan.to_json()) == plan
    assert SearchSpace.from_dict(space.to_dict()).layouts == space.layouts
    bad = Plan({"1": SiteSpec("disout", {"dist_prob": 0.1, "block_size": 3, "alpha": 1.0})}, layouts={"1": "NCL"})
    with pytest.raises(PlanError, match=r"sites\['1'\].method: bad value 'disout' at a site of layout N,C,L"):
        apply_plan(model, bad)
    with pytest.raises(PlanError, match=r"plan.layouts\['1'\]: bad value 'NLC'; allowed: NCHW"):
        Plan({"1": SiteSpec("none")}, layouts={"1": "NLC"})
    assert "layouts" not in Plan({"1": SiteSpec("none")}).to_dict()  # plans without layouts read and write as before


# ---- one way to call a model -------------------------------------------------------------------
class _Keywords(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 + 2, 3)

    def forward(self, image: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.cat([self.bn(self.conv(image)).mean((2, 3)), extra], 1))


class _OneDict(_Keywords):
    def forward(self, batch: dict) -> torch.Tensor:  # type: ignore[override]
        return super().forward(batch["image"], batch["extra"])


@pytest.mark.parametrize("form", ["dict", "tuple", "one dict in a 1-tuple"])
def test_every_input_form_works_with_describe_the_check_and_every_baseline(form: str) -> None:
    from search_space.baselines import BASELINES, baseline_plans

    image, extra = torch.randn(3, 1, 8, 8), torch.randn(3, 2)
    model, x = {
        "dict": (_Keywords(), {"image": image, "extra": extra}),
        "tuple": (_Keywords(), (image, extra)),
        "one dict in a 1-tuple": (_OneDict(), ({"image": image, "extra": extra},)),
    }[form]
    assert list(describe(model, x)["site"]) == ["bn"]
    space = SearchSpace.for_model(model, example_input=x)
    check_plans(model, space, x, samples=1)
    plans = baseline_plans(model, space.sites, x, "keywords", BASELINES)
    assert set(plans) == set(BASELINES) and plans["dropblock"].sites["bn"].method == "dropblock"
    assert plans["dropblock"].layouts == {"bn": "NCHW"}


def test_a_failing_forward_says_how_the_input_form_was_passed() -> None:
    d = {"image": torch.randn(2, 1, 8, 8), "extra": torch.randn(2, 2)}
    with pytest.raises(FieldError, match=r"a dict is passed as keyword arguments: wrap it in a 1-tuple, \(d,\)"):
        describe(_OneDict(), d)
    with pytest.raises(FieldError, match=r"a tuple is passed as positional arguments"):
        describe(nn.Sequential(nn.Linear(4, 2)), (torch.randn(2, 4), torch.randn(2, 4)))


def test_the_preflight_says_what_it_checked_and_plans_it_applies_are_not_logged_as_real(caplog) -> None:
    model, x = _conv1d(), torch.randn(4, 1, 48)
    space = SearchSpace.for_model(model, example_input=x)
    with caplog.at_level(logging.DEBUG, logger="search_space"):
        check_plans(model, space, x, samples=2)
    infos = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any(m.startswith("pre-flight: checked 6 plans on the example input") and "all ran" in m for m in infos)
    assert not any("applied plan" in m for m in infos)


def test_the_baselines_that_apply_follow_the_layouts() -> None:
    from search_space.baselines import available_baselines, tuned_methods

    def space(model, x):
        return SearchSpace.for_model(model, example_input=x)

    assert available_baselines(space(_conv1d(), torch.randn(4, 1, 48))) == ("none", "dropout", "dropblock")
    assert available_baselines(space(_conv3d(), torch.randn(2, 1, 8, 8, 8))) == ("none", "dropout", "dropblock")
    assert available_baselines(space(_convnext(), torch.randn(2, 3, 32, 32))) == (
        "none", "dropout", "dropblock", "disout"
    )  # fmt: skip
    lstm = space(Recurrent(), torch.randint(0, 40, (4, 9)))
    assert available_baselines(lstm) == ("none", "dropout") and tuned_methods(lstm) == ("dropout", "seq_pattern")
    assert tuned_methods(space(_conv1d(), torch.randn(4, 1, 48))) == ("dropout", "dropblock")  # a ConvNet, not tokens


def test_a_hand_written_plan_without_a_layout_is_warned_about_where_the_model_does_not_say(caplog) -> None:
    model = _convnext()
    spec = SiteSpec("dropblock", {"drop_prob": 0.1, "block_size": 3, "share_channels": True})
    with caplog.at_level(logging.WARNING, logger="search_space.apply"):
        apply_plan(model, Plan({"stages.0.blocks.0.mlp": spec, "stem.0": spec}))
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and warned[0].startswith("site stages.0.blocks.0.mlp (Mlp): the plan states no layout")
