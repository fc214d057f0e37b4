"""Command-line flags generated from `TrainConfig`, so every CLI that exposes a training
setting (``python -m child_trainer``, ``launch_search.py``) names, types and documents it
the same way, and a new field needs no second list."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterable, Mapping
from typing import Any

from search_space.errors import typed

from .train import TrainConfig

__all__ = ["add_train_flags", "train_fields", "flag_of"]

SKIP = frozenset({"synthetic_shape"})  # tuples: settable from Python / JSON configs only
HELP = {
    "num_threads": "torch CPU threads (1 is best on a busy machine)",
    "train_size": "stratified training subset (the small-data regime); text: training tokens",
    "seq_len": "transformer_lm: tokens per window",
    "eval_test": "also evaluate the held-out test split (never during a search)",
    "dataset": "images: digits (bundled), cifar10, cifar100 (from --data-dir), synthetic; 1-D sequences: mnist1d "
    "(generated offline); text (transformer_lm): builtin_text (bundled), ptb, wikitext2 (from --data-dir)",
    "data_dir": "folder holding CIFAR (torchvision layout) or PTB / WikiText-2 text files; never downloaded",
    "amp": "autocast: auto (bf16 on CUDA and on CPUs with native bf16, else fp32), none, bf16, fp16 (CUDA)",
    "lr": "peak learning rate",
    "model": "child network",
}


def flag_of(field: str) -> str:
    return "--" + field.replace("_", "-")


def train_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig) if f.name not in SKIP]


def _arg_type(tp: Any) -> Any:
    """int | None -> int, etc.: argparse needs the concrete converter."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def add_train_flags(
    parser: argparse.ArgumentParser,
    fields: Iterable[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    help_defaults: Mapping[str, str] | None = None,
) -> None:
    """One flag per TrainConfig field in ``fields`` (default: all). ``defaults`` replaces the
    dataclass default (None: "not given", resolved later); ``help_defaults`` says in words
    what an unset flag means."""
    hints = typing.get_type_hints(TrainConfig)
    # The dataclass's own defaults, not a constructed config's: construction resolves None
    # (lr, label_smoothing) for the default model, and those values would then be passed as
    # if given (a language model trained with the digits' lr 0.1 and label smoothing 0.1).
    base = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    chosen = train_fields() if fields is None else list(fields)
    defaults = dict(defaults or {})
    for name in chosen:
        default = defaults.get(name, base[name])
        said = (help_defaults or {}).get(name, default)
        help_text = f"{HELP.get(name, '')} (default: {said})".strip()
        if hints[name] is bool:
            parser.add_argument(flag_of(name), action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(
                flag_of(name), type=typed(_arg_type(hints[name])), default=default, help=help_text, metavar=name.upper()
            )
