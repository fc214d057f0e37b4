"""The sampling policies: where a searcher's next plan comes from.

Each is a ``PlanSearcher`` (``controller.searcher``: the stages, the records) with its own
way to draw tokens, learn from rewards, start from a known recipe, and save its state as
data (``policy_state`` / ``load_policy_state``, JSON-able, tensors aside):

- ``ControllerSearcher``: an LSTM controller trained with REINFORCE (``controller.lstm``,
  ``controller.reinforce``), starting from a mild prior and then the best tuned recipe and
  the learned rates (``controller.prior.start_recipes``);
- ``RandomSearcher``: uniform samples, the yardstick every controller search is held to;
- ``TPESearcher``: Optuna's TPE over the same conditional space, told the tuned recipes,
  whose first suggestion is the learned rates' plan.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from controller.lstm import LSTMController
from controller.reinforce import Reinforce
from controller.searcher import PlanSearcher
from search_space.errors import UserTypeError, user_error
from search_space.space import SearchSpace

__all__ = ["ControllerSearcher", "RandomSearcher", "TPESearcher", "SEARCHERS", "make_searcher"]


class ControllerSearcher(PlanSearcher):
    """Plans sampled from an LSTM controller trained with REINFORCE on the trials' rewards.

    controller_kwargs / reinforce_kwargs go to `LSTMController` / `Reinforce`; ``seed``
    seeds both the controller's initialisation and its sampling. ``prior_strength`` sets the
    starting preference for mild plans (``controller.prior.mild_prior``; 0 = uniform);
    ``recipe_strength`` the extra logits towards the best tuned global recipe once it is known
    (``controller.prior.recipe_prior``; 0 = do not start from it).
    """

    name = "controller"
    warm_starts = True

    def __init__(
        self,
        space: SearchSpace,
        *,
        num_samples: int,
        seed: int = 0,
        controller_kwargs: Mapping[str, Any] | None = None,
        reinforce_kwargs: Mapping[str, Any] | None = None,
        prior_strength: float = 1.5,
        recipe_strength: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(space, num_samples=num_samples, **kwargs)
        from controller.prior import mild_prior

        if (
            isinstance(recipe_strength, bool)
            or not isinstance(recipe_strength, (int, float))
            or not (math.isfinite(recipe_strength) and recipe_strength >= 0)
        ):
            raise user_error("recipe_strength", recipe_strength, "a number >= 0")
        self.recipe_strength = float(recipe_strength)

        policy = LSTMController(
            space.vocab_sizes,
            seed=seed,
            prior_logits=mild_prior(space, prior_strength),
            **dict(controller_kwargs or {}),
        )
        self.reinforce = Reinforce(policy, seed=seed, active_fn=space.active_mask, **dict(reinforce_kwargs or {}))
        self._policy_ref: dict[str, str] | None = None  # the tensors file of the current weights

    def _sample_tokens(self, trial_id: str) -> list[int]:
        return self.reinforce.sample(1)[0]

    def _warm_start(
        self, recipes: list[tuple[list[int], float]], learned: tuple[list[int], float] | None = None
    ) -> None:
        """Extra logits towards the best tuned recipe and the learned rates' tokens, the one
        with the better search-stage reward at full strength (``controller.prior.start_recipes``)."""
        from controller.prior import start_recipes, starting_prior

        starts = start_recipes(recipes[0] if recipes else None, learned)
        if starts and self.recipe_strength > 0:
            self.reinforce.policy.add_prior(starting_prior(self.space, starts, self.recipe_strength))
            self._policy_ref = None  # the weights changed

    def _learn(self, batch: list[tuple[str, list[int], float]]) -> dict[str, Any]:
        stats = self.reinforce.update([t for _, t, _ in batch], [r for _, _, r in batch])
        self._policy_ref = None  # the weights changed
        return stats

    def policy_json(self) -> dict[str, Any]:
        """The sampling RNG (it moves at every draw) as JSON; weights and optimizer (they move
        at updates) as a tensors file, written when they changed."""
        if self._policy_ref is None and self.store is not None:
            state = self.reinforce.state_dict()
            del state["rng"]
            self._policy_ref = self.store.save_policy(state)
        return {**(self._policy_ref or {}), "rng": self.reinforce.generator.get_state().tolist()}

    def load_policy_json(self, state: Mapping[str, Any]) -> None:
        import torch

        rng = state["rng"]
        if not isinstance(rng, list) or not all(isinstance(b, int) and 0 <= b < 256 for b in rng):
            raise user_error(detail="the controller's RNG state is not a list of bytes", cls=UserTypeError)
        tensors = self.store.load_policy(state)
        self.reinforce.load_state_dict({**tensors, "rng": torch.tensor(rng, dtype=torch.uint8)})
        self._policy_ref = {"file": state["file"], "sha256": state["sha256"]}

    def _policy_state(self) -> Any:
        return self.reinforce.state_dict()

    def _load_policy_state(self, state: Any) -> None:
        self.reinforce.load_state_dict(state)


class RandomSearcher(PlanSearcher):
    """Uniform samples over the same space: the baseline every controller search is compared with."""

    name = "random"

    def __init__(self, space: SearchSpace, *, num_samples: int, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(space, num_samples=num_samples, **kwargs)
        self.rng = np.random.default_rng(seed)

    def _sample_tokens(self, trial_id: str) -> list[int]:
        return self.space.random_tokens(self.rng)

    def _policy_state(self) -> Any:
        return self.rng.bit_generator.state

    def _load_policy_state(self, state: Any) -> None:
        self.rng.bit_generator.state = state

    def policy_json(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_policy_json(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = dict(state["rng"])


class TPESearcher(PlanSearcher):
    """Optuna's TPE over the same conditional plan space (an Optuna study driven by ask/tell).

    The space is written define-by-run: per group, the method first, then only the parameters
    that method uses (``SearchSpace.active_mask``), so TPE models each method's parameters
    only where they matter. Rewards reach Optuna as the objective ("maximize"); the tuned
    global recipes enter the study as finished trials before the first sampled plan.
    """

    name = "tpe"
    warm_starts = True

    def __init__(
        self, space: SearchSpace, *, num_samples: int, seed: int = 0, n_startup_trials: int = 8, **kwargs: Any
    ) -> None:
        super().__init__(space, num_samples=num_samples, **kwargs)
        self.seed = int(seed)
        self.n_startup_trials = int(n_startup_trials)
        self._study = self._make_study(self.seed)
        self._open: dict[str, int] = {}  # trial_id -> Optuna trial number

    def _make_study(self, seed: int) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():  # multivariate/group are "experimental" in Optuna's words
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=self.n_startup_trials, multivariate=True, group=True
            )
        return optuna.create_study(direction="maximize", sampler=sampler)

    def _sample_tokens(self, trial_id: str) -> list[int]:
        trial = self._study.ask()
        self._open[trial_id] = trial.number
        return _DefineByRun(self.space)(trial)

    def _tell(self, trial_id: str, reward: float | None) -> None:
        import optuna

        number = self._open.pop(trial_id, None)
        if number is None:
            return
        if reward is None:
            self._study.tell(number, state=optuna.trial.TrialState.FAIL)
        else:
            self._study.tell(number, reward)

    def _discard(self, trial_id: str, tokens: list[int], reward: float | None) -> None:
        self._tell(trial_id, reward)  # a repeat: its known reward, or a failed ask while it runs

    def _warm_start(
        self, recipes: list[tuple[list[int], float]], learned: tuple[list[int], float] | None = None
    ) -> None:
        """The tuned recipes join the study as finished trials (their plans were trained); the
        learned rates' tokens are its first suggestion (enqueued: the plan they make was never
        trained, so its own reward is measured rather than told with the Concrete training's)."""
        import optuna

        for tokens, reward in recipes:
            params, dists = _DefineByRun(self.space).params(tokens)
            self._study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=reward))
        if learned is not None:
            self._study.enqueue_trial(_DefineByRun(self.space).params(learned[0])[0], skip_if_exists=False)

    def _learn(self, batch: list[tuple[str, list[int], float]]) -> None:
        for trial_id, _, reward in batch:
            self._tell(trial_id, reward)
        return None

    def _record(self, trial_id: str, entry: dict[str, Any], result: Mapping[str, Any] | None, errored: bool) -> None:
        super()._record(trial_id, entry, result, errored)
        # a sampled trial that gave no reward (worker crash) must not stay open in Optuna
        if trial_id in self._open and trial_id not in {t for t, _, _ in self._buffer}:
            self._tell(trial_id, None)

    def _requeued(self, trial_id: str, entry: dict[str, Any]) -> None:
        if entry.get("kind") == "searched":  # a sampled plan runs again: an Optuna trial to tell its reward
            params, _ = _DefineByRun(self.space).params(entry["tokens"])
            self._study.enqueue_trial(params, skip_if_exists=False)
            self._open[trial_id] = self._study.ask().number

    def _rebuild_buffer(self) -> None:
        self._buffer = []  # the rebuilt study already holds every recorded reward

    def policy_json(self) -> dict[str, Any]:
        return {"study": "rebuilt from the ledger", "seed": self.seed}

    def load_policy_json(self, state: Mapping[str, Any]) -> None:
        """A new study told every recorded plan's reward (tuned recipes and sampled plans),
        its sampler seeded by the run's seed and the number of records (deterministic)."""
        import optuna

        self._study = self._make_study(seed=self.seed + len(self._records))
        self._open = {}
        for r in self._records:
            tokens = json.loads(r["tokens"])
            if r["kind"] == "baseline" or not tokens or r["reward"] is None:
                continue
            params, dists = _DefineByRun(self.space).params(tokens)
            self._study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=r["reward"]))

    def _policy_state(self) -> Any:
        return {"seed": self.seed}  # the study is rebuilt from the records, as on resume

    def _load_policy_state(self, state: Any) -> None:
        self.load_policy_json(state)
        for trial_id, entry in self._pending.items():  # running sampled plans: open Optuna trials again
            self._requeued(trial_id, entry)


class _DefineByRun:
    """Optuna's define-by-run space for a SearchSpace: per group the method, then only the
    parameters it uses (one categorical over token indices per active decision)."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: Any) -> list[int]:
        tokens = [0] * len(self.space.decisions)
        for i, d in enumerate(self.space.decisions):
            if self.space.active_mask(tokens)[i]:
                tokens[i] = int(trial.suggest_categorical(self._name(i), list(range(len(d.choices)))))
        return tokens

    def _name(self, i: int) -> str:
        d = self.space.decisions[i]
        return f"{i}:{d.site}:{d.param}"

    def params(self, tokens: list[int]) -> tuple[dict[str, int], dict[str, Any]]:
        """The Optuna parameters and distributions of a finished plan's tokens (to add it to a study)."""
        from optuna.distributions import CategoricalDistribution

        active = self.space.active_mask(tokens)
        names = [i for i, on in enumerate(active) if on]
        params = {self._name(i): int(tokens[i]) for i in names}
        dists = {
            self._name(i): CategoricalDistribution(list(range(len(self.space.decisions[i].choices)))) for i in names
        }
        return params, dists


SEARCHERS: dict[str, type[PlanSearcher]] = {
    "controller": ControllerSearcher,
    "random": RandomSearcher,
    "tpe": TPESearcher,
}


def make_searcher(search: str, space: SearchSpace, **kwargs: Any) -> PlanSearcher:
    """The searcher named ``search`` (controller, random or tpe)."""
    if search not in SEARCHERS:
        raise user_error("search", search, ", ".join(SEARCHERS))
    cls = SEARCHERS[search]
    if cls is not ControllerSearcher:
        for key in ("controller_kwargs", "reinforce_kwargs", "prior_strength", "recipe_strength"):
            kwargs.pop(key, None)
    return cls(space, **kwargs)
