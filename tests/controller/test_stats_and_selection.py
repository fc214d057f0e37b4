"""Issue 19: paired Student-t statistics, the do-no-harm export, tuned global baselines that
never reach the controller, warm starts, and plans trained once."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from controller.config import SearchConfig
from controller.final import final_rows, verdict
from controller.policies import ControllerSearcher, RandomSearcher, TPESearcher
from controller.run_folder import Objective
from controller.searcher import MAX_REDRAWS
from controller.stats import BETTER, CANNOT_TELL, TOO_FEW, WORSE, paired
from search_space.baselines import tuned_grid
from search_space.plan import Plan, SiteSpec, plan_key
from search_space.space import SearchSpace


# ----------------------------------------------------------------------- statistics
def test_paired_t_matches_hand_computed_values_at_three_seeds():
    # d = (0.02, 0.01, 0.03): mean 0.02, sd 0.01, se 0.01/sqrt(3); t(0.975, 2) = 4.302653
    a, b = {0: 0.92, 1: 0.91, 2: 0.93}, {0: 0.90, 1: 0.90, 2: 0.90}
    p = paired(a, b, "max")
    se = 0.01 / math.sqrt(3)
    assert p.n == 3 and p.mean == pytest.approx(0.02) and p.se == pytest.approx(se)
    assert p.ci95_low == pytest.approx(0.02 - 4.302653 * se, abs=1e-6)
    assert p.ci95_high == pytest.approx(0.02 + 4.302653 * se, abs=1e-6)
    # t = 0.02 / se = 3.4641; two-sided p at 2 df = 0.07418
    assert p.p_value == pytest.approx(0.07418, abs=1e-4)
    assert p.word == CANNOT_TELL  # the interval [-0.0048, 0.0448] holds 0: 2 se is not enough at 2 df


def test_paired_t_at_two_seeds_uses_one_degree_of_freedom():
    # d = (0.03, 0.01): mean 0.02, sd 0.01414, se 0.01; t(0.975, 1) = 12.7062
    p = paired({5: 0.93, 6: 0.91}, {5: 0.90, 6: 0.90}, "max")
    assert p.n == 2 and p.se == pytest.approx(0.01)
    assert (p.ci95_low, p.ci95_high) == (pytest.approx(0.02 - 0.127062, abs=1e-5), pytest.approx(0.147062, abs=1e-5))
    assert p.p_value == pytest.approx(1 - 2 * math.atan(2) / math.pi)  # t = 2 at 1 df (a Cauchy): 0.2952
    assert p.word == TOO_FEW


def test_paired_signs_min_mode_so_positive_is_better_and_uses_shared_seeds_only():
    # perplexity: A lower by 2, 3, 4, 5 on seeds 1-4; seed 9 only in A, seed 0 failed (NaN) in B
    a = {0: 100.0, 1: 98.0, 2: 97.0, 3: 96.0, 4: 95.0, 9: 50.0}
    b = {0: float("nan"), 1: 100.0, 2: 100.0, 3: 100.0, 4: 100.0}
    p = paired(a, b, "min")
    assert p.n == 4 and p.mean == pytest.approx(3.5)
    se = math.sqrt(((1.5**2 + 0.5**2) * 2) / 3) / 2
    assert p.ci95_low == pytest.approx(3.5 - 3.182446 * se, abs=1e-5) and p.word == BETTER
    assert paired(b, a, "min").word == WORSE and paired(b, a, "min").mean == pytest.approx(-3.5)


def test_identical_values_are_a_tie_and_a_constant_gap_is_decided():
    same = {s: 0.9 for s in range(5)}
    tie = paired(same, dict(same), "max")
    assert tie.mean == 0 and tie.ci95_low == tie.ci95_high == 0 and tie.word == CANNOT_TELL
    gap = paired({s: 0.95 for s in range(5)}, same, "max")
    assert gap.word == BETTER and gap.p_value == 0.0
    assert paired({0: 1.0}, {0: 0.0}).word == TOO_FEW and paired({}, {}).n == 0


# ----------------------------------------------------------------------- do no harm
def _records(values: dict[str, list[float]]) -> list[dict]:
    return [
        {"label": label, "plan_json": "{}", "methods": label, "status": "ok", "val_acc": v, "seed": 1000 + i}
        for label, vals in values.items()
        for i, v in enumerate(vals)
    ]


def _final(values: dict[str, list[float]], baselines=("none", "dropout"), mode="max") -> dict[str, dict]:
    metric = "val_acc"
    rows = final_rows(
        _records(values), Objective(metric, mode), list(baselines), expected_seeds=len(next(iter(values.values())))
    )
    return {r["label"]: r for r in rows}


def test_a_searched_plan_that_ties_the_best_baseline_is_not_exported():
    rows = _final({"searched#1": [0.95, 0.96, 0.97], "none": [0.9, 0.9, 0.9], "tuned-dropout": [0.95, 0.96, 0.97]})
    assert rows["searched#1"]["best_baseline"] == "tuned-dropout" and rows["tuned-dropout"]["kind"] == "tuned"
    assert rows["searched#1"]["comparison"] == CANNOT_TELL
    assert rows["tuned-dropout"]["chosen"] and not rows["searched#1"]["chosen"]
    text = verdict(list(rows.values()), Objective())
    assert "no searched plan is better" in text and "best_plan.json holds the baseline tuned-dropout" in text


def test_a_higher_mean_within_noise_is_not_exported_but_a_wholly_better_one_is():
    noisy = _final({"searched#1": [0.99, 0.90, 0.97], "dropout": [0.93, 0.93, 0.93]})
    assert noisy["searched#1"]["mean"] > noisy["dropout"]["mean"] and noisy["dropout"]["chosen"]
    clear = _final(
        {
            "searched#1": [0.95, 0.96, 0.97, 0.955],
            "searched#2": [0.97, 0.90, 0.99, 0.99],
            "dropout": [0.93, 0.94, 0.95, 0.935],
        }
    )
    assert clear["searched#1"]["comparison"] == BETTER and clear["searched#1"]["chosen"]
    assert clear["searched#2"]["comparison"] == CANNOT_TELL  # higher mean, but not shown better
    low, high = clear["searched#1"]["diff_ci95_low"], clear["searched#1"]["diff_ci95_high"]
    assert 0 < low < clear["searched#1"]["diff_vs_best_baseline"] < high
    text = verdict(list(clear.values()), Objective())
    assert "searched plan searched#1" in text and "is better than the best baseline dropout" in text


def test_min_mode_selection_and_two_seeds_say_too_few():
    rows = _final({"searched#1": [90.0, 91.0], "dropout": [100.0, 101.0]}, mode="min")
    assert rows["searched#1"]["diff_vs_best_baseline"] == pytest.approx(10.0)  # lower perplexity: positive
    assert rows["searched#1"]["comparison"] == TOO_FEW and rows["dropout"]["chosen"]
    assert "too few seeds" in verdict(list(rows.values()), Objective("val_ppl", "min"))


def test_one_seed_prints_the_mean_without_a_nan_error():
    rows = _final({"searched#1": [0.91], "none": [0.9]})
    text = verdict(list(rows.values()), Objective())
    assert "nan" not in text and "searched#1, val_acc 0.9100)" in text and "none (val_acc 0.9000)" in text


# ----------------------------------------------------------------------- searcher stages
def tiny_space() -> SearchSpace:
    return SearchSpace([("s1", ["s1"]), ("s2", ["s2"])], methods=["none", "dropout", "dropblock"], model="m")


def ok(val: float) -> dict:
    return {"final": True, "status": "ok", "val_acc": val, "best_val_acc": val, "epoch": 2, "seconds": 1.0}


def _tuned(space: SearchSpace, n: int = 2) -> dict[str, list[Plan]]:
    return {m: tuned_grid(space, m, n) for m in ("dropout", "dropblock")}


def test_tuned_baselines_are_recorded_and_never_reach_the_controller(tmp_path: Path):
    space = tiny_space()
    s = ControllerSearcher(
        space,
        num_samples=4,
        run_dir=tmp_path,
        baselines={"none": Plan.none(space.sites, model="m")},
        tuned=_tuned(space),
        controller_batch=2,
        seed=3,
        settings=SearchConfig(neighbours=0),  # straight to the policy (recombinations: test_neighbours.py)
    )
    first = [s.suggest(f"t{i}") for i in range(5)]  # none + 4 tuned recipes
    assert [c["label"] for c in first] == ["none"] + ["tuned-dropout"] * 2 + ["tuned-dropblock"] * 2
    assert s.suggest("t5") is None  # sampled plans wait for the tuned recipes
    before = s.reinforce.policy.head_bias.detach().clone()
    for i, v in enumerate([0.5, 0.8, 0.7, 0.6, 0.9]):
        s.on_trial_complete(f"t{i}", ok(v))
    assert not s._buffer and not s.history  # five rewards recorded, none learned from
    cfg = s.suggest("t5")  # now it samples, from the best recipe (tuned-dropblock, 0.9)
    assert cfg["label"] == "searched" and not (s.reinforce.policy.head_bias.detach() == before).all()
    ids = ["t5"] + [f"t{i}" for i in range(6, 9)]
    for tid in ids[1:]:
        assert s.suggest(tid)["label"] == "searched"
    for tid in ids:
        s.on_trial_complete(tid, ok(0.75))
    learned = {tid for h in s.history for tid in h["trials"]}
    assert learned == set(ids)  # only sampled plans reached an update
    rows = {r["trial_id"]: r for r in s.records}
    assert [rows[f"t{i}"]["kind"] for i in range(5)] == ["baseline", "tuned", "tuned", "tuned", "tuned"]
    tokens = [json.loads(rows[t]["tokens"]) for t in ids]
    assert len({json.dumps(t) for t in tokens}) == len(tokens)  # no sampled plan repeated another


def test_warm_start_makes_the_best_recipe_likely(tmp_path: Path):
    space = tiny_space()
    recipe = tuned_grid(space, "dropblock", 1)[0]
    s = ControllerSearcher(space, num_samples=8, tuned={"dropblock": [recipe]}, seed=0, prior_strength=0)
    assert s.suggest("a")["label"] == "tuned-dropblock"
    s.on_trial_complete("a", ok(0.9))
    s._ready_to_sample()
    draws = [space.decode(s.reinforce.sample(1)[0]) for _ in range(400)]
    share = sum(p.sites["s1"].method == "dropblock" for p in draws) / len(draws)
    assert share > 0.45  # uniform over 3 methods would give 1/3


def test_tpe_is_told_the_tuned_recipes_before_sampling(tmp_path: Path):
    space = tiny_space()
    s = TPESearcher(
        space, num_samples=3, tuned=_tuned(space, 1), seed=0, n_startup_trials=2, settings=SearchConfig(neighbours=0)
    )
    for i in range(2):
        s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", ok(0.6 + 0.1 * i))
    s.suggest("t2")
    done = [t for t in s._study.trials if t.state.name == "COMPLETE"]
    assert sorted(t.value for t in done) == pytest.approx([0.6, 0.7])


def test_sampled_repeats_are_drawn_again_and_finalists_are_distinct(tmp_path: Path):
    space = tiny_space()
    none = Plan.none(space.sites, model="m")
    fixed = SearchConfig(final_stage="fixed")  # every finalist on every seed (the race: test_race_final.py)
    s = RandomSearcher(
        space, num_samples=3, baselines={"none": none}, final_top_k=2, final_seeds=3, seed=0, settings=fixed
    )
    dropout = space.encode(space.uniform_plan("dropout", drop_prob=0.1, ramp=0.0))
    stronger = space.encode(space.uniform_plan("dropout", drop_prob=0.2, ramp=0.0))
    draws = iter([[0] * len(dropout), dropout, dropout, stronger] + [dropout] * (MAX_REDRAWS + 1))
    s._sample_tokens = lambda trial_id: next(draws)
    s.suggest("b")  # the none baseline
    got = [s.suggest(f"t{i}")["plan"] for i in range(3)]
    # draw 1 repeats the none baseline, draw 3 repeats t0: both drawn again; t2 repeats after MAX_REDRAWS
    assert plan_key(got[0]) == plan_key(space.decode(dropout)) and plan_key(got[1]) != plan_key(got[0])
    assert plan_key(got[2]) == plan_key(got[0])
    s.on_trial_complete("b", ok(0.8))
    for i, v in enumerate([0.9, 0.7, 0.9]):
        s.on_trial_complete(f"t{i}", ok(v))
    finals = []
    while (cfg := s.suggest(f"f{len(finals)}")) not in (s.FINISHED, None):
        finals.append((cfg["label"], plan_key(cfg["plan"])))
    labels = sorted({label for label, _ in finals})
    assert labels == ["none", "searched#1", "searched#2"]  # t0 and t2 are one plan: one finalist
    assert len({key for _, key in finals}) == 3 and len(finals) == 9


def test_a_searched_finalist_equal_to_a_baseline_is_that_baseline(tmp_path: Path):
    space = tiny_space()
    base = {"none": Plan.none(space.sites, model="m"), "dropout": space.uniform_plan("dropout", drop_prob=0.1)}
    fixed = SearchConfig(final_stage="fixed")
    s = RandomSearcher(space, num_samples=1, baselines=base, final_top_k=1, final_seeds=3, seed=0, settings=fixed)
    s._sample_tokens = lambda trial_id: space.encode(base["dropout"])  # the policy insists on a baseline
    for tid in ("a", "b", "c"):
        s.suggest(tid)
        s.on_trial_complete(tid, ok(0.9))
    labels = set()
    while (cfg := s.suggest(f"f{len(labels)}")) not in (s.FINISHED, None):
        labels.add(cfg["label"])
    assert labels == {"none", "dropout"}


def test_seed_counts_are_accepted_and_bad_types_name_the_parameter():
    space = tiny_space()
    s = TPESearcher(space, num_samples=2, final_top_k=1, final_seeds=2, reward_seeds=2)
    assert s.final_seeds == [1000, 1001] and s.reward_seeds == [0, 1]
    with pytest.raises(TypeError, match="final_seeds: bad value '2'"):
        TPESearcher(space, num_samples=2, final_top_k=1, final_seeds="2")


def test_tuned_grid_skips_plans_equal_to_a_hand_set_baseline():
    space = tiny_space()
    hand = space.uniform_plan("dropout", drop_prob=0.1, ramp=0.0)
    grid = tuned_grid(space, "dropout", 2, exclude=[hand])
    assert [p.sites["s1"].params["drop_prob"] for p in grid] == [0.2, 0.05]
    assert all(
        p.sites["s2"] == SiteSpec("dropout", {"drop_prob": p.sites["s1"].params["drop_prob"], "ramp": 0.0})
        for p in grid
    )


def test_a_rate_of_zero_is_the_same_training_as_none():
    space = tiny_space()
    none = Plan.none(space.sites, model="m")
    zero = Plan(
        {
            "s1": SiteSpec("dropblock", {"drop_prob": 0.0, "block_size": 5, "share_channels": False}),
            "s2": SiteSpec("none"),
        },
        model="m",
    )
    assert plan_key(zero) == plan_key(none)  # nothing is dropped: a repeat of the none baseline
    assert plan_key(space.uniform_plan("dropout", drop_prob=0.05)) != plan_key(none)


def test_tuned_recipes_put_a_method_only_where_the_shape_allows_it():
    import torch
    from torch import nn

    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(512, 16), nn.BatchNorm1d(16)
    )
    space = SearchSpace.for_model(net, sites=["1", "4"], example_input=torch.randn(2, 1, 8, 8))
    (plan,) = tuned_grid(space, "dropblock", 1)
    assert plan.methods() == {"1": "dropblock", "4": "none"}  # no 2-D blocks on (N, 16) features
    assert all(p.methods() == {"1": "dropout", "4": "dropout"} for p in tuned_grid(space, "dropout", 2))


def test_holm_steps_down_and_stops_at_the_first_kept() -> None:
    from controller.stats import holm

    # m = 4: 0.005 < 0.05/4, 0.01 < 0.05/3, then 0.03 >= 0.05/2 stops (0.04 is kept though < 0.05)
    assert holm([0.01, 0.04, 0.03, 0.005]) == [True, False, False, True]
    # a comparison that could not be made counts in m and is never rejected
    assert holm([0.03, float("nan")]) == [False, False]
    assert holm([0.02, float("nan")]) == [True, False]
    assert holm([]) == []
    # uncorrected 95% would call 3 of these 'better'; Holm over 4 calls none
    assert holm([0.02, 0.03, 0.04, 0.5]) == [False, False, False, False]
