"""Issue 28, items 3-5: the ``learned`` baseline of every search. Its trial learns per-site
rates in one training (recorded like a baseline, never rewarding the controller), its rates
reach trials.csv, the plan they make enters the final stage as ``learned-rates`` (a baseline
do no harm counts), a resume derives the same plan from the ledger, the controller and TPE
start from it, and a user's ``train_fn`` gets it through ``apply_plan`` (or fails in one line)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from controller.config import SearchConfig
from controller.final import LEARNED, LEARNED_TRIAL, final_rows
from controller.policies import ControllerSearcher, RandomSearcher, TPESearcher
from controller.prior import start_recipes
from controller.run_folder import OK, Objective
from controller.run_folder.resume import searcher_from_config
from controller.run_folder.settings import config_json
from controller.stages import contenders
from search_space import Plan, SearchSpace, apply_plan, learned_param_groups, learned_regularizer
from search_space import learned as learned_mod
from search_space.learned import derived_plan, learned_plan, learning_plan, nearest_tokens, trained_rates
from search_space.plan import PlanError, SiteSpec, plan_key

RATES = {"s1": 0.31, "s2": 0.02, "s3": 0.12}


def space3() -> SearchSpace:
    return SearchSpace([("s1", ["s1"]), ("s2", ["s2"]), ("s3", ["s3"])], methods=["none", "dropout",
                       "spatial_dropout", "dropblock"], model="m")  # fmt: skip


def ok(val: float, rates: dict | None = None) -> dict:
    out = {"final": True, "status": "ok", "val_acc": val, "best_val_acc": val, "epoch": 2, "seconds": 1.0}
    return {**out, "learned_rates": json.dumps(rates)} if rates else out


def searcher(cls=RandomSearcher, space=None, **kw):
    space = space or space3()
    kw.setdefault("baselines", {"none": Plan.none(space.sites, model="m")})
    return cls(space, num_samples=kw.pop("num_samples", 2), learned=learning_plan(space), seed=0, **kw)


def test_constants_agree() -> None:
    assert (LEARNED, LEARNED_TRIAL) == (learned_mod.LEARNED, learned_mod.LEARNED_TRIAL)


# ----------------------------------------------------------------------- the plans
def test_learning_plan_follows_the_space_layouts_and_methods_and_derives_on_the_grid() -> None:
    groups = [("a", ["a"]), ("b", ["b"]), ("c", ["c"]), ("d", ["d"])]
    space = SearchSpace(groups, methods=["none", "dropout", "spatial_dropout", "dropblock"], model="m",
                        group_methods={"b": ["none", "dropout"], "d": ["none", "dropblock"]},
                        layouts={"a": "NHWC", "b": "NCHW", "c": "NC", "d": "NCHW"})  # fmt: skip
    learning = learning_plan(space)
    assert {s: (spec.method, spec.params.get("per_channel")) for s, spec in learning.sites.items()} == {
        "a": ("learned", True),  # a channels-last map: per channel, on axis 3
        "b": ("learned", False),  # a map whose group offers no spatial dropout: elementwise, like dropout
        "c": ("learned", False),  # flat features
        "d": ("none", None),  # neither dropout nor spatial dropout offered: nothing to learn there
    }
    assert Plan.from_json(learning.to_json()) == learning  # a plan like any other (trials.csv's plan_json)
    plan = derived_plan(learning, {"a": 0.33, "b": 0.12, "c": 0.01})
    assert {s: (spec.method, spec.params.get("drop_prob")) for s, spec in plan.sites.items()} == {
        "a": ("spatial_dropout", 0.35), "b": ("dropout", 0.1), "c": ("none", None), "d": ("none", None)}  # fmt: skip
    assert plan.layouts == space.layouts and plan.metadata["source"] == LEARNED
    assert all(spec.method in space.methods_of(s) for s, spec in plan.sites.items())
    assert derived_plan(learning, {"a": 0.33}).sites["b"].method == "none"  # a missing rate: none there
    assert learning_plan(SearchSpace([("x", ["x"])], methods=["none", "dropblock"])) is None


def test_nearest_tokens_average_a_group_and_stand_in_for_a_method_it_lacks() -> None:
    space = SearchSpace([("g1", ["a", "b", "c"]), ("g2", ["d"])], methods=["none", "dropout", "dropblock"], model="m",
                        group_methods={"g2": ["none", "dropblock"]})  # fmt: skip
    learning = Plan({s: SiteSpec("learned", {"per_channel": True}) for s in "abcd"}, model="m")
    plan = derived_plan(learning, {"a": 0.3, "b": 0.2, "c": 0.04, "d": 0.21})
    with pytest.raises(PlanError):
        space.encode(plan)  # three rates in one group, spatial dropout not offered
    got = space.decode(nearest_tokens(space, plan))
    # g1: mean of the raw rates (0.3 + 0.2 + 0.04) / 3 = 0.18 -> 0.2; spatial dropout -> dropout
    assert got.sites["a"] == got.sites["c"] == SiteSpec("dropout", {"drop_prob": 0.2, "ramp": 0.0})
    assert got.sites["d"].method == "dropblock" and got.sites["d"].params["drop_prob"] == 0.2
    assert got.sites["d"].params["block_size"] == 1  # DropBlock with blocks of 1 stands in
    zero = derived_plan(learning, {"a": 0.01, "b": 0.02, "c": 0.0, "d": 0.0})
    assert space.decode(nearest_tokens(space, zero)) == Plan.none(space.sites, model="m")


def test_learned_plan_keeps_to_the_methods_a_site_allows() -> None:
    rates, sites = {"a": 0.2, "b": 0.2, "c": 0.2}, {"a": 1, "b": 1, "c": None}
    allowed = {"a": ("none", "dropout"), "b": ("none", "dropblock"), "c": ("none", "dropout")}
    plan = learned_plan(rates, sites, methods=allowed, layouts={"a": "NHWC", "b": "NHWC", "c": "NC"})
    assert plan.methods() == {"a": "dropout", "b": "none", "c": "dropout"}
    assert plan.layouts == {"a": "NHWC", "b": "NHWC", "c": "NC"}


def test_a_ledger_written_before_the_column_existed_appends_with_its_own_columns(tmp_path: Path) -> None:
    from controller.run_folder import TRIALS, read_trials, trial_columns
    from controller.run_folder.ledger import Ledger

    old = [c for c in trial_columns(Objective()) if c != "learned_rates"] + ["site:s1"]
    (tmp_path / TRIALS).write_text(",".join(old) + "\n")
    row = {"trial_id": "t0", "order": 0, "status": OK, "val_acc": 0.5, "plan_json": Plan.none(["s1"]).to_json(),
           "learned_rates": "{}", "site:s1": "none"}  # fmt: skip
    Ledger(tmp_path, trial_columns(Objective()) + ["site:s1"]).trial(row)
    df = read_trials(tmp_path / TRIALS, Objective())
    assert list(df["trial_id"]) == ["t0"] and df["site:s1"].iloc[0] == "none" and "learned_rates" not in df


# ----------------------------------------------------------------------- the search
def test_learned_trial_is_a_baseline_and_its_plan_enters_the_final_stage(tmp_path: Path) -> None:
    fixed = SearchConfig(final_stage="fixed")  # every finalist on every seed: the labels in order
    s = searcher(ControllerSearcher, run_dir=tmp_path, final_top_k=1, final_seeds=3, controller_batch=1, settings=fixed)
    first = [s.suggest(f"b{i}") for i in range(2)]
    assert [c["label"] for c in first] == ["none", LEARNED_TRIAL]
    assert all(spec.method == "learned" for spec in first[1]["plan"].sites.values())
    assert first[1]["seeds"] == first[0]["seeds"] == [0]  # the reward seeds of the other baselines
    s.on_trial_complete("b1", ok(0.95, RATES))  # the best value of the search stage...
    s.on_trial_complete("b0", ok(0.7))
    for i in range(2):
        s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", ok(0.8 + 0.01 * i))
    assert {t for h in s.history for t in h["trials"]} == {"t0", "t1"}  # never rewarded the controller
    rows = {r["trial_id"]: r for r in s.records}
    assert rows["b1"]["kind"] == "baseline" and json.loads(rows["b1"]["learned_rates"]) == RATES
    assert rows["t0"]["learned_rates"] == ""
    assert s.best()["trial_id"] == "t1"  # ...but a training method is not a plan to export
    finals = {}
    while (cfg := s.suggest(f"f{len(finals)}")) not in (s.FINISHED, None):
        finals[f"f{len(finals)}"] = cfg
    labels = list(dict.fromkeys(c["label"] for c in finals.values()))
    assert labels == ["none", LEARNED, "searched#1"]
    plan = next(c["plan"] for c in finals.values() if c["label"] == LEARNED)
    assert plan == derived_plan(rows["b1"]["plan"], RATES) and plan.sites["s1"].params["drop_prob"] == 0.3
    # do no harm: learned-rates is a baseline the searched plan must beat
    for tid, cfg in finals.items():
        value = {"none": 0.7, LEARNED: 0.9, "searched#1": 0.85}[cfg["label"]] + 0.001 * cfg["seeds"][0] % 3
        s.on_trial_complete(tid, ok(value))
    table = {r["label"]: r for r in s.final_table()}
    assert table[LEARNED]["kind"] == "baseline" and table[LEARNED]["chosen"]
    assert table["searched#1"]["best_baseline"] == LEARNED
    saved = json.loads((tmp_path / "best_plan.json").read_text())
    assert saved["metadata"]["label"] == LEARNED and saved["metadata"]["kind"] == "baseline"


def test_a_failed_learned_trial_leaves_no_finalist_and_the_search_goes_on() -> None:
    s = searcher(final_top_k=1, final_seeds=2)
    s.suggest("b0")
    s.suggest("b1")
    s.on_trial_complete("b0", ok(0.7))
    why = "learned rates (seed 0): train_fn did not add learned_regularizer"
    s.on_trial_complete("b1", {"final": True, "status": "failed", "val_acc": float("nan"), "error": why})
    for i in range(2):
        s.suggest(f"t{i}")
        s.on_trial_complete(f"t{i}", ok(0.8))
    assert s.records[1]["status"] == "failed" and "learned_regularizer" in s.records[1]["error"]
    found = contenders(s.records, s.objective, s.baselines, [], 1)
    assert list(found) == ["none", "searched#1"]


def test_resume_derives_the_same_learned_rates_plan_from_the_ledger(tmp_path: Path) -> None:
    space = space3()
    config = SearchConfig(num_samples=2, search="random", final_top_k=1, final_seeds=2, tuned_trials=0,
                          final_stage="fixed")  # fmt: skip
    started = config_json(config, space=space, baselines={"none": Plan.none(space.sites, model="m")}, tuned={},
                          learned=learning_plan(space))  # fmt: skip
    s = searcher_from_config(config, started, tmp_path)
    assert s.learning_plan == learning_plan(space) and s.search_trials == 4
    assert s.final_trials == 3 * 2  # none, learned-rates, searched#1: Tune's trial count is fixed from it
    for i in range(4):
        s.suggest(f"t{i}")
    for i, rates in enumerate([None, RATES, None, None]):
        s.on_trial_complete(f"t{i}", ok(0.7 + 0.01 * i, rates))
    first = s.suggest("f0")  # the final stage starts; stop here
    again = searcher_from_config(config, json.loads(json.dumps(started)), tmp_path)
    again.resume()
    queued = {t.label: t.plan for t in again.final._queue}
    assert plan_key(queued[LEARNED]) == plan_key(derived_plan(learning_plan(space), RATES))
    assert first["label"] == "none" and set(queued) == {"none", LEARNED, "searched#1"}
    off = config.replace(learned_rates=False)
    plain = config_json(off, space=space, baselines={}, tuned={}, learned=None)
    assert "learned" not in plain and searcher_from_config(off, plain, None).learning_plan is None


def test_final_rows_count_learned_rates_among_the_baselines() -> None:
    rows = [{"label": label, "seed": seed, "status": OK, "val_acc": v + 0.01 * seed, "plan_json": "{}",
             "methods": "", "source": ""} for label, v in (("none", 0.5), (LEARNED, 0.8), ("searched#1", 0.7))
            for seed in range(3)]  # fmt: skip
    table = {r["label"]: r for r in final_rows(rows, Objective(), ["none"], 3)}
    assert table[LEARNED]["kind"] == "baseline" and table[LEARNED]["chosen"]
    assert table["searched#1"]["comparison"] == "worse"


# ----------------------------------------------------------------------- a place to start
def test_the_controller_starts_toward_the_learned_rates_tokens() -> None:
    space = space3()
    s = searcher(ControllerSearcher, prior_strength=0, num_samples=8)
    s.suggest("b0")
    s.suggest("b1")
    s.on_trial_complete("b0", ok(0.7))
    assert s.suggest("x") is None  # the sampled plans wait for the learned trial
    s.on_trial_complete("b1", ok(0.9, {"s1": 0.31, "s2": 0.29, "s3": 0.3}))
    target = space.decode(nearest_tokens(space, derived_plan(s.learning_plan, {"s1": 0.31, "s2": 0.29, "s3": 0.3})))
    assert target.sites["s1"] == SiteSpec("spatial_dropout", {"drop_prob": 0.3, "ramp": 0.0})
    assert s._ready_to_sample() and s.sampled.warmed
    draws = [space.decode(s.reinforce.sample(1)[0]) for _ in range(400)]
    share = sum(p.sites["s1"] == target.sites["s1"] for p in draws) / len(draws)
    # uniform: 1/4 methods x 1/11 rates x 1/4 ramps = 0.006; the recipe prior makes it common
    assert share > 0.1


def test_the_better_of_the_tuned_recipe_and_the_learned_rates_leads() -> None:
    assert start_recipes(([1], 0.9), ([2], 0.8)) == [([1], 1.0), ([2], 0.5)]
    assert start_recipes(([1], 0.7), ([2], 0.8)) == [([2], 1.0), ([1], 0.5)]
    assert start_recipes(None, ([2], 0.8)) == [([2], 1.0)] and start_recipes(None, None) == []


def test_tpe_suggests_the_learned_rates_plan_first() -> None:
    space = space3()
    s = searcher(TPESearcher, n_startup_trials=4)
    s.suggest("b0")
    s.suggest("b1")
    s.on_trial_complete("b0", ok(0.7))
    s.on_trial_complete("b1", ok(0.9, RATES))
    cfg = s.suggest("t0")
    assert plan_key(cfg["plan"]) == plan_key(space.decode(nearest_tokens(space, derived_plan(s.learning_plan, RATES))))


# ----------------------------------------------------------------------- a user's train_fn
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv2(torch.relu(self.bn(self.conv(x)))).mean((2, 3)))


def train_fn(plan, seed, report, *, regularize=True, n_train=True, optimizer_after=True):
    """The documented recipe (docs/api.md); the switches break one step of it each."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 1, 6, 6, generator=g), torch.randint(0, 2, (32,), generator=g)
    model = Net()
    early = torch.optim.SGD(model.parameters(), lr=0.2)
    model = apply_plan(model, plan, total_steps=8, **({"n_train": len(y)} if n_train else {}))
    opt = torch.optim.SGD(learned_param_groups(model), lr=0.2) if optimizer_after else early
    for _ in range(2):
        model.train()
        for i in range(0, 32, 8):
            loss = nn.functional.cross_entropy(model(x[i : i + 8]), y[i : i + 8])
            loss = loss + learned_regularizer(model) if regularize else loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        report(val_loss=float(loss.detach()))


def run_trial(plan, fn, monkeypatch, seeds=(0, 1)) -> dict:
    """controller.trainable.run_trial outside Ray: Tune's report is a list."""
    from ray import tune

    from controller import trainable

    reports: list[dict] = []
    monkeypatch.setattr(tune, "report", reports.append)
    monkeypatch.setattr(trainable, "_node_name", lambda: "n")
    trainable.run_trial({"plan": plan, "seeds": list(seeds)}, fn, Objective("val_loss", "min"))
    return reports[-1]


def user_learning_plan() -> Plan:
    space = SearchSpace.for_model(Net(), example_input=torch.randn(2, 1, 6, 6), model_name="net")
    return learning_plan(space)


def test_a_train_fn_that_follows_the_recipe_gets_its_rates_back(monkeypatch) -> None:
    plan = user_learning_plan()
    assert "bn" in plan.sites and all(spec.params == {"per_channel": True} for spec in plan.sites.values())
    last = run_trial(plan, train_fn, monkeypatch)
    assert last["status"] == OK and last["final"]
    rates = json.loads(last["learned_rates"])
    assert set(rates) == set(plan.sites) and all(
        0 < r < 1 and r != pytest.approx(0.1, abs=1e-6) for r in rates.values()
    )
    normal = run_trial(Plan({"bn": SiteSpec("dropout", {"drop_prob": 0.1})}), train_fn, monkeypatch)
    assert normal["status"] == OK and "learned_rates" not in normal  # every other plan: as before


@pytest.mark.parametrize(
    "broken, words",
    [
        ({"n_train": False}, "n_train: missing"),
        ({"regularize": False}, "did not add learned_regularizer(model) to its loss"),
        ({"optimizer_after": False}, "the optimizer does not train the sites' logits"),
    ],
)
def test_a_train_fn_that_ignores_the_recipe_fails_in_one_line(monkeypatch, broken, words) -> None:
    last = run_trial(user_learning_plan(), lambda p, s, r: train_fn(p, s, r, **broken), monkeypatch, seeds=(0,))
    assert last["status"] == "failed" and words in last["error"] and "\n" not in last["error"]


def test_a_train_fn_that_never_applies_the_plan_fails_in_one_line(monkeypatch) -> None:
    def ignores(plan, seed, report):
        report(val_loss=0.5)

    last = run_trial(user_learning_plan(), ignores, monkeypatch, seeds=(0,))
    assert last["status"] == "failed" and "never applied this plan" in last["error"]
    assert trained_rates(user_learning_plan())[1].startswith("train_fn never applied")


@pytest.mark.gpu
def test_the_recipe_on_cuda_under_autocast() -> None:
    """The learned trial's layers train on the GPU in bf16 autocast, and a plan without them
    adds a CPU zero that a CUDA loss takes."""
    device = torch.device("cuda")
    plan = user_learning_plan()
    torch.manual_seed(0)
    model = apply_plan(Net(), plan, total_steps=4, n_train=32, weight_decay=5e-4).to(device)
    opt = torch.optim.SGD(learned_param_groups(model), lr=0.2, weight_decay=5e-4)
    x, y = torch.randn(32, 1, 6, 6, device=device), torch.randint(0, 2, (32,), device=device)
    model.train()
    for i in range(0, 32, 8):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = nn.functional.cross_entropy(model(x[i : i + 8]), y[i : i + 8])
        loss = loss + learned_regularizer(model)
        opt.zero_grad()
        loss.backward()
        opt.step()
    rates, why = trained_rates(plan)
    assert why == "" and set(rates) == set(plan.sites) and all(0 < r < 1 for r in rates.values())
    plain = Net().to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = nn.functional.cross_entropy(plain(x), y)
    total = loss + learned_regularizer(plain)
    assert total.device.type == "cuda" and total.item() == pytest.approx(loss.item())
