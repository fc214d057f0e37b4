"""The confirmation's verdict, which alone decides do no harm after a race.

Each confirmed searched plan is compared with each confirmed baseline on the confirmation's
fresh seeds; its p-value is the largest of those paired t-tests (an intersection-union test:
better than every baseline, or not shown better), and Holm over the plans confirmed decides.
A pure function of the recorded values, so ``controller.race`` stays the rounds and their
bookkeeping (see its docstring for the whole procedure).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from controller.stats import BETTER, CANNOT_TELL, MIN_SEEDS, TOO_FEW, WORSE, Paired, holm, holm_adjusted, paired

FAILED = "failed"

__all__ = ["confirmation_verdict"]


def _p_or_inf(p: float) -> float:
    return p if math.isfinite(p) else math.inf


def confirmation_verdict(
    confirmed: Sequence[str],
    comparators: Sequence[str],
    values: Mapping[str, Mapping[int, float]],
    mode: str,
    alpha: float,
    order: Mapping[str, int],
) -> tuple[dict[str, dict[str, Any]], str]:
    """Each confirmed plan's row (``paired``: its binding comparison, ``vs``, ``p_holm``,
    ``word``, ``m``) and the label to export: the better plan with the largest mean difference
    (ties to the first in ``order``), else the best baseline.

    ``comparators``: the confirmed baselines, best first (at least one); ``values``: label ->
    seed -> value on the confirmation's seeds (NaN: failed); ``alpha``: Holm's family-wise level.
    """
    binding: list[tuple[str, Paired] | None] = []
    every: list[list[Paired]] = []
    for c in confirmed:
        vals = values[c]
        cmps = [(b, paired(vals, values[b], mode)) for b in comparators]
        every.append([cmp_ for _, cmp_ in cmps])
        if any(not math.isfinite(v) for v in vals.values()):
            binding.append(None)
            continue
        # the comparison that binds: the largest p (NaN largest of all), first listed on ties
        binding.append(max(cmps, key=lambda bc: (_p_or_inf(bc[1].p_value), -comparators.index(bc[0]))))
    p = [b[1].p_value if b is not None else float("nan") for b in binding]
    rejected = holm(p, alpha)
    adjusted = holm_adjusted(p)
    confirmation: dict[str, dict[str, Any]] = {}
    for c, bc, others, rej, p_adj in zip(confirmed, binding, every, rejected, adjusted):
        cmp_ = bc[1] if bc is not None else None
        if cmp_ is None:
            word = FAILED
        elif cmp_.n < MIN_SEEDS:
            word = TOO_FEW
        elif rej and all(o.mean > 0 for o in others):
            word = BETTER
        elif rej and all(o.mean < 0 for o in others):
            word = WORSE
        else:
            word = CANNOT_TELL
        confirmation[c] = {
            "paired": cmp_,
            "vs": bc[0] if bc is not None else comparators[0],
            "p_holm": p_adj,
            "word": word,
            "m": len(confirmed),
        }
    better = [c for c in confirmed if confirmation[c]["word"] == BETTER]
    exported = max(better, key=lambda c: (confirmation[c]["paired"].mean, -order[c])) if better else comparators[0]
    return confirmation, exported
