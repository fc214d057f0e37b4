"""The public search API with a user's own model and training loop (nothing from child_trainer),
minimising a loss; and our searchers inside a plain ``tune.Tuner``."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from controller import run_search
from controller.run_folder import Objective
from results.cli import main as results_main
from search_space import Plan, apply_plan, learned_param_groups, learned_regularizer, step_schedulers

EPOCHS = 3


class UserNet(nn.Module):
    """A user's own model: two conv-BN-ReLU stages on 8x8 inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def user_data(seed: int = 123) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(3, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (96,), generator=g)
    x = templates[y] + 1.5 * torch.randn(96, 1, 8, 8, generator=g)
    return x[:64], y[:64], x[64:], y[64:]


def user_train(plan: Plan, seed: int, report) -> None:
    """The user's training loop: apply the plan, train, report the validation loss per epoch."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    xt, yt, xv, yv = user_data()
    model = UserNet()
    apply_plan(model, plan, total_steps=EPOCHS * 4, n_train=len(yt))  # n_train: the learned baseline's
    opt = torch.optim.Adam(learned_param_groups(model), lr=0.02)  # after apply_plan: its logits too
    for _ in range(EPOCHS):
        model.train()
        for i in range(0, 64, 16):
            loss = nn.functional.cross_entropy(model(xt[i : i + 16]), yt[i : i + 16])
            loss = loss + learned_regularizer(model)  # Concrete Dropout's term; 0 for every other plan
            opt.zero_grad()
            loss.backward()
            opt.step()
            step_schedulers(model)
        model.eval()
        with torch.no_grad():
            report(val_loss=float(nn.functional.cross_entropy(model(xv), yv)))
    slow = os.environ.get("USER_TRAIN_SLEEP")
    if slow:
        time.sleep(float(slow))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_user_model_and_loop_minimising_a_loss(ray_session, tmp_path, capsys):
    result = run_search(
        UserNet,
        user_train,
        metric="val_loss",
        mode="min",
        num_samples=5,
        search="controller",
        storage_path=tmp_path,
        name="mine",
        controller_batch=2,
        reward_seeds=2,
        final_top_k=1,
        final_seeds=2,
        model_name="usernet",
        resources_per_trial={"cpu": 1},
        max_concurrent=2,
        seed=7,
    )
    assert result.status == "finished" and result.run_dir == tmp_path / "mine"
    rows = _rows(tmp_path / "mine" / "trials.csv")
    assert len(rows) == 7 and len(result.trials) == 7  # the 'none' and 'learned' baselines + 5 sampled plans
    assert {"val_loss", "val_loss_se", "val_loss_seeds", "best_val_loss"} <= set(rows[0])
    assert "val_acc" not in rows[0]
    for r in rows:
        seeds = json.loads(r["val_loss_seeds"])
        assert r["status"] == "ok" and len(seeds) == 2
        assert float(r["val_loss"]) == pytest.approx(sum(seeds) / 2)
        assert float(r["reward"]) == pytest.approx(-float(r["val_loss"]))  # mode=min: reward = -loss
        assert float(r["best_val_loss"]) <= float(r["val_loss"]) + 1e-9
    assert [r["baseline"] for r in rows].count("none") == 1
    learned = next(r for r in rows if r["baseline"] == "learned")  # user_train follows the recipe: rates back
    rates = json.loads(learned["learned_rates"])
    assert learned["kind"] == "baseline" and set(rates) == {"features.1", "features.4"}
    assert all(0 < r < 1 for r in rates.values()) and all(r["learned_rates"] == "" for r in rows if r is not learned)
    sampled = [r for r in rows if not r["baseline"]]
    used = {t for h in _rows(tmp_path / "mine" / "controller_history.csv") for t in json.loads(h["trials"])}
    assert all(r["trial_id"] in used for r in sampled)  # every sampled plan reached an update
    assert not any(r["trial_id"] in used for r in rows if r["baseline"])  # the baseline never did
    # returned table == trials.csv
    assert list(result.trials["trial_id"]) == [r["trial_id"] for r in rows]
    # final stage: searched#1 and the baselines none and learned-rates, 2 fresh seeds each. Two
    # paired seeds cannot show a difference (t at 1 df), so best_plan.json holds a baseline
    # whatever the means say.
    final = _rows(tmp_path / "mine" / "final.csv")
    assert {f["label"]: f["kind"] for f in final} == {"searched#1": "searched", "none": "baseline",
                                                       "learned-rates": "baseline"}  # fmt: skip
    searched = next(f for f in final if f["label"] == "searched#1")
    assert searched["comparison"] == "cannot tell: too few seeds" and searched["paired_seeds"] == "2"
    assert (
        float(searched["diff_ci95_low"]) < float(searched["diff_vs_best_baseline"]) < float(searched["diff_ci95_high"])
    )
    chosen = [f for f in final if f["chosen"] == "1"]
    best_base = min((f for f in final if f["kind"] == "baseline"), key=lambda f: float(f["mean"]))
    assert [f["label"] for f in chosen] == [best_base["label"]] == [searched["best_baseline"]]
    assert result.best_plan.sites == Plan.from_json(chosen[0]["plan_json"]).sites
    assert result.best_plan.metadata["selected_by"] == "final" and result.best_plan.metadata["kind"] == "baseline"
    state = json.loads((tmp_path / "mine" / "run_state.json").read_text())
    assert state["exported"] == {"label": best_base["label"], "kind": "baseline", "selected_by": "final"}
    learned_rates = Plan.from_json(next(f for f in final if f["label"] == "learned-rates")["plan_json"])
    assert learned_rates.metadata["learned_rates"] == {s: round(r, 4) for s, r in rates.items()}
    best_searched = min((r for r in sampled), key=lambda r: float(r["val_loss"]))
    assert (
        Plan.from_json(next(f for f in final if f["label"] == "searched#1")["plan_json"]).sites
        == Plan.from_json(best_searched["plan_json"]).sites
    )
    assert "Verdict:" in result.summary
    # results summarize reads the loss run (lowest first) and shows the final table
    assert results_main(["summarize", str(result.run_dir), "--format", "csv"]) == 0
    out = capsys.readouterr().out
    assert "top 5 plans (by val_loss, lowest first" in out and "# final re-training" in out
    block = out.split("# top 5 plans")[1].split("\n\n")[0].split("\n", 1)[1]
    top = list(csv.DictReader(io.StringIO(block)))
    values = [float(r["val_loss"]) for r in top]
    assert len(top) == 5 and values == sorted(values) and learned["trial_id"] not in {r["trial_id"] for r in top}
    assert all(" +- " in r["val_loss +- se"] for r in top)  # two reward seeds: a standard error
    block = out.split("# learned rate per site")[1].split("\n\n")[0].split("\n", 1)[1]
    table = list(csv.DictReader(io.StringIO(block)))  # beside the searched plan's, per site
    assert [r["site"] for r in table] == ["features.1", "features.4"] and "searched (searched#1)" in table[0]
    assert [float(r["learned rate"]) for r in table] == pytest.approx([rates[s] for s in rates], abs=1e-3)
    # figures work without our model (no masks: the API cannot rebuild the user's network)
    assert results_main(["plot", str(result.run_dir), "--out", str(tmp_path / "fig")]) == 0
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == [
        "controller.png",
        "methods_heatmap.png",
        "reward.png",
    ]
    capsys.readouterr()
    assert results_main(["retrain", str(result.run_dir), "--out", str(tmp_path / "re")]) == 2
    assert "a model of its own" in capsys.readouterr().err and not (tmp_path / "re").exists()


def test_interrupted_api_search_resumes_without_rerunning(ray_session, tmp_path, monkeypatch):
    run = tmp_path / "r"

    def interrupt_after(n: int) -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            if (run / "trials.csv").is_file() and len(_rows(run / "trials.csv")) >= n:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    kwargs = dict(
        metric="val_loss",
        mode="min",
        num_samples=6,
        search="random",
        storage_path=tmp_path,
        name="r",
        max_concurrent=1,
        seed=3,
        final_top_k=0,  # the search stage's resume (the race's resume: tests/controller/test_ledger_kill.py)
    )
    threading.Thread(target=interrupt_after, args=(3,), daemon=True).start()
    first = run_search(UserNet, user_train, **kwargs)
    assert first.status == "interrupted"
    done = _rows(run / "trials.csv")
    assert 3 <= len(done) < 8
    second = run_search(UserNet, user_train, resume=True, **kwargs)
    assert second.status == "finished"
    rows = _rows(run / "trials.csv")
    assert len(rows) == 8 and rows[: len(done)] == done  # finished trials kept as they were
    assert len({r["trial_id"] for r in rows}) == 8
    ranked = [r for r in rows if r["status"] == "ok" and r["baseline"] != "learned"]  # a way to train, not a plan
    best = min(ranked, key=lambda r: float(r["val_loss"]))
    assert Plan.load(run / "best_plan.json").metadata["trial_id"] == best["trial_id"]


def test_api_refuses_bad_arguments_before_ray(tmp_path):
    cases = [
        ({"mode": "up"}, "mode: bad value 'up'"),
        ({"num_samples": 0}, "num_samples: bad value 0"),
        ({"search": "grid"}, "search: bad value 'grid'"),
        ({"seed": 2**70}, "seed: bad value"),
        ({"name": "a/b"}, "name: bad value 'a/b'"),
        ({"scheduler": "asha"}, "max_epochs: bad value None"),
        ({"reward_seeds": 0}, "reward_seeds: bad value 0"),
        ({"baselines": ["dropblock"]}, "example_input: bad value None"),
        ({"sites": "nothere"}, "sites: bad value 'nothere'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(")):
            run_search(UserNet, user_train, storage_path=tmp_path, **{"name": "x", **kwargs})
        assert not list(tmp_path.iterdir())  # nothing written, not even a lock


def test_our_searcher_in_a_plain_tuner(ray_session, tmp_path):
    from ray import tune

    from controller import ControllerSearcher
    from search_space import SearchSpace

    space = SearchSpace.for_model(UserNet(), share="stage", model_name="usernet")
    searcher = ControllerSearcher(
        space, num_samples=6, objective=Objective("loss", "min"), controller_batch=3, run_dir=tmp_path / "own", seed=1
    )

    def trainable(config):
        plan = config["plan"]
        for epoch in range(2):  # the loss falls with the share of regularized sites (a toy objective)
            share = sum(m != "none" for m in plan.methods().values()) / len(plan.sites)
            tune.report({"loss": 1.0 - 0.5 * share + 0.1 * (1 - epoch)})

    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, metric="loss", mode="min", num_samples=6, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="tuner", verbose=0),
    )
    results = tuner.fit()
    assert len(results) == 6 and not results.errors
    rows = _rows(tmp_path / "own" / "trials.csv")
    assert len(rows) == 6 and {r["status"] for r in rows} == {"ok"}
    assert len(searcher.history) == 2  # 6 rewards, batches of 3
    best = min(rows, key=lambda r: float(r["loss"]))
    assert Plan.load(tmp_path / "own" / "best_plan.json").metadata["trial_id"] == best["trial_id"]
    assert sorted(float(r["loss"]) for r in rows) == sorted(r.metrics["loss"] for r in results)


def test_tpe_searcher_proposes_valid_conditional_plans_and_learns(tmp_path):
    from controller import TPESearcher
    from search_space import SearchSpace

    space = SearchSpace.for_model(UserNet(), model_name="usernet")
    s = TPESearcher(space, num_samples=12, seed=0, n_startup_trials=4, run_dir=tmp_path)
    for i in range(12):
        cfg = s.suggest(f"t{i}")
        plan = cfg["plan"]
        assert space.decode(cfg["tokens"]).sites == plan.sites
        # TPE optimises the reward: a plan scores by how many sites use dropout
        score = sum(m == "dropout" for m in plan.methods().values()) / len(plan.sites)
        s.on_trial_complete(f"t{i}", {"final": True, "status": "ok", "val_acc": score, "epoch": 1})
    assert s.suggest("t12") == s.FINISHED
    rows = _rows(tmp_path / "trials.csv")
    assert len(rows) == 12 and all(r["searcher"] == "tpe" for r in rows)
    # a resume from the run folder rebuilds the study from the ledger: every recorded reward is in it
    t = TPESearcher(space, num_samples=12, seed=0, n_startup_trials=4, run_dir=tmp_path)
    t.resume()
    told = sorted(tr.value for tr in t._study.trials)
    assert told == sorted(float(r["reward"]) for r in rows) and t.finished == 12
    assert t.suggest("t12") == t.FINISHED
