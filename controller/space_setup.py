"""What a new search starts from, checked before Ray starts: the search space (from the
model, and from its output shapes with an example input), the baseline plans, and the tuned
global recipes the budget allows.

Apart from ``controller.api`` (the search's life: settings, the lock, resume, the Tuner),
which re-exports `tuned_recipes`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from controller.checks import resolve_sites
from controller.config import SearchConfig
from search_space.errors import UserTypeError, user_error

log = logging.getLogger("controller.api")  # the driver's voice, whose INFO lines a verbose search shows


def tuned_recipes(space: Any, tuned_trials: int | str, num_samples: int, exclude: Any = ()) -> dict[str, list[Any]]:
    """Method -> grid plans of the tuned global recipes, within ``num_samples`` trainings."""
    from search_space.baselines import TUNED_GRIDS, tuned_grid, tuned_methods

    methods = tuned_methods(space)
    if tuned_trials == "auto":
        per = int(0.25 * num_samples / len(methods)) if methods and num_samples >= 4 * len(methods) else 0
    else:
        if tuned_trials and (not methods or tuned_trials < len(methods)):
            raise user_error(
                "tuned_trials",
                tuned_trials,
                f"0, auto, or at least one per tuned method ({', '.join(methods) or 'none fit this space'})",
            )
        per = tuned_trials // len(methods) if methods else 0
    per = min(per, *(len(TUNED_GRIDS[m]) for m in methods)) if per else 0
    out = {m: tuned_grid(space, m, per, exclude) for m in methods} if per else {}
    out = {m: plans for m, plans in out.items() if plans}  # a method no site allows is not tuned
    if out:
        log.info(
            "tuned global recipes: %d of %d trainings (%s; %d grid points each)",
            per * len(methods),
            num_samples,
            ", ".join(methods),
            per,
        )
    return out


def _space_and_baselines(
    model_fn: Callable[[], Any], config: SearchConfig, example_input: Any
) -> tuple[Any, dict[str, Any]]:
    """The search space and the baseline plans, checked before Ray starts. With
    ``example_input`` the space comes from output shapes and layouts (``search_space.describe``)
    and every method is tried forward and backward on it (``check_plans``), so a plan that
    cannot train is refused here, naming the site, the method and the shape."""
    from torch import nn

    from search_space.apply import find_sites
    from search_space.baselines import baseline_plans, convnet_baselines
    from search_space.describe import candidate_sites, check_plans
    from search_space.plan import Plan
    from search_space.space import SearchSpace

    sites, methods, model_name, baselines = config.sites, config.methods, config.model_name, config.baselines
    layouts = config.layouts
    model = model_fn()
    if not isinstance(model, nn.Module):
        raise user_error(
            "model_fn",
            detail=f"returned a {type(model).__name__}; expected a function returning an nn.Module",
            cls=UserTypeError,
        )
    if example_input is not None:
        found = candidate_sites(model, example_input)
        chosen, share = resolve_sites(found, sites, modules=[n for n, _ in model.named_modules() if n])
        space = SearchSpace.for_model(
            model,
            sites=chosen,
            share=share,
            methods=methods,
            model_name=model_name,
            example_input=example_input,
            layouts=layouts,
        )
        check_plans(model, space, example_input)
    else:
        found = find_sites(model)
        chosen, share = resolve_sites(found, sites)
        space = SearchSpace.for_model(
            model, sites=chosen, share=share, methods=methods, model_name=model_name, layouts=layouts
        )
    if isinstance(baselines, Mapping):
        plans = {str(k): space.with_layouts(v) for k, v in baselines.items()}
    else:
        names = tuple(baselines)
        if not convnet_baselines(space):
            # a Transformer or recurrent model (the practitioners' recipe), or one without maps
            allowed = space.baseline_plans()
            bad = [n for n in names if n not in allowed]
            if bad:
                kind = "a Transformer or recurrent model" if "seq_pattern" in space.methods else "a model without maps"
                raise user_error("baselines", bad[0], f"{', '.join(allowed)} (for {kind})")
            plans = {n: allowed[n] for n in names}
        elif any(n != "none" for n in names) and example_input is None:
            raise user_error(
                "example_input",
                None,
                "one input batch of the model (baselines other than 'none' place their layers by feature-map size)",
            )
        elif names == ("none",) or not names:
            plans = {"none": Plan.none(space.sites, model=model_name)} if names else {}
        else:
            plans = baseline_plans(model, space.sites, example_input, model_name, names, space.layouts or None)
    return space, plans
