"""A Transformer language-model search end to end on the offline corpus: launch_search.py with
transformer_lm, perplexity as the metric, the Transformer baselines, then results on it."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pytest

from results.cli import main as results_main
from search_space import Plan
from search_space.learned import derived_plan
from search_space.plan import plan_key


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory: pytest.TempPathFactory, ray_session: str) -> Path:
    import launch_search

    storage = tmp_path_factory.mktemp("lm")
    # the suite's one Ray (tests/conftest.py)
    rc = launch_search.main(
        [
            "--model",
            "transformer_lm",
            "--train-size",
            "3000",
            "--seq-len",
            "16",
            "--epochs",
            "2",
            "--num-samples",
            "3",
            "--sites",
            "stage",
            "--final-top-k",
            "1",
            "--final-stage",  # every finalist on 2 seeds: the race in min mode is tests/controller/test_race.py's
            "fixed",
            "--final-seeds",
            "2",
            "--storage-path",
            str(storage),
            "--name",
            "lm",
        ]
    )
    assert rc == 0
    return storage / "lm"


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_lm_search_ranks_by_perplexity_with_the_transformer_baselines(lm_run: Path) -> None:
    config = json.loads((lm_run / "search_config.json").read_text())
    assert config["objective"] == {"metric": "val_ppl", "mode": "min", "transform": "neg_log"}
    train = config["settings"]["train"]
    assert train["dataset"] == "builtin_text" and train["model"] == "transformer_lm"
    rows = _rows(lm_run / "trials.csv")
    assert len(rows) == 6 and {"val_ppl", "val_ppl_se", "best_val_ppl"} <= set(rows[0]) and "val_acc" not in rows[0]
    assert sorted(r["baseline"] for r in rows if r["baseline"]) == ["dropout", "learned", "none"]
    learned = next(r for r in rows if r["baseline"] == "learned")  # token sites: elementwise rates
    assert {s.params["per_channel"] for s in Plan.from_json(learned["plan_json"]).sites.values()} == {False}
    assert all(0 < r < 1 for r in json.loads(learned["learned_rates"]).values())
    dropout = Plan.from_json(next(r for r in rows if r["baseline"] == "dropout")["plan_json"])
    assert {(s.method, s.params.get("drop_prob")) for s in dropout.sites.values()} == {("dropout", 0.1)}
    for r in rows:
        assert r["status"] == "ok" and float(r["val_ppl"]) > 1
        assert float(r["reward"]) == pytest.approx(-math.log(float(r["val_ppl"])))  # -ln(ppl) = -val_loss
    methods = {s.method for r in rows if not r["baseline"] for s in Plan.from_json(r["plan_json"]).sites.values()}
    assert methods <= {"none", "dropout", "seq_pattern"}
    final = _rows(lm_run / "final.csv")
    chosen = next(f for f in final if f["chosen"] == "1")
    derived = derived_plan(Plan.from_json(learned["plan_json"]), json.loads(learned["learned_rates"]))
    same = [f["label"] for f in final if plan_key(Plan.from_json(f["plan_json"])) == plan_key(derived)]
    kinds = {f["label"]: f["kind"] for f in final}
    if "learned-rates" in kinds:  # a baseline finalist
        assert same == ["learned-rates"] and kinds["learned-rates"] == "baseline"
    else:  # the same plan as an earlier one (rates near 0.1 after two epochs: the dropout baseline's), trained once
        assert len(same) == 1 and same[0] in ("none", "dropout")
    pool = [f for f in final if (f["kind"] == "searched") == (chosen["kind"] == "searched")]
    assert float(chosen["mean"]) == min(float(f["mean"]) for f in pool)  # lowest perplexity wins
    assert Plan.load(lm_run / "best_plan.json").sites == Plan.from_json(chosen["plan_json"]).sites


def test_results_on_an_lm_run_show_perplexity(lm_run: Path, tmp_path: Path, capsys) -> None:
    assert results_main(["summarize", str(lm_run), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "top 5 plans (by val_ppl, lowest first" in out
    top = list(csv.DictReader(io.StringIO(out.split("# top 5 plans")[1].split("\n\n")[0].split("\n", 1)[1])))
    values = [float(r["val_ppl"]) for r in top]
    assert values == sorted(values)
    assert (
        results_main(
            [
                "retrain",
                str(lm_run),
                "--top",
                "1",
                "--seeds",
                "2",
                "--epochs",
                "1",
                "--baselines",
                "none",
                "--train-size",
                "search",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    summary = {r["plan"]: r for r in _rows(tmp_path / "retrain_summary.csv")}
    assert set(summary) == {"searched#1", "none", "learned-rates"}  # learned-rates by default
    assert all(float(r["test_ppl_mean"]) > 1 for r in summary.values())
    assert "test_ppl" in capsys.readouterr().out
