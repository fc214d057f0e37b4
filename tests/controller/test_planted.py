"""The planted task (tests/helpers/planted.py): its own promises, then whole searches judged by
the TRUE value of the plan they export (issue 25)."""

from __future__ import annotations

import json
import math
import pickle
import statistics

import numpy as np
import pandas as pd
import pytest

from controller import run_search
from search_space import Plan, SearchSpace
from search_space.baselines import TUNED_GRIDS, baseline_plans, tuned_grid
from search_space.plan import SiteSpec
from tests.helpers.planted import SITES, STAGE_OF, PlantedNet, PlantedTask, example_input


def _space() -> SearchSpace:
    return SearchSpace.for_model(PlantedNet(), share="stage", example_input=example_input(), model_name="planted")


def _with(plan: Plan, stage: str, spec: SiteSpec) -> Plan:
    return Plan({s: spec if STAGE_OF[s] == stage else v for s, v in plan.sites.items()}, model=plan.model)


# ----------------------------------------------------------------------------- the truth
@pytest.mark.parametrize("margin,headroom", [(0.01, None), (0.025, None), (0.005, 0.04), (0.0, None)])
def test_the_best_plan_beats_every_global_recipe_by_the_margin(margin, headroom):
    task = PlantedTask(margin=margin, headroom=headroom)
    best = task.best_plan()
    assert task.true_value(best) - task.best_global_value == pytest.approx(margin, abs=1e-12)
    assert task.true_value(best) - task.base == pytest.approx(task.gain, abs=1e-12)
    methods = best.methods()
    assert {methods[s] for s in SITES if STAGE_OF[s] == "early"} == {"dropblock"}
    assert {methods[s] for s in SITES if STAGE_OF[s] == "late"} == {"dropout"}  # differs across stages
    space = _space()
    # every point of the tuned grids is a global recipe: none above the best global value ...
    grid = {m: tuned_grid(space, m, len(TUNED_GRIDS[m])) for m in ("dropout", "dropblock")}
    assert all(task.true_value(p) <= task.best_global_value + 1e-12 for plans in grid.values() for p in plans)
    # ... and the first two of one method (a budget of 16 tunes two per method) reach it
    assert max(task.true_value(p) for plans in grid.values() for p in plans[:2]) == pytest.approx(
        task.best_global_value, abs=1e-12
    )
    hand = baseline_plans(PlantedNet(), list(SITES), example_input(), "planted")
    assert all(task.true_value(p) < task.best_global_value for p in hand.values())
    assert task.true_value(hand["none"]) == task.base


def test_no_plan_beats_the_best_and_a_search_has_a_gradient_to_follow():
    task = PlantedTask(margin=0.01)
    space = _space()
    rng = np.random.default_rng(0)
    values = [task.true_value(space.decode(space.random_tokens(rng))) for _ in range(3000)]
    assert max(values) <= task.true_value(task.best_plan()) + 1e-12
    assert len({round(v, 9) for v in values}) > 100  # partial credit: values are graded, not all-or-nothing
    # one stage right and the other at a global recipe's choice: between the global and the best
    best = task.best_plan()
    half = _with(best, "late", SiteSpec("dropblock", {"drop_prob": 0.1, "block_size": 3, "share_channels": False}))
    assert task.best_global_value == pytest.approx(task.true_value(half), abs=1e-12)  # = dropblock everywhere
    # walking the late stage's rate towards 0.2 climbs; past it, descends
    late = [task.true_value(_with(best, "late", SiteSpec("dropout", {"drop_prob": p}))) for p in (0.5, 0.4, 0.3, 0.2)]
    assert late == sorted(late) and len(set(late)) == 4
    assert task.true_value(_with(best, "late", SiteSpec("dropout", {"drop_prob": 0.25}))) < late[-1]
    # the wrong block size costs, the ramp does not matter
    assert (
        task.true_value(
            _with(best, "early", SiteSpec("dropblock", {"drop_prob": 0.1, "block_size": 6, "share_channels": False}))
        )
        < late[-1]
    )
    ramped = _with(best, "late", SiteSpec("dropout", {"drop_prob": 0.2, "ramp": 1.0}))
    assert task.true_value(ramped) == task.true_value(best)


def test_null_every_plan_is_equal():
    task = PlantedTask(null=True)
    space = _space()
    rng = np.random.default_rng(1)
    plans = [space.decode(space.random_tokens(rng)) for _ in range(200)]
    assert {task.true_value(p) for p in plans} == {task.base}
    assert task.best_global_value == task.base and not task.beats_global(task.best_plan())
    assert len({task.evaluate(p, 3) for p in plans}) > 150  # the noise stays


# ----------------------------------------------------------------------------- the noise
def test_noise_has_the_stated_size_and_sharing():
    task = PlantedTask(margin=0.01, noise=0.004, shared=0.5)
    a, b = task.best_plan(), max(task.global_recipes().values(), key=lambda pv: pv[1])[0]
    seeds = range(4000)
    na = np.array([task.evaluate(a, s) - task.true_value(a) for s in seeds])
    nb = np.array([task.evaluate(b, s) - task.true_value(b) for s in seeds])
    assert abs(na.mean()) < 4 * 0.004 / math.sqrt(len(na))  # unbiased: the true value is the expectation
    assert na.std(ddof=1) == pytest.approx(0.004, rel=0.05) and nb.std(ddof=1) == pytest.approx(0.004, rel=0.05)
    assert np.corrcoef(na, nb)[0, 1] == pytest.approx(0.5, abs=0.05)  # a seed's shared part
    # a paired difference sees only the plans' own parts: sd = noise * sqrt(2 (1 - shared))
    assert (na - nb).std(ddof=1) == pytest.approx(0.004, rel=0.05)
    unshared = PlantedTask(margin=0.01, shared=0.0)
    nc = np.array([unshared.evaluate(a, s) - unshared.true_value(a) for s in seeds])
    nd = np.array([unshared.evaluate(b, s) - unshared.true_value(b) for s in seeds])
    assert abs(np.corrcoef(nc, nd)[0, 1]) < 0.05


def test_one_training_is_deterministic_per_plan_and_seed():
    task = PlantedTask(margin=0.01)
    best = task.best_plan()
    assert task.evaluate(best, 7) == task.evaluate(best, 7) == pickle.loads(pickle.dumps(task)).evaluate(best, 7)
    assert task.evaluate(best, 7) != task.evaluate(best, 8)
    # same true value, another training: a ramp changes the plan, so its own noise
    ramped = _with(best, "late", SiteSpec("dropout", {"drop_prob": 0.2, "ramp": 1.0}))
    assert task.true_value(ramped) == task.true_value(best) and task.evaluate(ramped, 7) != task.evaluate(best, 7)
    # a rate of 0 is `none`, the same training
    zero = _with(best, "late", SiteSpec("dropout", {"drop_prob": 0.0}))
    assert task.evaluate(zero, 7) == task.evaluate(_with(best, "late", SiteSpec("none")), 7)
    reports: list[dict] = []
    out = PlantedTask(margin=0.01, epochs=3)(best, 7, lambda **m: reports.append(m))
    assert out == {"status": "ok"} and [r["epoch"] for r in reports] == [1, 2, 3]
    assert reports[-1]["val_acc"] == task.evaluate(best, 7) and reports[0]["val_acc"] < reports[-1]["val_acc"]


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"margin": -0.1}, "margin"),
        ({"shared": 1.5}, "shared"),
        ({"margin": 0.02, "headroom": 0.01}, "headroom"),
        ({"epochs": 0}, "epochs"),
    ],
)
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}: bad value"):
        PlantedTask(**kwargs)


# ----------------------------------------------------------------------------- whole searches
def _search(task: PlantedTask, tmp_path, name: str, **kwargs):
    settings = {"num_samples": 48, "search": "controller", "final_top_k": 4, "final_seeds": 3, "seed": 0, **kwargs}
    result = run_search(**task.search_kwargs(), storage_path=tmp_path, name=name, **settings)
    assert result.status == "finished"
    return result


def _check_values_are_the_tasks(task: PlantedTask, run_dir) -> None:
    """What Ray's workers reported is the task's value for that plan and seed (deterministic in
    any process)."""
    trials = pd.read_csv(run_dir / "trials.csv")
    for text, seeds in zip(trials["plan_json"][:12], trials["val_acc_seeds"][:12]):
        plan = Plan.from_json(text)
        assert json.loads(seeds) == [pytest.approx(task.evaluate(plan, 0), abs=1e-12)]
    final = pd.read_csv(run_dir / "final.csv")
    for text, values in zip(final["plan_json"], final["values"]):
        plan = Plan.from_json(text)
        assert {int(k): v for k, v in json.loads(values).items()} == {
            int(k): pytest.approx(task.evaluate(plan, int(k)), abs=1e-12) for k in json.loads(values)
        }


def test_a_large_margin_search_exports_a_searched_plan_that_truly_beats_every_global_recipe(ray_session, tmp_path):
    task = PlantedTask(margin=0.025)
    result = _search(task, tmp_path, "large")
    _check_values_are_the_tasks(task, result.run_dir)
    assert result.best_plan.metadata["kind"] == "searched", result.summary
    assert task.true_value(result.best_plan) > task.best_global_value


def test_a_one_point_margin_search_exports_a_searched_plan_that_truly_beats_every_global_recipe(ray_session, tmp_path):
    task = PlantedTask(margin=0.01)
    result = _search(task, tmp_path, "one-point")
    assert result.best_plan.metadata["kind"] == "searched", result.summary
    assert task.true_value(result.best_plan) > task.best_global_value


def test_on_the_null_the_search_exports_a_baseline(ray_session, tmp_path):
    task = PlantedTask(null=True)
    result = _search(task, tmp_path, "null", num_samples=8, final_top_k=2)
    assert result.best_plan.metadata["kind"] != "searched", result.summary
    assert statistics.fmean(task.true_value(Plan.from_json(t)) for t in result.trials["plan_json"]) == pytest.approx(
        task.base
    )
