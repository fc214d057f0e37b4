"""results/: every command on a real tiny search run made here, plus the error cases.

One module-scoped ``launch_search.py`` run (4 trials, 1 epoch, 200 digits images) feeds every test; the
expected numbers are recomputed here from trials.csv with the csv module, independently of
the pandas code under test.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from results import load_run, open_run
from results.cli import main

ROOT = Path(__file__).resolve().parents[2]
SAMPLED = 3
BASELINES = ("none", "dropblock")
NUM_SAMPLES = SAMPLED + len(BASELINES) + 1  # rows of trials.csv: the learned baseline too


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, ray_session: str) -> Path:
    """A real tiny controller search: 2 baselines and the learned one, 3 sampled plans, then the best
    sampled plan, both baselines and learned-rates raced on 2 fresh seeds, then 3 confirmation
    seeds (1 epoch each);
    it joins the suite's Ray."""
    storage = tmp_path_factory.mktemp("runs")
    proc = subprocess.run(
        [
            sys.executable,
            "launch_search.py",
            "--num-samples",
            str(SAMPLED),
            "--epochs",
            "1",
            "--train-size",
            "200",
            "--storage-path",
            str(storage),
            "--name",
            "tiny",
            "--seed",
            "0",
            "--baselines",
            ",".join(BASELINES),
            "--final-top-k",
            "1",
            "--final-seeds",
            "2",
            "--confirm-seeds",  # the smallest race with words: 2 seeds each, then 3 confirmation seeds
            "3",
            "--confirm-baselines",
            "1",
            "--address",
            ray_session,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return storage / "tiny"


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("results"))
    return dest


# ----------------------------------------------------------------------------- load_run
def test_load_run_reads_every_finished_trial_in_order(run_dir: Path) -> None:
    rows = _rows(run_dir)
    df = load_run(run_dir)
    assert len(df) == len(rows) == NUM_SAMPLES
    assert list(df["order"]) == sorted(int(r["order"]) for r in rows)
    assert list(df["trial_id"]) == [r["trial_id"] for r in sorted(rows, key=lambda r: int(r["order"]))]
    assert df["val_acc"].dtype.kind == "f" and ((df["val_acc"] >= 0) & (df["val_acc"] <= 1)).all()
    run = open_run(run_dir)
    assert [f"site:{s}" for s in run.sites] == [c for c in df.columns if c.startswith("site:")]


# ----------------------------------------------------------------------------- summarize
def test_summarize_ranks_and_method_stats_match_trials_csv(run_dir: Path, capsys) -> None:
    rows = [r for r in _rows(run_dir) if r["status"] == "ok" and r["baseline"] != "learned"]  # a way to train
    best_first = sorted(rows, key=lambda r: (-float(r["val_acc"]), int(r["order"])))
    rc, out, err = _cli(["summarize", str(run_dir), "--top", "3", "--format", "csv"], capsys)
    assert rc == 0, err
    sections = {}
    for block in out.strip().split("\n\n"):
        title, body = block.split("\n", 1)
        sections[title.lstrip("# ").split(" (")[0].split(":")[0]] = list(csv.DictReader(io.StringIO(body)))
    top = sections["top 3 plans"]
    assert [t["trial_id"] for t in top] == [r["trial_id"] for r in best_first[:3]]
    assert [int(t["rank"]) for t in top] == [1, 2, 3]
    # per-method statistics, recomputed from the raw rows (the baselines are nobody's choice)
    all_rows = _rows(run_dir)
    sampled = [r for r in all_rows if not r["baseline"]]
    baselines = sorted(r["baseline"] for r in all_rows if r["baseline"])
    assert len(sampled) == SAMPLED and baselines == sorted([*BASELINES, "learned"])
    learned = sections["learned rate per site"]  # beside the learned-rates plan and the searched plan's
    rates = json.loads(next(r for r in all_rows if r["baseline"] == "learned")["learned_rates"])
    assert {r["site"]: float(r["learned rate"]) for r in learned} == pytest.approx(rates, abs=1e-3)
    assert all(r["learned-rates"] for r in learned)
    assert "searched (searched#1)" in learned[0]
    stats = sections["methods per site"]
    for site in (c[len("site:") :] for c in all_rows[0] if c.startswith("site:")):
        chosen = [r[f"site:{site}"] for r in sampled]
        assert sum(int(s["count"]) for s in stats if s["site"] == site) == len(sampled)
        for m in set(chosen):
            rec = next(s for s in stats if s["site"] == site and s["method"] == m)
            rewards = [float(r["reward"]) for r in sampled if r[f"site:{site}"] == m]
            assert int(rec["count"]) == len(rewards)
            assert float(rec["share"]) == pytest.approx(len(rewards) / len(sampled))
            assert float(rec["mean_reward"]) == pytest.approx(statistics.mean(rewards), abs=1e-9)
    pooled = [s for s in stats if s["site"] == "(all sites)"]
    assert sum(float(s["share"]) for s in pooled) == pytest.approx(1.0)
    cost = sections["compute"][0]
    seconds = sum(float(r["seconds"]) for r in all_rows)
    assert float(cost["cpu_hours"]) == pytest.approx(seconds * float(cost["cpus_per_trial"]) / 3600, rel=1e-6)
    gpus = float(cost["gpus_per_trial"] or "nan")  # NaN (empty) when the search left the GPU share on "auto" unrecorded
    assert (
        math.isnan(gpus)
        and cost["gpu_hours"] == ""
        or float(cost["gpu_hours"]) == pytest.approx(seconds * gpus / 3600, abs=1e-12)
    )


def test_summarize_text_and_markdown(run_dir: Path, capsys) -> None:
    rc, out, _ = _cli(["summarize", str(run_dir), "--top", "2"], capsys)
    assert rc == 0 and "== top 2 plans" in out and "== failed or diverged trials ==" in out
    best = max((r for r in _rows(run_dir) if r["baseline"] != "learned"), key=lambda r: float(r["val_acc"]))
    assert best["trial_id"] in out.split("== top 2 plans")[1].split("==")[1]
    rc, out, _ = _cli(["summarize", str(run_dir), "--format", "markdown"], capsys)
    assert rc == 0 and "### top 5 plans" in out and "|---|" in out


def test_controller_vs_random_last_quarter(run_dir: Path, tmp_path: Path, capsys) -> None:
    """Two run dirs with different searchers are compared; quarters follow completion order."""
    other = _copy_run(run_dir, tmp_path / "random_run")
    cfg = json.loads((other / "search_config.json").read_text())
    (other / "search_config.json").write_text(json.dumps({**cfg, "searcher": "random"}))
    rows = _rows(other)
    for r in rows:
        r["searcher"] = "random"
        r["reward"] = str(float(r["reward"]) / 2)  # distinguishable from the controller's
    failed = next(r for r in reversed(rows) if not r["baseline"])  # a crash: listed, never ranked, counted
    failed.update(status="failed", error="Traceback (most recent call last):\n  ...\nRuntimeError: out of memory")
    with open(other / "trials.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    rc, out, err = _cli(["summarize", str(run_dir), str(other), "--format", "csv"], capsys)
    assert rc == 0, err
    block = next(b for b in out.split("\n\n") if b.startswith("# controller vs random"))
    table = {r["searcher"]: r for r in csv.DictReader(io.StringIO(block.split("\n", 1)[1]))}
    assert set(table) == {"controller", "random"} | {
        f"{run}:baseline:{b}" for run in ("tiny", "random_run") for b in (*BASELINES, "learned")
    }
    for name, src in (("controller", _rows(run_dir)), ("random", rows)):
        src = [r for r in src if not r["baseline"]]
        rewards = [float(r["reward"]) for r in sorted(src, key=lambda r: int(r["order"]))]
        q = max(1, len(rewards) // 4)
        assert float(table[name]["last_quarter_reward"]) == pytest.approx(statistics.mean(rewards[-q:]))
        assert float(table[name]["mean_reward"]) == pytest.approx(statistics.mean(rewards))
        assert int(table[name]["trials"]) == len(rewards)
    assert (table["random"]["failed"], table["controller"]["failed"]) == ("1", "0")
    sections = {
        b.split("\n", 1)[0]: list(csv.DictReader(io.StringIO(b.split("\n", 1)[1]))) for b in out.strip().split("\n\n")
    }
    assert [(r["trial_id"], r["searcher"], r["error"]) for r in sections["# failed or diverged trials"]] == [
        (failed["trial_id"], "random", "RuntimeError: out of memory")
    ]
    top = next(v for k, v in sections.items() if k.startswith("# top"))
    assert (failed["trial_id"], "random") not in {(r["trial_id"], r["searcher"]) for r in top}
    assert len(top) == min(5, 2 * NUM_SAMPLES - 1)


def test_summarize_shows_the_final_stage_and_standard_errors(run_dir: Path, capsys) -> None:
    final = list(csv.DictReader(open(run_dir / "final.csv", newline="")))
    assert sorted(f["label"] for f in final) == sorted(["searched#1", "learned-rates", *BASELINES])
    assert all(int(f["seeds"]) == 2 and len(json.loads(f["values"])) == 2 for f in final)
    for f in final:
        vals = list(json.loads(f["values"]).values())
        assert float(f["mean"]) == pytest.approx(statistics.mean(vals))
        assert float(f["se"]) == pytest.approx(statistics.stdev(vals) / math.sqrt(2))
    rc, out, err = _cli(["summarize", str(run_dir)], capsys)
    assert rc == 0, err
    block = out.split("== final re-training")[1].split("\n\n")[0]
    best = max(final, key=lambda f: float(f["mean"]))
    assert f"{float(best['mean']):.4f} +- {float(best['se']):.4f}" in block and "best_plan.json" in block


# ----------------------------------------------------------------------------- export
def test_export_writes_a_plan_that_loads_and_applies(run_dir: Path, tmp_path: Path, capsys) -> None:
    """With a final stage, ranks follow final.csv's means and rank 1 is best_plan.json."""
    from child_trainer import build_model
    from search_space import Plan, apply_plan, regularizers

    final = sorted(
        csv.DictReader(open(run_dir / "final.csv", newline="")), key=lambda f: (-int(f["chosen"]), -float(f["mean"]))
    )
    plans = []
    for rank in range(1, len(final) + 1):
        out = tmp_path / f"plan{rank}.json"
        rc, _, err = _cli(["export", str(run_dir), "--out", str(out), "--rank", str(rank)], capsys)
        assert rc == 0, err
        plan = Plan.load(out)
        assert plan.sites == Plan.from_json(final[rank - 1]["plan_json"]).sites
        assert plan.metadata["val_acc"] == pytest.approx(float(final[rank - 1]["mean"]))
        plans.append(plan)
    assert plans[0].sites == Plan.load(run_dir / "best_plan.json").sites
    plan = next(p for p in plans if set(p.methods().values()) != {"none"})
    torch.manual_seed(0)
    model = build_model("digits_cnn", 10, 1)
    keys = list(model.state_dict())
    x = torch.randn(4, 1, 8, 8)
    before = model.eval()(x)
    apply_plan(model, plan)
    assert list(model.state_dict()) == keys
    assert torch.equal(model.eval()(x), before)
    active = [s for s, spec in plan.sites.items() if spec.method != "none"]
    assert sorted(k for k in regularizers(model) if ":" not in k) == sorted(active)
    model.train()(x)  # and the regularized model trains


def test_export_bad_rank_is_one_line_exit_2(run_dir: Path, tmp_path: Path, capsys) -> None:
    rc, out, err = _cli(["export", str(run_dir), "--out", str(tmp_path / "p.json"), "--rank", "99"], capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1 and "rank" in err and "99" in err
    assert not (tmp_path / "p.json").exists()


# ----------------------------------------------------------------------------- errors
def test_bad_run_dirs_give_one_line_and_exit_2(run_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notrun").mkdir()
    (tmp_path / "notrun" / "notes.txt").write_text("hello")
    running = _copy_run(run_dir, tmp_path / "running")
    state = json.loads((running / "run_state.json").read_text())
    (running / "run_state.json").write_text(json.dumps({**state, "status": "running", "completed": 2}))
    cases = {
        tmp_path / "missing": "not found",
        tmp_path / "empty": "empty",
        tmp_path / "notrun": "not a search run",
        running: "still in progress",
    }
    for path, phrase in cases.items():
        for cmd in (
            ["summarize", str(path)],
            ["plot", str(path)],
            ["export", str(path), "--out", "x.json"],
            ["retrain", str(path)],
        ):
            rc, out, err = _cli(cmd, capsys)
            assert rc == 2, (cmd, err)
            assert err.startswith("python -m results: error: ") and err.count("\n") == 1 and phrase in err, (cmd, err)
    rc, out, _ = _cli(["summarize", str(running), "--allow-running"], capsys)
    assert rc == 0 and "running" in out


def test_cli_entry_point_exit_code(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "results", "summarize", str(tmp_path / "nope")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"python -m results: error: run directory not found: {tmp_path / 'nope'}; pass the folder "
        "launch_search.py wrote (--storage-path/--name, e.g. runs/NAME)"
    ]


def test_interrupted_run_is_summarized_with_what_exists(run_dir: Path, tmp_path: Path, capsys) -> None:
    part = _copy_run(run_dir, tmp_path / "part")
    state = json.loads((part / "run_state.json").read_text())
    (part / "run_state.json").write_text(json.dumps({**state, "status": "interrupted", "completed": 2}))
    rows = [r for r in _rows(part) if r["baseline"] != "learned"][:2]  # two ranked trials
    with open(part / "trials.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    rc, out, err = _cli(["summarize", str(part), "--format", "csv"], capsys)
    assert rc == 0, err
    top = next(b for b in out.split("\n\n") if b.startswith("# top"))
    assert len(list(csv.DictReader(io.StringIO(top.split("\n", 1)[1])))) == 2
    (part / "trials.csv").unlink()
    rc, _, err = _cli(["summarize", str(part)], capsys)
    assert rc == 2 and "no finished trials" in err


# ----------------------------------------------------------------------------- plots
def test_plot_writes_readable_pngs(run_dir: Path, tmp_path: Path, capsys) -> None:
    import matplotlib.image as mpimg

    rc, out, err = _cli(["plot", str(run_dir), "--out", str(tmp_path)], capsys)
    assert rc == 0, err
    written = sorted(Path(p).name for p in out.split())
    assert written == ["controller.png", "masks.png", "methods_heatmap.png", "reward.png"]
    for name in written:
        img = mpimg.imread(tmp_path / name)
        assert img.shape[0] > 200 and img.shape[1] > 300 and float(img[..., :3].std()) > 0.05, name


def test_masks_drop_the_requested_fraction() -> None:
    """The drawn mask is what the layer really drops: elementwise dropout p=0.3 drops ~30% of a (C, 16, 16) map."""
    from child_trainer import build_model
    from results.masks import regularizer_masks
    from search_space import Plan, SiteSpec, apply_plan

    model = build_model("digits_cnn", 10, 1)
    plan = Plan(
        {
            "bn1": SiteSpec("dropout", {"drop_prob": 0.3}),
            "layer2.0.bn2": SiteSpec("dropblock", {"drop_prob": 0.2, "block_size": 3, "share_channels": False}),
        }
    )
    apply_plan(model, plan)
    fracs = [regularizer_masks(model, torch.randn(1, 1, 8, 8), seed=s)["bn1"].mean() for s in range(3)]
    assert float(np.mean(fracs)) == pytest.approx(0.3, abs=0.02)  # >= 3 x 16x16x16 units: sd of the mean < 0.005
    masks = regularizer_masks(model, torch.randn(1, 1, 8, 8), seed=1)
    channels = {s: model.get_submodule(s).num_features for s in ("bn1", "layer2.0.bn2")}
    assert masks["bn1"].shape == (channels["bn1"], 16, 16)
    assert masks["layer2.0.bn2"].shape == (channels["layer2.0.bn2"], 8, 8)


# ----------------------------------------------------------------------------- baselines + retrain
def test_baseline_plans_follow_the_papers_on_digits_cnn() -> None:
    from child_trainer import build_model
    from search_space import find_sites
    from search_space.baselines import baseline_plans

    model = build_model("digits_cnn", 10, 1)
    sites = find_sites(model)
    plans = baseline_plans(model, sites, torch.randn(1, 1, 8, 8), "digits_cnn")
    assert set(plans["none"].methods().values()) == {"none"}
    db = {s: spec for s, spec in plans["dropblock"].sites.items() if spec.method != "none"}
    # both stages (16x16 and 8x8) are "the last two"; BN outputs incl. the projection shortcut's BN
    assert set(db) == {"bn1", "layer1.0.bn1", "layer1.0.bn2", "layer2.0.bn1", "layer2.0.bn2", "layer2.0.shortcut.1"}
    assert {spec.params["block_size"] for spec in db.values()} == {7}
    assert all(spec.params["drop_prob"] == 0.1 for spec in db.values()) and plans["dropblock"].ramp_fraction == 1.0
    do = {s for s, spec in plans["dropout"].sites.items() if spec.method == "dropout"}
    assert do == set(db)
    ds = {s: spec for s, spec in plans["disout"].sites.items() if spec.method != "none"}
    assert set(ds) == {"layer2.0.bn1", "layer2.0.bn2"}  # last stage, after both convs, not the shortcut
    assert all(spec.params == {"dist_prob": 0.09, "block_size": 6, "alpha": 5.0, "ramp": 1.0} for spec in ds.values())


def test_retrain_writes_csv_summary_and_plot(run_dir: Path, tmp_path: Path, capsys) -> None:
    rc, out, err = _cli(
        [
            "retrain",
            str(run_dir),
            "--top",
            "1",
            "--seeds",
            "2",
            "--epochs",
            "1",
            "--train-size",
            "search",
            "--baselines",
            "disout",
            "--out",
            str(tmp_path),
            "--num-threads",
            "1",
        ],
        capsys,
    )
    assert rc == 0, err
    with open(tmp_path / "retrain.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # fresh seeds: the first ones the search never trained with (its reward seed was 0)
    used = set(json.loads((run_dir / "search_config.json").read_text())["reward_seeds"])
    assert used == {0}
    plans = ("searched#1", "learned-rates", "disout")  # learned-rates: retrained by default
    assert [(r["plan"], r["seed"]) for r in rows] == [(p, s) for p in plans for s in ("1", "2")]
    assert "seeds [1, 2]: fresh (the search never trained with them)" in out
    assert all(r["status"] == "ok" and 0.0 <= float(r["test_acc"]) <= 1.0 for r in rows)
    with open(tmp_path / "retrain_summary.csv", newline="") as f:
        summary = {r["plan"]: r for r in csv.DictReader(f)}
    for plan in plans:
        accs = [float(r["test_acc"]) for r in rows if r["plan"] == plan]
        assert float(summary[plan]["test_acc_mean"]) == pytest.approx(statistics.mean(accs))
        assert float(summary[plan]["test_acc_std"]) == pytest.approx(statistics.stdev(accs), abs=1e-12)
        se = statistics.stdev(accs) / math.sqrt(len(accs))
        assert float(summary[plan]["test_acc_se"]) == pytest.approx(se, abs=1e-12)
        assert f"{statistics.mean(accs):.4f} +- {se:.4f}" in out
    assert all(r["epochs"] == "1" and r["train_size"] == "200" for r in rows)  # --epochs, --train-size search
    import matplotlib.image as mpimg

    img = mpimg.imread(tmp_path / "retrain.png")
    assert img.shape[0] > 200 and float(img[..., :3].std()) > 0.05
    from search_space import Plan

    assert Plan.load(tmp_path / "plans" / "disout.json").ramp_fraction == 1.0


def test_best_plan_and_export_rank_1_agree_when_a_stopped_trial_scores_highest(tmp_path: Path, capsys) -> None:
    """Under ASHA a stopped trial's value comes from fewer epochs: neither the searcher's
    best_plan.json nor `results export --rank 1` may pick it (run_folder.best_row decides both)."""
    from controller.policies import RandomSearcher
    from search_space import Plan, SearchSpace

    space = SearchSpace([("a", ["a"]), ("b", ["b"])], model="m")
    run = tmp_path / "asha"
    s = RandomSearcher(space, num_samples=4, run_dir=run, seed=0)
    run.mkdir()
    (run / "search_config.json").write_text(
        json.dumps(
            {
                "version": 2,
                "searcher": "random",
                "space": space.to_dict(),
                "objective": {"metric": "val_acc", "mode": "max"},
            }
        )
    )
    for i, (final, acc) in enumerate([(True, 0.7), (False, 0.95), (True, 0.8), (False, 0.5)]):
        s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", {"final": final, "status": "ok", "val_acc": acc, "epoch": 3 if final else 1})
    rows = _rows(run)
    assert [r["status"] for r in rows] == ["ok", "stopped", "ok", "stopped"]
    best = Plan.load(run / "best_plan.json")
    assert best.metadata["trial_id"] == "t2"
    rc, out, err = _cli(["export", str(run), "--out", str(tmp_path / "p.json")], capsys)
    assert rc == 0, err
    exported = Plan.load(tmp_path / "p.json")
    assert exported.metadata["trial_id"] == "t2" and exported.sites == best.sites


def test_a_truncated_last_row_is_dropped_with_a_warning_never_misread(
    run_dir: Path, tmp_path: Path, capsys, caplog
) -> None:
    part = _copy_run(run_dir, tmp_path / "cut")
    text = (part / "trials.csv").read_text()
    rows = _rows(part)
    last = rows[-1]
    cut_at = text.rindex(last["trial_id"]) + len(last["trial_id"]) + 1  # the row cut inside its fields
    for keep in (cut_at + 5, cut_at + 30):
        (part / "trials.csv").write_text(text[:keep])
        df = load_run(part)
        assert last["trial_id"] not in set(df["trial_id"]) and len(df) == len(rows) - 1
        assert any("torn last line" in r.message for r in caplog.records)  # a write cut short by a crash
        caplog.clear()
