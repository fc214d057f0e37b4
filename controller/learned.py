"""The ``learned`` baseline of a search, read from the ledger: one training that learns a
dropout rate per site (Concrete Dropout, ``search_space.learned``), trained with the other
baselines on the reward seeds, recorded and never learned from.

Its rates (trials.csv's ``learned_rates``) make an ordinary plan, ``learned-rates``
(``search_space.learned.derived_plan``), which enters the final stage as a baseline a
searched plan must beat, and whose nearest tokens are a place the sampled plans start from.
Everything here is a function of the trial's row (its learning plan and its rates), so a
resume derives the same plan from the ledger.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from controller import run_folder as rf
from controller.final import LEARNED, LEARNED_TRIAL

__all__ = ["learning_plan_of", "baseline_items", "learned_row", "rates_of", "learned_contender", "learned_recipe"]

log = logging.getLogger("controller.searcher")


def learning_plan_of(space: Any) -> Any:
    """The ``learned`` trial's plan for ``space`` (``search_space.learned.learning_plan``), or
    None when no site of the space allows dropout or spatial dropout (said once)."""
    from search_space.learned import learning_plan

    plan = learning_plan(space)
    if plan is None:
        log.info("learned_rates: no site allows dropout or spatial dropout; the search has no learned baseline")
    return plan


def baseline_items(baselines: Mapping[str, Any], learned: Any) -> list[tuple[str, Any]]:
    """The baselines stage's (label, plan) pairs: the hand-set ``baselines``, then the
    ``learned`` trial's plan (a learning plan) when there is one."""
    from search_space.errors import user_error
    from search_space.learned import is_learning_plan

    if learned is None:
        return list(baselines.items())
    if not is_learning_plan(learned):
        raise user_error("learned", str(learned)[:60], "a plan whose sites learn their rates (learning_plan)")
    clash = next((label for label in (LEARNED_TRIAL, LEARNED) if label in baselines), None)
    if clash is not None:
        raise user_error("baselines", clash, f"names other than {LEARNED_TRIAL} and {LEARNED} (the learned baseline's)")
    return [*baselines.items(), (LEARNED_TRIAL, learned)]


def learned_row(records: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The ``learned`` trial's row among the search-stage ``records`` (None: not recorded yet,
    or the search has none)."""
    return next((r for r in records if r.get("baseline") == LEARNED_TRIAL), None)


def rates_of(row: Mapping[str, Any] | None) -> dict[str, float] | None:
    """Site -> learned rate from a row's ``learned_rates`` (JSON), when the trial ended ok
    with rates in [0, 1]; None otherwise."""
    if row is None or row.get("status") != rf.OK:
        return None
    try:
        rates = json.loads(str(row.get("learned_rates") or ""))
    except ValueError:
        return None
    if not isinstance(rates, dict) or not rates:
        return None
    out = {}
    for site, rate in rates.items():
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (math.isfinite(rate) and 0 <= rate <= 1):
            return None
        out[str(site)] = float(rate)
    return out


def learned_contender(records: Sequence[Mapping[str, Any]]) -> tuple[Any, str] | None:
    """(the ``learned-rates`` plan, its trial id) from the ledger, or None when the search has
    no ``learned`` trial or it did not end ok with rates."""
    from search_space.learned import derived_plan, is_learning_plan

    row = learned_row(records)
    rates = rates_of(row)
    if rates is None or not is_learning_plan(row["plan"]):
        return None
    return derived_plan(row["plan"], rates), str(row["trial_id"])


def learned_recipe(records: Sequence[Mapping[str, Any]], space: Any) -> tuple[list[int], float] | None:
    """(the tokens of ``space`` nearest the ``learned-rates`` plan, the ``learned`` trial's
    reward): a place for the sampled plans to start (``controller.prior.start_recipes``); None
    without one."""
    from search_space.learned import nearest_tokens

    found = learned_contender(records)
    row = learned_row(records)
    if found is None or row is None or row.get("reward") is None:
        return None
    try:
        tokens = nearest_tokens(space, found[0])
    except ValueError as exc:  # a space no dropout-like method fits: nothing to start from
        log.info("the learned rates have no tokens in this space (%s): not a place to start", exc)
        return None
    return tokens, float(row["reward"])
