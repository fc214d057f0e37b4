"""The Ray Tune searcher that sequences a search's stages and keeps the run's bookkeeping.

Why it looks like this:
- Ray Tune owns scheduling, resources, fault tolerance and resume; a `Searcher` is the one
  place it lets us decide *what* to train next and hear about every finished trial, so the
  search lives here, on the driver.
- A search has four stages, all ordinary Tune trials, each an object with one job
  (``controller.stages``): the **baselines** and the **tuned global recipes** (``FixedPlans``:
  recorded, never learned from), the **sampled plans** (``SampledPlans``: drawn from the
  policy, redrawn when already trained, started from the best tuned recipe and the learned
  rates once those trials are in; the **baselines** include ``learned``: ``controller.learned``)
  and the **final stage** (a ``FinalStage``: ``RaceFinal``, the top-k sampled
  plans, every baseline and each tuned method's best raced on fresh seeds and the winner
  confirmed on others; ``TopKFinal`` for fixed stages; ``best_plan.json`` is a searched plan
  only when the confirmation shows it better than the best baselines, ``controller.final``).
  ``PlanSearcher`` sequences them, records and persists.
- Trials finish out of order and concurrently: a suggested trial waits in ``pending`` with
  its tokens; finished ones go, in completion order, into a buffer that is turned into one
  REINFORCE update per ``controller_batch`` rewards (and a last, smaller one at the end).
- Recording a trial must not lose it: the row is appended to the run folder's ledger before
  anything that can fail (controller update, other writes); such a failure stops the search
  (``fatal_error``). The searcher's state is saved as data after every change, and
  ``resume()`` rebuilds the search from the ledger and that state (``controller.searcher_state``).
- How a finished trial is rewarded: ``controller.outcome``. Where plans come from (LSTM,
  random, TPE): ``controller.policies``. What is exported: ``controller.final``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ray.tune.search import Searcher

from controller import run_folder as rf
from controller.config import MAX_REDRAWS, SearchConfig
from controller.final import BASELINE, SEARCHED, TUNED, TUNED_PREFIX
from controller.learned import baseline_items
from controller.outcome import trial_outcome
from controller.progress import log_progress
from controller.ray_session import _stop_tune
from controller.records import Tally, trial_row
from controller.run_folder.store import RunStore
from controller.searcher_args import checked_args
from controller.searcher_state import FINAL, SEARCH, Persisted
from controller.stages import FixedPlans, Proposal, RaceFinal, SampledPlans, TopKFinal
from controller.stages.neighbours import Neighbours, neighbour_limit
from controller.stages.sampled import PolicyHooks
from search_space.errors import user_error
from search_space.plan import Plan, plan_key
from search_space.space import SearchSpace

__all__ = ["PlanSearcher", "SEARCH", "FINAL", "MAX_REDRAWS"]

log = logging.getLogger(__name__)

#: What ``on_trial_result`` keeps of a result (besides the objective's columns).
_RESULT_KEYS = ("final", "status", "error", "message", "seconds", "node", "epoch", "precision", "learned_rates")


class PlanSearcher(Persisted, PolicyHooks, Searcher):
    """The stages in order, the records, the controller's batches, the run folder's files.

    Args:
        space: the decisions (tokens <-> plans).
        objective: metric, mode and reward transform (``run_folder.Objective``).
        num_samples: sampled plans (the baselines and tuned recipes come on top).
        run_dir: where trials.csv & co. are written (None: keep them in memory only).
        baselines: name -> hand-set Plan, trained first, recorded, never learned from.
        tuned: method -> grid plans (``search_space.baselines.tuned_grid``): global recipes
            trained after the baselines, recorded, never learned from; each method's best
            enters the final stage as ``tuned-<method>``.
        reward_seeds: the seeds every search-stage trial trains with (reward = mean), or
            their number (seeds 0..K-1).
        final_top_k, final_seeds: the final re-training of the top-k sampled plans and every
            baseline with these seeds, or their number (seeds 1000..); top-k 0 or no seeds:
            no final stage.
        penalty_reward: reward of a diverged or failed plan (None: the worst reward so far).
        settings: the search's other settings (``controller.config.SearchConfig``, e.g.
            ``max_redraws``; the arguments above take precedence over its fields).
        learned: the ``learned`` trial's plan (``controller.learned``), trained with the baselines; None: none.
    """

    name: ClassVar[str] = ""

    def __init__(
        self,
        space: SearchSpace,
        *,
        num_samples: int,
        objective: rf.Objective | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        controller_batch: int = 4,
        penalty_reward: float | None = None,
        baselines: Mapping[str, Plan] | None = None,
        tuned: Mapping[str, Sequence[Plan]] | None = None,
        reward_seeds: Sequence[int] | int = (0,),
        final_top_k: int = 0,
        final_seeds: Sequence[int] | int = (),
        settings: SearchConfig | None = None,
        learned: Plan | None = None,
    ) -> None:
        self.objective = objective or rf.Objective()
        super().__init__(metric=self.objective.metric, mode=self.objective.mode)
        reward_seeds, final_seeds, self.baselines, self.tuned = checked_args(
            num_samples, controller_batch, final_top_k, penalty_reward, reward_seeds, final_seeds, baselines, tuned
        )
        self.settings = settings if settings is not None else SearchConfig()
        self.space = space
        self.num_samples = num_samples
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.controller_batch = controller_batch
        self.penalty_reward = None if penalty_reward is None else float(penalty_reward)
        self._tuned_trials = [(f"{TUNED_PREFIX}{m}", p) for m, plans in self.tuned.items() for p in plans]
        self.learning_plan: Plan | None = learned
        self.reward_seeds = [int(s) for s in reward_seeds]
        self.final_top_k = final_top_k
        self.final_seeds = [int(s) for s in final_seeds] if final_top_k else []  # top-k 0: no final stage
        if not self.final_seeds:
            self.final_top_k = 0
        # the stages, in order: the first two are fixed lists, then the policy's, then the final one
        self.fixed = [
            FixedPlans(BASELINE, baseline_items(self.baselines, learned), space),
            FixedPlans(TUNED, self._tuned_trials, space),
        ]
        self.sampled = SampledPlans(self, space, num_samples, self.settings)
        # the recombinations of the best recipes' stage settings come first, where there are tuned
        # recipes to recombine (not for random search: the yardstick stays uniform)
        on = self.warm_starts and bool(self._tuned_trials)
        limit = neighbour_limit(self.settings.neighbours, num_samples, len(space.groups)) if on else 0
        self.neighbours = Neighbours(space, limit)
        self.final = self._final_stage()
        self.fatal_error: str | None = None
        self.store = (
            RunStore(self.run_dir, self.objective, [f"{rf.SITE_PREFIX}{s}" for s in space.sites])
            if self.run_dir is not None
            else None
        )
        self._requeue: list[dict[str, Any]] = []  # resumed trials that were running: run them again
        self._pending: dict[str, dict[str, Any]] = {}
        self._records: list[dict[str, Any]] = []
        self._final_records: list[dict[str, Any]] = []
        self._buffer: list[tuple[str, list[int], float]] = []
        self._history: list[dict[str, Any]] = []
        self._suggested = 0
        self._seen: set[str] | None = None  # plan keys of every search-stage trial (lazy)
        self._session: dict[str, float] | None = None
        self.tally = Tally(self.objective)

    def _final_stage(self) -> Any:
        """The final stage the settings name: a race over the seed pool ``final_seeds`` (its
        length is the budget), or every finalist on every one of them (fixed)."""
        if self.settings.final_stage == "race":
            return RaceFinal(
                self.objective,
                self.baselines,
                list(self.tuned),
                self.final_top_k,
                self.final_seeds,
                self.settings.race_settings(),
            )
        return TopKFinal(self.objective, self.baselines, list(self.tuned), self.final_top_k, self.final_seeds,
                         learned=self.learning_plan is not None)  # fmt: skip

    # ---- the buffer of sampled rewards (the policy's hooks: controller.stages.sampled.PolicyHooks)
    def _rebuild_buffer(self) -> None:
        """On resume: the sampled rewards no controller update has used yet (the history says
        which trials each update used)."""
        used = {t for h in self._history for t in h.get("trials") or []}
        self._buffer = [
            (r["trial_id"], json.loads(r["tokens"]), float(r["reward"]))
            for r in self._records
            if r["kind"] == SEARCHED
            and r["reward"] is not None
            and r["trial_id"] not in used
            and not self._recombination(r["plan"])
        ]

    # ---- sizes
    @property
    def search_trials(self) -> int:
        """Trials of the first three stages: the baselines, the tuned recipes, the sampled plans."""
        return sum(stage.size for stage in self.fixed) + self.sampled.size

    @property
    def final_trials(self) -> int:
        """Trials of the final stage (``FinalStage.planned``)."""
        return self.final.planned()

    @property
    def total_trials(self) -> int:
        return self.search_trials + self.final_trials

    # ---- Ray Searcher API
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        """Our space is the SearchSpace, so Tune's param_space must be empty; the metric and
        mode are the objective's (a Tuner asking for others is refused)."""
        if config:
            return False
        if (metric and metric != self.objective.metric) or (mode and mode != self.objective.mode):
            raise user_error(
                "metric/mode",
                detail=f"bad value {metric!r}/{mode!r}",
                allowed=f"the searcher's objective {self.objective.metric!r}/{self.objective.mode!r}",
            )
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.fatal_error is not None:
            return None  # not FINISHED: Tune would save that, and a resumed run could never go on
        if self._session is None:
            self._session = {"start": time.time(), "done_at_start": float(self.finished)}
        if self._requeue:
            entry = {**self._requeue.pop(0), "suggested_at": time.time(), "last": None}
            self._pending[trial_id] = entry
            if not self._recombination(entry["plan"]):
                self._requeued(trial_id, entry)  # the policy's own draw runs again
            config = self._config(SEARCH, entry["plan"], entry["baseline"] or "searched", entry["tokens"])
        elif self._suggested < self.search_trials:
            config = self._suggest_search(trial_id)
        else:
            config = self._suggest_final(trial_id)
        if isinstance(config, dict):
            self._save_state()  # before Tune starts it: a resume knows every trial that may be running
        return config

    def _config(self, stage: str, plan: Plan, label: str, tokens: list[int], seeds: list[int] | None = None) -> dict:
        """A trial's Tune config (``controller.trainable`` reads it)."""
        seeds = list(self.reward_seeds) if seeds is None else seeds
        return {"plan": plan, "seeds": seeds, "searcher": self.name, "stage": stage, "label": label,
                "tokens": list(tokens)}  # fmt: skip

    def _suggest_search(self, trial_id: str) -> dict | None:
        i = self._suggested
        for stage in self.fixed:
            if i < stage.size:
                proposal = stage.propose(i)
                break
            i -= stage.size
        else:
            proposal = self._next_sampled(trial_id)
            if proposal is None:
                return None  # the recipes or the recombinations are still training: ask again later
        return self._start(trial_id, proposal)

    def _next_sampled(self, trial_id: str) -> Proposal | None:
        """The recombinations of the best recipes first (``controller.stages.neighbours``),
        then, once they are recorded, the policy's draws (started from the best of them all)."""
        if self.neighbours.limit and not self.sampled.warmed:
            if not self._start_neighbours():
                return None
            proposal = self.neighbours.propose(self._seen_keys())
            if proposal is not None:
                return proposal
            if self.neighbours.outstanding(self._records):
                return None
        if not self._ready_to_sample():
            return None
        return self.sampled.propose(trial_id, self._seen_keys(), self.tally.rewards_by_plan.get)

    def _start_neighbours(self) -> bool:
        """Whether the recombinations are known: they are once every baseline and tuned recipe
        is recorded (a function of those records, so a resume finds the same list)."""
        if not self.neighbours.started:
            if sum(r.get("kind") != SEARCHED for r in self._records) < sum(stage.size for stage in self.fixed):
                return False
            self.neighbours.start(self._records)
        return True

    def _recombination(self, plan: Plan) -> bool:
        """Whether ``plan`` is one of the recombinations: the policy did not draw it, so it
        never enters a REINFORCE batch (the policy starts from the best of them instead)."""
        return bool(self.neighbours.limit) and self._start_neighbours() and plan_key(plan) in self.neighbours.keys

    def _start(self, trial_id: str, p: Proposal) -> dict:
        self._pending[trial_id] = {"stage": SEARCH, "tokens": p.tokens, "plan": p.plan, "baseline": p.label,
                                   "kind": p.kind, "suggested_at": time.time(), "last": None}  # fmt: skip
        self._seen_keys().add(plan_key(p.plan))
        self._suggested += 1
        return self._config(SEARCH, p.plan, p.label or "searched", p.tokens)

    def _ready_to_sample(self) -> bool:
        return self.sampled.ready(self._records, self.fixed[1].size, self.neighbours.keys)

    def _seen_keys(self) -> set[str]:
        if self._seen is None:
            plans = [r["plan"] for r in self._records] + [
                p["plan"] for p in self._pending.values() if p["stage"] == SEARCH
            ]
            self._seen = {plan_key(p) for p in plans}
        return self._seen

    def _suggest_final(self, trial_id: str) -> dict | str | None:
        """The final stage's next trial: once every search-stage trial is recorded, what it
        says; None while it waits for running trials; FINISHED when it is done."""
        final = self.final
        if final.done():
            return Searcher.FINISHED
        if not final.started:
            if len(self._records) < self.search_trials:
                return None  # the final stage needs every search-stage result: ask again later
            running = [(p["label"], p["seed"]) for p in self._pending.values() if p["stage"] == FINAL]
            final.start(self._records, self._final_records, running)
        if final.waiting():
            return None
        trial = final.next_trial()
        if trial is None:
            return Searcher.FINISHED
        self._pending[trial_id] = {**trial.entry(), "stage": FINAL, "suggested_at": time.time(), "last": None}
        self._suggested += 1
        return self._config(FINAL, trial.plan, trial.label, [], seeds=[trial.seed])

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Keep the latest result: an errored trial completes without one."""
        if trial_id in self._pending:
            o = self.objective
            keys = (*_RESULT_KEYS[:2], o.metric, o.best_column, o.se_column, o.seeds_column, *_RESULT_KEYS[2:])
            self._pending[trial_id]["last"] = {k: result.get(k) for k in keys}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        entry = self._pending.get(trial_id)
        if entry is None:
            log.warning("completion of unknown trial %s ignored", trial_id)
            return
        try:
            self._record(trial_id, entry, result if result else entry["last"], error)
        except Exception as exc:  # noqa: BLE001 - Tune would log and carry on: stop instead
            self.fatal_error = f"{type(exc).__name__}: {exc}"
            log.error("recording trial %s failed, stopping the search: %s", trial_id, self.fatal_error)
            _stop_tune()

    # ---- records
    def _record(self, trial_id: str, entry: dict[str, Any], result: Mapping[str, Any] | None, errored: bool) -> None:
        outcome = trial_outcome(result, errored, self._penalty(), self.objective)
        row = trial_row(trial_id, entry, outcome, result, self.objective, self.name)
        if outcome.status in rf.FAILED_STATUSES:
            log.warning("trial %s %s: %s", trial_id, outcome.status, outcome.error)
        if entry["stage"] == FINAL:
            row.update(label=entry["label"], seed=entry["seed"], source=entry["source"],
                       order=len(self._final_records), searcher=self.name)  # fmt: skip
            if self.store is not None:
                self.store.final(row)  # on disk before anything that can fail
            self._final_records.append(row)
            del self._pending[trial_id]
            self.final.record(row)
        else:
            row.update(
                order=len(self._records),
                kind=entry.get("kind", BASELINE if entry["baseline"] else SEARCHED),
                baseline=entry["baseline"],
                reference=bool(entry["baseline"]),
                tokens=json.dumps(entry["tokens"]),
                **{f"{rf.SITE_PREFIX}{s}": m for s, m in entry["plan"].methods().items()},
            )
            if self.store is not None:
                self.store.trial(row)  # on disk before anything that can fail
            self._records.append(row)
            del self._pending[trial_id]
            self.tally.add(row)
            if outcome.reward is not None and not entry["baseline"] and not self._recombination(entry["plan"]):
                self._buffer.append((trial_id, entry["tokens"], float(outcome.reward)))
        self.tally.failed += outcome.status in rf.FAILED_STATUSES
        try:
            while len(self._buffer) >= self.controller_batch:
                self._consume(self.controller_batch)
            if len(self._records) >= self.search_trials and self._buffer:
                self._consume(len(self._buffer))  # the last, partial batch
        finally:
            self._save_state()
            self._write_summaries()
        log_progress(self, row)

    def _retally(self) -> None:
        self.tally = Tally.of(self.objective, self._records, self._final_records)

    def _penalty(self) -> float | None:
        return self.penalty_reward if self.penalty_reward is not None else self.tally.worst_ok_reward

    def _consume(self, n: int) -> None:
        """One update on the next ``n`` rewards. Its order makes any stop recoverable: the
        policy and a snapshot naming this update are saved first, then the history line is
        appended (a resume appends it if the stop came between the two), and only then do the
        rewards leave the buffer."""
        batch = self._buffer[:n]
        stats = self._learn([(tid, list(t), r) for tid, t, r in batch])
        if stats is None:
            self._buffer = self._buffer[n:]
            return
        row = {
            "update": len(self._history),
            "step": stats["step"],
            "trials_seen": len(self._records),
            **{k: stats[k] for k in ("mean_reward", "baseline", "entropy", "loss")},
            "time": time.time(),
            "trials": [tid for tid, _, _ in batch],
        }
        self._history.append(row)
        self._save_state()
        if self.store is not None:
            self.store.update(row)
        self._buffer = self._buffer[n:]  # only once the update went through
