"""``search_config.json``: how a search was started, and what a resume takes from it.

Version 4 (``CONFIG_VERSION``)::

    version       4
    settings      every setting, by name (``controller.config.SearchConfig.to_dict``)
    searcher, objective, space, baselines, tuned, reward_seeds, final_seeds, started_at
                  what the start resolved from them and the model: the searcher's name, the
                  objective, the search space, the baselines' and tuned recipes' plans, the
                  seed lists (``results`` reads these; their names are those of version 3)
    learned       the plan of the ``learned`` trial (its sites learn their rates), when the
                  search has one (``learned_rates``); a folder without it has none

Version 3 (before ``SearchConfig``) is read too: its settings are rebuilt from its flat keys
and, for a run of ``launch_search.py``, its ``args`` (``_settings_v3``).

A resume takes the settings from the folder, never from its caller, with one exception that
this module owns (``resume_settings``): code. A folder names the ``child`` and the
``package.module:factory`` model it ran, but never chooses them: the caller gives them again.
Where the driver runs (``RunConfig``: storage, name, Ray's address) is never in a folder.
Only JSON is read here; nothing read can run code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller import run_folder as rf
from controller.run_folder import CONFIG_VERSION
from search_space.errors import user_error

__all__ = ["CONFIG_VERSION", "READABLE_VERSIONS", "config_json", "read_config", "raw_settings", "resume_settings"]

log = logging.getLogger(__name__)

#: Versions a resume reads: 3 (flat keys and the command's args) and 4.
READABLE_VERSIONS = (3, 4)
#: What the start resolved, beside the settings (the same keys in versions 3 and 4).
RESOLVED = ("searcher", "objective", "space", "baselines", "tuned", "learned", "reward_seeds", "final_seeds",
            "started_at")  # fmt: skip
#: Version 3's flat keys: the resolved ones, the settings it stored, the command's args and train.
_V3_KEYS = {*RESOLVED, "version", "num_samples", "seed", "final_top_k", "controller_batch", "controller_lr",
            "controller_kwargs", "penalty_reward", "scheduler", "max_epochs", "max_concurrent", "max_failures",
            "trial_timeout", "args", "train"}  # fmt: skip


def config_json(
    settings: Any, *, space: Any, baselines: Mapping[str, Any], tuned: Mapping[str, Any], learned: Any = None
) -> dict:
    """search_config.json of a new run: the settings, and what the start resolved from them
    (the space and plans from the model, the ``learned`` trial's plan or none; the seed lists
    from ``seed``)."""
    from controller.config import FINAL_SEED_OFFSET

    s = settings
    budget = s.final_budget_for(final_contenders(s, baselines, tuned, learned is not None))
    final_seeds = budget if s.final_stage == "race" else (s.final_seeds if budget else 0)
    out = {
        "version": CONFIG_VERSION,
        "settings": s.to_dict(),
        "searcher": s.search,
        "objective": rf.Objective(s.metric, s.mode, s.reward_transform).to_dict(),
        "space": space.to_dict(),
        "baselines": {k: p.to_dict() for k, p in baselines.items()},
        "tuned": {m: [p.to_dict() for p in plans] for m, plans in tuned.items()},
        "reward_seeds": list(range(s.seed, s.seed + s.reward_seeds)),
        "final_seeds": [s.seed + FINAL_SEED_OFFSET + i for i in range(final_seeds)],
        "started_at": rf.now_iso(),
    }
    if learned is not None:  # a folder without it (older, or --no-learned-rates) has no learned trial
        out["learned"] = learned.to_dict()
    return out


def final_contenders(
    settings: Any, baselines: Mapping[str, Any], tuned: Mapping[str, Any], learned: bool = False
) -> list[tuple[str, str]]:
    """(label, kind) of the most finalists a search can have (``controller.stages.contenders``
    may drop a plan equal to an earlier one): what sizes the final stage's budget."""
    from controller.final import BASELINE, SEARCHED, TUNED, TUNED_PREFIX
    from search_space.learned import LEARNED

    return [
        *((str(b), BASELINE) for b in baselines),
        *((f"{TUNED_PREFIX}{m}", TUNED) for m in tuned),
        *([(LEARNED, BASELINE)] if learned else []),
        *((f"searched#{i + 1}", SEARCHED) for i in range(settings.final_top_k)),
    ]


def write_config(run_dir: Path, config: Mapping[str, Any]) -> None:
    with rf.disk_full_is_fatal(run_dir):
        rf.atomic_write_text(run_dir / rf.SEARCH_CONFIG, json.dumps(config, indent=2) + "\n", fsync=True)


def read_config(config: Mapping[str, Any]) -> Any:
    """The ``SearchConfig`` of a search_config.json of a readable version (checked as when
    the run started); ValueError, TypeError or KeyError for anything else."""
    from controller.config import SearchConfig

    version = config.get("version") if isinstance(config, Mapping) else None
    if version not in READABLE_VERSIONS:
        raise user_error("version", version, " or ".join(map(str, READABLE_VERSIONS)))
    if version == 3:
        return SearchConfig.from_dict(_settings_v3(config))
    if not isinstance(config.get("settings"), Mapping):
        raise user_error("settings", detail="missing or not an object", allowed="the settings of the search")
    return SearchConfig.from_dict(config["settings"])


def raw_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of any version as plain JSON values, unchecked and without importing torch
    (what ``results`` reads); of a folder older than version 3, its flags and train config."""
    if not isinstance(config, Mapping):
        return {}
    if isinstance(config.get("settings"), Mapping):
        return dict(config["settings"])
    try:
        return _settings_v3(config)
    except (KeyError, TypeError, ValueError, AttributeError):
        args = config.get("args") if isinstance(config.get("args"), Mapping) else {}
        return {**args, "train": config.get("train")}


def _settings_v3(config: Mapping[str, Any]) -> dict[str, Any]:
    """Version 3's settings by today's names: its flat keys, and the command's ``args`` where
    the flat keys had none (sites, resources, the child); its train config as ``train``."""
    args = config.get("args") if isinstance(config.get("args"), Mapping) else {}
    objective = config.get("objective") or {}
    space = config.get("space") if isinstance(config.get("space"), Mapping) else {}
    tuned = config.get("tuned") or {}
    baselines: Any = config.get("baselines") or {}
    if isinstance(args.get("baselines"), str):  # the command's names; the API's plans otherwise
        baselines = [b.strip() for b in args["baselines"].split(",") if b.strip()]
    out = {
        "num_samples": config["num_samples"],
        "search": config["searcher"],
        "seed": config["seed"],
        "reward_seeds": len(config["reward_seeds"]),
        "final_top_k": config["final_top_k"],
        "final_seeds": len(config["final_seeds"]),
        "final_stage": "fixed",  # the race came with version 4
        "baselines": baselines,
        "tuned_trials": args.get("tuned_trials", sum(len(v) for v in tuned.values())),
        "metric": objective.get("metric", "val_acc"),
        "mode": objective.get("mode", "max"),
        "reward_transform": objective.get("transform", ""),
        "sites": args.get("sites") or ("stage" if space.get("share") == "stage" else "all"),
        "model_name": space.get("model") or "",
        "cpus_per_trial": args.get("cpus_per_trial", 1.0),
        "gpus_per_trial": args.get("gpus_per_trial"),
        "child": args.get("child"),
        "train": config.get("train"),
        "extra": {k: v for k, v in config.items() if k not in _V3_KEYS},
    }
    for key in ("controller_batch", "controller_lr", "controller_kwargs", "penalty_reward", "scheduler",
                "max_epochs", "max_concurrent", "max_failures", "trial_timeout"):  # fmt: skip
        if key in config:
            out[key] = config[key]
    return out


def resume_settings(saved: Any, given: Mapping[str, Any], *, quiet: bool = False) -> Any:
    """The settings a resume runs with: ``saved`` (the folder's), except the code it imports.

    ``given`` holds what the caller passed, by setting name (``train`` a dict of train
    settings). A ``child`` or a ``train["model"]`` naming a ``package.module:factory`` is code:
    a resume takes it from the caller, never from the folder (whoever can write a folder must
    not choose what a resume runs), and is refused (one line) when the caller does not give
    it. A Tune scheduler object given again is used too (a folder keeps only its name). Every
    other setting given that differs from the folder's is ignored, with a warning
    (``quiet``: without; the refusals stay).
    """
    code: dict[str, Any] = {}
    if saved.child:
        code["child"] = _code(saved.child, given.get("child"), "child", quiet)
    train = dict(saved.train or {})
    model = train.get("model")
    if isinstance(model, str) and ":" in model:
        train["model"] = _code(model, (given.get("train") or {}).get("model"), "model", quiet)
        code["train"] = train
    if "scheduler" in given and not isinstance(given["scheduler"], str):
        code["scheduler"] = given["scheduler"]
    saved_train = saved.train or {}
    ignored = [k for k, v in given.items() if k not in ("train", *code) and v != getattr(saved, k)]
    ignored += [
        k
        for k, v in (given.get("train") or {}).items()
        if not (k == "model" and "train" in code) and v != saved_train.get(k)
    ]
    if ignored and not quiet:
        log.warning("resume uses the run's saved settings; ignoring %s", ", ".join(sorted(set(ignored))))
    return saved.replace(**code) if code else saved


def _code(was: str, given: Any, name: str, quiet: bool) -> str:
    if not given:
        raise user_error(
            name,
            None,
            f"the {name} this run was started with ({was!r}), given again "
            "(a resume never imports code that a run folder names)",
        )
    if given != was and not quiet:
        log.warning("resume with %s %s (the run started with %s)", name, given, was)
    return str(given)
