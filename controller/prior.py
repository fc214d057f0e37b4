"""The controller's starting point: mild plans first.

A uniform policy over a plan space samples many catastrophic plans early (half of a
probability's choices are >= 0.25; with a regularizer at most sites the child barely trains),
and in a budget of tens of trials those rewards teach the controller little except "not that".
Starting from a prior that favours ``none`` and small probabilities spends the first trials on
plausible plans; REINFORCE moves away from the prior as rewards come in.

The prior is in logits (after the controller's temperature and tanh clipping): 0 everywhere
is the uniform policy.
"""

from __future__ import annotations

from typing import Any

from search_space.errors import user_error

__all__ = ["mild_prior", "recipe_prior", "start_recipes", "starting_prior", "PRIOR_PARAMS"]

#: Parameters whose larger values regularize harder: their logits fall linearly with the value.
PRIOR_PARAMS = ("drop_prob", "dist_prob", "alpha")


def mild_prior(space: Any, strength: float = 1.5) -> list[list[float]]:
    """Per decision of ``space`` (a SearchSpace), one logit per choice.

    method decisions: ``none`` gets ``+strength / 2``; probability-like parameters
    (``PRIOR_PARAMS``): ``-strength * value / max value`` (so ``p=0`` is ``e**strength``
    times as likely as the largest ``p``); other decisions stay uniform.
    """
    if not strength >= 0:
        raise user_error("prior_strength", strength, "a number >= 0")
    out: list[list[float]] = []
    for d in space.decisions:
        if d.param == "method":
            out.append([strength / 2 if c == "none" else 0.0 for c in d.choices])
        elif d.param in PRIOR_PARAMS:
            top = max(float(c) for c in d.choices) or 1.0
            out.append([-strength * float(c) / top for c in d.choices])
        else:
            out.append([0.0] * len(d.choices))
    return out


def recipe_prior(space: Any, tokens: list[int], strength: float = 2.0) -> list[list[float]]:
    """Extra logits that favour one known plan (``tokens`` of ``space``), e.g. the best tuned
    global recipe: ``+strength`` on its choice at every decision it uses, 0 elsewhere.

    The controller then samples that recipe with per-stage (per-site) changes: with strength 2
    a method decision of 6 choices keeps the recipe's method with probability ~0.6, a
    probability of 11 choices keeps its value with ~0.4, so a sampled plan usually refines a
    few groups of the recipe instead of starting from nothing.
    """
    if not strength >= 0:
        raise user_error("recipe_strength", strength, "a number >= 0")
    active = space.active_mask(tokens)
    return [
        [strength if (on and c == t) else 0.0 for c in range(len(d.choices))]
        for d, t, on in zip(space.decisions, tokens, active)
    ]


def start_recipes(
    tuned_best: tuple[list[int], float] | None, learned: tuple[list[int], float] | None
) -> list[tuple[list[int], float]]:
    """Where the controller starts, as (tokens, weight) pairs: the best tuned recipe and the
    plan the learned rates make (``controller.learned``), each given with its search-stage
    reward. The one with the higher reward weighs 1, the other 1/2 (ties: the tuned recipe).

    Why both, and unequally: the two say different things (the tuned recipe which method and
    global rate work; the learned rates where to drop more or less), and each reward is one
    noisy training (the learned trial's is even of Concrete Dropout, not of its rounded plan),
    so neither is dropped; the better-looking one dominates, where they agree the choice
    weighs 1.5, and where they differ the sampled plans mix the two group by group, which
    REINFORCE then sorts out.
    """
    given = [r for r in (tuned_best, learned) if r is not None]
    if len(given) < 2:
        return [(list(t), 1.0) for t, _ in given]
    first, second = (tuned_best, learned) if tuned_best[1] >= learned[1] else (learned, tuned_best)
    return [(list(first[0]), 1.0), (list(second[0]), 0.5)]


def starting_prior(space: Any, recipes: list[tuple[list[int], float]], strength: float = 2.0) -> list[list[float]]:
    """The sum of `recipe_prior` over weighted ``recipes`` (`start_recipes`), one table of
    logits (the controller adds it once: its tanh clipping is not additive)."""
    total = [[0.0] * len(d.choices) for d in space.decisions]
    for tokens, weight in recipes:
        for row, extra in zip(total, recipe_prior(space, tokens, strength * weight)):
            for i, v in enumerate(extra):
                row[i] += v
    return total
