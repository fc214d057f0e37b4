"""run_search on models this project did not write (an MLP, a custom CNN), with sites from
shapes; progress and callbacks; wrong argument types; and honest endings: a search in which
every trial failed is "failed", names its most common error, and its command exits non-zero."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from controller import run_search
from search_space import Plan, apply_plan, learned_param_groups, learned_regularizer, step_schedulers


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv_a = nn.Conv2d(1, 8, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(8)
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1, stride=2)
        self.bn_b = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn_a(self.conv_a(x)))
        x = torch.relu(self.bn_b(self.conv_b(x)))
        return self.head(x.mean((2, 3)))


MODELS = {"mlp": MLP, "cnn": SmallCNN}
EXAMPLE = torch.randn(1, 1, 8, 8)


def _data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (48,), generator=g)
    x = torch.randn(3, 1, 8, 8, generator=g)[y] + torch.randn(48, 1, 8, 8, generator=g)
    return x[:32], y[:32], x[32:], y[32:]


def train_any(plan: Plan, seed: int, report) -> None:
    """One epoch of a user's loop; the model class comes from the plan's model name."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    xt, yt, xv, yv = _data()
    model = MODELS[plan.model]()
    apply_plan(model, plan, total_steps=4, n_train=len(yt))  # n_train: for the learned baseline's plan
    opt = torch.optim.SGD(learned_param_groups(model), lr=0.1)
    model.train()
    for i in range(0, 32, 8):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xt[i : i + 8]), yt[i : i + 8])
        (loss + learned_regularizer(model)).backward()  # zero but for the learned baseline
        opt.step()
        step_schedulers(model)
    model.eval()
    with torch.no_grad():
        report(val_loss=float(nn.functional.cross_entropy(model(xv), yv)))


def train_fails(plan: Plan, seed: int, report) -> None:
    raise RuntimeError("the user's loop broke")


@pytest.mark.parametrize("name", list(MODELS))
def test_search_on_a_users_model_trains_searched_plans(ray_session, tmp_path: Path, name: str, caplog) -> None:
    result = run_search(  # verbose: the searcher's INFO lines, which the root's WARNING level drops otherwise
        MODELS[name], train_any, metric="val_loss", mode="min", num_samples=2, search="random", seed=1,
        storage_path=tmp_path, name=name, model_name=name, example_input=EXAMPLE, sites="stage", verbose=True,
        final_top_k=0,  # the search stage on a user's model (the final stage: test_api.py)
    )  # fmt: skip
    assert result.status == "finished", result.summary
    space = json.loads((result.run_dir / "search_config.json").read_text())["space"]
    if name == "mlp":
        assert space["methods"] == ["none", "dropout"] and space["groups"] == [["stage1", ["net.2"]]]
    else:
        assert [g[1] for g in space["groups"]] == [["bn_a"], ["bn_b"]]  # 8x8, then 4x4
    searched = result.trials[(result.trials["baseline"].fillna("") == "") & (result.trials["status"] == "ok")]
    assert len(searched) == 2
    plans = [Plan.from_json(p) for p in searched["plan_json"]]
    assert any(spec.method != "none" for p in plans for spec in p.sites.values())
    learned = result.trials[result.trials["baseline"] == "learned"].iloc[0]  # the loop follows the recipe
    rates = json.loads(learned["learned_rates"])
    assert learned["status"] == "ok" and set(rates) == {s for _, g in space["groups"] for s in g}
    per_channel = {s: spec.params["per_channel"] for s, spec in Plan.from_json(learned["plan_json"]).sites.items()}
    assert set(per_channel.values()) == {name == "cnn"}  # maps learn per channel, flat features elementwise
    progress = [r.getMessage() for r in caplog.records if r.name == "controller.searcher" and r.levelno == logging.INFO]
    assert sum(m.startswith(tuple(f"[{i}/4]" for i in range(1, 5))) for m in progress) == 4  # a line per trial


def test_a_search_where_every_trial_fails_is_failed_and_names_the_error(ray_session, tmp_path: Path) -> None:
    result = run_search(
        SmallCNN, train_fails, metric="val_loss", mode="min", num_samples=1, search="random",
        storage_path=tmp_path, name="broken", example_input=EXAMPLE,
    )  # fmt: skip
    assert result.status == "failed" and not result.finished
    assert "every trial failed; most common error (3 of 3 trials)" in result.error  # none, learned, sampled
    assert "the user's loop broke" in result.error
    next_lines = result.summary.split("Next:")[1]
    assert "summarize" in next_lines and "retrain" not in next_lines and "export" not in next_lines


def test_launch_search_exits_1_when_every_trial_fails(ray_session, tmp_path: Path, monkeypatch, capsys) -> None:
    import launch_search

    child = tmp_path / "broken_child.py"
    child.write_text("def train(config, plan, report):\n    raise ValueError('no luck today')\n")
    monkeypatch.chdir(tmp_path)
    rc = launch_search.main(
        ["--child", "broken_child.py:train", "--num-samples", "1", "--epochs", "1", "--baselines", "none",
         "--final-top-k", "0", "--search", "random", "--name", "run", "--storage-path", str(tmp_path)]
    )  # fmt: skip
    out = capsys.readouterr()
    assert rc == 1, out.out + out.err
    assert "Stopped by an error: every trial failed; most common error (3 of 3 trials): ValueError: no luck today" in (
        out.out
    )
    assert "retrain" not in out.out.split("Next:")[1]


def _never(*_a, **_k) -> None:
    raise AssertionError("not reached")


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        ({"model_fn": 3}, TypeError, "model_fn: expected a function"),
        ({"train_fn": "train.py"}, TypeError, "train_fn: expected a function"),
        ({"sites": 5}, TypeError, "sites: expected"),
        ({"methods": "dropout"}, TypeError, "methods: expected"),
        ({"callbacks": "progress"}, TypeError, "callbacks: expected a list of ray.tune.Callback"),
        ({"callbacks": [print]}, TypeError, r"callbacks\[0\]: expected a ray.tune.Callback"),
        ({"verbose": "yes"}, TypeError, "verbose: expected a bool"),
        ({"model_fn": lambda: "not a model"}, TypeError, "model_fn: returned a str"),
        ({"model_fn": lambda: nn.Sequential(nn.Flatten())}, ValueError, "sites: none found in Sequential"),
        ({"methods": ["none", "pattern"], "model_fn": MLP}, ValueError, "methods: bad value 'pattern' fits no site"),
    ],
)
def test_wrong_arguments_are_refused_before_ray_naming_the_parameter(kwargs, exc, message, tmp_path: Path) -> None:
    args = {"model_fn": SmallCNN, "train_fn": _never, "storage_path": tmp_path, "name": "r", "example_input": EXAMPLE}
    with pytest.raises(exc, match=message):
        run_search(**{**args, **kwargs})
    assert not (tmp_path / "r").exists()  # nothing written
