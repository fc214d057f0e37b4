"""The final stage as a race under a budget of trainings, then a confirmation on fresh seeds.

Fixed "top k times 3 seeds" spends as much on a plan 3 points behind as on the two that are
0.2 apart, and tests each finalist at 95% with no correction. A race spends seeds where the
noise is (SMAC's intensifier, irace; ``REFERENCES.md``):

1. **Rounds.** Every contender (searched plans, hand-set baselines, tuned recipes) starts on
   the same ``start_seeds`` seeds of the pool. When every training of a round has ended, the
   leader is the survivor with the best mean; every other survivor is compared with it in
   pairs over their shared seeds (``controller.stats.paired``, Student-t at n - 1 df) and
   those Holm finds worse (``controller.stats.holm`` at ``race_alpha``, the round's
   comparisons being the family) leave. The leader never leaves. Survivors get more seeds
   (``growth``: ``x2`` doubles their count like SMAC, ``+k`` adds k like irace), as many as
   the race's share of the budget allows, the same seeds for all, until one is left or the
   share is spent. A round waits for all its trainings: eliminations are decided on
   complete, equal seed sets only.
2. **Confirmation.** The race's own numbers carry the winner's curse, so nothing is claimed
   from them. The best searched survivors (the winner, or the top ``confirm_max`` by mean when
   the budget ran out with several) and the best ``confirm_baselines`` baselines (the
   non-searched contenders best by their mean over the seeds they all share, eliminated or
   not; the first is "the best baseline") are trained on seeds the race never used: the pool's next
   ones. The confirmation's seeds come out of the same budget: the race keeps
   ``(confirm_max + confirm_baselines) * confirm_seeds`` trainings aside, and the
   confirmation gets everything the race left, split evenly (so never fewer than
   ``confirm_seeds`` each). A stage with nothing to confirm (no searched survivor, or no
   baseline) ends without spending the rest.
3. **Do no harm** decides on the confirmation alone: a searched plan is exported only when it
   is better than each confirmed baseline, its p-value being the largest of its paired
   t-tests against them (an intersection-union test), and Holm (at ``alpha``, over the
   searched plans confirmed) rejects "no difference" with every difference positive. With
   one plan and one baseline that is its 95% paired interval lying wholly above 0. Otherwise
   the best baseline is exported. Why two baselines by default: among baselines a few tenths
   apart the race often names the wrong one best, and a plan shown better than the second
   best is not shown better than the best (``benchmarks/race_sim.py``: "better" said of a
   plan merely equal to the best baseline in 5-6% of stages against one, 1.6% against two).

**Failures.** A training that fails or diverges (value NaN) removes its contender at the end
of the round (reason "failed"): a plan that diverged on one seed of a few is not one to
hand a user, and counting it as the worst value would need a number for "worst" that a
t-test can use. A failed contender is never the leader, never the best baseline, and a
searched plan that fails a confirmation seed is not exported. A best baseline's failed
confirmation seed drops out of the pairs.

**State is the results.** Everything a ``Race`` decides is a function of its static inputs
(contenders, seed pool, budget, settings, mode) and the results in the order they were
recorded; ``Race.replay`` rebuilds it from a ledger's rows, so an interruption at any point
resumes to the same decisions. The race knows nothing of Ray or the run folder.

What a race is given (`Contender`, `RaceSettings`) is ``controller.race_settings``; the
confirmation's verdict is ``controller.race_confirmation``; both are importable from here.
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Collection, Iterable, Sequence
from typing import Any

from controller.race_confirmation import FAILED, confirmation_verdict
from controller.race_settings import BASELINE, KINDS, SEARCHED, TUNED, Contender, RaceSettings
from controller.stats import holm, holm_adjusted, paired, standard_error
from search_space.errors import user_error

__all__ = [
    "SEARCHED",
    "BASELINE",
    "TUNED",
    "KINDS",
    "WINNER",
    "SURVIVOR",
    "FAILED",
    "RACE",
    "CONFIRM",
    "DONE",
    "Contender",
    "RaceSettings",
    "Race",
    "holm_adjusted",
]

log = logging.getLogger(__name__)

WINNER, SURVIVOR = "winner", "survivor"
RACE, CONFIRM, DONE = "race", "confirm", "done"


class Race:
    """A race of ``contenders`` on the ``seeds`` pool (at least ``budget`` distinct seeds, used
    from the front) under ``budget`` trainings, confirmation included.

    Drive it with ``requests(running)`` (the trainings to start now) and ``record(label,
    seed, value)`` (NaN or None for a training that failed or diverged) until ``done``; then
    ``exported`` names the plan to export and ``table()`` says why. ``mode`` is ``"max"`` when
    larger values are better.
    """

    def __init__(
        self,
        contenders: Sequence[Contender | tuple[str, str]],
        seeds: Sequence[int],
        budget: int,
        settings: RaceSettings | None = None,
        mode: str = "max",
    ) -> None:
        self.settings = settings if settings is not None else RaceSettings()
        self.contenders = [c if isinstance(c, Contender) else Contender(*c) for c in contenders]
        labels = [c.label for c in self.contenders]
        for c in self.contenders:
            if c.kind not in KINDS:
                raise user_error("contenders", f"{c.label}: {c.kind}", f"kinds {', '.join(KINDS)}")
        if len(set(labels)) != len(labels):
            raise user_error("contenders", labels, "distinct labels")
        if mode not in ("max", "min"):
            raise user_error("mode", mode, "max, min")
        self.mode, self.sign = mode, 1.0 if mode == "max" else -1.0
        need = self.min_budget(self.contenders, self.settings)
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < (need if len(labels) > 1 else 0):
            raise user_error(
                "budget",
                budget,
                f"an integer >= {need} ({len(labels)} contenders x {self.settings.start_seeds} start seeds "
                f"+ {self._reserve(self.contenders, self.settings)} confirmation trainings)",
            )
        self.budget = budget
        self.seeds = [int(s) for s in seeds]
        if len(set(self.seeds)) != len(self.seeds) or len(self.seeds) < self.budget:
            raise user_error("seeds", f"{len(self.seeds)} seeds", f"at least budget ({self.budget}) distinct seeds")
        self._index = {label: i for i, label in enumerate(labels)}
        self._seed_pos = {s: i for i, s in enumerate(self.seeds)}
        self._kind = {c.label: c.kind for c in self.contenders}
        self._race_budget = self.budget - self._reserve(self.contenders, self.settings)
        self._values: dict[str, dict[int, float]] = {label: {} for label in labels}  # race seeds
        self._confirm_values: dict[str, dict[int, float]] = {}
        self._alive = list(labels)
        self._exit: dict[str, dict[str, Any]] = {}  # label -> round, reason, p_holm
        self._round, self._n, self._planned = 0, 0, 0
        self._pending: set[tuple[str, int]] = set()
        self.phase = RACE
        self.winner: str | None = None
        self.comparator: str | None = None  # the best baseline
        self.comparators: list[str] = []  # the baselines confirmed against, best first
        self.confirmed: list[str] = []
        self.confirmation: dict[str, dict[str, Any]] = {}
        self.exported: str | None = None
        self.log: list[str] = []  # what each round decided, in plain words
        self.round_seeds: list[int] = []  # seeds every contender in round r had by its end (r from 1)
        if len(self._alive) <= 1:
            self._end_race()
        else:
            self._next_round(self.settings.start_seeds)

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _reserve(contenders: Sequence[Contender], settings: RaceSettings) -> int:
        """Trainings kept for the confirmation: none when nothing could be confirmed (no
        searched contender, or no baseline to confirm against)."""
        n_searched = sum(c.kind == SEARCHED for c in contenders)
        n_base = len(contenders) - n_searched
        if not n_searched or not n_base:
            return 0
        groups = min(settings.confirm_max, n_searched) + min(settings.confirm_baselines, n_base)
        return groups * settings.confirm_seeds

    @classmethod
    def min_budget(cls, contenders: Sequence[Contender | tuple[str, str]], settings: RaceSettings) -> int:
        """The smallest budget a race of these contenders accepts."""
        cs = [c if isinstance(c, Contender) else Contender(*c) for c in contenders]
        return len(cs) * settings.start_seeds + cls._reserve(cs, settings)

    @classmethod
    def replay(
        cls,
        contenders: Sequence[Contender | tuple[str, str]],
        seeds: Sequence[int],
        budget: int,
        settings: RaceSettings | None,
        mode: str,
        results: Iterable[tuple[str, int, float | None]],
    ) -> Race:
        """The race that recorded ``results`` ((label, seed, value) in the order they finished,
        as the ledger holds them): the same decisions as the live race at that point."""
        race = cls(contenders, seeds, budget, settings, mode)
        for label, seed, value in results:
            race.record(label, seed, value)
        return race

    # ------------------------------------------------------------------ driving
    @property
    def done(self) -> bool:
        return self.phase == DONE

    @property
    def round(self) -> int:
        """The race's current (or last) round, from 1."""
        return self._round

    @property
    def planned(self) -> int:
        """Trainings asked for so far (race and confirmation); never above ``budget``."""
        return self._planned

    @property
    def recorded(self) -> int:
        return sum(len(v) for v in self._values.values()) + sum(len(v) for v in self._confirm_values.values())

    def requests(self, running: Collection[tuple[str, int]] = ()) -> list[tuple[str, int]]:
        """(label, seed) of every training the current round (or the confirmation) still needs
        and that is not in ``running``: seed by seed, contenders in their order."""
        busy = {(str(label), int(seed)) for label, seed in running}
        todo = sorted(self._pending, key=lambda ls: (self._seed_pos[ls[1]], self._index[ls[0]]))
        return [ls for ls in todo if ls not in busy]

    def record(self, label: str, seed: int, value: float | None) -> None:
        """One training's result (NaN, inf or None: failed). A result recorded twice counts
        once (the first); one the race never asked for is a bug and raises ValueError."""
        seed = int(seed)
        if label not in self._index:
            raise RuntimeError(f"race: unknown contender {label!r}")
        if seed in self._values[label] or seed in self._confirm_values.get(label, {}):
            log.warning("race: %s on seed %d recorded twice; the first result counts", label, seed)
            return
        if (label, seed) not in self._pending:
            raise RuntimeError(f"race: {label} on seed {seed} was not asked for ({self.phase}, round {self._round})")
        v = float("nan") if value is None else float(value)
        v = v if math.isfinite(v) else float("nan")
        target = self._values if self.phase == RACE else self._confirm_values
        target.setdefault(label, {})[seed] = v
        self._pending.discard((label, seed))
        if not self._pending:
            if self.phase == RACE:
                self._close_round()
            else:
                self._close_confirmation()

    # ------------------------------------------------------------------ the race
    def _mean(self, label: str, values: dict[str, dict[int, float]] | None = None) -> float:
        vals = [v for v in (values or self._values).get(label, {}).values() if math.isfinite(v)]
        return statistics.fmean(vals) if vals else float("nan")

    def _best(self, labels: Iterable[str]) -> str:
        """The best by mean; ties go to the contender listed first."""
        return max(labels, key=lambda c: (self.sign * self._mean(c), -self._index[c]))

    def _next_round(self, target: int) -> None:
        """Plan a round that brings every survivor to ``target`` seeds, fewer if the race's
        share of the budget runs short; end the race if not one more seed each fits."""
        room = (self._race_budget - self._planned) // len(self._alive)
        extra = min(target - self._n, room)
        if extra <= 0:
            self.log.append(f"round {self._round}: the race's budget is spent with {len(self._alive)} survivors")
            self._end_race()
            return
        new = self.seeds[self._n : self._n + extra]
        self._round += 1
        self._n += extra
        self.round_seeds.append(self._n)
        self._pending = {(label, s) for label in self._alive for s in new}
        self._planned += len(self._pending)

    def _close_round(self) -> None:
        r = self._round
        for label in list(self._alive):
            bad = [s for s, v in self._values[label].items() if not math.isfinite(v)]
            if bad:
                self._alive.remove(label)
                self._exit[label] = {"round": r, "reason": f"failed on seed {bad[0]}", "p_holm": float("nan")}
                self.log.append(f"round {r}: {label} failed on seed {bad[0]} and leaves")
        if self._alive:
            leader = self._best(self._alive)
            others = [c for c in self._alive if c != leader]
            cmps = [paired(self._values[c], self._values[leader], self.mode) for c in others]
            p = [c.p_value for c in cmps]
            rejected = holm(p, self.settings.race_alpha)
            adjusted = holm_adjusted(p)
            for c, cmp_, rej, p_adj in zip(others, cmps, rejected, adjusted):
                if rej and cmp_.mean < 0:
                    self._alive.remove(c)
                    reason = f"worse than {leader} ({cmp_.mean:+.4g} over {cmp_.n} seeds, Holm-adjusted p {p_adj:.3g})"
                    self._exit[c] = {"round": r, "reason": reason, "p_holm": p_adj}
                    self.log.append(f"round {r}: {c} leaves, {reason}")
        if len(self._alive) <= 1:
            self._end_race()
        else:
            self._next_round(self.settings.grow(self._n))

    # ------------------------------------------------------------------ the confirmation
    def _end_race(self) -> None:
        self._pending = set()
        if len(self._alive) == 1:
            self.winner = self._alive[0]
        searched = sorted(
            (c for c in self._alive if self._kind[c] == SEARCHED),
            key=lambda c: (-self.sign * self._mean(c), self._index[c]),
        )
        self.confirmed = searched[: self.settings.confirm_max]
        ranked = self._ranked_baselines()
        self.comparator = ranked[0] if ranked else None
        if not self.confirmed or self.comparator is None:
            self.exported = self.comparator or (searched[0] if searched else None)
            self.phase = DONE
            return
        self.comparators = ranked[: self.settings.confirm_baselines]
        group = [*self.confirmed, *self.comparators]
        per = (self.budget - self._planned) // len(group)
        new = self.seeds[self._n : self._n + per]
        self._pending = {(label, s) for label in group for s in new}
        self._planned += len(self._pending)
        self.phase = CONFIRM
        self.log.append(
            f"confirmation: {', '.join(self.confirmed)} against {', '.join(self.comparators)} on {per} fresh seeds"
        )

    def _ranked_baselines(self) -> list[str]:
        """The non-searched contenders, best first by their mean over the seeds they all share
        (the race's first seeds: a paired ranking on the same seeds), then by how long they
        stayed; never one that failed. Not by how long they stayed first: a noisy baseline
        stays longer because its comparisons are inconclusive, not because it is better, and
        the best baseline is the one a searched plan has to beat."""
        pool = [
            c
            for c in self._index
            if self._kind[c] != SEARCHED and not str(self._exit.get(c, {}).get("reason", "")).startswith("failed")
        ]
        shared = set.intersection(*(set(self._values[c]) for c in pool)) if pool else set()

        def key(c: str) -> tuple[float, float, int]:
            values = [v for v in (self._values[c][s] for s in shared) if math.isfinite(v)]
            mean = math.fsum(values) / len(values) if values else self._mean(c)
            stayed = math.inf if c in self._alive else self._exit[c]["round"]
            return (self.sign * mean if math.isfinite(mean) else -math.inf, stayed, -self._index[c])

        return sorted(pool, key=key, reverse=True)

    def _close_confirmation(self) -> None:
        """The confirmation's verdict (``controller.race_confirmation``) decides the export."""
        self.confirmation, self.exported = confirmation_verdict(
            self.confirmed, self.comparators, self._confirm_values, self.mode, self.settings.alpha, self._index
        )
        self._pending = set()
        self.phase = DONE

    # ------------------------------------------------------------------ reading
    def _ordered(self, values: dict[int, float]) -> dict[int, float]:
        return {s: values[s] for s in sorted(values, key=self._seed_pos.__getitem__)}

    def table(self) -> list[dict[str, Any]]:
        """One row per contender, in their order: its race seeds and values, mean and standard
        error over them, how it left the race (``left``: the round, or winner / survivor), and,
        for the confirmed plans and the best baseline, the confirmation's values and (searched
        plans) the paired comparison with the best baseline, its Holm-adjusted p and word."""
        rows = []
        for c in self.contenders:
            label = c.label
            vals = self._values[label]
            finite = [v for v in vals.values() if math.isfinite(v)]
            if label in self._exit:
                left: Any = self._exit[label]["round"]
            elif label == self.winner:
                left = WINNER
            elif label in self._alive and self.phase != RACE:
                left = SURVIVOR
            else:
                left = ""
            conf = self.confirmation.get(label, {})
            rows.append(
                {
                    "label": label,
                    "kind": c.kind,
                    "seeds": list(self._ordered(vals)),
                    "values": self._ordered(vals),
                    "mean": self._mean(label),
                    "se": standard_error(finite),
                    "failed": any(not math.isfinite(v) for v in vals.values()),
                    "left": left,
                    "reason": self._exit.get(label, {}).get("reason", ""),
                    "exit_p_holm": self._exit.get(label, {}).get("p_holm", float("nan")),
                    "confirm_values": self._ordered(self._confirm_values.get(label, {})),
                    "confirm_mean": self._mean(label, self._confirm_values),
                    "confirm": conf.get("paired"),
                    "confirm_vs": conf.get("vs", ""),
                    "confirm_p_holm": conf.get("p_holm", float("nan")),
                    "confirm_word": conf.get("word", ""),
                    "comparator": label == self.comparator,
                    "confirmed_against": label in self.comparators,
                    "exported": label == self.exported,
                }
            )
        return rows
