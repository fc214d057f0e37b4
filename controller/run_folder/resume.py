"""Resuming a run folder: what can be resumed, and the searcher rebuilt from search_config.json
(the settings, and what the start resolved from them: ``run_folder.settings``).

Only JSON is read here; Ray's pickles in the folder are never read, so a folder from someone
else cannot run code on resume (``PlanSearcher.resume`` then reads the ledger and the state)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller import run_folder as rf
from search_space.errors import UserError, user_error

__all__ = ["check_resumable", "searcher_from_config"]


def _refused_resume(run_dir: Path, allowed: str, why: str) -> UserError:
    """The one-line refusal of ``resume`` for ``run_dir``: what it lacks and what it needs."""
    return user_error("resume", str(run_dir), allowed, detail=why)


def check_resumable(run_dir: Path) -> Any:
    """Refuse (FieldError, one line) a resume this code cannot do, before anything is touched;
    return the run's settings (``controller.config.SearchConfig``).

    Only JSON is read here (search_config.json, searcher_state.json); Ray's pickles in the
    folder are never read, so a folder from someone else cannot run code on resume. The
    searcher's own ``resume()`` then checks the state against the run's space and objective.
    """
    from controller.run_folder.settings import READABLE_VERSIONS, read_config
    from controller.run_folder.snapshot import read_snapshot

    if not (run_dir / rf.SEARCH_CONFIG).is_file():
        raise _refused_resume(
            run_dir,
            "a run folder with search_config.json",
            f"no resumable run at {run_dir} (missing search_config.json)",
        )
    try:
        config = rf.read_json(run_dir / rf.SEARCH_CONFIG)
        settings = read_config(config)
        rf.Objective.from_config(config)
        searcher_from_config(settings, config, None)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise _refused_resume(
            run_dir,
            f"a {rf.SEARCH_CONFIG} of version {' or '.join(map(str, READABLE_VERSIONS))}",
            f"{run_dir / rf.SEARCH_CONFIG} is unreadable or from another version ({type(exc).__name__}: {exc}); "
            "nothing was changed (python -m results summarize/export still read the run)",
        ) from None
    read_snapshot(run_dir)
    return settings


def searcher_from_config(settings: Any, config: Mapping[str, Any], run_dir: Path | None) -> Any:
    """The run's searcher, built from its settings and what search_config.json resolved from
    them (the space, the plans, the seed lists): a new run and a resume alike."""
    from controller.policies import make_searcher
    from search_space.plan import Plan
    from search_space.space import SearchSpace

    tuned = {str(m): [Plan.from_dict(p) for p in plans] for m, plans in (config.get("tuned") or {}).items()}
    kwargs: dict[str, Any] = dict(
        objective=rf.Objective.from_config(config),
        num_samples=settings.num_samples - sum(len(v) for v in tuned.values()),
        seed=settings.seed,
        run_dir=run_dir,
        controller_batch=settings.controller_batch,
        penalty_reward=settings.penalty_reward,
        baselines={str(k): Plan.from_dict(v) for k, v in (config.get("baselines") or {}).items()},
        tuned=tuned,
        reward_seeds=list(config["reward_seeds"]),
        final_top_k=settings.final_top_k,
        final_seeds=list(config["final_seeds"]),
        settings=settings,
        learned=Plan.from_dict(config["learned"]) if config.get("learned") is not None else None,
    )
    if settings.search == "controller":
        kwargs["controller_kwargs"] = dict(settings.controller_kwargs)
        if settings.controller_lr is not None:
            kwargs["reinforce_kwargs"] = {"lr": float(settings.controller_lr)}
    return make_searcher(settings.search, SearchSpace.from_dict(config["space"]), **kwargs)
