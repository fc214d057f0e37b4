"""Issue 19: ``results retrain`` uses seeds the search never trained with, trains each plan
once, and compares every plan in pairs with the best baseline on test."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from controller.run_folder import Objective
from results.retrain import RetrainConfig, _distinct, fresh_seeds, retrain_seeds, search_seeds, summarize_retrain
from results.run import Run
from search_space.plan import Plan, SiteSpec


def _run(reward_seeds, final_seeds, final_values=()) -> Run:
    final = pd.DataFrame({"values": [json.dumps(v) for v in final_values]}) if final_values else None
    config = {"reward_seeds": reward_seeds, "final_seeds": final_seeds}
    return Run(path=Path("run"), config=config, state={}, trials=pd.DataFrame(), final=final)


def test_fresh_seeds_skip_every_seed_the_search_used():
    run = _run([0, 1, 3], [1000, 1001], final_values=[{"1000": 0.9, "1001": 0.8, "5": 0.7}])
    assert search_seeds(run) == {0, 1, 3, 5, 1000, 1001}
    assert fresh_seeds(run, 4) == [2, 4, 6, 7]
    seeds, reused = retrain_seeds(run, RetrainConfig(seeds=3))
    assert (seeds, reused) == ([2, 4, 6], [])
    seeds, reused = retrain_seeds(run, RetrainConfig(seeds=3, seed_offset=0))  # asked for: not fresh, and said
    assert (seeds, reused) == ([0, 1, 2], [0, 1])


def test_a_plan_under_two_names_is_trained_once_under_the_baseline_name():
    sites = ["a", "b"]
    dropout = Plan({s: SiteSpec("dropout", {"drop_prob": 0.1}) for s in sites})
    plans = {
        "searched#1": Plan({s: SiteSpec("dropout", {"drop_prob": 0.1, "ramp": 0.0}) for s in sites}),
        "searched#2": Plan({"a": SiteSpec("dropout", {"drop_prob": 0.2}), "b": SiteSpec("none")}),
        "none": Plan.none(sites),
        "dropout": dropout,
    }
    out = _distinct(plans)
    assert list(out) == ["searched#2", "none", "dropout"]
    assert out["dropout"].metadata["same_as"] == ["searched#1"]


def test_retrain_summary_compares_in_pairs_with_the_best_baseline_on_test():
    rows = []
    for plan, kind, accs in (
        ("searched#1", "searched", [0.955, 0.97, 0.96]),
        ("none", "baseline", [0.90, 0.91, 0.89]),
        ("tuned-dropout", "tuned", [0.93, 0.95, 0.94]),
    ):
        for seed, acc in zip((2, 4, 6), accs):
            rows.append(
                {
                    "plan": plan,
                    "kind": kind,
                    "seed": seed,
                    "status": "ok",
                    "test_acc": acc,
                    "val_acc": acc,
                    "summary": plan,
                }
            )
    out = summarize_retrain(pd.DataFrame(rows), Objective()).set_index("plan")
    assert set(out["best_baseline"]) == {"tuned-dropout"}
    s = out.loc["searched#1"]
    # d = 0.025, 0.02, 0.02: mean 0.02167, se 0.001667, t(0.975, 2) = 4.3027 -> [0.0145, 0.0288]
    assert s["diff_vs_best_baseline"] == pytest.approx(0.065 / 3) and s["paired_seeds"] == 3
    assert s["diff_ci95_low"] == pytest.approx(0.065 / 3 - 4.302653 * 0.005 / 3, abs=1e-6)
    assert s["comparison"] == "better"
    assert out.loc["none"]["comparison"] == "worse" and out.loc["tuned-dropout"]["comparison"] == "best baseline"
