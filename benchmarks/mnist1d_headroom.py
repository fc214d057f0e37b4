"""Headroom on MNIST-1D: how far the best tuned global dropout is above no regularization.

    python benchmarks/mnist1d_headroom.py                                  # the settings of docs/benchmarks.md
    python benchmarks/mnist1d_headroom.py --settings mnist1d_cnn:1000:100 --seeds 3   # a quick look
    python benchmarks/mnist1d_headroom.py --report-only                    # re-print from --out

A search can only beat the best global recipe where regularization matters at all, so this
picks the MNIST-1D setting (model, training-set size, epochs) for the search benchmarks. Per
setting (``MODEL:TRAIN_SIZE:EPOCHS``), with one shared training recipe (``--batch-size``,
``--lr``, ...):

1. **Selection, on validation** (seeds 0..S-1): ``none`` and every point of the tuned grid of
   each ``--methods`` (default dropout; ``search_space.baselines.TUNED_GRIDS``: the same
   ``SiteSpec`` at every site of the model's shape-aware space, exactly what the product's
   tuned baseline trains). The tuned recipe is the candidate (``none`` included) with the best
   mean validation accuracy.
2. **Report, on test** (fresh seeds 1000..1000+S-1, which selection never used): ``none`` and
   the chosen recipe, each tested once; the gap is their paired difference over those seeds
   (``controller.stats.paired``: mean and 95% Student-t interval, positive = the recipe better).

Every training runs with one torch thread; "s/training" is its process CPU time
(``time.process_time``: the machine is shared, so wall time says little), the data already
generated (MNIST-1D's generation, ~0.7 s, is paid once per process). Block methods are left
out by default: until sites carry layouts they would act on the wrong axes of the (N, C, L)
maps (with layouts, ``--methods dropout,dropblock``). Every training lands in ``--out`` as it finishes, so an
interrupted run resumes and ``--report-only`` re-prints without training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _machine import cpu_model  # noqa: E402 (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The settings docs/benchmarks.md reports (model:train_size:epochs).
SETTINGS = (
    "mnist1d_cnn:1000:100",
    "mnist1d_mlp:1000:100",
    "mnist1d_cnn:1000:100:weight_decay=0.01",
    "mnist1d_mlp:1000:100:weight_decay=0.02",
)
#: The shared training recipe (TrainConfig fields), the same for every plan and setting.
RECIPE = {"batch_size": 64, "lr": 0.1, "optimizer": "sgd", "weight_decay": 5e-4, "label_smoothing": 0.1}
REPORT_SEED = 1000  # report seeds start here: selection (seeds 0..S-1) never uses them


@dataclass(frozen=True)
class Setting:
    """``MODEL:TRAIN_SIZE:EPOCHS``, optionally ``:FIELD=VALUE`` overriding the recipe (e.g.
    ``mnist1d_cnn:1000:100:weight_decay=0.01``)."""

    model: str
    train_size: int
    epochs: int
    override: tuple[tuple[str, float], ...] = ()

    @classmethod
    def parse(cls, text: str) -> "Setting":
        try:
            model, size, epochs, *rest = text.split(":")
            override = tuple((k, float(v)) for k, v in (item.split("=") for item in rest))
            if len(rest) > 1 or any(k not in RECIPE for k, _ in override):
                raise ValueError
            return cls(model, int(size), int(epochs), override)
        except ValueError:
            raise SystemExit(
                f"--settings: bad value {text!r}; allowed: MODEL:TRAIN_SIZE:EPOCHS[:FIELD=VALUE] with FIELD one of "
                f"{', '.join(RECIPE)}"
            ) from None

    def __str__(self) -> str:
        extra = "".join(f":{k}={v:g}" for k, v in self.override)
        return f"{self.model}:{self.train_size}:{self.epochs}{extra}"

    def config(self, recipe: dict[str, Any], seed: int, eval_test: bool) -> dict[str, Any]:
        return {
            "model": self.model,
            "dataset": "mnist1d",
            "train_size": self.train_size,
            "epochs": self.epochs,
            "seed": seed,
            "eval_test": eval_test,
            "num_threads": 1,
            "device": "cpu",
            **recipe,
            **{k: type(RECIPE[k])(v) for k, v in self.override},
        }


def candidate_plans(setting: Setting, methods: tuple[str, ...] = ("dropout",)) -> dict[str, str]:
    """``none`` and each method's tuned grid at every site, as plan JSON by a short name
    (``dropout 0.1``, ``dropblock 0.1 b3``)."""
    from child_trainer.trial import model_and_example
    from search_space.baselines import TUNED_GRIDS, tuned_grid
    from search_space.space import SearchSpace

    model, x, _, _ = model_and_example(setting.config(RECIPE, 0, False))
    space = SearchSpace.for_model(model, example_input=x, model_name=setting.model)
    plans = {"none": space.uniform_plan("none")}
    for method in methods:
        for plan in tuned_grid(space, method, len(TUNED_GRIDS[method])):
            params = next(spec.params for spec in plan.sites.values() if spec.method == method)
            block = f" b{params['block_size']}" if "block_size" in params else ""
            plans[f"{method} {params['drop_prob']:g}{block}"] = plan
    return {name: plan.to_json() for name, plan in plans.items()}


def train_one(config: dict[str, Any], plan_json: str) -> dict[str, Any]:
    """One training; its validation and test accuracy and its process CPU seconds."""
    import torch

    from child_trainer.mnist1d import generate_mnist1d
    from child_trainer.train import train_child

    torch.set_num_threads(1)
    generate_mnist1d()  # generated once per process, outside the timing
    start = time.process_time()
    result = train_child(config, plan_json)
    cpu = time.process_time() - start
    if result["status"] != "ok":
        raise RuntimeError(f"{config} failed: {result['message']}")
    return {"val": result["val_acc"], "test": result.get("test_acc"), "cpu": cpu}


def _key(setting: Setting, plan: str, seed: int, recipe: dict[str, Any]) -> str:
    return json.dumps([str(setting), plan, seed, recipe], sort_keys=True)


def run(
    settings: list[Setting],
    seeds: int,
    recipe: dict[str, Any],
    out: Path,
    jobs: int,
    train: bool,
    methods: tuple[str, ...] = ("dropout",),
) -> dict:
    """Train what ``out`` lacks (selection on every candidate, then the report pair), return all."""
    done: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}

    def save(key: str, value: dict[str, Any]) -> None:
        done[key] = value
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(done, indent=0, sort_keys=True))
        tmp.replace(out)

    def execute(todo: list[tuple[str, dict[str, Any], str]]) -> None:
        todo = [t for t in todo if t[0] not in done]
        if not todo or not train:
            return
        print(f"  training {len(todo)} ...", file=sys.stderr, flush=True)
        if jobs == 1:
            for key, config, plan in todo:
                save(key, train_one(config, plan))
            return
        with ProcessPoolExecutor(jobs) as pool:
            futures = {pool.submit(train_one, config, plan): key for key, config, plan in todo}
            for future in as_completed(futures):
                save(futures[future], future.result())

    for setting in settings:
        plans = candidate_plans(setting, methods)
        execute(
            [
                (_key(setting, name, s, recipe), setting.config(recipe, s, False), plan)
                for name, plan in plans.items()
                for s in range(seeds)
            ]
        )
        chosen = choose(done, setting, list(plans), seeds, recipe)
        if chosen is None:
            continue
        report_seeds = range(REPORT_SEED, REPORT_SEED + seeds)
        execute(
            [
                (_key(setting, name, s, recipe), setting.config(recipe, s, True), plans[name])
                for name in dict.fromkeys(("none", chosen))
                for s in report_seeds
            ]
        )
    return done


def choose(done: dict[str, Any], setting: Setting, names: list[str], seeds: int, recipe: dict) -> str | None:
    """The candidate with the best mean validation accuracy over the selection seeds."""
    means = selection_means(done, setting, names, seeds, recipe)
    return max(means, key=means.__getitem__) if len(means) == len(names) else None


def selection_means(done: dict[str, Any], setting: Setting, names: list[str], seeds: int, recipe: dict) -> dict:
    out = {}
    for name in names:
        vals = [done.get(_key(setting, name, s, recipe)) for s in range(seeds)]
        if all(v is not None for v in vals):
            out[name] = statistics.fmean(v["val"] for v in vals)
    return out


def report(
    done: dict[str, Any],
    settings: list[Setting],
    seeds: int,
    recipe: dict[str, Any],
    methods: tuple[str, ...] = ("dropout",),
) -> None:
    from controller.stats import paired

    print(f"CPU: {cpu_model()}; one torch thread per training; recipe: {json.dumps(recipe, sort_keys=True)}")
    rows = []
    for setting in settings:
        names = list(candidate_plans(setting, methods))
        means = selection_means(done, setting, names, seeds, recipe)
        shown = ", ".join(f"{n} {m:.4f}" for n, m in means.items())
        print(f"\n{setting}: validation accuracy, mean of seeds 0-{seeds - 1} (selection): {shown or 'not trained'}")
        chosen = choose(done, setting, names, seeds, recipe)
        if chosen is None:
            continue
        report_seeds = range(REPORT_SEED, REPORT_SEED + seeds)
        test = {
            name: {
                s: done[_key(setting, name, s, recipe)]["test"]
                for s in report_seeds
                if _key(setting, name, s, recipe) in done
            }
            for name in ("none", chosen)
        }
        cpu = [v["cpu"] for k, v in done.items() if json.loads(k)[0] == str(setting) and json.loads(k)[3] == recipe]
        diff = paired(test[chosen], test["none"])
        rows.append(
            f"| {setting} | {_mean(test['none'])} | {chosen} | {_mean(test[chosen])} | "
            f"{diff.mean:+.4f} [{diff.ci95_low:+.4f}, {diff.ci95_high:+.4f}] | {diff.p_value:.2g} | "
            f"{statistics.fmean(cpu):.1f} (max {max(cpu):.1f}) |"
        )
    print(
        f"\nTest accuracy on fresh seeds {REPORT_SEED}-{REPORT_SEED + seeds - 1} (the recipe chosen on validation):\n"
    )
    print(
        "| setting (model:train size:epochs) | none | tuned recipe (chosen on val) | its test | gap [95%] | p |", end=""
    )
    print(" CPU s/training |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))


def _mean(values: dict[int, float]) -> str:
    v = list(values.values())
    if len(v) < 2:
        return "n/a"
    return f"{statistics.fmean(v):.4f} +- {statistics.stdev(v) / len(v) ** 0.5:.4f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated MODEL:TRAIN_SIZE:EPOCHS")
    parser.add_argument("--seeds", type=int, default=10, help="selection seeds, and as many fresh report seeds")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once (one thread each)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "mnist1d_headroom.json")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument(
        "--methods",
        default="dropout",
        help="comma-separated tuned methods (TUNED_GRIDS); dropblock needs sites that carry layouts",
    )
    for field, value in RECIPE.items():
        parser.add_argument("--" + field.replace("_", "-"), type=type(value), default=value)
    args = parser.parse_args(argv)
    settings = [Setting.parse(s) for s in args.settings.split(",") if s]
    recipe = {field: getattr(args, field) for field in RECIPE}
    methods = tuple(m for m in args.methods.split(",") if m)
    done = run(settings, args.seeds, recipe, args.out, args.jobs, train=not args.report_only, methods=methods)
    report(done, settings, args.seeds, recipe, methods)


if __name__ == "__main__":
    main()
