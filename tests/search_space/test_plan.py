"""Plans: JSON round trip, stable output, atomic save, and every validation error."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from search_space import PLAN_FORMAT_VERSION, SPACE_VERSION, VOCAB, Plan, PlanError, SearchSpace, SiteSpec

SITES = [f"layer{i}.{j}.bn{k}" for i in (1, 2, 3) for j in (0, 1) for k in (1, 2)]


def _space() -> SearchSpace:
    return SearchSpace([(s, [s]) for s in SITES], model="tv:resnet18")


def _good() -> dict:
    return {
        "format_version": PLAN_FORMAT_VERSION,
        "space_version": SPACE_VERSION,
        "model": "tv:resnet18",
        "ramp_fraction": 0.25,
        "metadata": {"val_acc": 0.9},
        "sites": {
            "layer1.0.bn1": {
                "method": "dropblock",
                "params": {"drop_prob": 0.1, "block_size": 5, "share_channels": False},
            },
            "layer2.0.bn2": {"method": "disout", "params": {"dist_prob": 0.09, "block_size": 6, "alpha": 5}},
            "layer3.1.bn1": {"method": "none", "params": {}},
        },
    }


def test_json_round_trip_many_random_plans() -> None:
    space = _space()
    for seed in range(100):
        plan = space.random_plan(seed)
        text = plan.to_json()
        again = Plan.from_json(text)
        assert again == plan
        assert again.to_json() == text  # stable output


def test_json_is_sorted_indented_and_human_readable() -> None:
    text = Plan.from_dict(_good()).to_json()
    d = json.loads(text)
    assert text == json.dumps(d, sort_keys=True, indent=2) + "\n"
    assert '\n  "format_version": 1,' in text
    assert d["sites"]["layer2.0.bn2"] == {
        "method": "disout",  # the plan-wide ramp_fraction made explicit
        "params": {"alpha": 5.0, "block_size": 6, "dist_prob": 0.09, "ramp": 0.25},
    }


def test_int_for_float_param_is_canonicalised() -> None:
    plan = Plan.from_dict(_good())
    alpha = plan.sites["layer2.0.bn2"].params["alpha"]
    assert alpha == 5.0 and isinstance(alpha, float)
    # Values between the searched ones are legal in hand-written plans.
    d = _good()
    d["sites"]["layer1.0.bn1"]["params"]["drop_prob"] = 0.12
    assert Plan.from_dict(d).sites["layer1.0.bn1"].params["drop_prob"] == 0.12


def test_save_load_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = Plan.from_dict(_good())
    path = plan.save(tmp_path / "sub" / "plan.json")
    assert Plan.load(path) == plan
    assert sorted(p.name for p in path.parent.iterdir()) == ["plan.json"]
    before = path.read_text()

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        Plan.none(SITES).save(path)
    assert path.read_text() == before  # old file intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["plan.json"]  # no temp left


def test_summary_methods_and_none() -> None:
    plan = Plan.from_dict(_good())
    assert plan.summary() == (
        "layer1.0.bn1=dropblock(p=.1,b=5,sc=0,ramp=.25) layer2.0.bn2=disout(p=.09,b=6,a=5,ramp=.25)"
    )
    assert plan.methods() == {"layer1.0.bn1": "dropblock", "layer2.0.bn2": "disout", "layer3.1.bn1": "none"}
    none = Plan.none(SITES, model="m")
    assert none.summary() == "none" and set(none.methods().values()) == {"none"}
    assert none.model == "m" and none.space_version == SPACE_VERSION


def _set(d: dict, path: tuple, value) -> dict:
    target = d
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return d


_DELETE = object()
_DB = ("sites", "layer1.0.bn1")

BAD = {
    # name: (path, value, substrings the message must contain: field, bad value, allowed)
    "unknown method": (_DB + ("method",), "cutout", ["layer1.0.bn1", "method", "'cutout'", "'pattern'"]),
    "out of range": (_DB + ("params", "drop_prob"), 0.95, ["drop_prob", "0.95", "[0.0, 0.9]"]),
    "negative": (_DB + ("params", "block_size"), 0, ["block_size", "0", "[1, 64]"]),
    "float for int": (_DB + ("params", "block_size"), 2.5, ["block_size", "2.5", "integer"]),
    "int for bool": (_DB + ("params", "share_channels"), 1, ["share_channels", "1", "true or false"]),
    "string value": (_DB + ("params", "drop_prob"), "0.1", ["drop_prob", "'0.1'", "[0.0, 0.9]"]),
    "nan": (_DB + ("params", "drop_prob"), float("nan"), ["drop_prob", "nan", "[0.0, 0.9]"]),
    "missing param": (_DB + ("params", "block_size"), _DELETE, ["layer1.0.bn1", "block_size", "missing", "[1, 2, 3"]),
    "unknown param": (_DB + ("params", "keep_prob"), 0.9, ["keep_prob", "unknown", "'drop_prob'"]),
    "format version": (("format_version",), 2, ["format_version", "2", "1"]),
    "missing format version": (("format_version",), _DELETE, ["format_version", "missing"]),
    "space version": (("space_version",), "0", ["space_version", "'0'", repr(SPACE_VERSION)]),
    "ramp fraction": (("ramp_fraction",), 1.5, ["ramp_fraction", "1.5", "[0, 1]"]),
    "unknown top field": (("plans",), {}, ["plans", "unknown", "'sites'"]),
    "sites not object": (("sites",), ["layer1.0.bn1"], ["sites", "['layer1.0.bn1']", "object"]),
    "spec without method": (_DB, {"params": {}}, ["layer1.0.bn1", "{'params': {}}", '"method"']),
    "params not object": (_DB + ("params",), [0.1], ["params", "[0.1]", "object"]),
    "bad site path": (("sites", "layer1..bn1"), {"method": "none", "params": {}}, ["'layer1..bn1'", "dotted"]),
    "metadata": (("metadata",), [], ["metadata", "[]", "object"]),
    "metadata nan": (("metadata", "val_acc"), float("nan"), ["metadata", "nan", "no NaN"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_plan_errors_name_field_value_and_allowed(case: str) -> None:
    path, value, needles = BAD[case]
    text = json.dumps(_set(_good(), path, value))
    with pytest.raises(PlanError) as err:
        Plan.from_json(text)
    for needle in needles:
        assert needle in str(err.value), (case, str(err.value))


def test_malformed_json_and_non_object(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match=r"malformed .*line 1 column 12"):
        Plan.from_json('{"sites": {')
    with pytest.raises(PlanError, match=r"plan: bad value \[1, 2\]; allowed: a JSON object"):
        Plan.from_json("[1, 2]")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(PlanError, match="bad.json: plan JSON: malformed"):
        Plan.load(bad)
    assert issubclass(PlanError, ValueError)


def test_direct_construction_validates() -> None:
    with pytest.raises(PlanError, match=r"drop_prob: unknown parameter of method 'disout'; allowed: \['dist_prob'"):
        Plan({"a": SiteSpec("disout", {"drop_prob": 0.1, "block_size": 3})})
    with pytest.raises(PlanError, match=r"params.dist_prob: missing"):
        Plan({"a": SiteSpec("disout", {"block_size": 3, "alpha": 1.0})})
    spec = SiteSpec("dropout", {"drop_prob": 0})
    assert Plan({"a": spec}).sites["a"].params == {"drop_prob": 0.0, "ramp": 0.0}  # canonical: ramp filled in
    assert spec.params == {"drop_prob": 0}  # the caller's SiteSpec is left as it was


def test_every_method_in_table_round_trips() -> None:
    sites = {}
    for i, (method, params) in enumerate(VOCAB.items()):
        sites[f"s{i}"] = SiteSpec(method, {p: c[-1] for p, c in params.items()})
    plan = Plan(sites)
    assert Plan.from_json(plan.to_json()) == plan
