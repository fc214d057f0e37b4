"""The sampled plans: drawn from the searcher's policy, started from the best tuned recipe
and the learned rates,
and drawn again (up to the setting ``max_redraws`` times) when a trial has trained or is training the
plan already, so no trial repeats one while the policy still proposes others."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from controller import run_folder as rf
from controller.final import SEARCHED, TUNED
from controller.learned import learned_recipe, learned_row
from controller.stages.base import Proposal
from search_space.plan import plan_key

__all__ = ["SampledPlans", "PolicyHooks"]

log = logging.getLogger("controller.searcher")  # the searcher's voice, whose lines users see


class SampledPlans:
    """``size`` plans from ``policy`` (a ``PlanSearcher``: its ``_sample_tokens``, ``_discard``
    and ``_warm_start`` hooks; ``warm_starts``: whether it waits for the tuned recipes), under
    the search's ``settings`` (``controller.config.SearchConfig``)."""

    def __init__(self, policy: Any, space: Any, size: int, settings: Any) -> None:
        self.policy = policy
        self.space = space
        self.size = size
        self.settings = settings
        self.warmed = False  # the tuned recipes were handed to the policy (searcher_state.json)

    def ready(self, records: Sequence[Mapping[str, Any]], tuned_total: int) -> bool:
        """Warm-starting policies sample once every tuned recipe and the ``learned`` trial
        (when the search has one: the policy's ``learning_plan``) are recorded, then start
        from them, once (``controller.prior.start_recipes``); the others right away."""
        learning = getattr(self.policy, "learning_plan", None) is not None
        if self.warmed or not self.policy.warm_starts or not (tuned_total or learning):
            return True
        tuned = [r for r in records if r.get("kind") == TUNED]
        if len(tuned) < tuned_total or (learning and learned_row(records) is None):
            return False
        ok = [r for r in tuned if r["status"] == rf.OK and r.get("reward") is not None and json.loads(r["tokens"])]
        ok.sort(key=lambda r: (-float(r["reward"]), r["order"]))
        learned = learned_recipe(records, self.space) if learning else None
        self.policy._warm_start([(json.loads(r["tokens"]), float(r["reward"])) for r in ok], learned)
        self.warmed = True
        if ok:
            best = ok[0]
            log.info(
                "%s starts from the best tuned recipe (%s): %s", self.policy.name, best["baseline"], best["methods"]
            )
        if learned is not None:
            log.info(
                "%s starts from the learned rates too: %s", self.policy.name, self.space.decode(learned[0]).summary()
            )
        return True

    def propose(self, trial_id: str, seen: set[str], known_reward: Callable[[str], float | None]) -> Proposal:
        """A plan no search-stage trial has trained or is training (``seen``: their plan keys),
        if one comes up in ``max_redraws`` draws; else the last draw (the policy keeps
        proposing it). A draw not trained is told to the policy with its ``known_reward``."""
        redraws = self.settings.max_redraws
        for attempt in range(redraws + 1):
            tokens = [int(t) for t in self.policy._sample_tokens(trial_id)]
            plan = self.space.decode(tokens)
            key = plan_key(plan)
            if key not in seen or attempt == redraws:
                if key in seen:
                    log.info(
                        "trial %s repeats a plan already trained: the %s keeps proposing it", trial_id, self.policy.name
                    )
                return Proposal(plan, tokens, SEARCHED, "")
            self.policy._discard(trial_id, tokens, known_reward(key))
        raise AssertionError("unreachable")


class PolicyHooks:
    """What a searcher's policy (``controller.policies``) gives the sampled plans and the
    searcher: how to draw, learn, start from known recipes and save itself as data. A mixin
    of ``PlanSearcher``; the defaults learn nothing."""

    #: Whether sampled plans wait for the tuned recipes to start from the best of them.
    warm_starts: ClassVar[bool] = False

    def _sample_tokens(self, trial_id: str) -> list[int]:
        raise NotImplementedError

    def _learn(self, batch: list[tuple[str, list[int], float]]) -> dict[str, Any] | None:
        """Use one batch of (trial_id, tokens, reward); return the controller's stats
        (None: nothing to log as a controller update)."""
        return None

    def _policy_state(self) -> Any:
        raise NotImplementedError

    def _load_policy_state(self, state: Any) -> None:
        raise NotImplementedError

    def policy_json(self) -> dict[str, Any]:
        """The policy's state for searcher_state.json (JSON values; tensors via ``self.store``)."""
        return {}

    def load_policy_json(self, state: Mapping[str, Any]) -> None:
        """Inverse of ``policy_json`` on resume (the records are loaded already); raise
        ValueError/TypeError/KeyError on a state this searcher did not write."""

    def _requeued(self, trial_id: str, entry: dict[str, Any]) -> None:
        """A resumed trial runs again under ``trial_id`` (e.g. TPE opens a trial for it)."""

    def _warm_start(
        self, recipes: list[tuple[list[int], float]], learned: tuple[list[int], float] | None = None
    ) -> None:
        """Start from known (tokens, reward) recipes, best first (the tuned global ones), and
        from the tokens nearest the plan the learned rates make, with the ``learned`` trial's
        reward (None: the search has no such trial, or it did not end ok)."""

    def _discard(self, trial_id: str, tokens: list[int], reward: float | None) -> None:
        """A draw not trained because its plan was trained (``reward``) or is running (None)."""
