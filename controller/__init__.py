"""The policy that proposes plans, the Ray Tune searchers around it, and the search API.

    from controller import run_search, SearchConfig, SearchResult   # search your own model
    from controller import ControllerSearcher, RandomSearcher, TPESearcher  # into your own Tuner

Names load lazily, so ``controller.run_folder`` (what ``results`` reads) imports without torch
or Ray.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LSTMController": "controller.lstm",
    "Reinforce": "controller.reinforce",
    "ReinforceConfig": "controller.reinforce",
    "state_from_json": "controller.reinforce",
    "state_to_json": "controller.reinforce",
    "run_search": "controller.api",
    "SearchConfig": "controller.config",
    "RunConfig": "controller.config",
    "SearchResult": "controller.api",
    "SEARCHERS": "controller.policies",
    "ControllerSearcher": "controller.policies",
    "RandomSearcher": "controller.policies",
    "TPESearcher": "controller.policies",
    "make_searcher": "controller.policies",
    "Objective": "controller.run_folder",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'controller' has no attribute {name!r}")
