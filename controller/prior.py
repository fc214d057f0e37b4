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

__all__ = ["mild_prior", "recipe_prior", "PRIOR_PARAMS"]

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
