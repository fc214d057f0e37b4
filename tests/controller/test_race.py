"""Issue 25, item 3: the final race (controller.race) - eliminations by paired t with Holm,
the budget, replay from the ledger, the confirmation on fresh seeds and do no harm."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from controller.race import (
    BASELINE,
    CONFIRM,
    DONE,
    SEARCHED,
    SURVIVOR,
    TUNED,
    WINNER,
    Contender,
    Race,
    RaceSettings,
    holm_adjusted,
)
from controller.stats import BETTER, CANNOT_TELL, holm, paired
from search_space.errors import UserError

SEEDS = list(range(1000, 1400))
Values = Callable[[str, int], float]


def noisy(means: dict[str, float], sd: float = 0.4, rho: float = 0.3, seed: int = 0, fail: frozenset = frozenset()):
    """A training's value: its true mean, a part shared by every plan on that seed (paired
    correlation) and its own part; NaN for the (label, seed) pairs in ``fail``."""
    index = {label: i + 1 for i, label in enumerate(means)}

    def value(label: str, s: int) -> float:
        if (label, s) in fail:
            return float("nan")
        shared = np.random.default_rng([seed, s]).normal() * sd * math.sqrt(rho)
        own = np.random.default_rng([seed, s, index[label]]).normal() * sd * math.sqrt(1 - rho)
        return means[label] + float(shared + own)

    return value


def drive(race: Race, value: Values, rng: np.random.Generator | None = None, workers: int = 3) -> list[tuple]:
    """Run ``race`` to the end as Ray would: up to ``workers`` trainings at once, finishing in
    random order; returns the results in the order they were recorded (the ledger's)."""
    running: list[tuple[str, int]] = []
    log = []
    while not race.done:
        for req in race.requests(running):
            if len(running) < workers:
                running.append(req)
        assert running, "a race that is not done must ask for a training"
        assert race.recorded + len(running) <= race.planned <= race.budget
        label, seed = running.pop(int(rng.integers(len(running))) if rng is not None else 0)
        v = value(label, seed)
        race.record(label, seed, v)
        log.append((label, seed, v))
    return log


def contenders(n_searched: int, n_base: int) -> list[Contender]:
    base = [Contender(f"b{i}", TUNED if i % 2 else BASELINE) for i in range(n_base)]
    return base + [Contender(f"searched#{i + 1}", SEARCHED) for i in range(n_searched)]


def rows(race: Race) -> dict[str, dict]:
    return {r["label"]: r for r in race.table()}


# ----------------------------------------------------------------------- eliminations
def test_a_clearly_worse_contender_leaves_in_the_first_round_and_the_leader_stays():
    means = {"dropout": 0.0, "none": -5.0, "searched#1": 1.0}
    kinds = [Contender("dropout", BASELINE), Contender("none", BASELINE), Contender("searched#1", SEARCHED)]
    race = Race(kinds, SEEDS, 40, RaceSettings(start_seeds=4), "max")
    drive(race, noisy(means))
    t = rows(race)
    assert t["none"]["left"] == 1 and "worse than searched#1" in t["none"]["reason"]
    assert len(t["none"]["seeds"]) == 4 and t["none"]["exit_p_holm"] < 0.05
    assert t["searched#1"]["left"] == WINNER or t["searched#1"]["left"] == SURVIVOR
    assert race.exported == "searched#1" and race.comparator == "dropout"


def _hand_made(p_a: float, p_b: float) -> Values:
    """Leader L; A and B below it on 4 seeds with paired two-sided p-values p_a and p_b."""
    dev = np.array([-1.0, 1.0, -1.0, 1.0]) * 0.1
    se = np.std(dev, ddof=1) / 2

    def below(p: float) -> np.ndarray:
        return -(stats.t.ppf(1 - p / 2, 3) * se + dev)

    table = {"L": np.zeros(4), "A": below(p_a), "B": below(p_b)}
    return lambda label, s: float(table[label][s - SEEDS[0]])


@pytest.mark.parametrize(("p_a", "p_b", "leave"), [(0.03, 0.04, set()), (0.02, 0.04, {"A", "B"}), (0.02, 0.3, {"A"})])
def test_a_round_is_corrected_with_holm(p_a, p_b, leave):
    # uncorrected, p 0.03 and 0.04 would both drop at 0.05; Holm needs 0.025 for the smaller
    value = _hand_made(p_a, p_b)
    assert paired({s: value("A", s) for s in SEEDS[:4]}, {s: value("L", s) for s in SEEDS[:4]}).p_value == (
        pytest.approx(p_a)
    )
    kinds = [Contender("L", BASELINE), Contender("A", SEARCHED), Contender("B", SEARCHED)]
    race = Race(kinds, SEEDS, 40, RaceSettings(start_seeds=4, race_alpha=0.05, confirm_seeds=3), "max")
    for label, seed in race.requests():
        race.record(label, seed, value(label, seed))
    assert {label for label, r in rows(race).items() if r["left"] == 1} == leave
    assert "L" not in leave and (race.round == 2 or race.phase != "race")


def _check_rounds(race: Race) -> int:
    """Recompute every round from the table, independently: the leader by mean, paired t of
    each other survivor against it, Holm at race_alpha; returns the eliminations checked."""
    table = race.table()
    order = {r["label"]: i for i, r in enumerate(table)}
    checked = 0
    for r in range(1, race.round + 1):
        in_round = [
            t for t in table if t["left"] in (WINNER, SURVIVOR) or (isinstance(t["left"], int) and t["left"] >= r)
        ]
        alive = [t for t in in_round if not (t["failed"] and t["left"] == r)]  # a failure leaves, untested
        if len(alive) < 2:
            continue
        n = race.round_seeds[r - 1]
        vals = {t["label"]: {s: t["values"][s] for s in t["seeds"][:n]} for t in alive}
        sign = 1 if race.mode == "max" else -1
        leader = max(vals, key=lambda c: (sign * np.mean(list(vals[c].values())), -order[c]))
        others = [c for c in vals if c != leader]
        cmps = [paired(vals[c], vals[leader], race.mode) for c in others]
        rejected = holm([c.p_value for c in cmps], race.settings.race_alpha)
        expected = {c for c, cmp_, rej in zip(others, cmps, rejected) if rej and cmp_.mean < 0}
        actual = {t["label"] for t in alive if t["left"] == r}
        assert actual == expected, (r, leader, actual, expected)
        assert leader not in actual
        checked += len(expected)
    return checked


def test_every_round_follows_paired_t_with_holm_and_never_drops_the_leader():
    rng = np.random.default_rng(7)
    eliminated = 0
    for i in range(25):
        cs = contenders(int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        means = {c.label: float(rng.choice([0.0, -0.3, -1.0, -2.0, 1.0])) for c in cs}
        settings = RaceSettings(
            start_seeds=int(rng.integers(2, 4)),
            growth=str(rng.choice(["x2", "+1", "+2"])),
            race_alpha=float(rng.choice([0.05, 0.2])),
            confirm_seeds=3,
        )
        mode = "max" if i % 3 else "min"
        budget = Race.min_budget(cs, settings) + int(rng.integers(0, 40))
        race = Race(cs, SEEDS, budget, settings, mode)
        drive(race, noisy({k: v if mode == "max" else -v for k, v in means.items()}, seed=i), rng)
        eliminated += _check_rounds(race)
    assert eliminated >= 10  # the check saw eliminations, not only rounds without any


# ----------------------------------------------------------------------- budget, replay, seeds
def _random_race(rng: np.random.Generator, i: int) -> tuple[Race, Values]:
    cs = contenders(int(rng.integers(0, 5)), int(rng.integers(0, 5)))
    if not cs:
        cs = contenders(1, 1)
    settings = RaceSettings(
        start_seeds=int(rng.integers(2, 4)),
        growth=str(rng.choice(["x2", "+1", "x3"])),
        race_alpha=float(rng.choice([0.05, 0.3])),
        confirm_seeds=int(rng.integers(3, 6)),
        confirm_max=int(rng.integers(1, 3)),
        confirm_baselines=int(rng.integers(1, 3)),
    )
    budget = Race.min_budget(cs, settings) + int(rng.integers(0, 50))
    means = {c.label: float(rng.choice([0.0, -0.5, -1.5, 1.0])) for c in cs}
    fail = frozenset((c.label, s) for c in cs for s in SEEDS[:60] if rng.random() < 0.03)
    mode = "max" if i % 2 else "min"
    return Race(cs, SEEDS, budget, settings, mode), noisy(means, seed=i, fail=fail)


def test_the_budget_is_never_exceeded_and_confirmation_seeds_are_fresh():
    rng = np.random.default_rng(11)
    confirmed = 0
    for i in range(40):
        race, value = _random_race(rng, i)
        log = drive(race, value, rng, workers=int(rng.integers(1, 6)))
        assert len(log) == race.recorded == race.planned <= race.budget
        assert len({(label, s) for label, s, _ in log}) == len(log)  # no training twice
        race_seeds = {s for r in race.table() for s in r["seeds"]}
        conf = [r for r in race.table() if r["confirm_values"]]
        if conf:
            confirmed += 1
            seeds = [tuple(r["confirm_values"]) for r in conf]
            assert len(set(seeds)) == 1 and not set(seeds[0]) & race_seeds
            assert len(seeds[0]) >= race.settings.confirm_seeds
            assert race.budget - race.planned < len(conf)  # the confirmation got what the race left
    assert confirmed >= 10


def _signature(race: Race) -> str:
    return repr((race.phase, race.round, race.planned, race.requests(), race.table(), race.exported, race.log))


def test_replay_of_the_ledger_equals_the_live_race_at_every_interruption():
    rng = np.random.default_rng(5)
    for i in range(12):
        live, value = _random_race(rng, i)
        static = (live.contenders, live.seeds, live.budget, live.settings, live.mode)
        signatures = [_signature(live)]
        log: list[tuple] = []
        running: list[tuple[str, int]] = []
        while not live.done:  # drive by hand to take the live state after every result
            running += live.requests(running)[: max(0, 4 - len(running))]
            label, seed = running.pop(int(rng.integers(len(running))))
            live.record(label, seed, value(label, seed))
            log.append((label, seed, value(label, seed)))
            signatures.append(_signature(live))
        for cut in sorted({0, len(log), *rng.integers(0, len(log) + 1, 4).tolist()}):
            resumed = Race.replay(*static, log[:cut])
            assert _signature(resumed) == signatures[cut]
            drive(resumed, value, np.random.default_rng(cut), workers=2)  # the lost trainings run again
            assert resumed.exported == live.exported and repr(resumed.table()) == repr(live.table())


# ----------------------------------------------------------------------- do no harm
def test_on_the_null_the_race_exports_a_baseline_at_least_as_often_as_alpha_promises():
    # every plan equal: the confirmation (fresh seeds, two-sided 95%) says "better" by chance
    # with probability at most alpha / 2 per stage; the bound is that binomial's 99.9% point
    cs = contenders(2, 2)
    settings = RaceSettings()
    stages, false = 200, 0
    for i in range(stages):
        race = Race(cs, SEEDS, 24, settings, "max")
        drive(race, noisy(dict.fromkeys((c.label for c in cs), 0.0), seed=i))
        false += race.exported.startswith("searched")
    bound = stats.binom.ppf(0.999, stages, settings.alpha / 2)
    assert false <= bound and false <= stages / 20, (false, bound)


def test_a_plan_2_5_points_better_is_always_exported_and_1_point_nearly_always():
    # 0.4 points of noise, 30% of its variance shared per seed (the digits finals' size)
    cs = contenders(3, 3)
    for gap, stages, least in ((2.5, 40, 40), (1.0, 40, 36)):
        exported = 0
        for i in range(stages):
            means = {c.label: 0.0 if c.kind != SEARCHED else -0.25 for c in cs} | {"searched#2": gap}
            race = Race(cs, SEEDS, 30, RaceSettings(), "max")
            drive(race, noisy(means, seed=100 + i))
            exported += race.exported == "searched#2"
        assert exported >= least, (gap, exported)


# ----------------------------------------------------------------------- edge cases
def test_one_contender_needs_no_training():
    race = Race([Contender("searched#1", SEARCHED)], SEEDS, 0)
    assert race.done and race.exported == "searched#1" and race.comparator is None and race.planned == 0
    assert rows(race)["searched#1"]["left"] == WINNER
    only = Race([Contender("dropout", BASELINE)], SEEDS, 0)
    assert only.done and only.exported == "dropout" and only.requests() == []


def test_baselines_only_race_with_the_whole_budget_and_nothing_is_confirmed():
    cs = [Contender("none", BASELINE), Contender("dropout", BASELINE), Contender("tuned-dropout", TUNED)]
    assert Race.min_budget(cs, RaceSettings()) == 6  # no confirmation to keep trainings for
    race = Race(cs, SEEDS, 30, RaceSettings(), "max")
    drive(race, noisy({"none": -3.0, "dropout": 0.0, "tuned-dropout": 0.1}))
    assert race.exported in ("dropout", "tuned-dropout") and not race.confirmation and race.comparators == []
    assert rows(race)["none"]["left"] != SURVIVOR


def test_a_failed_training_removes_its_plan_which_is_never_leader_nor_best_baseline():
    means = {"tuned-dropout": 0.0, "dropblock": 0.5, "searched#1": 3.0, "searched#2": 0.0}
    cs = [Contender(k, TUNED if k.startswith("tuned") else SEARCHED if "#" in k else BASELINE) for k in means]
    fail = frozenset({("searched#1", SEEDS[1]), ("dropblock", SEEDS[0])})
    race = Race(cs, SEEDS, 30, RaceSettings(), "max")
    drive(race, noisy(means, fail=fail))
    t = rows(race)
    assert t["searched#1"]["left"] == 1 and t["searched#1"]["reason"] == f"failed on seed {SEEDS[1]}"
    assert t["dropblock"]["left"] == 1 and t["dropblock"]["failed"]
    assert race.comparator == "tuned-dropout" and race.exported != "searched#1"
    assert "searched#1" not in race.confirmed


def test_a_failed_confirmation_seed_blocks_the_export_and_a_baselines_drops_out_of_the_pairs():
    cs = [Contender("dropout", BASELINE), Contender("searched#1", SEARCHED)]
    means = {"dropout": 0.0, "searched#1": 3.0}
    settings = RaceSettings(start_seeds=2, confirm_seeds=3)
    race = Race(cs, SEEDS, 20, settings, "max")
    drive(race, noisy(means))
    conf = rows(race)["searched#1"]
    assert conf["confirm_word"] == BETTER and race.exported == "searched#1"
    first = next(iter(conf["confirm_values"]))
    bad_plan = Race(cs, SEEDS, 20, settings, "max")
    drive(bad_plan, noisy(means, fail=frozenset({("searched#1", first)})))
    assert rows(bad_plan)["searched#1"]["confirm_word"] == "failed" and bad_plan.exported == "dropout"
    bad_base = Race(cs, SEEDS, 20, settings, "max")
    drive(bad_base, noisy(means, fail=frozenset({("dropout", first)})))
    assert rows(bad_base)["searched#1"]["confirm"].n == len(conf["confirm_values"]) - 1
    assert bad_base.exported == "searched#1"


def test_identical_plans_tie_nobody_leaves_and_the_baseline_is_kept():
    cs = contenders(2, 2)
    race = Race(cs, SEEDS, 30, RaceSettings(), "max")
    drive(race, lambda label, s: 0.9 + 0.001 * (s % 7))  # deterministic: every plan the same per seed
    t = race.table()
    assert all(not isinstance(r["left"], int) for r in t) and race.winner is None
    assert race.confirmed == ["searched#1"] and race.comparator == "b0"  # ties: the first listed
    assert rows(race)["searched#1"]["confirm_word"] == CANNOT_TELL and race.exported == "b0"


def test_min_mode_mirrors_max_mode():
    rng = np.random.default_rng(3)
    for i in range(6):
        cs = contenders(3, 3)
        means = {c.label: float(rng.choice([0.0, 1.0, -1.0, 2.0])) for c in cs}
        value = noisy(means, seed=i)
        a = Race(cs, SEEDS, 40, RaceSettings(), "max")
        b = Race(cs, SEEDS, 40, RaceSettings(), "min")
        drive(a, value)
        drive(b, lambda label, s, v=value: -v(label, s))
        assert a.exported == b.exported and a.log == b.log
        for ra, rb in zip(a.table(), b.table()):
            assert ra["left"] == rb["left"] and ra["confirm_word"] == rb["confirm_word"]
            if ra["confirm"] is not None:
                assert ra["confirm"].mean == pytest.approx(rb["confirm"].mean)  # positive = better in both


def test_results_it_did_not_ask_for_are_refused_and_repeats_count_once():
    race = Race(contenders(1, 1), SEEDS, 20, RaceSettings(confirm_seeds=3), "max")
    with pytest.raises(RuntimeError, match="unknown contender"):
        race.record("nobody", SEEDS[0], 0.5)
    with pytest.raises(RuntimeError, match="not asked for"):
        race.record("b0", SEEDS[5], 0.5)
    race.record("b0", SEEDS[0], 0.5)
    race.record("b0", SEEDS[0], 0.9)  # a second line for the same training: the first counts
    assert rows(race)["b0"]["values"] == {SEEDS[0]: 0.5}
    assert race.requests([("searched#1", SEEDS[0])]) == [("b0", SEEDS[1]), ("searched#1", SEEDS[1])]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"start_seeds": 1}, "start_seeds"),
        ({"growth": "x1"}, "growth"),
        ({"growth": "double"}, "growth"),
        ({"race_alpha": 0.0}, "race_alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"confirm_seeds": 2}, "confirm_seeds"),
        ({"confirm_max": 0}, "confirm_max"),
    ],
)
def test_bad_settings_name_the_field(kwargs, field):
    with pytest.raises(UserError) as err:
        RaceSettings(**kwargs)
    assert err.value.field == field and "allowed" in str(err.value)


def test_a_budget_too_small_says_the_least_it_needs():
    cs = contenders(4, 6)
    # 10 contenders x 2 start seeds, and 5 confirmation seeds for the winner and 2 baselines
    assert Race.min_budget(cs, RaceSettings()) == 10 * 2 + 3 * 5
    with pytest.raises(UserError, match=r"budget: bad value 34; allowed: an integer >= 35"):
        Race(cs, SEEDS, 34)
    assert Race.min_budget(cs, RaceSettings(confirm_baselines=1)) == 30
    with pytest.raises(UserError, match="seeds"):
        Race(cs, SEEDS[:30], 35)
    with pytest.raises(UserError, match="distinct labels"):
        Race([("a", SEARCHED), ("a", BASELINE)], SEEDS, 35)


def test_holm_adjusted_p_values_agree_with_holm():
    rng = np.random.default_rng(2)
    for _ in range(200):
        p = rng.uniform(0, 0.1, int(rng.integers(1, 8))).tolist()
        if rng.random() < 0.3:
            p[0] = float("nan")
        adj = holm_adjusted(p)
        assert [math.isfinite(a) and a < 0.05 for a in adj] == holm(p, 0.05)


def test_the_phase_moves_from_race_to_confirmation_to_done():
    cs = contenders(1, 1)
    race = Race(cs, SEEDS, 20, RaceSettings(start_seeds=2, confirm_seeds=3), "max")
    value = noisy({"b0": 0.0, "searched#1": 2.0})
    phases = {race.phase}
    while not race.done:
        label, seed = race.requests()[0]
        race.record(label, seed, value(label, seed))
        phases.add(race.phase)
    assert phases == {"race", CONFIRM, DONE}


def test_against_two_baselines_a_plan_must_beat_both_on_the_fresh_seeds():
    # the race ranks A above B; on the confirmation's seeds B is as good as the searched plan
    cs = [Contender("A", TUNED), Contender("B", BASELINE), Contender("searched#1", SEARCHED)]
    wiggle = [0.03, -0.02, 0.01, -0.04, 0.02, 0.0, 0.03, -0.01, 0.02, -0.03]

    def value(label: str, s: int) -> float:
        i = s - SEEDS[0]
        fresh = i >= 2  # the race uses the first two seeds (one round: the budget allows no more)
        base = {"A": 0.0, "B": 1.0 if fresh else -0.5, "searched#1": 1.0}[label]
        return base + wiggle[i % 10] * (1 + 0.5 * (label == "searched#1"))

    one = Race(cs, SEEDS, 6 + 2 * 5, RaceSettings(confirm_baselines=1, confirm_seeds=5), "max")
    drive(one, value)
    assert one.comparators == ["A"] and one.exported == "searched#1"
    two = Race(cs, SEEDS, 6 + 3 * 5, RaceSettings(confirm_baselines=2, confirm_seeds=5), "max")
    drive(two, value)
    t = rows(two)
    assert two.comparators == ["A", "B"] and two.round_seeds == [2]
    assert t["searched#1"]["confirm_vs"] == "B" and t["searched#1"]["confirm_word"] == CANNOT_TELL
    assert two.exported == "A" and t["B"]["confirm_values"] and t["B"]["confirmed_against"]
