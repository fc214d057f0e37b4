"""Every setting of a search in one place: ``SearchConfig`` (what the search is: saved in the
run folder, read back on resume) and ``RunConfig`` (where this driver runs it: never saved).

The split follows Ray Tune's ``TuneConfig`` / ``RunConfig``. A setting is one dataclass field
whose metadata (``setting(...)``) carries its help text and how the command line shows it, so
adding one is a one-place change: ``launch_search.py`` generates its flags from these fields
(``add_flags``), ``run_search`` takes them as keywords, ``search_config.json`` stores them by
name (``to_dict`` / ``from_dict``), and a resume reads them back
(``controller.run_folder.settings``). Each config checks itself once, on construction, with
the one-line errors of ``search_space.errors`` (the field's name is the flag's name).
Only the standard library and ``controller.checks`` are imported at module level: checks that
need torch or Ray import them when they run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.checks import (
    FINAL_SEED_OFFSET,
    MAX_TRIALS,
    _check_callbacks,
    check_name,
    check_resources,
    check_trial_timeout,
)
from controller.config_fields import add_flags, auto_or_int, command_default, flag_of, layouts_flag, names, setting
from search_space.errors import SEED_MAX, UserTypeError, check_number, user_error

__all__ = [
    "SearchConfig",
    "RunConfig",
    "setting",
    "add_flags",
    "command_default",
    "flag_of",
    "SEARCH_NAMES",
    "SCHEDULERS",
    "MAX_TRIALS",
    "MAX_REDRAWS",
    "FINAL_SEED_OFFSET",
]

SEARCH_NAMES = ("controller", "random", "tpe")  # controller.policies.SEARCHERS, in this order
SCHEDULERS = ("fifo", "asha")
FINAL_STAGES = ("race", "fixed")
#: ``final_budget="auto"``: trainings per finalist (``benchmarks/race_sim.py``: ~4 each exports a
#: 1-point-better plan in 98% of simulated stages, with false exports under 0.5%).
AUTO_BUDGET_PER_FINALIST = 4
#: Default of ``max_redraws``: draws of a sampler to find a plan not trained yet.
MAX_REDRAWS = 25


def _int(name: str, value: Any, low: int, high: int | None = None) -> None:
    check_number(name, value, low, high, integer=True)


def _seq(value: Any) -> Any:
    """A list from JSON or a caller as a tuple (a frozen config compares and prints alike)."""
    return tuple(value) if isinstance(value, (list, tuple)) else value


# ----------------------------------------------------------------------------- the configs
@dataclass(frozen=True)
class SearchConfig:
    """What a search is: its budget and stages, the objective, the space, the searcher and
    the trials' limits. Saved in ``search_config.json``; a resume reads it back from there,
    never from the caller (``controller.run_folder.settings.resume_settings``)."""

    # --- the budget and the stages
    num_samples: int = setting(
        16,
        "trainings of the search: tuned global recipes + sampled plans "
        "(hand-set baselines and the final stage come on top)",
    )
    search: str = setting("controller", "controller (LSTM + REINFORCE), random, or tpe (Optuna)")
    reward_seeds: int = setting(1, "trainings per plan with different seeds; the reward is their mean")
    baselines: Any = setting(
        ("none",),
        "hand-set plans in every search, comma-separated (command default: all 4; none,dropout for "
        "Transformers and models without feature maps); from Python also a mapping name -> Plan",
        command=None,
        parse=names,
    )
    learned_rates: bool = setting(True, "one training that learns each site's rate: a baseline (learned-rates)")
    tuned_trials: int | str = setting(
        "auto",
        "trainings of --num-samples that tune one method at every site (dropout, "
        "DropBlock or the sequence pattern) on a small grid; auto: a quarter; 0: off",
        parse=auto_or_int,
    )
    final_top_k: int = setting(
        3, "best distinct sampled plans that enter the final stage beside the baselines (0: no final stage)"
    )
    final_stage: str = setting(
        "race",
        "race: the finalists race on shared fresh seeds within --final-budget trainings, the clearly worse "
        "leaving each round, then the winner is confirmed on seeds the race never used; fixed: every "
        "finalist on --final-seeds seeds (the stage of run folders before the race)",
    )
    final_budget: int | str = setting(
        "auto",
        "trainings of a raced final stage, confirmation included; auto: 4 per finalist, at least what "
        "the race needs (finalists x --race-start-seeds + the confirmation's)",
        parse=auto_or_int,
    )
    final_seeds: int = setting(3, "fresh seeds per finalist of a fixed final stage (--final-stage fixed)")
    race_start_seeds: int = setting(2, "seeds every finalist of the race starts on (2 or more)")
    race_growth: str = setting("+1", "how survivors' seeds grow per round: +N adds N (irace), xN multiplies (SMAC)")
    race_alpha: float = setting(0.2, "family-wise level (Holm) at which a round drops the clearly worse")
    confirm_seeds: int = setting(5, "fewest fresh seeds of the confirmation per plan confirmed (3 or more)")
    confirm_baselines: int = setting(
        2, "best baselines a searched plan must be shown better than, on the confirmation's seeds"
    )
    confirm_max: int = setting(1, "most searched survivors confirmed when the budget ends the race with several")
    seed: int = setting(0, "seed of the searcher and the children")
    # --- the trials
    max_concurrent: int | None = setting(None, "trials at once (default: what the cluster's resources allow)")
    cpus_per_trial: float = setting(1.0, "CPUs per trial, also its torch threads")
    gpus_per_trial: float | None = setting(
        None, "fractional allowed, e.g. 0.25 (default 0.25 if the cluster has GPUs, else 0)"
    )
    scheduler: Any = setting(
        "fifo",
        "fifo or asha (stops weak trials early; their last value is the reward); from Python also a "
        "ray.tune TrialScheduler",
    )
    max_epochs: int | None = setting(
        None, "epochs one seed trains (asha needs it; the command sets it from --epochs)", flag=False
    )
    trial_timeout: float | None = setting(
        None,
        "seconds one trial may run (all its reward seeds); past it the trial is recorded as "
        "timeout with the penalty reward and the search goes on (default: no limit)",
    )
    max_failures: int = setting(0, "times Tune retries a trial whose worker died", flag=False)
    penalty_reward: float | None = setting(
        None, "reward of a failed or diverged plan (None: the worst so far; the command: chance level)", flag=False
    )
    # --- the searcher
    controller_batch: int = setting(4, "finished trials per REINFORCE update")
    controller_lr: float | None = setting(
        None, "controller Adam learning rate in (0, 1] (0.01 suits hundreds of trials)", command=0.05
    )
    controller_kwargs: Mapping[str, Any] = setting(
        help="keyword arguments of controller.lstm.LSTMController", flag=False, default_factory=dict
    )
    max_redraws: int = setting(
        MAX_REDRAWS,
        "draws of the sampler to find a plan no trial has trained or is training, before a "
        "repeat is trained (0: every draw is trained)",
    )
    # --- the objective and the space
    metric: str = setting("val_acc", "the metric train_fn reports (the command: from the model)", flag=False)
    mode: str = setting("max", "max or min", flag=False)
    reward_transform: str = setting("", "identity, negate or neg_log (run_folder.Objective)", flag=False)
    sites: Any = setting(
        "all", "stage (one decision set per stage or block), all, or module paths / globs", command="stage"
    )
    layouts: Mapping[str, str] | None = setting(
        None,
        "site=LAYOUT pairs for sites whose layout the model does not show, e.g. 'stages.*=NHWC,head.0=NC' "
        "(NCHW, NHWC, NCL, NCDHW, NDHWC, NTC, TNC, NC; see --describe's layout and note columns); "
        "from Python a mapping site or glob -> layout, checked against the output shapes",
        parse=layouts_flag,
    )
    methods: tuple[str, ...] | None = setting(None, "methods offered at the sites (None: all that fit)", flag=False)
    model_name: str = setting("", "the model's name in plans (the command: --model)", flag=False)
    # --- the built-in children (launch_search.py)
    child: str | None = setting(
        None,
        "module:function or file.py:function with train_child's signature (config, plan, "
        "report); sites come from the module's child_model(config) when it has one, else from --model",
    )
    train: Mapping[str, Any] | None = setting(
        None, "the built-in child's TrainConfig, shared by every trial (flags: the recipe's)", flag=False
    )
    extra: Mapping[str, Any] = setting(help="anything else to keep in search_config.json", flag=False,
                                       default_factory=dict)  # fmt: skip

    def __post_init__(self) -> None:
        for name in ("baselines", "methods"):
            if not isinstance(getattr(self, name), (str, Mapping)):
                object.__setattr__(self, name, _seq(getattr(self, name)))
        if not isinstance(self.sites, str):
            object.__setattr__(self, "sites", _seq(self.sites))
        for name in ("controller_kwargs", "extra"):
            object.__setattr__(self, name, dict(getattr(self, name) or {}))
        if self.train is not None:
            object.__setattr__(self, "train", dict(self.train))
        if self.layouts is not None:
            if not isinstance(self.layouts, Mapping):
                raise user_error("layouts", self.layouts, "a mapping site or glob -> layout name", cls=UserTypeError)
            object.__setattr__(self, "layouts", dict(self.layouts))
        self._check()

    def _check(self) -> None:  # noqa: C901 - one check per setting, in one place
        from controller.run_folder import Objective

        m = self.methods
        if m is not None and (isinstance(m, str) or not all(isinstance(x, str) for x in m)):
            raise user_error("methods", detail=f"expected None or a list of method names, got {m!r}", cls=UserTypeError)
        Objective(self.metric, self.mode, self.reward_transform)
        _int("num_samples", self.num_samples, 1, MAX_TRIALS)
        _int("reward_seeds", self.reward_seeds, 1, 1000)
        _int("final_top_k", self.final_top_k, 0, MAX_TRIALS)
        _int("final_seeds", self.final_seeds, 0, 1000)
        if self.final_stage not in FINAL_STAGES:
            raise user_error("final_stage", self.final_stage, ", ".join(FINAL_STAGES))
        if self.final_stage == "fixed" and self.final_top_k and not self.final_seeds:
            raise user_error(
                "final_seeds",
                self.final_seeds,
                "at least 1 when final_top_k > 0 (a final stage needs seeds), or final_top_k 0",
            )
        if self.final_budget != "auto":
            _int("final_budget", self.final_budget, 0, MAX_TRIALS)
        self.race_settings()  # checks the race's own settings
        _int("controller_batch", self.controller_batch, 1)
        _int("max_failures", self.max_failures, 0)
        _int("max_redraws", self.max_redraws, 0, 10_000)
        _int("seed", self.seed, 0, SEED_MAX)
        final = self.final_seeds if self.final_stage == "fixed" else self.final_budget
        top = max(self.reward_seeds - 1, FINAL_SEED_OFFSET + final - 1 if self.final_top_k and final != "auto" else 0)
        if self.seed + top > SEED_MAX:  # every seed the run uses, refused now rather than in a trial later
            raise user_error(
                "seed",
                self.seed,
                f"an integer in [0, {SEED_MAX - top}] (the run also uses seeds up to seed + {top}: "
                f"reward seeds{' and the final stage' if self.final_top_k else ''})",
            )
        check_trial_timeout(self.trial_timeout)
        if self.max_concurrent is not None:
            _int("max_concurrent", self.max_concurrent, 1)
        lr = self.controller_lr
        if lr is not None and not (
            isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and 0 < lr <= 1
        ):
            raise user_error("controller_lr", lr, "a number in (0, 1]")
        if isinstance(self.scheduler, str):
            if self.scheduler not in SCHEDULERS:
                raise user_error("scheduler", self.scheduler, f"{', '.join(SCHEDULERS)} or a ray.tune TrialScheduler")
            if self.scheduler == "asha":
                _int("max_epochs", self.max_epochs, 1)
        if self.max_epochs is not None:
            _int("max_epochs", self.max_epochs, 1)
        if self.search not in SEARCH_NAMES:
            raise user_error("search", self.search, ", ".join(SEARCH_NAMES))
        p = self.penalty_reward
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p)):
            raise user_error("penalty_reward", p, "a finite number or None (the worst reward so far)")
        check_resources({"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial})
        if self.tuned_trials != "auto":
            _int("tuned_trials", self.tuned_trials, 0, max(0, self.num_samples - 1))
        self._check_baselines()
        if not isinstance(self.sites, str) and not (
            isinstance(self.sites, tuple) and all(isinstance(s, str) for s in self.sites)
        ):
            raise user_error(
                "sites",
                detail=f"expected 'all', 'stage' or a list of module paths, got {type(self.sites).__name__}",
                cls=UserTypeError,
            )
        if self.child is not None and (not isinstance(self.child, str) or not self.child):
            raise user_error("child", self.child, "module:function or path/file.py:function")
        self._check_layouts()
        if not isinstance(self.model_name, str):
            raise user_error("model_name", self.model_name, "text")

    def _check_layouts(self) -> None:
        from search_space.layouts import get_layout

        for site, layout in (self.layouts or {}).items():
            if not isinstance(site, str) or not site:
                raise user_error("layouts", site, "site paths or glob patterns (text)")
            get_layout(layout, field=f"layouts[{site!r}]")

    def _check_baselines(self) -> None:
        if isinstance(self.baselines, Mapping):
            from search_space.plan import Plan

            plans = {str(k): Plan.from_dict(v) if isinstance(v, Mapping) else v for k, v in self.baselines.items()}
            object.__setattr__(self, "baselines", plans)
            for label, plan in self.baselines.items():
                if not isinstance(plan, Plan):
                    raise user_error(
                        f"baselines[{label!r}]", detail=f"bad value {type(plan).__name__}", allowed="a Plan"
                    )
            return
        from search_space.baselines import BASELINES

        if isinstance(self.baselines, str) or not all(isinstance(b, str) for b in self.baselines):
            raise user_error("baselines", self.baselines, "a list of names or a mapping name -> Plan")
        for b in self.baselines:
            if b not in BASELINES:
                raise user_error("baselines", b, ", ".join(BASELINES))
        if len(set(self.baselines)) != len(self.baselines):
            raise user_error("baselines", ",".join(self.baselines), "distinct names")

    # ---- search_config.json
    def to_dict(self) -> dict[str, Any]:
        """Every setting as JSON values, by field name (plans as their dicts; a Tune
        scheduler object by its class name: a resume cannot rebuild it from a folder)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(self.baselines, Mapping):
            out["baselines"] = {k: p.to_dict() for k, p in self.baselines.items()}
        if not isinstance(self.scheduler, str):
            out["scheduler"] = type(self.scheduler).__name__
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchConfig":
        """Inverse of ``to_dict`` (a setting missing from ``data`` takes its default, so a
        folder written before that setting existed still reads). A scheduler saved by class
        name (a Tune object) comes back as fifo unless a resume is given the object again."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise user_error(unknown[0], detail="not a setting of this version", allowed=", ".join(sorted(names)))
        kw = dict(data)
        if isinstance(kw.get("scheduler"), str) and kw["scheduler"] not in SCHEDULERS:
            kw["scheduler"] = "fifo"
        return cls(**kw)

    def race_settings(self) -> Any:
        """The race's settings (``controller.race.RaceSettings``), checked, each error naming
        its setting."""
        from controller.race import RaceSettings
        from search_space.errors import FieldError

        names = {"start_seeds": "race_start_seeds", "growth": "race_growth"}
        try:
            return RaceSettings(
                start_seeds=self.race_start_seeds,
                growth=self.race_growth,
                race_alpha=self.race_alpha,
                confirm_seeds=self.confirm_seeds,
                confirm_max=self.confirm_max,
                confirm_baselines=self.confirm_baselines,
            )
        except FieldError as exc:
            raise exc.renamed(names.get(exc.field, exc.field)) from None

    def final_budget_for(self, contenders: Sequence[tuple[str, str]]) -> int:
        """Trainings of the final stage for these (label, kind) finalists: a raced stage's
        budget (``auto``: 4 per finalist, at least the race's minimum; a budget below the
        minimum is refused, naming it), a fixed stage's finalists x seeds; 0 without a stage."""
        if not self.final_top_k or not contenders:
            return 0
        if self.final_stage == "fixed":
            return len(contenders) * self.final_seeds
        from controller.race import Race

        need = Race.min_budget(contenders, self.race_settings()) if len(contenders) > 1 else 0
        if self.final_budget == "auto":
            budget = max(need, AUTO_BUDGET_PER_FINALIST * len(contenders))
        elif self.final_budget < need:
            raise user_error(
                "final_budget",
                self.final_budget,
                f"auto or an integer >= {need} (the race of {len(contenders)} finalists needs "
                f"{self.race_start_seeds} seeds each plus its confirmation)",
            )
        else:
            budget = int(self.final_budget)
        top = max(self.reward_seeds - 1, FINAL_SEED_OFFSET + budget - 1)
        if self.seed + top > SEED_MAX:  # the race's seed pool, refused before Ray starts
            raise user_error(
                "seed",
                self.seed,
                f"an integer in [0, {SEED_MAX - top}] (the run also uses seeds up to seed + {top}: "
                f"reward seeds and the final stage's {budget})",
            )
        return budget

    def replace(self, **changes: Any) -> "SearchConfig":
        """A copy with ``changes``, checked again."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RunConfig:
    """Where this driver runs the search: the run folder's place, the Ray cluster, Tune's
    callbacks. Never saved in the run folder: a resume always takes them from its caller."""

    storage_path: Any = setting("runs", "parent folder of the run folder")
    name: str | None = setting(None, "run folder name (default DATASET-MODEL-SEARCH-DATE-TIME)")
    address: str | None = setting(None, "join a running Ray cluster (host:port or auto); default: local Ray")
    runtime_env: Mapping[str, Any] | None = setting(None, "Ray runtime_env of the job", flag=False)
    callbacks: Sequence[Any] = setting((), "ray.tune Callback objects (tune.RunConfig's)", flag=False)
    verbose: bool = setting(False, "the searcher's line per finished trial on stderr", flag=False)

    def __post_init__(self) -> None:
        if not isinstance(self.verbose, (bool, int)):
            raise user_error("verbose", detail=f"expected a bool, got {type(self.verbose).__name__}", cls=UserTypeError)
        object.__setattr__(self, "callbacks", tuple(_check_callbacks(self.callbacks or None)))
        if self.name is not None:
            check_name(self.name)
