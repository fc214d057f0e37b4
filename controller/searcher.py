"""Ray Tune searchers that propose regularization plans and keep the run's bookkeeping.

Why it looks like this:
- Ray Tune owns scheduling, resources, fault tolerance and resume; a `Searcher` is the one
  place it lets us decide *what* to train next and hear about every finished trial, so the
  controller lives here, on the driver.
- A search has four stages, all ordinary Tune trials: the **baselines** (hand-set plans,
  suggested first, recorded and never learned from), the **tuned global recipes** (one
  method at every site on a small grid of rates, ``search_space.baselines.tuned_grid``;
  recorded, never learned from), the **sampled plans**, and the **final re-training** of
  the ``final_top_k`` best distinct sampled plans, every baseline and each method's best
  tuned recipe (``tuned-<method>``) with fresh seeds (``final.csv``; ``best_plan.json`` is a
  searched plan only when it is better than the best baseline, ``controller.final``).
- Searches start from the best global recipe: the controller adds a prior towards its tokens
  (``controller.prior.recipe_prior``) and TPE is told every tuned result, once the tuned
  trials are in (sampled plans wait for them). A sampled plan that was already trained or
  is being trained is drawn again (up to ``MAX_REDRAWS`` times), so no trial repeats one.
- Trials finish out of order and concurrently: a suggested trial waits in ``pending`` with
  its tokens; finished ones go, in completion order, into a buffer that is turned into one
  REINFORCE update per ``controller_batch`` rewards (and a last, smaller one at the end).
- Recording a trial must not lose it: the row is appended to the run folder's ledger before
  anything that can fail (controller update, other writes); such a failure stops the search
  (``fatal_error``). The searcher's state is saved as data after every change
  (``controller.run_folder.store.RunStore``), and ``resume()`` rebuilds the search from the
  ledger and that state: Ray's own pickles are never read back, and nothing this project
  saves is a pickle that can run code (Tune checkpoints load with weights_only=True).
- How a finished trial is rewarded: ``controller.outcome``. Where plans come from (LSTM,
  random, TPE): ``controller.policies``. What is exported: ``controller.final``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ray.tune.search import Searcher

from controller import run_folder as rf
from controller.final import BASELINE, SEARCHED, TUNED, TUNED_PREFIX, best_plan_of
from controller.outcome import trial_outcome
from controller.run_folder.snapshot import SnapshotError
from controller.run_folder.store import RunStore
from search_space.errors import UserTypeError, user_error
from search_space.plan import Plan, plan_key
from search_space.space import SearchSpace

__all__ = ["PlanSearcher", "SEARCH", "FINAL", "MAX_REDRAWS"]

log = logging.getLogger(__name__)

STATE_VERSION = 2
SEARCH, FINAL = "search", "final"
#: Draws of a sampler to find a plan not trained yet before training a repeat (a policy that
#: has converged keeps proposing its plan: that repeat is then worth a trial).
MAX_REDRAWS = 25


def _stop_tune() -> None:
    """Ask a running Tune to stop as on Ctrl+C (SIGUSR1: it saves its state, and trials still
    running are re-run on resume). Outside Tune (no handler installed) nothing is sent."""
    import signal

    usr1 = getattr(signal, "SIGUSR1", None)
    if usr1 is not None and signal.getsignal(usr1) not in (signal.SIG_DFL, signal.SIG_IGN, None):
        os.kill(os.getpid(), usr1)


# ------------------------------------------------------------------------- searchers
class PlanSearcher(Searcher):
    """Shared machinery: the three stages, bookkeeping, batches, files, save/restore.

    Args:
        space: the decisions (tokens <-> plans).
        objective: metric, mode and reward transform (``run_folder.Objective``).
        num_samples: sampled plans (the baselines come on top).
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
    ) -> None:
        self.objective = objective or rf.Objective()
        super().__init__(metric=self.objective.metric, mode=self.objective.mode)
        for field, value in (("num_samples", num_samples), ("controller_batch", controller_batch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise user_error(field, value, "an integer >= 1")
        if isinstance(final_top_k, bool) or not isinstance(final_top_k, int) or final_top_k < 0:
            raise user_error("final_top_k", final_top_k, "an integer >= 0")
        if penalty_reward is not None and not math.isfinite(float(penalty_reward)):
            raise user_error("penalty_reward", penalty_reward, "a finite number")
        reward_seeds = _seed_list("reward_seeds", reward_seeds, first=0)
        final_seeds = _seed_list("final_seeds", final_seeds, first=1000)
        if not reward_seeds:
            raise user_error("reward_seeds", [], "a non-empty list of seeds")
        self.space = space
        self.num_samples = num_samples
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.controller_batch = controller_batch
        self.penalty_reward = None if penalty_reward is None else float(penalty_reward)
        self.baselines: dict[str, Plan] = dict(baselines or {})
        for label, plan in self.baselines.items():
            if not isinstance(plan, Plan):
                raise user_error(f"baselines[{label!r}]", detail=f"bad value {type(plan).__name__}", allowed="a Plan")
        self.tuned: dict[str, list[Plan]] = {}
        for method, plans in dict(tuned or {}).items():
            plans = list(plans)
            if not plans or not all(isinstance(p, Plan) for p in plans):
                raise user_error(f"tuned[{method!r}]", plans, "a non-empty list of Plans")
            self.tuned[str(method)] = plans
        self._tuned_trials = [(f"{TUNED_PREFIX}{m}", p) for m, plans in self.tuned.items() for p in plans]
        self.reward_seeds = [int(s) for s in reward_seeds]
        self.final_top_k = final_top_k
        self.final_seeds = [int(s) for s in final_seeds] if final_top_k else []  # top-k 0: no final stage
        if not self.final_seeds:
            self.final_top_k = 0
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
        self._final_queue: list[dict[str, Any]] | None = None
        self._final_total: int | None = None
        self._buffer: list[tuple[str, list[int], float]] = []
        self._history: list[dict[str, Any]] = []
        self._suggested = 0
        self._warmed = False
        self._seen: set[str] | None = None  # plan keys of every search-stage trial (lazy)
        self._session: dict[str, float] | None = None
        self._best: dict[str, Any] | None = None  # running tallies: the driver's cost per trial stays flat
        self._rewards_by_plan: dict[str, float] = {}  # plan key -> its latest reward (for redraws)
        self._failed = 0
        self._worst_ok_reward: float | None = None

    # ---- subclass hooks
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

    def _rebuild_buffer(self) -> None:
        """On resume: the sampled rewards no controller update has used yet (the history says
        which trials each update used)."""
        used = {t for h in self._history for t in h.get("trials") or []}
        self._buffer = [
            (r["trial_id"], json.loads(r["tokens"]), float(r["reward"]))
            for r in self._records
            if r["kind"] == SEARCHED and r["reward"] is not None and r["trial_id"] not in used
        ]

    def _requeued(self, trial_id: str, entry: dict[str, Any]) -> None:
        """A resumed trial runs again under ``trial_id`` (e.g. TPE opens a trial for it)."""

    #: Whether sampled plans wait for the tuned recipes to start from the best of them.
    warm_starts: ClassVar[bool] = False

    def _warm_start(self, recipes: list[tuple[list[int], float]]) -> None:
        """Start from known (tokens, reward) recipes, best first (the tuned global ones)."""

    def _discard(self, trial_id: str, tokens: list[int], reward: float | None) -> None:
        """A draw not trained because its plan was trained (``reward``) or is running (None)."""

    # ---- sizes
    @property
    def search_trials(self) -> int:
        """Trials of the first three stages: the baselines, the tuned recipes, the sampled plans."""
        return len(self.baselines) + len(self._tuned_trials) + self.num_samples

    @property
    def final_trials(self) -> int:
        """Trials of the final stage: one per (plan, seed). Planned from final_top_k until the
        finalists are known; fewer when fewer distinct sampled plans finished ok."""
        if self._final_total is not None:
            return self._final_total
        return (self.final_top_k + len(self.baselines) + len(self.tuned)) * len(self.final_seeds)

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
        self._start_session()
        if self._requeue:
            config = self._suggest_again(trial_id)
        elif self._suggested < self.search_trials:
            config = self._suggest_search(trial_id)
        else:
            config = self._suggest_final(trial_id)
        if isinstance(config, dict):
            self._save_state()  # before Tune starts it: a resume knows every trial that may be running
        return config

    def _suggest_again(self, trial_id: str) -> dict:
        entry = {**self._requeue.pop(0), "suggested_at": time.time(), "last": None}
        self._pending[trial_id] = entry
        self._requeued(trial_id, entry)
        return {
            "plan": entry["plan"],
            "seeds": list(self.reward_seeds),
            "searcher": self.name,
            "stage": SEARCH,
            "label": entry["baseline"] or "searched",
            "tokens": list(entry["tokens"]),
        }

    def _suggest_search(self, trial_id: str) -> dict | None:
        names = list(self.baselines)
        i, nb = self._suggested, len(self.baselines)
        if i < nb:
            baseline, kind, plan = names[i], BASELINE, self.baselines[names[i]]
            tokens = self._tokens_of(plan)
        elif i < nb + len(self._tuned_trials):
            (baseline, plan), kind = self._tuned_trials[i - nb], TUNED
            tokens = self._tokens_of(plan)
        else:
            if not self._ready_to_sample():
                return None  # the tuned recipes are still training: ask again later
            baseline, kind = "", SEARCHED
            tokens, plan = self._draw(trial_id)
        self._pending[trial_id] = {
            "stage": SEARCH,
            "tokens": tokens,
            "plan": plan,
            "baseline": baseline,
            "kind": kind,
            "suggested_at": time.time(),
            "last": None,
        }
        self._seen_keys().add(plan_key(plan))
        self._suggested += 1
        return {
            "plan": plan,
            "seeds": list(self.reward_seeds),
            "searcher": self.name,
            "stage": SEARCH,
            "label": baseline or "searched",
            "tokens": list(tokens),
        }

    def _ready_to_sample(self) -> bool:
        """Warm-starting searchers sample once every tuned recipe is recorded (then start from
        them, once); the others right away."""
        if self._warmed or not self.warm_starts or not self._tuned_trials:
            return True
        tuned = [r for r in self._records if r.get("kind") == TUNED]
        if len(tuned) < len(self._tuned_trials):
            return False
        ok = [r for r in tuned if r["status"] == rf.OK and r.get("reward") is not None and json.loads(r["tokens"])]
        ok.sort(key=lambda r: (-float(r["reward"]), r["order"]))
        self._warm_start([(json.loads(r["tokens"]), float(r["reward"])) for r in ok])
        self._warmed = True
        if ok:
            log.info("%s starts from the best tuned recipe (%s): %s", self.name, ok[0]["baseline"], ok[0]["methods"])
        return True

    def _draw(self, trial_id: str) -> tuple[list[int], Plan]:
        """A sampled plan no search-stage trial has trained or is training, if one comes up in
        ``MAX_REDRAWS`` draws; else the last draw (the policy keeps proposing it)."""
        seen = self._seen_keys()
        for attempt in range(MAX_REDRAWS + 1):
            tokens = [int(t) for t in self._sample_tokens(trial_id)]
            plan = self.space.decode(tokens)
            key = plan_key(plan)
            if key not in seen or attempt == MAX_REDRAWS:
                if key in seen:
                    log.info("trial %s repeats a plan already trained: the %s keeps proposing it", trial_id, self.name)
                return tokens, plan
            self._discard(trial_id, tokens, self._known_reward(key))
        raise AssertionError("unreachable")

    def _seen_keys(self) -> set[str]:
        if self._seen is None:
            plans = [r["plan"] for r in self._records] + [
                p["plan"] for p in self._pending.values() if p["stage"] == SEARCH
            ]
            self._seen = {plan_key(p) for p in plans}
        return self._seen

    def _known_reward(self, key: str) -> float | None:
        return self._rewards_by_plan.get(key)

    def _tokens_of(self, plan: Plan) -> list[int]:
        """A baseline's tokens, for the record; [] when the space cannot say it (a hand-set plan
        need not follow the space's groups: DropBlock on some sites of a stage only)."""
        try:
            return self.space.encode(plan)
        except ValueError:
            return []

    def _suggest_final(self, trial_id: str) -> dict | str | None:
        if not self.final_trials:
            return Searcher.FINISHED
        if self._final_queue is None:
            if len(self._records) < self.search_trials:
                return None  # the final stage needs every search-stage result: ask again later
            self._final_queue = self._final_plan_queue()
            self._final_total = len(self._final_queue) + len(self._final_records)
        if not self._final_queue:
            return Searcher.FINISHED
        item = self._final_queue.pop(0)
        self._pending[trial_id] = {**item, "stage": FINAL, "suggested_at": time.time(), "last": None}
        self._suggested += 1
        return {
            "plan": item["plan"],
            "seeds": [item["seed"]],
            "searcher": self.name,
            "stage": FINAL,
            "label": item["label"],
            "tokens": [],
        }

    def _final_plan_queue(self) -> list[dict[str, Any]]:
        """(label, plan, seed) of every final trial still to run, each finalist with every seed:
        the hand-set baselines, each tuned method's best recipe (``tuned-<method>``), then the
        top searched plans by search-stage value. A plan equal to an earlier finalist is not
        trained twice: a searched plan that is a baseline is that baseline (the next distinct
        searched plan takes its place)."""
        if not self.final_seeds:
            return []
        o = self.objective

        def ranked(kind: str, label: str = "") -> list[dict[str, Any]]:
            rows = [
                r
                for r in self._records
                if r.get("kind", SEARCHED if not r["baseline"] else BASELINE) == kind
                and (not label or r["baseline"] == label)
                and r["status"] == rf.OK
                and math.isfinite(r[o.metric])
            ]
            return sorted(rows, key=lambda r: (-o.reward(r[o.metric]), r["order"]))

        plans: dict[str, tuple[Plan, str]] = {}
        keys: set[str] = set()

        def add(label: str, plan: Plan, source: str) -> bool:
            key = plan_key(plan)
            if key in keys:
                log.info("final stage: %s is the same plan as an earlier finalist; trained once", label)
                return False
            keys.add(key)
            plans[label] = (plan, source)
            return True

        for name, plan in self.baselines.items():
            add(name, plan, next((r["trial_id"] for r in self._records if r["baseline"] == name), ""))
        for method in self.tuned:
            best = ranked(TUNED, f"{TUNED_PREFIX}{method}")
            if best:
                add(f"{TUNED_PREFIX}{method}", best[0]["plan"], best[0]["trial_id"])
        n_searched = 0
        for r in ranked(SEARCHED):
            if n_searched >= self.final_top_k:
                break
            if add(f"searched#{n_searched + 1}", r["plan"], r["trial_id"]):
                n_searched += 1
        done = {(r["label"], r["seed"]) for r in self._final_records}
        running = {(p["label"], p.get("seed")) for p in self._pending.values() if p["stage"] == FINAL}
        return [
            {"label": label, "plan": plan, "source": source, "seed": seed}
            for label, (plan, source) in plans.items()
            for seed in self.final_seeds
            if (label, seed) not in done | running
        ]

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Keep the latest result: an errored trial completes without one."""
        if trial_id in self._pending:
            o = self.objective
            self._pending[trial_id]["last"] = {
                k: result.get(k)
                for k in (
                    "final",
                    "status",
                    o.metric,
                    o.best_column,
                    o.se_column,
                    o.seeds_column,
                    "error",
                    "message",
                    "seconds",
                    "node",
                    "epoch",
                    "precision",
                )
            }

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

    def _record(self, trial_id: str, entry: dict[str, Any], result: Mapping[str, Any] | None, errored: bool) -> None:
        outcome = trial_outcome(result, errored, self._penalty(), self.objective)
        res = result or {}
        o = self.objective
        plan: Plan = entry["plan"]
        row: dict[str, Any] = {
            "trial_id": trial_id,
            "searcher": self.name,
            "status": outcome.status,
            o.metric: outcome.value,
            o.se_column: rf.finite_or_none(res.get(o.se_column)),
            o.seeds_column: res.get(o.seeds_column) or "",
            o.best_column: outcome.best_value,
            "reward": outcome.reward,
            "error": outcome.error,
            "node": res.get("node") or "",
            "precision": res.get("precision") or "",  # amp=auto: bf16 or fp32 depending on the node's CPU
            "seconds": rf.as_float(res.get("seconds"))
            if res.get("seconds") is not None
            else time.time() - entry["suggested_at"],
            "epochs": res.get("epoch"),
            "plan": plan,
            "plan_json": json.dumps(plan.to_dict(), sort_keys=True),
            "methods": plan.summary(),
        }
        if outcome.status in rf.FAILED_STATUSES:
            log.warning("trial %s %s: %s", trial_id, outcome.status, outcome.error)
        if entry["stage"] == FINAL:
            row.update(
                label=entry["label"],
                seed=entry["seed"],
                source=entry["source"],
                order=len(self._final_records),
                searcher=self.name,
            )
            if self.store is not None:
                self.store.final(row)  # on disk before anything that can fail
            self._final_records.append(row)
            del self._pending[trial_id]
        else:
            row.update(
                order=len(self._records),
                kind=entry.get("kind", BASELINE if entry["baseline"] else SEARCHED),
                baseline=entry["baseline"],
                reference=bool(entry["baseline"]),
                tokens=json.dumps(entry["tokens"]),
                **{f"{rf.SITE_PREFIX}{s}": m for s, m in plan.methods().items()},
            )
            if self.store is not None:
                self.store.trial(row)  # on disk before anything that can fail
            self._records.append(row)
            del self._pending[trial_id]
            self._tally(row)
            if outcome.reward is not None and not entry["baseline"]:
                self._buffer.append((trial_id, entry["tokens"], float(outcome.reward)))
        self._failed += outcome.status in rf.FAILED_STATUSES
        try:
            while len(self._buffer) >= self.controller_batch:
                self._consume(self.controller_batch)
            if len(self._records) >= self.search_trials and self._buffer:
                self._consume(len(self._buffer))  # the last, partial batch
        finally:
            self._save_state()
            self._write_summaries()
        self._log_progress(row)

    def _tally(self, row: dict[str, Any]) -> None:
        """Keep the best trial (``run_folder.best_row`` of the best so far and the new one:
        ok, finite, best by the mode, ties to the earlier) and the worst ok reward up to date."""
        o = self.objective
        if row.get("reward") is not None:
            self._rewards_by_plan[plan_key(row["plan"])] = float(row["reward"])
        if rf.best_row([row], o) is None:
            return  # not ranked: stopped, failed, or no finite value
        self._best = rf.best_row([self._best, row] if self._best is not None else [row], o)
        if row.get("reward") is not None:
            r = float(row["reward"])
            self._worst_ok_reward = r if self._worst_ok_reward is None else min(self._worst_ok_reward, r)

    def _penalty(self) -> float | None:
        if self.penalty_reward is not None:
            return self.penalty_reward
        return self._worst_ok_reward

    def save(self, checkpoint_path: str) -> None:
        """Ray's checkpoint of this searcher. With a run folder it is a pointer: the state is in
        the folder (searcher_state.json and the ledger), and ``resume()`` reads it from there;
        without one (a searcher in your own Tuner) it is the state itself as plain values and
        tensors, which ``restore`` loads with ``weights_only=True`` (nothing in it can run code)."""
        if self.store is not None:
            Path(checkpoint_path).write_text(
                json.dumps({"searcher": self.name, "state": f"{rf.SNAPSHOT} and the ledger in {self.run_dir}"})
            )
            return
        import torch

        def plain(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{k: v for k, v in r.items() if k != "plan"} for r in rows]  # the plan is plan_json

        state = {
            "version": STATE_VERSION,
            "searcher": self.name,
            "space": self.space.to_dict(),
            "suggested": self._suggested,
            "pending": {tid: _entry_to_json(e) for tid, e in self._pending.items()},
            "records": plain(self._records),
            "final_records": plain(self._final_records),
            "final_queue": None if self._final_queue is None else [_entry_to_json(e) for e in self._final_queue],
            "final_total": self._final_total,
            "buffer": [[tid, list(tokens), reward] for tid, tokens, reward in self._buffer],
            "history": self._history,
            "warmed": self._warmed,
            "policy": self._policy_state(),
        }
        torch.save(state, checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        """Tune's restore of a searcher without a run folder (a run folder resumes with
        ``resume()``, which never reads Ray's files). Loaded with ``weights_only=True``."""
        import torch

        if self.store is not None:
            raise RuntimeError(
                "a searcher with a run folder resumes from that folder (PlanSearcher.resume, or "
                "run_search(..., resume=True)), not from Ray's checkpoint"
            )
        try:
            state = torch.load(checkpoint_path, weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - anything weights_only refuses is not ours
            raise user_error(
                "searcher state",
                detail=f"bad value {checkpoint_path} ({type(exc).__name__})",
                allowed=f"a {self.name} searcher's save()",
            ) from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION or state.get("searcher") != self.name:
            raise user_error(
                "searcher state", detail=f"bad value {checkpoint_path}", allowed=f"a {self.name} searcher's save()"
            )
        if state["space"] != self.space.to_dict():
            raise user_error("space", detail="the saved search space differs", allowed="the space the run started with")

        def with_plans(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
            return [{**r, "plan": Plan.from_json(r["plan_json"])} for r in rows]

        self._suggested, self._final_total = state["suggested"], state["final_total"]
        self._pending = {
            tid: {**_entry_from_json(e), "last": None, "suggested_at": time.time()}
            for tid, e in state["pending"].items()
        }
        self._records, self._final_records = with_plans(state["records"]), with_plans(state["final_records"])
        queue = state["final_queue"]
        self._final_queue = None if queue is None else [_entry_from_json(e) for e in queue]
        self._buffer = [(str(tid), list(tokens), float(reward)) for tid, tokens, reward in state["buffer"]]
        self._history, self._warmed, self._seen = state["history"], state["warmed"], None
        self._load_policy_state(state["policy"])
        self._retally()

    def resume(self) -> None:
        """Continue the search of ``run_dir`` from its ledger and searcher_state.json.

        The ledger is the truth: the trials it holds are done (never re-run); the trials the
        snapshot knew as running that the ledger lacks run again first. Nothing is unpickled:
        the snapshot is JSON and the controller's tensors load with ``weights_only=True``.
        Raises ``SnapshotError`` (one line) on state this product did not write."""
        if self.store is None:
            raise user_error("resume", detail="this searcher has no run folder (run_dir=None)")
        records, finals, history, state = self.store.load()
        if state is None:
            if records or finals:
                raise SnapshotError(self.run_dir, f"{rf.SNAPSHOT} is missing but the ledger holds trials")
            return  # stopped before its first suggestion: start as new
        try:
            self._load_state(state, records, finals, history)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, SnapshotError):
                raise
            raise SnapshotError(
                self.run_dir, f"{rf.SNAPSHOT} does not hold a state this searcher wrote ({type(exc).__name__}: {exc})"
            ) from None
        log.info(
            "searcher resumed: %d trials finished, %d to run again, %d controller updates",
            self.finished,
            len(self._requeue),
            len(self._history),
        )

    def _load_state(self, state: Mapping[str, Any], records: list, finals: list, history: list) -> None:
        if state.get("searcher") != self.name:
            raise SnapshotError(
                self.run_dir, f"{rf.SNAPSHOT} is a {state.get('searcher')!r} searcher's, not {self.name!r}"
            )
        if state.get("space") != self.space.to_dict() or state.get("objective") != self.objective.to_dict():
            raise SnapshotError(self.run_dir, f"the search space or objective in {rf.SNAPSHOT} differs from the run's")
        suggested = state["suggested"]
        if isinstance(suggested, bool) or not isinstance(suggested, int) or suggested < len(records):
            raise user_error("suggested", suggested)
        self._records, self._final_records, self._history = records, finals, history
        self._suggested = suggested
        self._warmed = bool(state["warmed"])
        total = state["final_total"]
        self._final_total = None if total is None else int(total)
        done = {r["trial_id"] for r in records} | {r["trial_id"] for r in finals}
        pending = state["pending"]
        if not isinstance(pending, dict):
            raise user_error(detail="pending is not an object", cls=UserTypeError)
        self._requeue = [
            _entry_from_json(e)
            for tid, e in pending.items()
            if tid not in done and isinstance(e, dict) and e.get("stage") == SEARCH
        ]
        self._pending = {}
        self._seen = None
        self.load_policy_json(state["policy"])
        self._final_queue = self._final_plan_queue() if state["final_started"] else None
        self._rebuild_buffer()
        self._retally()

    def _retally(self) -> None:
        self._best, self._worst_ok_reward, self._rewards_by_plan = None, None, {}
        for r in self._records:
            self._tally(r)
        self._failed = sum(r["status"] in rf.FAILED_STATUSES for r in self._records + self._final_records)

    def _state_json(self) -> dict[str, Any]:
        """searcher_state.json: what the ledger does not hold (its size does not grow with the run)."""
        return {
            "searcher": self.name,
            "space": self.space.to_dict(),
            "objective": self.objective.to_dict(),
            "suggested": self._suggested,
            "warmed": self._warmed,
            "final_started": self._final_queue is not None,
            "final_total": self._final_total,
            "pending": {tid: _entry_to_json(e) for tid, e in self._pending.items()},
            "updates": len(self._history),
            "last_update": self._history[-1] if self._history else None,
            "policy": self.policy_json(),
            "saved_at": time.time(),
        }

    def _save_state(self) -> None:
        if self.store is not None:
            self.store.snapshot(self._state_json())

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_session"] = None  # timing of this driver session only
        return state

    # ---- what the files and the API read
    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self._history)

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(self._records)

    @property
    def final_records(self) -> list[dict[str, Any]]:
        return list(self._final_records)

    @property
    def finished(self) -> int:
        return len(self._records) + len(self._final_records)

    def best(self) -> dict[str, Any] | None:
        """The best search-stage trial (``run_folder.best_row``'s rule: ok, best metric)."""
        return dict(self._best) if self._best is not None else None

    def final_table(self) -> list[dict[str, Any]]:
        """One row per final plan (see ``controller.final.final_rows``)."""
        from controller.final import final_rows

        return final_rows(self._final_records, self.objective, list(self.baselines), len(self.final_seeds))

    # ---- internals
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

    def _start_session(self) -> None:
        if self._session is None:
            self._session = {"start": time.time(), "done_at_start": float(self.finished)}

    def _write_summaries(self) -> None:
        """best_plan.json and run_state.json after every trial; final.csv once the final stage is done."""
        if self.store is None:
            return
        done = self.finished >= self.total_trials
        final = self.final_table() if done and self._final_records else []
        plan, exported = best_plan_of(final, self.best(), self.objective, self.name)
        self.store.summaries(
            final=final,
            best_plan=plan,
            status="finished" if done else "running",
            total=self.total_trials,
            finished=self.finished,
            exported=exported,
        )

    def _log_progress(self, row: dict[str, Any]) -> None:
        done, total = self.finished, self.total_trials
        failed = self._failed
        best = self._best
        metric = self.objective.metric
        session = self._session or {"start": time.time(), "done_at_start": 0.0}
        elapsed = time.time() - session["start"]
        rate = (done - session["done_at_start"]) / max(elapsed, 1e-9)
        eta = (total - done) / rate if rate > 0 else float("nan")
        if self._history:
            h = self._history[-1]
            ctrl = f"controller upd {h['update'] + 1} reward {h['mean_reward']:.4f} entropy {h['entropy']:.3f}"
        elif self.name == "controller":
            ctrl = f"controller: {len(self._buffer)}/{self.controller_batch} rewards buffered"
        else:
            ctrl = f"{self.name} search"
        label = row.get("label") or row.get("baseline") or ""
        stage = f"final {label} seed {row['seed']}" if "seed" in row else (f"baseline {label}" if label else "")
        log.info(
            "[%d/%d] %s %s%s %s %.4f | running %d | failed %d | best %s | %s | elapsed %s ETA %s",
            done,
            total,
            row["trial_id"],
            f"({stage}) " if stage else "",
            row["status"],
            metric,
            row[metric],
            len(self._pending),
            failed,
            f"{best[metric]:.4f}" if best else "-",
            ctrl,
            _hms(elapsed),
            _hms(eta),
        )


def _seed_list(field: str, value: Any, first: int) -> list[int]:
    """Seeds as given, or their number (``first``, ``first + 1``, ...)."""
    if isinstance(value, bool):
        raise user_error(field, value, "a number of seeds or a list of seeds", cls=UserTypeError)
    if isinstance(value, int):
        if value < 0:
            raise user_error(field, value, "a number of seeds >= 0 or a list of seeds")
        return list(range(first, first + value))
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise user_error(
            field,
            detail=f"bad value {value!r} of type {type(value).__name__}",
            allowed="a number of seeds or a list",
            cls=UserTypeError,
        )
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise user_error(field, list(value), "seeds (integers >= 0)")
    return [int(s) for s in value]


def _entry_to_json(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A running trial as searcher_state.json keeps it (its plan as the plan's own JSON)."""
    keep = ("stage", "tokens", "baseline", "kind", "label", "seed", "source", "suggested_at")
    return {**{k: entry[k] for k in keep if k in entry}, "plan": entry["plan"].to_dict()}


def _entry_from_json(entry: Mapping[str, Any]) -> dict[str, Any]:
    tokens = entry["tokens"]
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise user_error(detail="a running trial's tokens are not a list of integers", cls=UserTypeError)
    out = {k: entry[k] for k in ("stage", "baseline", "kind", "label", "source") if k in entry}
    if not all(isinstance(v, str) for v in out.values()):
        raise user_error(detail="a trial's stage, baseline, kind, label or source is not text", cls=UserTypeError)
    if "seed" in entry:
        if isinstance(entry["seed"], bool) or not isinstance(entry["seed"], int):
            raise user_error(detail="a trial's seed is not an integer", cls=UserTypeError)
        out["seed"] = entry["seed"]
    return {**out, "baseline": out.get("baseline", ""), "tokens": tokens, "plan": Plan.from_dict(entry["plan"])}


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
