"""Our children in the shape the search API takes: ``model_fn()`` and ``train_fn(plan, seed, report)``.

``controller.run_search`` searches any model with any training function; these two callables
are the built-in ones, a ``TrainConfig`` bound to them (``launch_search.py`` passes them). They
are plain picklable objects, so Ray ships them to every worker. ``child`` swaps in another
function with `train_child`'s signature (``launch_search.py --child module:function``).
"""
from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import DataSplits, load_data
from .models import build_model
from .train import TrainConfig, train_child

__all__ = ["ChildModel", "ChildTrain", "load_function", "load_split", "model_and_example"]


def load_function(spec: str, field_name: str = "child") -> Callable[..., Any]:
    """``module:function`` or ``path/file.py:function`` -> the function (ValueError naming
    ``field_name`` when the module does not import or has no such function)."""
    target, _, fn = str(spec).rpartition(":")
    if not target or not fn:
        raise ValueError(f"{field_name}: bad value {spec!r}; allowed: module:function or "
                         "path/file.py:function")
    try:
        if target.endswith(".py"):
            if not Path(target).is_file():
                raise ValueError(f"{field_name}: bad value {spec!r}; file {target} not found")
            module_spec = importlib.util.spec_from_file_location(Path(target).stem + "_child_hook", target)
            if module_spec is None or module_spec.loader is None:
                raise ValueError(f"{field_name}: bad value {spec!r}; cannot load {target}")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - any import failure is the user's spec
        raise ValueError(f"{field_name}: bad value {spec!r}; importing {target} failed "
                         f"({type(exc).__name__}: {exc})") from None
    func = getattr(module, fn, None)
    if not callable(func):
        raise ValueError(f"{field_name}: bad value {spec!r}; {target} has no function {fn!r}")
    return func


def load_split(cfg: TrainConfig | Mapping[str, Any], with_test: bool = False) -> DataSplits:
    """The run's data (the split every trial uses), on the CPU."""
    cfg = cfg if isinstance(cfg, TrainConfig) else TrainConfig.from_dict(cfg)
    return load_data(cfg.dataset, cfg.data_dir, cfg.train_size, seed=cfg.split_seed, with_test=with_test,
                     image_shape=cfg.synthetic_shape, num_classes=cfg.synthetic_classes)


@dataclass
class ChildModel:
    """``model_fn`` of the built-in children: a fresh model of the configured kind."""

    train: dict[str, Any]

    def __call__(self) -> nn.Module:
        cfg = TrainConfig.from_dict(self.train)
        data = load_split(cfg)
        return build_model(cfg.model, data.num_classes, in_channels=data.in_channels)


@dataclass
class ChildTrain:
    """``train_fn(plan, seed, report)`` of the built-in children: `train_child` under the
    bound TrainConfig with the trial's seed (or ``child``, a function with its signature)."""

    train: dict[str, Any]
    child: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def __call__(self, plan: Any, seed: int, report: Callable[..., None]) -> dict[str, Any]:
        cfg = TrainConfig.from_dict({**self.train, **self.overrides, "seed": int(seed)})
        fn = load_function(self.child) if self.child else train_child
        return fn(cfg, plan, lambda epoch, metrics: report(**metrics))


def model_and_example(train_config: Mapping[str, Any], index: int = 0,
                      seed: int = 0) -> tuple[nn.Module, torch.Tensor, int, str]:
    """A fresh (seeded) model of the run and one real validation image (1, C, H, W) with its label.

    Uses the run's own split so the image is one the search validated on, never a test image.
    """
    cfg = TrainConfig.from_dict(dict(train_config))
    data = load_split(cfg)
    if not 0 <= index < len(data.val_y):
        raise ValueError(f"image index: bad value {index}; allowed: 0..{len(data.val_y) - 1}")
    torch.manual_seed(seed)
    model = build_model(cfg.model, data.num_classes, in_channels=data.in_channels)
    x = data.val_x[index:index + 1].float().cpu()
    return model, x, int(data.val_y[index]), data.name
