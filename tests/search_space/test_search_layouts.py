"""run_search end to end on an Embedding + LSTM classifier and a Conv3d model: sites that are
not the logits, layouts from evidence in the search space and in every trial's plan, and the
regularizers on the right axes while the trials train (a train_fn of two steps)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from controller import run_search
from search_space import Plan, apply_plan, learned_param_groups, learned_regularizer, regularizers, step_schedulers
from search_space.apply import unwrap_regularizer
from search_space.layers import ConcreteDropout
from search_space.learned import channel_dim_of_layout


class TextClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(30, 8)
        self.lstm = nn.LSTM(8, 12, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.emb(ids))
        return self.fc(out[:, -1])


class VolumeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(), nn.Conv3d(4, 8, 3, padding=1, stride=2),
            nn.BatchNorm3d(8), nn.ReLU(), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


MODELS = {"text": (TextClassifier, lambda g, n: torch.randint(0, 30, (n, 10), generator=g)),
          "volume": (VolumeNet, lambda g, n: torch.randn(n, 1, 6, 6, 6, generator=g))}  # fmt: skip


def train_two_steps(plan: Plan, seed: int, report) -> None:
    """A user's loop in two SGD steps; fails the trial unless every regularizer acts on its
    site's layout."""
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    make, data = MODELS[plan.model]
    g = torch.Generator().manual_seed(0)
    x, y = data(g, 16), torch.randint(0, 3, (16,), generator=g)
    model = make()
    apply_plan(model, plan, total_steps=2, n_train=len(y))  # n_train: the learned baseline's
    for site, reg in regularizers(model).items():
        layer = unwrap_regularizer(reg)
        told = getattr(layer, "layout", plan.layouts[site])  # Dropout: layout-free
        if isinstance(layer, ConcreteDropout):  # the learned baseline: per channel on the layout's channel axis
            told = plan.layouts[site] if layer.channel_dim == channel_dim_of_layout(plan.layouts[site]) else "?"
        if told != plan.layouts[site]:
            raise AssertionError(f"{site}: layer told {told}, site is {plan.layouts[site]}")
    opt = torch.optim.SGD(learned_param_groups(model), lr=0.1)
    model.train()
    for i in (0, 8):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x[i : i + 8]), y[i : i + 8])
        (loss + learned_regularizer(model)).backward()
        opt.step()
        step_schedulers(model)
    model.eval()
    with torch.no_grad():
        report(val_loss=float(nn.functional.cross_entropy(model(x), y)))


def _search(name: str, tmp_path: Path, num_samples: int, **kw):
    make, data = MODELS[name]
    example = data(torch.Generator().manual_seed(1), 4)
    result = run_search(
        make, train_two_steps, metric="val_loss", mode="min", num_samples=num_samples, search="random", seed=2,
        storage_path=tmp_path, name=name, model_name=name, example_input=example, **kw,
    )  # fmt: skip
    assert result.status == "finished", result.summary
    space = json.loads((result.run_dir / "search_config.json").read_text())["space"]
    return result, space


def test_an_lstm_classifier_is_searched_at_its_embedding_and_lstm_output(ray_session, tmp_path: Path) -> None:
    result, space = _search("text", tmp_path, 2)
    assert space["layouts"] == {"emb": "NTC", "lstm": "NTC"}  # not fc: the logits are never a site
    assert space["methods"] == ["none", "dropout", "seq_pattern"]
    searched = result.trials[result.trials["baseline"].fillna("") == ""]
    assert len(searched) == 2 and set(result.trials["status"]) == {"ok"}  # the learned baseline too: tokens
    plans = [Plan.from_json(p) for p in searched["plan_json"]]
    assert all(p.layouts == {"emb": "NTC", "lstm": "NTC"} for p in plans)
    assert any(spec.method != "none" for p in plans for spec in p.sites.values())


def test_a_conv3d_model_is_searched_with_dropblock3d_and_its_baselines(ray_session, tmp_path: Path) -> None:
    result, space = _search("volume", tmp_path, 1, baselines=["none", "dropblock"])
    assert space["layouts"] == {"body.1": "NCDHW", "body.4": "NCDHW"}
    assert "dropblock" in space["methods"] and "disout" not in space["methods"]
    rows = result.trials
    baselines = sorted(b for b in rows["baseline"].dropna() if b)
    assert set(rows["status"]) == {"ok"} and baselines == ["dropblock", "learned", "none"]
    learned = rows.loc[rows["baseline"] == "learned"].iloc[0]  # per channel along C of N,C,D,H,W
    assert set(json.loads(learned["learned_rates"])) == {"body.1", "body.4"}
    assert Plan.from_json(learned["plan_json"]).sites["body.4"].params == {"per_channel": True}
    dropblock = Plan.from_json(rows.loc[rows["baseline"] == "dropblock", "plan_json"].iloc[0])
    assert dropblock.layouts["body.4"] == "NCDHW" and dropblock.sites["body.4"].method == "dropblock"
