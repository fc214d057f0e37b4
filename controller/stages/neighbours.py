"""Structured first proposals: stage-wise recombinations of the best known recipes.

Why: a per-stage plan that beats every global recipe usually keeps what works in each stage
and differs across stages (one method early, another late; a light rate early, a heavier one
late). The tuned global recipes have already measured each setting at every stage, so the
plans that take each stage group's setting from one of the best recipes are the cheapest
per-stage candidates there are. A policy (an LSTM moved by +2 logits, or TPE after a dozen
points) reaches such a combination only by luck at tens of trainings; enumerating them costs
a handful of trainings and finds it whenever the best recipes' settings are its parts
(docs/benchmarks.md, the planted task: 13 of 20 searches sampled a winner at 48 trainings
before, 20 of 20 with these proposals).

What: per stage group, the distinct settings of the ``per_group`` best recipes (baselines and
tuned recipes with tokens, by search-stage reward; the best one is the **incumbent**) plus
``none``; the plans are their combinations, in order of the sum of the settings' ranks (the
incumbent's own setting is rank 0 in every group, so one-group changes of the incumbent come
first, then two-group changes and the second-best donors), without the recipes already
trained, at most ``limit``. They are searched plans (they can enter the final stage) but not
the policy's own draws: REINFORCE never learns from them as if it had sampled them; the
policy starts from them instead (``PlanSearcher``: the best recipe or recombination is its
warm start). The list is a function of the baseline and tuned records, so a resume computes
the same list again.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from controller import run_folder as rf
from controller.final import SEARCHED
from controller.learned import learned_recipe
from controller.stages.base import Proposal
from search_space.plan import plan_key

__all__ = ["Neighbours", "recombinations", "group_slices", "neighbour_limit"]

log = logging.getLogger("controller.searcher")

#: Distinct settings per stage group taken from the best recipes (the incumbent's included).
PER_GROUP = 3
#: ``auto``: this many recombinations per stage group ...
AUTO_PER_GROUP = 3
#: ... and at most this share of the sampled plans.
AUTO_SHARE = 0.5


def neighbour_limit(setting: int | str, sampled: int, groups: int) -> int:
    """Recombinations proposed within ``sampled`` plans of a space with ``groups`` stage
    groups: ``auto`` is 3 per group, at most half of the sampled plans; an integer is taken
    as given (at most ``sampled``); 0: none."""
    if setting == "auto":
        return min(AUTO_PER_GROUP * groups, int(AUTO_SHARE * sampled))
    return max(0, min(int(setting), sampled))


def group_slices(space: Any) -> list[slice]:
    """The token positions of each stage group of ``space`` (a group starts at its method decision)."""
    starts = [i for i, d in enumerate(space.decisions) if d.param == "method"]
    return [slice(a, b) for a, b in zip(starts, [*starts[1:], len(space.decisions)])]


def recombinations(
    space: Any, ranked: Sequence[Sequence[int]], limit: int, per_group: int | None = None
) -> list[list[int]]:
    """Up to ``limit`` token lists: per group one of the settings of the ``ranked`` recipes
    (tokens, best first; ``_group_options``, ``per_group`` default ``PER_GROUP``) or ``none``,
    in order of the sum of their ranks (ties: earlier groups change first), skipping every plan
    of ``ranked`` and repeats (the same plan by ``plan_key``)."""
    if limit <= 0 or not ranked:
        return []
    per_group = PER_GROUP if per_group is None else per_group
    options = [_group_options(space, sl, ranked, per_group) for sl in group_slices(space)]
    taken = {plan_key(space.decode(t)) for t in ranked}
    out: list[list[int]] = []
    for ranks in _by_rank_sum([len(o) for o in options]):
        tokens = [t for g, r in enumerate(ranks) for t in options[g][r]]
        key = plan_key(space.decode(tokens))
        if key in taken:
            continue
        taken.add(key)
        out.append(tokens)
        if len(out) >= limit:
            break
    return out


def _group_options(space: Any, sl: slice, ranked: Sequence[Sequence[int]], per_group: int) -> list[list[int]]:
    """One group's settings, best first: the ``per_group`` best distinct ones (the incumbent's
    first), then the best setting of each method they lack (a per-stage plan often differs
    across stages by its method, and the best recipes can all be one method's), then ``none``
    (when the group allows it)."""
    method = space.decisions[sl.start]
    none = [method.choices.index("none")] + [0] * (sl.stop - sl.start - 1) if "none" in method.choices else None
    off = _active_of(space, sl, none) if none is not None else None
    parts = [list(t[sl]) for t in ranked]
    keys = [_active_of(space, sl, p) for p in parts]
    mine, seen, methods = [parts[0]], {keys[0], off}, {parts[0][0]}

    def take(part: list[int], key: tuple[int, ...]) -> None:
        mine.append(part)
        seen.add(key)
        methods.add(part[0])

    for part, key in zip(parts, keys):  # the best settings, in rank order
        if len(mine) < per_group and key not in seen:
            take(part, key)
    for part, key in zip(parts, keys):  # then the best setting of each method they lack
        if key not in seen and part[0] not in methods:
            take(part, key)
    if none is not None and keys[0] != off:
        mine.append(none)
    return mine


def _active_of(space: Any, sl: slice, part: Sequence[int]) -> tuple[int, ...]:
    """A group's setting without its unused decisions (two recipes with the same method and
    values are the same setting, whatever their inactive tokens)."""
    full = [0] * len(space.decisions)
    full[sl] = list(part)
    mask = space.active_mask(full)[sl]
    return tuple(t if on else -1 for t, on in zip(part, mask))


def _by_rank_sum(sizes: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Every rank vector (``ranks[g] < sizes[g]``) in order of its sum, then lexicographically
    from the last group (so the first groups change first); lazily, level by level, so a space
    with many groups never enumerates its whole product."""
    top = sum(s - 1 for s in sizes)
    for level in range(top + 1):
        yield from sorted(_compositions(level, sizes), key=lambda r: tuple(reversed(r)))


def _compositions(total: int, sizes: Sequence[int]) -> Iterator[tuple[int, ...]]:
    if not sizes:
        if total == 0:
            yield ()
        return
    for first in range(min(total, sizes[0] - 1) + 1):
        for rest in _compositions(total - first, sizes[1:]):
            yield (first, *rest)


class Neighbours:
    """The recombination stage between the tuned recipes and the policy's draws (see the
    module docstring). ``limit``: most proposals (``neighbour_limit``); 0: none."""

    def __init__(self, space: Any, limit: int, per_group: int | None = None) -> None:
        self.space = space
        self.limit = int(limit)
        self.per_group = per_group
        self._plans: list[tuple[list[int], Any, str]] | None = None  # None until the recipes are known

    @property
    def started(self) -> bool:
        return self._plans is not None

    def start(self, records: Sequence[Mapping[str, Any]]) -> None:
        """The proposals from the baseline and tuned ``records`` (every one recorded)."""
        ranked = _ranked_recipes(records, self.space)
        tokens = recombinations(self.space, [t for t, _ in ranked], self.limit, self.per_group)
        self._plans = []
        for t in tokens:
            plan = self.space.decode(t)
            self._plans.append((t, plan, plan_key(plan)))
        if self._plans:
            log.info(
                "%d recombinations of the best recipes' stage settings first (the incumbent: %s)",
                len(self._plans),
                ranked[0][1],
            )

    @property
    def keys(self) -> set[str]:
        """Plan keys of every proposal (empty until started)."""
        return {k for _, _, k in self._plans or ()}

    def propose(self, seen: set[str]) -> Proposal | None:
        """The next proposal no search-stage trial has trained or is training; None when every
        one was proposed."""
        for tokens, plan, key in self._plans or ():
            if key not in seen:
                return Proposal(plan, list(tokens), SEARCHED, "")
        return None

    def outstanding(self, records: Sequence[Mapping[str, Any]]) -> bool:
        """Whether a proposal has not been recorded yet (the policy waits for their rewards)."""
        done = {plan_key(r["plan"]) for r in records}
        return any(k not in done for _, _, k in self._plans or ())


def _ranked_recipes(records: Sequence[Mapping[str, Any]], space: Any) -> list[tuple[list[int], str]]:
    """(tokens, name) of the baseline and tuned records that the space can say, ok with a
    finite reward, best first (ties to the earlier); the learned rates' nearest plan
    (``controller.learned.learned_recipe``) ranks by the ``learned`` trial's reward, so its
    per-stage rates are settings to recombine too."""
    rows = [
        r
        for r in records
        if r.get("kind") != SEARCHED
        and r["status"] == rf.OK
        and r.get("reward") is not None
        and math.isfinite(float(r["reward"]))
        and json.loads(r["tokens"] or "[]")
    ]
    ranked = [
        (-float(r["reward"]), r["order"], json.loads(r["tokens"]), f"{r.get('baseline') or 'recipe'} ({r['methods']})")
        for r in rows
    ]
    learned = learned_recipe(records, space)
    if learned is not None and math.isfinite(learned[1]):
        ranked.append((-learned[1], math.inf, list(learned[0]), "learned-rates"))
    ranked.sort(key=lambda x: (x[0], x[1]))
    return [(tokens, name) for _, _, tokens, name in ranked]
