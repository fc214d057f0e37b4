"""Our children in the shape the search API takes: ``model_fn()`` and ``train_fn(plan, seed, report)``.

``controller.run_search`` searches any model with any training function; these two callables
are the built-in ones, a ``TrainConfig`` bound to them (``launch_search.py`` passes them). They
are plain picklable objects, so Ray ships them to every worker. ``child`` swaps in another
function with `train_child`'s signature (``launch_search.py --child module:function``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from search_space.errors import FieldError, user_error

from .data import DataSplits, load_data, load_text
from .models import build_model, is_lm
from .train import TrainConfig, train_child
from .user_code import _add_paths, load_function

__all__ = [
    "CHILD_MODEL",
    "ChildModel",
    "ChildTrain",
    "chance_level",
    "child_model_of",
    "DriverData",
    "driver_data",
    "load_function",
    "load_split",
    "model_and_example",
]

#: A ``--child`` module may define ``child_model(config: TrainConfig) -> nn.Module``: the
#: model its function trains, so the search space comes from that model's sites.
CHILD_MODEL = "child_model"


def child_model_of(child: str) -> Callable[..., Any] | None:
    """The ``child_model`` function of a ``--child`` spec's module, or None if it has none."""
    target = str(child).rpartition(":")[0]
    try:
        return load_function(f"{target}:{CHILD_MODEL}", "child")
    except FieldError:
        return None


def load_split(cfg: TrainConfig | Mapping[str, Any], with_test: bool = False) -> DataSplits:
    """The run's data (the split every trial uses), on the CPU."""
    cfg = cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(cfg)
    return load_data(
        cfg.dataset,
        cfg.data_dir,
        cfg.train_size,
        seed=cfg.split_seed,
        with_test=with_test,
        image_shape=cfg.synthetic_shape,
        num_classes=cfg.synthetic_classes,
    )


@dataclass
class ChildModel:
    """``model_fn`` of the built-in children: a fresh model of the configured kind, or with
    ``child`` whose module defines ``child_model(config)``, that model."""

    train: dict[str, Any]
    child: str | None = None
    paths: list[str] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)  # DriverData.sizes: build without loading data

    def __call__(self) -> nn.Module:
        _add_paths(self.paths)
        make = child_model_of(self.child) if self.child else None
        if make is not None:
            model = make(TrainConfig.from_dict(self.train))
            if not isinstance(model, nn.Module):
                raise user_error(
                    "child", self.child, f"a module whose {CHILD_MODEL}(config) returns an nn.Module",
                    detail=f"bad value {self.child!r} ({CHILD_MODEL} returned a {type(model).__name__})",
                )  # fmt: skip
            return model
        if self.sizes:
            cfg = TrainConfig.from_dict(self.train)
            torch.manual_seed(0)  # as model_and_example: the same fresh model every call
            if is_lm(cfg.model):
                return build_model(cfg.model, self.sizes["vocab_size"], max_len=cfg.seq_len)
            return build_model(
                cfg.model,
                self.sizes["num_classes"],
                in_channels=self.sizes["in_channels"],
                image_size=self.sizes["image_size"],
            )
        return model_and_example(self.train)[0]


@dataclass
class ChildTrain:
    """``train_fn(plan, seed, report)`` of the built-in children: `train_child` under the
    bound TrainConfig with the trial's seed (or ``child``, a function with its signature).
    A search's ``learned`` trial (its plan learns the rates: `search_space.learned`) runs with
    ``learned=True``; the child returns ``learned_rates`` (site -> rate) with its metrics."""

    train: dict[str, Any]
    child: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    paths: list[str] = field(default_factory=list)  # driver folders a worker must import from

    def __call__(self, plan: Any, seed: int, report: Callable[..., None]) -> dict[str, Any]:
        from search_space.learned import is_learning_plan

        _add_paths(self.paths)
        learned = {"learned": True} if is_learning_plan(plan) else {}  # a search's learned trial: a child knows
        cfg = TrainConfig.from_dict({**self.train, **self.overrides, **learned, "seed": int(seed)})
        fn = load_function(self.child) if self.child else train_child
        return fn(cfg, plan, lambda epoch, metrics: report(**metrics))


def model_and_example(
    train_config: Mapping[str, Any], index: int = 0, seed: int = 0
) -> tuple[nn.Module, torch.Tensor, int, str]:
    """A fresh (seeded) model of the run and one real validation example with its label.

    Images: (1, C, H, W) and the class. Language models: (1, seq_len) token ids of the
    ``index``-th validation window and label -1. Uses the run's own split so the example is
    one the search validated on, never a test one.
    """
    cfg = TrainConfig.from_dict(dict(train_config))
    if is_lm(cfg.model):
        text = load_text(cfg.dataset, cfg.data_dir, with_test=False)
        windows = (len(text.val) - 1) // cfg.seq_len
        if not 0 <= index < windows:
            raise user_error("index", index, f"0..{windows - 1} (validation windows)")
        torch.manual_seed(seed)
        model = build_model(cfg.model, text.vocab_size, max_len=cfg.seq_len)
        return model, text.val[index * cfg.seq_len : (index + 1) * cfg.seq_len].view(1, -1).cpu(), -1, text.name
    data = load_split(cfg)
    if not 0 <= index < len(data.val_y):
        raise user_error("index", index, f"0..{len(data.val_y) - 1} (validation images)")
    torch.manual_seed(seed)
    model = build_model(cfg.model, data.num_classes, in_channels=data.in_channels, image_size=data.image_shape[-1])
    x = data.val_x[index : index + 1].float().cpu()
    return model, x, int(data.val_y[index]), data.name


@dataclass(frozen=True)
class DriverData:
    """What the driver needs from the run's data, read once: the model's sizes, one real
    validation input (sites and baselines are placed by its shapes) and the chance level."""

    sizes: dict[str, int]
    example: torch.Tensor
    chance: float


def driver_data(train_config: Mapping[str, Any]) -> DriverData:
    """One load of the run's data on the driver (a missing --data-dir fails here, not in every trial)."""
    cfg = TrainConfig.from_dict(dict(train_config))
    if is_lm(cfg.model):
        text = load_text(cfg.dataset, cfg.data_dir, with_test=False)
        return DriverData(
            {"vocab_size": text.vocab_size}, text.val[: cfg.seq_len].view(1, -1).cpu(), float(text.vocab_size)
        )
    data = load_split(cfg)
    sizes = {"num_classes": data.num_classes, "in_channels": data.in_channels, "image_size": data.image_shape[-1]}
    return DriverData(sizes, data.val_x[:1].float().cpu(), 1.0 / data.num_classes)


def chance_level(train_config: Mapping[str, Any]) -> float:
    """The search metric of a model that learned nothing: accuracy 1/classes, or perplexity
    equal to the vocabulary size (a uniform next-word guess). Its reward is what a diverged
    or failed plan gets."""
    cfg = TrainConfig.from_dict(dict(train_config))
    if is_lm(cfg.model):
        return float(load_text(cfg.dataset, cfg.data_dir, with_test=False).vocab_size)
    return 1.0 / load_split(cfg).num_classes
