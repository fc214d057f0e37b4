"""Search space: token layout, encode/decode inverses, active masks, sharing, serialisation."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torchvision

from search_space import CONV_METHODS, VOCAB, Plan, PlanError, SearchSpace, SiteSpec, find_sites, stage_of


@pytest.fixture(scope="module")
def resnet18():
    return torchvision.models.resnet18(num_classes=10)


@pytest.fixture(scope="module", params=[None, "stage"])
def space(request, resnet18) -> SearchSpace:
    return SearchSpace.for_model(resnet18, share=request.param, model_name="tv:resnet18")


def test_layout_one_method_then_union_of_params(space: SearchSpace) -> None:
    params = list(dict.fromkeys(p for m in CONV_METHODS for p in VOCAB[m]))
    per_group = 1 + len(params)
    assert len(space.decisions) == per_group * len(space.groups)
    assert space.vocab_sizes == [len(d.choices) for d in space.decisions]
    first = space.decisions[:per_group]
    assert first[0].param == "method" and first[0].choices == tuple(CONV_METHODS)
    assert [d.param for d in first[1:]] == params
    assert {d.site for d in first} == {space.groups[0][0]}
    # Shared parameter names share a decision (drop_prob of dropout/spatial/dropblock).
    assert params.count("drop_prob") == 1 and params.count("block_size") == 1


def test_decode_encode_inverse_on_many_random_plans(space: SearchSpace) -> None:
    for seed in range(300):
        plan = space.random_plan(seed)
        assert space.decode(space.encode(plan)) == plan
        assert plan.model == "tv:resnet18" and list(plan.sites) == space.sites


def test_encode_decode_keeps_active_tokens_and_zeroes_inactive(space: SearchSpace) -> None:
    rng = np.random.default_rng(0)
    seen_methods = set()
    for _ in range(200):
        tokens = space.random_tokens(rng)
        mask = space.active_mask(tokens)
        again = space.encode(space.decode(tokens))
        assert again == [t if m else 0 for t, m in zip(tokens, mask)]
        # Changing an inactive token never changes the plan; changing an active one does.
        i_inactive = [i for i, m in enumerate(mask) if not m]
        i_active = [i for i, m in enumerate(mask) if m]
        j = i_inactive[0]
        bumped = list(tokens)
        bumped[j] = (bumped[j] + 1) % space.vocab_sizes[j]
        assert space.decode(bumped) == space.decode(tokens)
        k = i_active[int(rng.integers(len(i_active)))]
        bumped = list(tokens)
        bumped[k] = (bumped[k] + 1) % space.vocab_sizes[k]
        assert space.decode(bumped) != space.decode(tokens)
        seen_methods.add(space.methods[tokens[0]])
    assert seen_methods == set(CONV_METHODS)


def test_active_mask_matches_method_params(space: SearchSpace) -> None:
    per_group = len(space.decisions) // len(space.groups)
    for m_index, method in enumerate(space.methods):
        tokens = [0] * len(space.decisions)
        tokens[0] = m_index
        mask = space.active_mask(tokens)[:per_group]
        expected = [True] + [d.param in VOCAB[method] for d in space.decisions[1:per_group]]
        assert mask == expected
        assert sum(mask) == 1 + len(VOCAB[method])


def test_stage_sharing(resnet18) -> None:
    space = SearchSpace.for_model(resnet18, share="stage")
    assert [k for k, _ in space.groups] == ["bn1", "layer1.*", "layer2.*", "layer3.*", "layer4.*"]
    assert dict(space.groups)["layer2.*"] == tuple(s for s in find_sites(resnet18) if s.startswith("layer2."))
    for seed in range(20):
        plan = space.random_plan(seed)
        for _key, members in space.groups:
            assert all(plan.sites[s] == plan.sites[members[0]] for s in members)
    plan = space.random_plan(0)
    plan.sites["layer2.1.bn1"] = SiteSpec("dropout", {"drop_prob": 0.3})
    plan.sites["layer2.0.bn1"] = SiteSpec("dropout", {"drop_prob": 0.1})
    with pytest.raises(PlanError, match=r"layer2.*same spec as 'layer2.0'.*'layer2\.\*'"):
        space.encode(plan)
    assert stage_of("layer2.1.bn2") == "layer2.*"
    assert stage_of("block1.layer.3.bn1") == "block1.layer.*"
    assert stage_of("bn1") == "bn1" and stage_of("0.bn") == "0.bn"
    custom = SearchSpace.for_model(resnet18, share=lambda s: "all")
    assert len(custom.groups) == 1 and custom.to_dict()["share"] == "custom"


def test_restricted_methods_and_explicit_sites(resnet18) -> None:
    space = SearchSpace.for_model(resnet18, sites=["layer3.0.bn1", "layer4.1"], methods=["none", "dropblock"])
    assert space.sites == ["layer3.0.bn1", "layer4.1"]
    assert [d.param for d in space.decisions[:5]] == ["method", "drop_prob", "block_size", "share_channels", "ramp"]
    assert space.vocab_sizes == [2, 11, 7, 2, 4] * 2
    plan = Plan({"layer3.0.bn1": SiteSpec("dropout", {"drop_prob": 0.1}), "layer4.1": SiteSpec("none", {})})
    with pytest.raises(PlanError, match=r"method: bad value 'dropout'; allowed in this space: \['none', 'dropblock'\]"):
        space.encode(plan)
    with pytest.raises(PlanError, match=r"methods: bad value 'cutout'; allowed: \['none'"):
        SearchSpace.for_model(resnet18, methods=["none", "cutout"])
    with pytest.raises(PlanError, match=r"sites\['layer9'\]: unknown site"):
        SearchSpace.for_model(resnet18, sites=["layer9"])


def test_encode_rejects_foreign_plans(space: SearchSpace) -> None:
    plan = space.random_plan(3)
    off_vocab = dict(plan.sites)
    off_vocab[space.sites[0]] = SiteSpec("dropout", {"drop_prob": 0.12})
    off_vocab = {
        s: (off_vocab[space.sites[0]] if s in dict(space.groups).get(space.groups[0][0], ()) else sp)
        for s, sp in off_vocab.items()
    }
    with pytest.raises(
        PlanError, match=r"drop_prob: bad value 0.12 is not in the search vocabulary; allowed: \[0.0, 0.05"
    ):
        space.encode(Plan(off_vocab))
    missing = {s: sp for s, sp in plan.sites.items() if s != space.sites[-1]}
    with pytest.raises(PlanError, match=f"site '{space.sites[-1]}' is missing"):
        space.encode(Plan(missing))
    with pytest.raises(PlanError, match="site 'fc' is unknown"):
        space.encode(Plan({**plan.sites, "fc": SiteSpec("none", {})}))


def test_bad_tokens(space: SearchSpace) -> None:
    with pytest.raises(ValueError, match=f"bad length 3; allowed: {len(space.decisions)}"):
        space.decode([0, 0, 0])
    tokens = [0] * len(space.decisions)
    tokens[0] = len(CONV_METHODS)
    with pytest.raises(ValueError, match=r"tokens\[0\] \(.* method\): bad value 6; allowed: 0..5"):
        space.active_mask(tokens)


def test_random_tokens_seeded_and_uniform(space: SearchSpace) -> None:
    a = space.random_tokens(np.random.default_rng(7))
    assert a == space.random_tokens(np.random.default_rng(7))
    assert space.random_plan(5) == space.random_plan(5) != space.random_plan(6)
    rng = np.random.default_rng(1)
    counts = Counter(space.random_tokens(rng)[0] for _ in range(3000))
    for m in range(len(CONV_METHODS)):  # 500 expected; 5 sigma ~ 100
        assert abs(counts[m] - 500) < 100


def test_to_dict_from_dict_rebuilds_without_model(space: SearchSpace) -> None:
    d = json.loads(json.dumps(space.to_dict()))
    again = SearchSpace.from_dict(d)
    assert again.decisions == space.decisions and again.sites == space.sites
    tokens = space.random_tokens(np.random.default_rng(2))
    assert again.decode(tokens) == space.decode(tokens)
    d["space_version"] = "0"
    with pytest.raises(PlanError, match="space_version: bad value '0'"):
        SearchSpace.from_dict(d)


def test_ramp_fraction_and_model_name_flow_into_plans(resnet18) -> None:
    space = SearchSpace.for_model(resnet18, ramp_fraction=0.3, model_name="x")
    plan = space.random_plan(0)
    assert plan.ramp_fraction == 0.3 and plan.model == "x"
    assert SearchSpace.from_dict(space.to_dict()).random_plan(0) == plan


def test_the_schedule_is_a_searched_decision_per_stage() -> None:
    """'DropBlock 0.1, block 5, ramped over the whole training, on the last two stages' is a
    plan the controller can sample; constant and half-way ramps are others."""
    from child_trainer import build_model
    from search_space import apply_plan, regularizers
    from search_space.layers import LinearScheduler

    model = build_model("resnet20", 10, 3)
    space = SearchSpace.for_model(model, share="stage", model_name="resnet20")
    ramp = [i for i, d in enumerate(space.decisions) if d.param == "ramp"]
    assert len(ramp) == len(space.groups) and space.decisions[ramp[0]].choices == (0.0, 0.25, 0.5, 1.0)
    late = {"layer2.*", "layer3.*"}
    db = SiteSpec("dropblock", {"drop_prob": 0.1, "block_size": 5, "share_channels": False, "ramp": 1.0})
    plan = Plan({s: db if stage_of(s) in late else SiteSpec("none", {}) for s in space.sites}, model="resnet20")
    tokens = space.encode(plan)
    assert space.decode(tokens).sites == plan.sites
    apply_plan(model, space.decode(tokens), total_steps=200)
    regs = regularizers(model)
    assert regs and all(isinstance(r, LinearScheduler) and r.nr_steps == 200 for r in regs.values())
    # half-way ramp on one stage, constant on the other: only the first gets a scheduler
    half = dict(db.params, ramp=0.5)
    const = dict(db.params, ramp=0.0)
    plan2 = Plan(
        {
            s: SiteSpec("dropblock", half if stage_of(s) == "layer2.*" else const)
            if stage_of(s) in late
            else SiteSpec("none", {})
            for s in space.sites
        }
    )
    model2 = apply_plan(build_model("resnet20", 10, 3), plan2, total_steps=200)
    for site, reg in regularizers(model2).items():
        if stage_of(site) == "layer2.*":
            assert isinstance(reg, LinearScheduler) and reg.nr_steps == 100
        else:
            assert not isinstance(reg, LinearScheduler)


def test_plans_without_a_ramp_and_version_1_plans_still_load() -> None:
    old = {
        "format_version": 1,
        "space_version": "1",
        "model": "m",
        "ramp_fraction": 1.0,
        "metadata": {},
        "sites": {"a": {"method": "dropout", "params": {"drop_prob": 0.1}}},
    }
    plan = Plan.from_dict(old)
    assert plan.sites["a"].params == {"drop_prob": 0.1, "ramp": 1.0} and plan.space_version == "2"
    space = SearchSpace([("a", ["a"])], model="m")
    tokens = space.encode(plan)  # the plan-wide ramp becomes the site's ramp token
    assert space.decode(tokens).sites["a"].params == {"drop_prob": 0.1, "ramp": 1.0}
