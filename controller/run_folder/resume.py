"""Resuming a run folder: what can be resumed, and the searcher rebuilt from search_config.json.

Only JSON is read here; Ray's pickles in the folder are never read, so a folder from someone
else cannot run code on resume (``PlanSearcher.resume`` then reads the ledger and the state)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from controller import run_folder as rf
from controller.run_folder import CONFIG_VERSION
from search_space.errors import UserError, user_error

__all__ = ["check_resumable", "searcher_from_config"]


def _refused_resume(run_dir: Path, allowed: str, why: str) -> UserError:
    """The one-line refusal of ``resume`` for ``run_dir``: what it lacks and what it needs."""
    return user_error("resume", str(run_dir), allowed, detail=why)


def check_resumable(run_dir: Path) -> None:
    """Refuse (FieldError, one line) a resume this code cannot do, before anything is touched.

    Only JSON is read here (search_config.json, searcher_state.json); Ray's pickles in the
    folder are never read, so a folder from someone else cannot run code on resume. The
    searcher's own ``resume()`` then checks the state against the run's space and objective.
    """
    from controller.run_folder.snapshot import read_snapshot

    if not (run_dir / rf.SEARCH_CONFIG).is_file():
        raise _refused_resume(
            run_dir,
            "a run folder with search_config.json",
            f"no resumable run at {run_dir} (missing search_config.json)",
        )
    try:
        config = rf.read_json(run_dir / rf.SEARCH_CONFIG)
        if not isinstance(config, dict) or config.get("version") != CONFIG_VERSION:
            raise user_error(detail=f"version {config.get('version') if isinstance(config, dict) else None!r}")
        rf.Objective.from_config(config)
        searcher_from_config(config, None)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise _refused_resume(
            run_dir,
            f"a {rf.SEARCH_CONFIG} of version {CONFIG_VERSION}",
            f"{run_dir / rf.SEARCH_CONFIG} is unreadable or from another version ({type(exc).__name__}: {exc}); "
            "nothing was changed (python -m results summarize/export still read the run)",
        ) from None
    read_snapshot(run_dir)


def searcher_from_config(config: Mapping[str, Any], run_dir: Path | None) -> Any:
    """The run's searcher, built from search_config.json alone (a new run and a resume alike)."""
    from controller.policies import make_searcher
    from search_space.plan import Plan
    from search_space.space import SearchSpace

    tuned = {str(m): [Plan.from_dict(p) for p in plans] for m, plans in (config.get("tuned") or {}).items()}
    kwargs: dict[str, Any] = dict(
        objective=rf.Objective.from_config(config),
        num_samples=int(config["num_samples"]) - sum(len(v) for v in tuned.values()),
        seed=int(config["seed"]),
        run_dir=run_dir,
        controller_batch=int(config["controller_batch"]),
        penalty_reward=config.get("penalty_reward"),
        baselines={str(k): Plan.from_dict(v) for k, v in (config.get("baselines") or {}).items()},
        tuned=tuned,
        reward_seeds=list(config["reward_seeds"]),
        final_top_k=int(config["final_top_k"]),
        final_seeds=list(config["final_seeds"]),
    )
    if config["searcher"] == "controller":
        kwargs["controller_kwargs"] = dict(config.get("controller_kwargs") or {})
        if config.get("controller_lr") is not None:
            kwargs["reinforce_kwargs"] = {"lr": float(config["controller_lr"])}
    return make_searcher(str(config["searcher"]), SearchSpace.from_dict(config["space"]), **kwargs)
