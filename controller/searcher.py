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
- Ray resumes a run from its own experiment snapshot, which holds this searcher's `save()`
  state; the bookkeeping files are rewritten from that state on `restore()`, so they always
  agree with the trials Ray will (re-)run.
- Recording a trial must not lose it: the row is kept before anything that can fail
  (controller update, disk writes); such a failure stops the search (``fatal_error``).

Reward of a finished trial (``trial_outcome``; the run's ``Objective`` turns a metric value
into a reward, e.g. minus the loss for ``mode="min"``):
- ``ok``: the final value of the metric (last epoch, mean over the reward seeds);
- ``stopped`` (ended early by a scheduler, e.g. ASHA): its last reported value, a natural
  penalty since it trained fewer epochs;
- ``diverged``, or ``failed`` inside the child: the penalty reward (default: the worst
  reward seen so far), error recorded;
- ``failed`` without any report (worker crash, node lost): recorded but left out of the
  update, because it says nothing about the plan.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from ray.tune.search import Searcher

from controller import run_folder as rf
from controller.final import BASELINE, SEARCHED, TUNED, TUNED_PREFIX
from controller.lstm import LSTMController
from controller.reinforce import Reinforce
from search_space.plan import Plan, plan_key
from search_space.space import SearchSpace

__all__ = [
    "ControllerSearcher",
    "RandomSearcher",
    "TPESearcher",
    "PlanSearcher",
    "SEARCHERS",
    "make_searcher",
    "TrialOutcome",
    "trial_outcome",
    "NO_REPORT_ERROR",
]

log = logging.getLogger(__name__)

STATE_VERSION = 2
NO_REPORT_ERROR = (
    "trial errored in Ray before the child reported (worker crash or node loss); see error.txt in the trial directory"
)
PARTIAL_ERROR = (
    "trial errored in Ray after the child reported {epochs} epoch(s) (worker "
    "crash or node loss); {metric} {value} is the last, partial value; see "
    "error.txt in the trial directory"
)
SEARCH, FINAL = "search", "final"
#: Draws of a sampler to find a plan not trained yet before training a repeat (a policy that
#: has converged keeps proposing its plan: that repeat is then worth a trial).
MAX_REDRAWS = 25
OWN_FILES = (rf.TRIALS, rf.HISTORY, rf.FINAL, rf.BEST_PLAN, rf.RUN_STATE)

# The searcher of the search running in this (driver) process, by run folder: Tune restores
# a searcher from its own snapshot, and the API needs it afterwards (fatal errors, counts).
_ACTIVE: dict[Path, "PlanSearcher"] = {}
_RESUME_INTO: list[Path] = []


def resume_into(run_dir: str | os.PathLike[str]) -> None:
    """Tell the searcher Tune is about to restore which run folder it now writes to (a run
    folder may have been moved or copied since its snapshot was taken)."""
    _RESUME_INTO[:] = [Path(run_dir)]


def active_searcher(run_dir: str | os.PathLike[str]) -> "PlanSearcher | None":
    return _ACTIVE.get(Path(run_dir))


# ------------------------------------------------------------------------- rewards
@dataclass(frozen=True)
class TrialOutcome:
    """How one finished trial is recorded and rewarded (see the module docstring)."""

    status: str
    value: float
    best_value: float
    reward: float | None  # None: recorded but not used by the controller
    error: str


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


_DEFAULT_OBJECTIVE = rf.Objective()


def trial_outcome(
    result: Mapping[str, Any] | None, errored: bool, penalty: float | None, objective: rf.Objective = _DEFAULT_OBJECTIVE
) -> TrialOutcome:
    """Status and reward of a trial from its last result and whether Ray saw it error.

    The trainable marks its last report with ``final=True`` and a child status (ok,
    diverged, failed); a trial whose last result is not final was stopped early.
    """
    res = dict(result or {})
    if res and "final" not in res and not errored:
        # a plain trainable (not ours: no final report) that ended normally: its last result is final
        res = {**res, "final": True, "status": rf.OK}
    final = bool(res.get("final"))
    val, best = _num(res.get(objective.metric)), _num(res.get(objective.best_column))
    error = str(res.get("error") or res.get("message") or "")
    if final:
        status = str(res.get("status", rf.OK))
        if status not in rf.CHILD_STATUSES:
            error = error or f"unknown child status {status!r}"
            status = rf.FAILED
        if errored and status == rf.OK:  # the child finished; its worker failed afterwards
            error = error or "the worker failed after the child's final report (value kept)"
    elif errored:
        status = rf.FAILED
        if not error:
            error = (
                PARTIAL_ERROR.format(epochs=res.get("epoch"), metric=objective.metric, value=f"{val:.6g}")
                if res.get("epoch") and math.isfinite(val)
                else NO_REPORT_ERROR
            )
    else:
        status = rf.STOPPED
    if not math.isfinite(best):
        best = val
    reward: float | None
    if status in (rf.OK, rf.STOPPED):
        r = objective.reward(val) if math.isfinite(val) else float("nan")
        reward = r if math.isfinite(r) else (penalty if final else None)
    elif final:  # diverged, or the child itself failed: the plan's fault as far as we know
        reward = penalty
    else:
        reward = None
    if status == rf.DIVERGED and not error:
        error = "loss became NaN/inf"
    return TrialOutcome(status, val, best, reward, error)


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
                raise ValueError(f"{field}: bad value {value!r}; allowed: an integer >= 1")
        if isinstance(final_top_k, bool) or not isinstance(final_top_k, int) or final_top_k < 0:
            raise ValueError(f"final_top_k: bad value {final_top_k!r}; allowed: an integer >= 0")
        if penalty_reward is not None and not math.isfinite(float(penalty_reward)):
            raise ValueError(f"penalty_reward: bad value {penalty_reward!r}; allowed: a finite number")
        reward_seeds = _seed_list("reward_seeds", reward_seeds, first=0)
        final_seeds = _seed_list("final_seeds", final_seeds, first=1000)
        if not reward_seeds:
            raise ValueError("reward_seeds: bad value []; allowed: a non-empty list of seeds")
        self.space = space
        self.num_samples = num_samples
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.controller_batch = controller_batch
        self.penalty_reward = None if penalty_reward is None else float(penalty_reward)
        self.baselines: dict[str, Plan] = dict(baselines or {})
        for label, plan in self.baselines.items():
            if not isinstance(plan, Plan):
                raise ValueError(f"baselines[{label!r}]: bad value {type(plan).__name__}; allowed: a Plan")
        self.tuned: dict[str, list[Plan]] = {}
        for method, plans in dict(tuned or {}).items():
            plans = list(plans)
            if not plans or not all(isinstance(p, Plan) for p in plans):
                raise ValueError(f"tuned[{method!r}]: bad value {plans!r}; allowed: a non-empty list of Plans")
            self.tuned[str(method)] = plans
        self._tuned_trials = [(f"{TUNED_PREFIX}{m}", p) for m, plans in self.tuned.items() for p in plans]
        self.reward_seeds = [int(s) for s in reward_seeds]
        self.final_top_k = final_top_k
        self.final_seeds = [int(s) for s in final_seeds] if final_top_k else []  # top-k 0: no final stage
        if not self.final_seeds:
            self.final_top_k = 0
        self.fatal_error: str | None = None
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
        if self.run_dir is not None:
            _ACTIVE[self.run_dir] = self

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
            raise ValueError(
                f"metric/mode: bad value {metric!r}/{mode!r}; allowed: the "
                f"searcher's objective {self.objective.metric!r}/{self.objective.mode!r}"
            )
        return True

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.fatal_error is not None:
            return None  # not FINISHED: Tune would save that, and a resumed run could never go on
        self._start_session()
        if self._suggested < self.search_trials:
            return self._suggest_search(trial_id)
        return self._suggest_final(trial_id)

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
        for r in reversed(self._records):
            if r.get("reward") is not None and plan_key(r["plan"]) == key:
                return float(r["reward"])
        return None

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
            o.se_column: _finite_or_none(res.get(o.se_column)),
            o.seeds_column: res.get(o.seeds_column) or "",
            o.best_column: outcome.best_value,
            "reward": outcome.reward,
            "error": outcome.error,
            "node": res.get("node") or "",
            "precision": res.get("precision") or "",  # amp=auto: bf16 or fp32 depending on the node's CPU
            "seconds": _num(res.get("seconds"))
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
            row.update(label=entry["label"], seed=entry["seed"], source=entry["source"], order=len(self._final_records))
            self._final_records.append(row)
            del self._pending[trial_id]
        else:
            row.update(
                order=len(self._records),
                kind=entry.get("kind", BASELINE if entry["baseline"] else SEARCHED),
                baseline=entry["baseline"],
                reference=bool(entry["baseline"]),
                update=None,
                tokens=json.dumps(entry["tokens"]),
                **{f"{rf.SITE_PREFIX}{s}": m for s, m in plan.methods().items()},
            )
            self._records.append(row)
            del self._pending[trial_id]
            if outcome.reward is not None and not entry["baseline"]:
                self._buffer.append((trial_id, entry["tokens"], float(outcome.reward)))
        try:
            while len(self._buffer) >= self.controller_batch:
                self._consume(self.controller_batch)
            if len(self._records) >= self.search_trials and self._buffer:
                self._consume(len(self._buffer))  # the last, partial batch
        finally:
            self._write_files()
        self._log_progress(row)

    def _penalty(self) -> float | None:
        if self.penalty_reward is not None:
            return self.penalty_reward
        seen = [r["reward"] for r in self._records if r["reward"] is not None and r["status"] == rf.OK]
        return min(seen) if seen else None

    def save(self, checkpoint_path: str) -> None:
        state = {
            "version": STATE_VERSION,
            "searcher": self.name,
            "space": self.space.to_dict(),
            "objective": self.objective.to_dict(),
            "num_samples": self.num_samples,
            "controller_batch": self.controller_batch,
            "suggested": self._suggested,
            "pending": self._pending,
            "records": self._records,
            "final_records": self._final_records,
            "final_queue": self._final_queue,
            "final_total": self._final_total,
            "buffer": self._buffer,
            "history": self._history,
            "warmed": self._warmed,
            "policy": self._policy_state(),
        }
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str) -> None:
        """Load a `save()` state and rewrite the run folder's files from it.

        On Tune's resume ``checkpoint_path`` lies in Ray's driver staging folder, which Ray
        filled with a copy of the run folder. Our own files are deleted from that copy, or
        Ray's periodic sync would write those stale copies back over the current ones."""
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        staging = Path(checkpoint_path).parent
        if _RESUME_INTO and self.run_dir is not None:
            self.run_dir = _RESUME_INTO.pop()
            _ACTIVE[self.run_dir] = self
        if self.run_dir is not None and staging.resolve() != self.run_dir.resolve():
            for name in OWN_FILES:
                (staging / name).unlink(missing_ok=True)
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"searcher state version: bad value {state.get('version')!r}; allowed: {STATE_VERSION}")
        if state["searcher"] != self.name:
            raise ValueError(
                f"searcher: bad value {state['searcher']!r} in {checkpoint_path}; "
                f"allowed: {self.name!r} (the searcher being restored)"
            )
        if state["space"] != self.space.to_dict():
            raise ValueError(
                f"space: the saved search space in {checkpoint_path} differs from "
                "this searcher's; allowed: the space the run started with"
            )
        self.num_samples = state["num_samples"]
        self.controller_batch = state["controller_batch"]
        self._suggested = state["suggested"]
        self._pending = state["pending"]
        self._records = state["records"]
        self._final_records = state["final_records"]
        self._final_queue = state["final_queue"]
        self._final_total = state["final_total"]
        self._buffer = state["buffer"]
        self._history = state["history"]
        self._warmed = bool(state.get("warmed", False))
        self._seen = None
        self._load_policy_state(state["policy"])
        self._session = None
        self._start_session()
        self._write_files()
        log.info(
            "searcher restored: %d trials finished, %d to re-run, %d controller updates",
            len(self._records) + len(self._final_records),
            len(self._pending),
            len(self._history),
        )

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
        """The best search-stage trial (``run_folder.best_row``: ok, best metric)."""
        best = rf.best_row(self._records, self.objective)
        return dict(best) if best is not None else None

    def final_table(self) -> list[dict[str, Any]]:
        """One row per final plan (see ``controller.final.final_rows``)."""
        from controller.final import final_rows

        return final_rows(self._final_records, self.objective, list(self.baselines), len(self.final_seeds))

    def exported(self, final: list[dict[str, Any]]) -> dict[str, Any]:
        """What best_plan.json holds: label, kind (searched | baseline | tuned) and how it was chosen."""
        chosen = next((r for r in final if r["chosen"]), None)
        if chosen is not None:
            return {"label": chosen["label"], "kind": chosen["kind"], "selected_by": "final"}
        best = self.best()
        if best is None:
            return {}
        return {
            "label": best["baseline"] or best["trial_id"],
            "kind": best.get("kind") or (BASELINE if best["baseline"] else SEARCHED),
            "selected_by": "search",
        }

    # ---- internals
    def _consume(self, n: int) -> None:
        batch = self._buffer[:n]
        stats = self._learn([(tid, list(t), r) for tid, t, r in batch])
        self._buffer = self._buffer[n:]  # only once the update went through
        if stats is None:
            return
        update = len(self._history)
        self._history.append(
            {
                "update": update,
                "step": stats["step"],
                "trials_seen": len(self._records),
                **{k: stats[k] for k in ("mean_reward", "baseline", "entropy", "loss")},
                "time": time.time(),
            }
        )
        ids = {tid for tid, _, _ in batch}
        for row in self._records:
            if row["trial_id"] in ids:
                row["update"] = update

    def _start_session(self) -> None:
        if self._session is None:
            self._session = {"start": time.time(), "done_at_start": float(self.finished)}

    def _write_files(self) -> None:
        if self.run_dir is None:
            return
        from controller.final import write_final

        site_cols = [f"{rf.SITE_PREFIX}{s}" for s in self.space.sites]
        with rf.disk_full_is_fatal(self.run_dir):
            rf.atomic_write_text(
                self.run_dir / rf.TRIALS, rf.csv_text(rf.trial_columns(self.objective) + site_cols, self._records)
            )
            rf.atomic_write_text(self.run_dir / rf.HISTORY, rf.csv_text(rf.HISTORY_COLUMNS, self._history))
            final = self.final_table() if self._final_records else []
            if final:
                write_final(self.run_dir, final)
            else:  # e.g. restored from a snapshot taken before the final stage
                (self.run_dir / rf.FINAL).unlink(missing_ok=True)
            done = self.finished >= self.total_trials
            best = self._best_plan(final if done else [])  # the final means only once all are in
            if best is not None:
                best.save(self.run_dir / rf.BEST_PLAN)
            else:
                (self.run_dir / rf.BEST_PLAN).unlink(missing_ok=True)
            rf.write_run_state(
                self.run_dir,
                "finished" if self.finished >= self.total_trials else "running",
                self.total_trials,
                self.finished,
                exported=self.exported(final if done else []),
            )

    def _best_plan(self, final: list[dict[str, Any]]) -> Plan | None:
        """best_plan.json: the chosen row of the final stage once it ran, else the best trial."""
        o = self.objective
        chosen = next((r for r in final if r["chosen"]), None)
        if chosen is not None:
            plan = Plan.from_json(chosen["plan_json"])
            plan.metadata = {
                **plan.metadata,
                "selected_by": "final",
                "label": chosen["label"],
                "kind": chosen["kind"],
                o.metric: _finite_or_none(chosen["mean"]),
                o.se_column: _finite_or_none(chosen["se"]),
                "seeds": chosen["seeds"],
                "best_baseline": chosen["best_baseline"],
                "comparison": chosen["comparison"] or ("the best baseline" if chosen["kind"] != SEARCHED else ""),
                "diff_ci95": [_finite_or_none(chosen["diff_ci95_low"]), _finite_or_none(chosen["diff_ci95_high"])],
                "trial_id": chosen["trial_id"],
                "searcher": self.name,
            }
            return plan
        best = self.best()
        if best is None:
            return None
        plan = Plan.from_json(best["plan_json"])
        plan.metadata = {
            **plan.metadata,
            "selected_by": "search",
            "kind": best.get("kind") or (BASELINE if best["baseline"] else SEARCHED),
            "comparison": "unproven: no final stage compared it with the baselines",
            o.metric: _finite_or_none(best[o.metric]),
            "trial_id": best["trial_id"],
            o.best_column: _finite_or_none(best[o.best_column]),
            "baseline": best["baseline"],
            "searcher": self.name,
        }
        return plan

    def _log_progress(self, row: dict[str, Any]) -> None:
        done, total = self.finished, self.total_trials
        failed = sum(r["status"] in rf.FAILED_STATUSES for r in self._records + self._final_records)
        best = self.best()
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
        raise TypeError(f"{field}: bad value {value!r}; allowed: a number of seeds or a list of seeds")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{field}: bad value {value!r}; allowed: a number of seeds >= 0 or a list of seeds")
        return list(range(first, first + value))
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"{field}: bad value {value!r} of type {type(value).__name__}; allowed: a number of seeds or a list"
        )
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value):
        raise ValueError(f"{field}: bad value {list(value)!r}; allowed: seeds (integers >= 0)")
    return [int(s) for s in value]


def _finite_or_none(value: Any) -> float | None:
    """JSON has no NaN: a missing number is null in best_plan.json's metadata."""
    v = _num(value)
    return v if math.isfinite(v) else None


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


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
            raise ValueError(f"recipe_strength: bad value {recipe_strength!r}; allowed: a number >= 0")
        self.recipe_strength = float(recipe_strength)

        policy = LSTMController(
            space.vocab_sizes,
            seed=seed,
            prior_logits=mild_prior(space, prior_strength),
            **dict(controller_kwargs or {}),
        )
        self.reinforce = Reinforce(policy, seed=seed, active_fn=space.active_mask, **dict(reinforce_kwargs or {}))

    def _sample_tokens(self, trial_id: str) -> list[int]:
        return self.reinforce.sample(1)[0]

    def _warm_start(self, recipes: list[tuple[list[int], float]]) -> None:
        from controller.prior import recipe_prior

        if recipes and self.recipe_strength > 0:
            self.reinforce.policy.add_prior(recipe_prior(self.space, recipes[0][0], self.recipe_strength))

    def _learn(self, batch: list[tuple[str, list[int], float]]) -> dict[str, Any]:
        return self.reinforce.update([t for _, t, _ in batch], [r for _, _, r in batch])

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
        self._study = self._make_study()
        self._open: dict[str, int] = {}  # trial_id -> Optuna trial number

    def _make_study(self) -> Any:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():  # multivariate/group are "experimental" in Optuna's words
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=self.seed, n_startup_trials=self.n_startup_trials, multivariate=True, group=True
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

    def _warm_start(self, recipes: list[tuple[list[int], float]]) -> None:
        import optuna

        for tokens, reward in recipes:
            params, dists = _DefineByRun(self.space).params(tokens)
            self._study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=reward))

    def _learn(self, batch: list[tuple[str, list[int], float]]) -> None:
        for trial_id, _, reward in batch:
            self._tell(trial_id, reward)
        return None

    def _record(self, trial_id: str, entry: dict[str, Any], result: Mapping[str, Any] | None, errored: bool) -> None:
        super()._record(trial_id, entry, result, errored)
        # a sampled trial that gave no reward (worker crash) must not stay open in Optuna
        if trial_id in self._open and trial_id not in {t for t, _, _ in self._buffer}:
            self._tell(trial_id, None)

    def _policy_state(self) -> Any:
        return pickle.dumps({"study": self._study, "open": self._open})  # study, open trials, sampler RNG

    def _load_policy_state(self, state: Any) -> None:
        loaded = pickle.loads(state)
        self._study, self._open = loaded["study"], loaded["open"]


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
        raise ValueError(f"search: bad value {search!r}; allowed: {', '.join(SEARCHERS)}")
    cls = SEARCHERS[search]
    if cls is not ControllerSearcher:
        for key in ("controller_kwargs", "reinforce_kwargs", "prior_strength", "recipe_strength"):
            kwargs.pop(key, None)
    return cls(space, **kwargs)
