"""The arguments of a `PlanSearcher` (``controller.searcher``), checked before any trial: a bad
one is one line naming it. Apart from the searcher so that it reads as what it does."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from controller.searcher_state import seed_list
from search_space.errors import user_error
from search_space.plan import Plan

__all__ = ["checked_args"]


def checked_args(
    num_samples: int,
    controller_batch: int,
    final_top_k: int,
    penalty_reward: float | None,
    reward_seeds: Sequence[int] | int,
    final_seeds: Sequence[int] | int,
    baselines: Mapping[str, Plan] | None,
    tuned: Mapping[str, Sequence[Plan]] | None,
) -> tuple[list[int], list[int], dict[str, Plan], dict[str, list[Plan]]]:
    """The reward seeds, the final seeds (a number of seeds becomes 0..K-1 and 1000..), the
    baselines and the tuned grids as the searcher keeps them; ``FieldError`` naming the first
    bad argument, in the order of `PlanSearcher`'s."""
    for field, value in (("num_samples", num_samples), ("controller_batch", controller_batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise user_error(field, value, "an integer >= 1")
    if isinstance(final_top_k, bool) or not isinstance(final_top_k, int) or final_top_k < 0:
        raise user_error("final_top_k", final_top_k, "an integer >= 0")
    if penalty_reward is not None and not math.isfinite(float(penalty_reward)):
        raise user_error("penalty_reward", penalty_reward, "a finite number")
    reward = seed_list("reward_seeds", reward_seeds, first=0)
    final = seed_list("final_seeds", final_seeds, first=1000)
    if not reward:
        raise user_error("reward_seeds", [], "a non-empty list of seeds")
    plans: dict[str, Plan] = dict(baselines or {})
    for label, plan in plans.items():
        if not isinstance(plan, Plan):
            raise user_error(f"baselines[{label!r}]", detail=f"bad value {type(plan).__name__}", allowed="a Plan")
    grids: dict[str, list[Plan]] = {}
    for method, given in dict(tuned or {}).items():
        given = list(given)
        if not given or not all(isinstance(p, Plan) for p in given):
            raise user_error(f"tuned[{method!r}]", given, "a non-empty list of Plans")
        grids[str(method)] = given
    return reward, final, plans, grids
