"""Issue 25, item 3: final.csv, best_plan.json and the verdict of a raced final stage, and a
race rebuilt from the ledger's rows."""

from __future__ import annotations

import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from controller import run_folder as rf
from controller.final import best_plan_of, final_rows, race_results, verdict
from controller.race import BASELINE, SEARCHED, TUNED, Contender, Race, RaceSettings
from controller.run_folder import Objective
from results.tables import final_table
from search_space.plan import Plan, SiteSpec

SEEDS = list(range(1000, 1200))


def plan_json(rate: float) -> str:
    plan = Plan.none(["a", "b"], model="m")
    if rate:
        plan = Plan({"a": SiteSpec("dropout", {"drop_prob": rate}), "b": SiteSpec("none", {})}, model="m")
    return json.dumps(plan.to_dict(), sort_keys=True)


def run_stage(means: dict[str, float], kinds: dict[str, str], budget: int, settings: RaceSettings, mode="max", seed=0):
    """A finished race and its final_trials rows (the ledger's, in finish order)."""
    cs = [Contender(label, kinds[label]) for label in means]
    race = Race(cs, SEEDS, budget, settings, mode)
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, 0.2, len(SEEDS))
    records = []
    while not race.done:
        for label, s in race.requests():
            value = means[label] + shared[s - SEEDS[0]] + float(rng.normal(0, 0.3))
            records.append(
                {
                    "trial_id": f"t{len(records)}",
                    "order": len(records),
                    "label": label,
                    "seed": s,
                    "status": rf.OK,
                    "val_acc": value,
                    "plan_json": plan_json(0.1 * (len(records) % 3)),
                    "methods": label,
                    "source": f"src-{label}",
                }
            )
            race.record(label, s, value)
    return race, records


KINDS = {"tuned-dropout": TUNED, "dropout": BASELINE, "none": BASELINE, "searched#1": SEARCHED, "searched#2": SEARCHED}


def _csv_roundtrip(rows: list[dict]) -> list[dict]:
    """The rows as results/ reads them back from final.csv (pandas: NaN for empty cells)."""
    return pd.read_csv(io.StringIO(rf.csv_text(rf.FINAL_COLUMNS, rows))).to_dict("records")


def test_final_csv_of_a_race_says_seeds_round_and_confirmation_and_exports_the_winner():
    means = {"tuned-dropout": 0.0, "dropout": -0.2, "none": -4.0, "searched#1": 2.0, "searched#2": -0.2}
    race, records = run_stage(means, KINDS, 40, RaceSettings(start_seeds=3))
    rows = {r["label"]: r for r in final_rows(records, Objective(), ["dropout", "none"], race=race)}
    assert all(set(rf.FINAL_COLUMNS) <= set(r) for r in rows.values())
    win = rows["searched#1"]
    assert win["chosen"] and win["confirm_word"] == "better" and win["best_baseline"] == race.comparator
    assert win["left"] in ("winner", "survivor") and rows["none"]["left"] == 1
    assert "worse than searched#1" in rows["none"]["left_reason"]
    assert win["confirm_seeds"] >= 5 and win["confirm_ci95_low"] > 0 and win["confirm_p"] < 0.05
    conf_seeds = set(json.loads(win["confirm_values"]))
    assert not conf_seeds & set(json.loads(win["values"]))  # fresh seeds
    assert win["seeds"] == len(json.loads(win["values"])) and win["trial_id"] == "src-searched#1"
    base = rows[race.comparator]
    assert set(json.loads(base["confirm_values"])) == conf_seeds and base["confirm_word"] == ""

    back = _csv_roundtrip(list(rows.values()))
    plan, exported = best_plan_of(back, None, Objective(), "controller")
    assert exported == {"label": "searched#1", "kind": SEARCHED, "selected_by": "final"}
    meta = plan.metadata
    assert meta["comparison"] == "better" and meta["best_baseline"] == race.comparator
    assert meta["diff_ci95"] == [pytest.approx(win["confirm_ci95_low"]), pytest.approx(win["confirm_ci95_high"])]
    assert meta["confirmation"]["seeds"] == win["confirm_seeds"] and meta["confirmation"]["p_holm"] < 0.05
    text = verdict(back, Objective())
    n = win["confirm_seeds"]
    assert f"the searched plan searched#1 is better than the best baseline {race.comparator}" in text
    assert f"on {n} fresh seeds the race never used" in text and f"Student-t at {n - 1} df" in text
    assert "Holm" not in text  # one plan confirmed: no correction to state
    second = race.comparators[1]
    assert f"and than {second} (confirmed against too)" in text and f"from {win['confirm_vs']}" in text

    table = final_table(SimpleNamespace(final=pd.DataFrame(back), objective=Objective()))
    assert "left the race" in table.columns
    top = table.set_index("plan").loc["searched#1"]
    assert top["verdict"] == "better" and top["exported"] == "best_plan.json"
    assert table.set_index("plan").loc["none"]["left the race"] == "round 1"


def test_a_confirmation_that_cannot_tell_exports_the_best_baseline_and_says_why_with_holm():
    means = {"tuned-dropout": 0.0, "dropout": -0.1, "none": -0.1, "searched#1": 0.0, "searched#2": 0.0}
    race, records = run_stage(means, KINDS, 30, RaceSettings(confirm_max=2, confirm_seeds=4), seed=3)
    assert len(race.confirmed) == 2 and race.exported == race.comparator
    rows = _csv_roundtrip(final_rows(records, Objective(), ["dropout", "none"], race=race))
    chosen = [r for r in rows if r["chosen"]]
    assert [r["label"] for r in chosen] == [race.comparator]
    text = verdict(rows, Objective())
    assert text.startswith(f"Verdict: no searched plan is better than the best baseline {race.comparator}")
    assert "Holm-adjusted over the 2 plans confirmed" in text and "(do no harm)" in text
    assert "a larger final budget" in text
    plan, exported = best_plan_of(rows, None, Objective(), "random")
    assert exported["kind"] != SEARCHED and plan.metadata["comparison"] == "the best baseline"


def test_when_no_searched_plan_survives_the_verdict_names_the_round_each_left():
    means = {"tuned-dropout": 0.0, "dropout": 0.0, "none": -0.1, "searched#1": -5.0, "searched#2": -6.0}
    race, records = run_stage(means, KINDS, 40, RaceSettings(start_seeds=3))
    assert not race.confirmed and race.exported in ("tuned-dropout", "dropout", "none")
    rows = _csv_roundtrip(final_rows(records, Objective(), ["dropout", "none"], race=race))
    text = verdict(rows, Objective())
    assert "none survived the race (searched#1 left in round 1: worse than" in text
    assert f"best_plan.json holds the baseline {race.exported} (do no harm)" in text


def test_min_mode_rows_keep_positive_as_better():
    means = {"tuned-dropout": 100.0, "dropout": 101.0, "none": 104.0, "searched#1": 97.0, "searched#2": 100.0}
    race, records = run_stage(
        means, KINDS, 40, RaceSettings(start_seeds=3), mode="min", seed=1
    )  # lower perplexity wins
    o = Objective("val_acc", "min")
    rows = {r["label"]: r for r in final_rows(records, o, ["dropout", "none"], race=race)}
    assert rows["searched#1"]["chosen"] and rows["searched#1"]["confirm_diff"] > 2


def test_the_ledger_rows_rebuild_the_race_and_a_failure_is_nan():
    means = {"tuned-dropout": 0.0, "dropout": -0.2, "none": -4.0, "searched#1": 2.0, "searched#2": -0.2}
    race, records = run_stage(means, KINDS, 40, RaceSettings(start_seeds=3))
    shuffled = list(reversed(records))  # the ledger's order column, not the list's, is the finish order
    results = race_results(shuffled, Objective())
    assert [r[:2] for r in results] == [(r["label"], r["seed"]) for r in records]
    again = Race.replay(race.contenders, SEEDS, 40, race.settings, "max", results)
    assert repr(again.table()) == repr(race.table())
    failed = [{**records[0], "status": rf.DIVERGED}, *records[1:]]
    assert math.isnan(race_results(failed, Objective())[0][2])
    assert math.isnan(race_results([{**records[0], "val_acc": float("inf")}], Objective())[0][2])


def test_a_race_of_one_needs_the_plans_it_never_trained():
    race = Race([Contender("dropout", BASELINE)], SEEDS, 0)
    rows = final_rows([], Objective(), ["dropout"], race=race, plans={"dropout": {"plan_json": plan_json(0.1)}})
    assert rows[0]["chosen"] and rows[0]["left"] == "winner" and rows[0]["seeds"] == 0
    plan, exported = best_plan_of(_csv_roundtrip(rows), None, Objective(), "tpe")
    assert exported["label"] == "dropout" and plan.metadata["comparison"] == "the best baseline"


def test_a_race_without_baselines_exports_its_best_plan_unproven():
    kinds = {"searched#1": SEARCHED, "searched#2": SEARCHED}
    race, records = run_stage({"searched#1": 1.0, "searched#2": 0.0}, kinds, 12, RaceSettings())
    assert race.done and race.comparator is None and not race.confirmation
    rows = _csv_roundtrip(final_rows(records, Objective(), [], race=race))
    assert "no baseline finished the final race" in verdict(rows, Objective())
    plan, exported = best_plan_of(rows, None, Objective(), "controller")
    assert exported["kind"] == SEARCHED and plan.metadata["comparison"].startswith("unproven")
