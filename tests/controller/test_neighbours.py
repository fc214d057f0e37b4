"""The recombinations of the best recipes' stage settings (controller.stages.neighbours): which
plans, in which order, and how the searcher runs them (before the policy's draws, never in a
REINFORCE batch, the policy started from the best of them, the same list on resume). No Ray."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from controller.config import SearchConfig
from controller.policies import ControllerSearcher, RandomSearcher, TPESearcher
from controller.stages.neighbours import group_slices, neighbour_limit, recombinations
from search_space.plan import Plan, plan_key
from search_space.space import SearchSpace


def space2() -> SearchSpace:
    return SearchSpace([("s1", ["s1"]), ("s2", ["s2"])], methods=["none", "dropout", "dropblock"], model="m")


def dropout(space: SearchSpace, p: float) -> list[int]:
    return space.encode(space.uniform_plan("dropout", drop_prob=p, ramp=0.0))


def dropblock(space: SearchSpace, p: float = 0.1) -> list[int]:
    return space.encode(space.uniform_plan("dropblock", drop_prob=p, block_size=3, share_channels=False, ramp=1.0))


def methods(space: SearchSpace, tokens: list[int]) -> tuple[str, ...]:
    plan = space.decode(tokens)
    return tuple(plan.sites[s].method for s in space.sites)


def ok(val: float) -> dict:
    return {"final": True, "status": "ok", "val_acc": val, "best_val_acc": val, "epoch": 1, "seconds": 1.0}


# ----------------------------------------------------------------------------- the plans
def test_one_stage_changes_of_the_incumbent_come_first_and_recipes_are_not_repeated():
    space = space2()
    a, b = dropblock(space), dropout(space, 0.2)
    out = recombinations(space, [a, b], limit=100)
    # the per-stage plans the two recipes make: one stage from each, the incumbent's changed first in stage 1
    assert [methods(space, t) for t in out[:2]] == [("dropout", "dropblock"), ("dropblock", "dropout")]
    keys = [plan_key(space.decode(t)) for t in out]
    assert len(set(keys)) == len(keys)
    assert plan_key(space.decode(a)) not in keys and plan_key(space.decode(b)) not in keys
    # then a stage switched off; 3 settings per stage (2 recipes + none) = 9 plans less the 2 recipes
    assert methods(space, out[2]) == ("none", "dropblock") and len(out) == 7
    assert recombinations(space, [a, b], limit=3) == out[:3]  # the limit keeps the order
    assert recombinations(space, [a, b], limit=0) == [] and recombinations(space, [], limit=5) == []
    assert recombinations(space, [a, b], limit=100) == out  # deterministic
    # one recipe: its stages switched off, one at a time, then both
    assert [methods(space, t) for t in recombinations(space, [a], limit=5)] == [
        ("none", "dropblock"),
        ("dropblock", "none"),
        ("none", "none"),
    ]


def test_each_stage_offers_the_best_settings_then_the_best_of_each_method_they_lack():
    space = space2()
    ranked = [dropout(space, 0.15), dropout(space, 0.2), dropout(space, 0.1), dropout(space, 0.3), dropblock(space)]
    out = recombinations(space, ranked, limit=100, per_group=3)
    stage1 = [space.decode(t).sites["s1"] for t in [*out, ranked[0]]]
    assert {(s.method, s.params.get("drop_prob")) for s in stage1} == {
        ("dropout", 0.15),
        ("dropout", 0.2),
        ("dropout", 0.1),
        ("dropblock", 0.1),  # ranked 5th: the best of a method the three best lack
        ("none", None),  # and each stage switched off
    }  # not dropout 0.3 (ranked 4th)
    assert [methods(space, t) for t in out[:2]] == [("dropout", "dropout")] * 2  # the best rates first
    assert len(out) == 5 * 5 - 4  # every combination but the recipes themselves


def test_many_stages_enumerate_lazily_one_stage_changes_first():
    groups = [(f"g{i}", [f"g{i}"]) for i in range(14)]
    space = SearchSpace(groups, methods=["none", "dropout", "dropblock"], model="m")
    a, b = dropblock(space), dropout(space, 0.2)
    start = time.process_time()
    out = recombinations(space, [a, b], limit=20)
    assert time.process_time() - start < 2.0  # 3**14 = 4.8 million plans are never enumerated
    assert len(out) == 20
    for i, t in enumerate(out[:14]):  # each stage in turn changed to the other recipe's setting
        got = methods(space, t)
        assert got[i] == "dropout" and all(m == "dropblock" for j, m in enumerate(got) if j != i)


def test_group_slices_and_the_limit():
    space = space2()
    slices = group_slices(space)
    assert [sl.start for sl in slices] == [0, len(space.decisions) // 2] and slices[-1].stop == len(space.decisions)
    # auto: 3 per stage group, at most half the sampled plans
    assert neighbour_limit("auto", 36, 2) == 6 and neighbour_limit("auto", 36, 14) == 18
    assert neighbour_limit("auto", 4, 2) == 2 and neighbour_limit(5, 36, 2) == 5 and neighbour_limit(50, 36, 2) == 36
    assert neighbour_limit(0, 36, 2) == 0


# ----------------------------------------------------------------------------- in the searcher
def _searcher(cls, space, tmp_path=None, **kw):
    a, b = space.decode(dropblock(space)), space.decode(dropout(space, 0.2))
    return cls(
        space,
        num_samples=8,
        run_dir=tmp_path,
        baselines={"none": Plan.none(space.sites, model="m")},
        tuned={"dropblock": [a], "dropout": [b]},
        controller_batch=2,
        seed=3,
        **kw,
    )


VALUES = {("none", "none"): 0.80, ("dropblock", "dropblock"): 0.90, ("dropout", "dropout"): 0.89}


def _value(space: SearchSpace, cfg: dict) -> float:
    got = tuple(cfg["plan"].sites[s].method for s in space.sites)
    return VALUES.get(got, 0.95 if got == ("dropblock", "dropout") else 0.85)


def test_the_controller_runs_the_recombinations_first_and_never_learns_from_them(tmp_path: Path):
    space = space2()
    s = _searcher(ControllerSearcher, space, tmp_path)
    assert s.neighbours.limit == 4  # auto: half of the 8 sampled plans
    fixed = [s.suggest(f"f{i}") for i in range(3)]
    assert s.suggest("x") is None  # the recombinations wait for the recipes
    for i, cfg in enumerate(fixed):
        s.on_trial_complete(f"f{i}", ok(_value(space, cfg)))
    before = s.reinforce.policy.head_bias.detach().clone()
    rec = [s.suggest(f"n{i}") for i in range(4)]
    assert [tuple(c["plan"].sites[x].method for x in space.sites) for c in rec] == [
        ("dropout", "dropblock"),
        ("dropblock", "dropout"),
        ("none", "dropblock"),
        ("dropblock", "none"),
    ]
    assert all(c["label"] == "searched" for c in rec)
    assert s.suggest("p0") is None  # the policy waits for the recombinations' rewards
    assert (s.reinforce.policy.head_bias.detach() == before).all()  # and has not moved yet
    for i, cfg in enumerate(rec):
        s.on_trial_complete(f"n{i}", ok(_value(space, cfg)))
    assert not s._buffer and not s.history  # four searched rewards, none in a REINFORCE batch
    drawn = [s.suggest(f"p{i}") for i in range(4)]
    # the warm start: +2 logits towards the best of recipes and recombinations (dropblock, dropout)
    draws = [methods(space, t) for t in s.reinforce.sample(400)]
    assert draws.count(("dropblock", "dropout")) / len(draws) > 0.2  # uniform: 1/9
    for i, cfg in enumerate(drawn):
        s.on_trial_complete(f"p{i}", ok(_value(space, cfg)))
    learned = {t for h in s.history for t in h["trials"]}
    assert learned == {f"p{i}" for i in range(4)}
    rows = {r["trial_id"]: r for r in s.records}
    assert [rows[f"n{i}"]["kind"] for i in range(4)] == ["searched"] * 4  # finalists like any searched plan


def test_random_search_stays_uniform_and_tpe_is_told_the_recombinations():
    space = space2()
    r = _searcher(RandomSearcher, space)
    assert r.neighbours.limit == 0
    t = _searcher(TPESearcher, space, n_startup_trials=2)
    assert t.neighbours.limit == 4
    fixed = [t.suggest(f"f{i}") for i in range(3)]
    for i, cfg in enumerate(fixed):
        t.on_trial_complete(f"f{i}", ok(_value(space, cfg)))
    rec = [t.suggest(f"n{i}") for i in range(4)]
    for i, cfg in enumerate(rec):
        t.on_trial_complete(f"n{i}", ok(_value(space, cfg)))
    t.suggest("p0")
    told = sorted(x.value for x in t._study.trials if x.state.name == "COMPLETE")
    assert told == pytest.approx(sorted([0.90, 0.89, 0.95, 0.85, 0.85, 0.85]))  # 2 tuned + 4 recombinations
    off = _searcher(ControllerSearcher, space, settings=SearchConfig(neighbours=0))
    assert off.neighbours.limit == 0


def test_a_resume_finds_the_same_recombinations_and_keeps_them_out_of_the_batches(tmp_path: Path):
    space = space2()
    a = _searcher(ControllerSearcher, space, tmp_path / "a")
    fixed = [a.suggest(f"f{i}") for i in range(3)]
    for i, cfg in enumerate(fixed):
        a.on_trial_complete(f"f{i}", ok(_value(space, cfg)))
    rec = [a.suggest(f"n{i}") for i in range(2)]
    a.on_trial_complete("n0", ok(_value(space, rec[0])))  # n1 still running when the copy is taken
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = _searcher(ControllerSearcher, space, tmp_path / "b")
    b.resume()
    assert not b._buffer  # n0's reward is a recombination's: not the policy's to learn from
    again = b.suggest("r1")  # the running one first, then the rest of the same list
    assert plan_key(again["plan"]) == plan_key(rec[1]["plan"])
    rest_a = [a.suggest(f"n{i}") for i in range(2, 4)]
    rest_b = [b.suggest(f"m{i}") for i in range(2, 4)]
    assert [plan_key(c["plan"]) for c in rest_a] == [plan_key(c["plan"]) for c in rest_b]
    for tid, cfg in [("n1", rec[1]), ("n2", rest_a[0]), ("n3", rest_a[1])]:
        a.on_trial_complete(tid, ok(_value(space, cfg)))
    for tid, cfg in [("r1", again), ("m2", rest_b[0]), ("m3", rest_b[1])]:
        b.on_trial_complete(tid, ok(_value(space, cfg)))
    assert not a._buffer and not b._buffer
    # both start the policy from the same best plan: their draws agree
    a.suggest("p0"), b.suggest("p0")
    assert a.reinforce.sample(5) == b.reinforce.sample(5)
    state = json.loads((tmp_path / "b" / "searcher_state.json").read_text())
    assert state["warmed"] is True


def test_the_learned_rates_nearest_plan_is_a_recipe_ranked_by_the_learned_trials_reward(monkeypatch):
    """The learned rates' nearest tokens join the recipes to recombine, at the ``learned``
    trial's reward: best of all here, so it is the incumbent and its stage settings come first."""
    from controller.stages import neighbours

    space = space2()
    tuned = dropout(space, 0.2)
    plan = space.decode(dropout(space, 0.4))  # none early, dropout 0.4 late: a per-stage plan
    plan.sites["s1"] = Plan.none(["s1"], model="m").sites["s1"]
    learned = space.encode(plan)
    record = {"kind": "tuned", "status": "ok", "reward": 0.8, "order": 0, "tokens": json.dumps(tuned)}
    record.update(baseline="tuned-dropout", methods="dropout")
    monkeypatch.setattr(neighbours, "learned_recipe", lambda records, sp: (learned, 0.9))
    ranked = neighbours._ranked_recipes([record], space)
    assert [name for _, name in ranked] == ["learned-rates", "tuned-dropout (dropout)"]
    assert ranked[0][0] == learned
    monkeypatch.setattr(neighbours, "learned_recipe", lambda records, sp: (learned, 0.5))
    assert [name for _, name in neighbours._ranked_recipes([record], space)][0] == "tuned-dropout (dropout)"
    monkeypatch.setattr(neighbours, "learned_recipe", lambda records, sp: None)  # no learned trial
    assert [name for _, name in neighbours._ranked_recipes([record], space)] == ["tuned-dropout (dropout)"]
