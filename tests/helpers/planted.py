"""The planted task: a synthetic ``train_fn`` whose answer is known, so a whole search (Ray,
every stage, the final stage, export) can be judged by the TRUE value of what it exported.

Nothing trains. A plan's metric is a known function of the plan plus seeded noise of the size
a real training shows on digits (about 0.4 points of accuracy per evaluation):

    val_acc(plan, seed) = true_value(plan) + noise * (sqrt(shared) * z(seed) + sqrt(1 - shared) * z(plan, seed))

``z`` are standard normals drawn from a hash, so the value is deterministic per (plan, seed),
as a CPU training is; ``z(seed)`` is common to every plan on that seed, so paired comparisons
see correlated noise, as real trainings on one seed do. A plan is identified by
``search_space.plan.plan_key`` (a rate of 0 is ``none``).

**The true value.** The model (`PlantedNet`) has two stages of two BN sites (8x8 and 4x4
maps). Each site scores ``gain(stage, method) * q``, where ``q = 1 - |p - p*| / 0.4 - |b - b*| / 6``
(the widths are settings; clipped at -1, as too much regularization hurts) measures how close
the site's rate ``p`` (and block size ``b`` for the block methods) is to the stage's preferred
values; ``none`` scores 0.
The true value is ``base`` plus the mean score over the sites. The early stage prefers DropBlock
(p 0.1, block 3, gain ``headroom``) and the late stage dropout (p 0.2, gain ``headroom``);
each stage gives the other's method ``headroom - 2 * margin`` at the same preferred values,
and spatial dropout, Disout and the AutoDropout pattern less. So

- the best plan (DropBlock p 0.1 b 3 early, dropout p 0.2 late) is ``base + headroom``;
- the best one-method-at-every-site recipe (DropBlock p 0.1 b 3, or dropout p 0.2, at every
  site: both on the first two points of ``search_space.baselines.TUNED_GRIDS``, so the tuned
  global recipes reach it at any budget) is ``base + headroom - margin``: the best plan beats
  every global recipe by exactly ``margin``;
- a plan with the right method in one stage, or rates near the preferred ones, gets partial
  credit, so a search has a gradient to follow. Ramps, channel sharing and Disout's alpha do
  not matter.

``null=True``: every plan has the same true value (``base``); only the noise differs. Usage:

    task = PlantedTask(margin=0.01)
    result = run_search(**task.search_kwargs(), num_samples=48, final_top_k=4, final_seeds=3)
    task.true_value(result.best_plan) > task.best_global_value   # did the search win?
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from search_space.baselines import BASELINES
from search_space.plan import Plan, SiteSpec, plan_key
from search_space.vocab import VOCAB

__all__ = ["PlantedNet", "PlantedTask", "example_input", "STAGE_OF", "SITES"]

MODEL_NAME = "planted"
SITES = ("early.1", "early.4", "late.1", "late.4")
STAGE_OF = {s: s.split(".")[0] for s in SITES}
RATE_OF = {"dropout": "drop_prob", "spatial_dropout": "drop_prob", "dropblock": "drop_prob", "disout": "dist_prob"}
BLOCK_METHODS = ("dropblock", "disout")


class PlantedNet(nn.Module):
    """Two stages of conv-BN-ReLU pairs on 8x8 inputs; its four BN outputs are the sites
    (``early.1``, ``early.4`` at 8x8; ``late.1``, ``late.4`` at 4x4). Never trained."""

    def __init__(self) -> None:
        super().__init__()
        self.early = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
        )
        self.late = nn.Sequential(
            nn.Conv2d(4, 8, 3, stride=2, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
        )
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.late(self.early(x)).mean(dim=(2, 3)))


def example_input() -> torch.Tensor:
    """One input batch of `PlantedNet` (the hand-set baselines place their layers by map size)."""
    return torch.zeros(2, 1, 8, 8)


@dataclass(frozen=True)
class Preference:
    """What one stage wants from one method: its gain at the preferred values (accuracy units)."""

    gain: float
    rate: float = 0.1
    block: int | None = None

    def score(self, spec: SiteSpec, rate_width: float, block_width: float) -> float:
        q = 1.0
        rate = RATE_OF.get(spec.method)
        if rate is not None:
            q -= abs(float(spec.params.get(rate, 0.0)) - self.rate) / rate_width
        if self.block is not None and "block_size" in spec.params:
            q -= abs(int(spec.params["block_size"]) - self.block) / block_width
        return self.gain * max(-1.0, q)


@dataclass(frozen=True)
class PlantedTask:
    """A synthetic search problem with a known answer (see the module docstring). Picklable:
    the task itself is the ``train_fn(plan, seed, report)`` Ray runs.

    margin: the best plan's true value minus the best global recipe's (accuracy, 0.01 = 1 point).
    noise: standard deviation of one evaluation; shared: the fraction of its variance common to
    every plan on one seed. headroom: the best plan over ``none`` (default ``2 * margin + 0.01``,
    at least ``2 * margin``). epochs: reports per training (ASHA sees a rising curve).
    rate_width, block_width: how far from the preferred rate / block size a site earns nothing.
    null: every plan equal (``base``); the noise stays.
    """

    margin: float = 0.01
    noise: float = 0.004
    shared: float = 0.5
    headroom: float | None = None
    base: float = 0.9
    epochs: int = 1
    null: bool = False
    rate_width: float = 0.4
    block_width: float = 6.0
    metric: str = "val_acc"
    salt: str = "planted"
    _prefs: dict[str, dict[str, Preference]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin: bad value {self.margin!r}; allowed: a number >= 0")
        if not (math.isfinite(self.noise) and self.noise >= 0):
            raise ValueError(f"noise: bad value {self.noise!r}; allowed: a number >= 0")
        if not 0 <= self.shared <= 1:
            raise ValueError(f"shared: bad value {self.shared!r}; allowed: a number in [0, 1]")
        if self.headroom is not None and not self.headroom >= 2 * self.margin:
            raise ValueError(f"headroom: bad value {self.headroom!r}; allowed: at least 2 * margin ({2 * self.margin})")
        for name in ("rate_width", "block_width"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: bad value {getattr(self, name)!r}; allowed: a number > 0")
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ValueError(f"epochs: bad value {self.epochs!r}; allowed: an integer >= 1")
        g = self.gain
        other = g - 2 * self.margin  # the other stage's method, at the same preferred values
        weak = other / 2
        prefs = {
            "early": {
                "dropblock": Preference(g, 0.1, 3),
                "dropout": Preference(other, 0.2),
                "spatial_dropout": Preference(weak, 0.1),
                "disout": Preference(weak, 0.09, 3),
                "pattern": Preference(weak / 2),
            },
            "late": {
                "dropout": Preference(g, 0.2),
                "dropblock": Preference(other, 0.1, 3),
                "spatial_dropout": Preference(weak, 0.2),
                "disout": Preference(weak, 0.09, 3),
                "pattern": Preference(weak / 2),
            },
        }
        object.__setattr__(self, "_prefs", prefs)

    # ------------------------------------------------------------------ the truth
    @property
    def gain(self) -> float:
        """The best plan's true value over ``none``."""
        return 2 * self.margin + 0.01 if self.headroom is None else float(self.headroom)

    def true_value(self, plan: Plan) -> float:
        """The noise-free metric of ``plan`` (its expectation over seeds)."""
        if self.null:
            return self.base
        scores = []
        for site in SITES:
            spec = plan.sites.get(site, SiteSpec("none"))
            pref = self._prefs[STAGE_OF[site]].get(spec.method)
            off = spec.method == "none" or (spec.method in RATE_OF and spec.params.get(RATE_OF[spec.method]) == 0)
            scores.append(0.0 if pref is None or off else pref.score(spec, self.rate_width, self.block_width))
        return self.base + math.fsum(scores) / len(scores)

    def best_plan(self) -> Plan:
        """A plan with the highest true value (ramps and channel sharing do not matter)."""
        if self.null:
            return Plan.none(SITES, model=MODEL_NAME)
        return Plan(
            {
                s: SiteSpec("dropblock", {"drop_prob": 0.1, "block_size": 3, "share_channels": False, "ramp": 0.0})
                if STAGE_OF[s] == "early"
                else SiteSpec("dropout", {"drop_prob": 0.2, "ramp": 0.0})
                for s in SITES
            },
            model=MODEL_NAME,
        )

    def global_recipes(self) -> dict[str, tuple[Plan, float]]:
        """Per method, its best one-method-at-every-site recipe over the searched values that
        matter (rate, block size) and that recipe's true value."""
        out: dict[str, tuple[Plan, float]] = {}
        for method, rate in RATE_OF.items():
            blocks = VOCAB[method]["block_size"] if method in BLOCK_METHODS else (None,)
            best: tuple[Plan, float] | None = None
            for p in VOCAB[method][rate]:
                for b in blocks:
                    params = {rate: p, **({"block_size": b} if b is not None else {})}
                    plan = _everywhere(method, params)
                    value = self.true_value(plan)
                    if best is None or value > best[1]:
                        best = (plan, value)
            assert best is not None
            out[method] = best
        pattern = _everywhere("pattern", {})
        out["pattern"] = (pattern, self.true_value(pattern))
        return out

    @property
    def best_global_value(self) -> float:
        """The true value of the best one-method-at-every-site recipe (tuned ones included)."""
        return max(v for _, v in self.global_recipes().values())

    def beats_global(self, plan: Plan) -> bool:
        """Whether ``plan``'s true value is above every global recipe's."""
        return self.true_value(plan) > self.best_global_value + 1e-12

    # ------------------------------------------------------------------ the noise
    def noise_of(self, plan: Plan, seed: int) -> float:
        """The seeded noise of one evaluation: a part shared by every plan on ``seed`` and a
        part of its own (``noise`` standard deviation in all)."""
        shared = _normal(self.salt, "seed", seed)
        own = _normal(self.salt, plan_key(plan), seed)
        return self.noise * (math.sqrt(self.shared) * shared + math.sqrt(1.0 - self.shared) * own)

    def evaluate(self, plan: Plan, seed: int) -> float:
        """What one training of ``plan`` with ``seed`` reports (deterministic)."""
        return self.true_value(plan) + self.noise_of(plan, seed)

    def __call__(self, plan: Plan, seed: int, report: Callable[..., None]) -> dict[str, Any]:
        """``train_fn(plan, seed, report)``: reports ``epochs`` times (the last is the value)."""
        final = self.evaluate(plan, seed)
        for epoch in range(1, self.epochs + 1):
            # a rising curve that keeps every plan's rank, so ASHA's early cuts are fair
            report(**{"epoch": epoch, self.metric: final - 0.05 * (self.epochs - epoch) / self.epochs})
        return {"status": "ok"}

    # ------------------------------------------------------------------ search arguments
    def search_kwargs(self) -> dict[str, Any]:
        """The arguments of ``controller.run_search`` that make this task's search (the model,
        the train_fn, the hand-set baselines and one decision set per stage, as
        ``launch_search.py`` does); add the budget, searcher, seed and final stage."""
        return {
            "model_fn": PlantedNet,
            "train_fn": self,
            "metric": self.metric,
            "mode": "max",
            "model_name": MODEL_NAME,
            "sites": "stage",
            "baselines": BASELINES,
            "example_input": example_input(),
            "learned_rates": False,  # nothing trains, so Concrete Dropout has no rates to learn
        }

    def describe(self) -> Mapping[str, Any]:
        """The task's settings and its two reference values (for a CSV or a report)."""
        return {
            "margin": self.margin,
            "noise": self.noise,
            "shared": self.shared,
            "headroom": self.gain,
            "null": self.null,
            "base": self.base,
            "best_value": self.true_value(self.best_plan()),
            "best_global_value": self.best_global_value,
        }


def _everywhere(method: str, params: Mapping[str, Any]) -> Plan:
    """``method`` at every site; parameters not given take their first searched value."""
    full = {k: params.get(k, choices[0]) for k, choices in VOCAB[method].items()}
    return Plan({s: SiteSpec(method, dict(full)) for s in SITES}, model=MODEL_NAME)


def _normal(*parts: Any) -> float:
    """A standard normal fixed by ``parts`` (a hash, so no state and the same in every process)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return float(np.random.default_rng(int.from_bytes(digest, "little")).standard_normal())
