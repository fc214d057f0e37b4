"""What can be searched and how a plan changes a model: layers, plans, the search space."""
from search_space.layers import (Disout, DropBlock2d, DropBlock3d, Dropout, LinearScheduler,
                                 PatternDropout, SpatialDropout)
from search_space.plan import PLAN_FORMAT_VERSION, Plan, PlanError, SiteSpec
from search_space.vocab import METHOD_LAYERS, METHODS, PARAM_BOUNDS, SPACE_VERSION, VOCAB
from search_space.space import Decision, SearchSpace, stage_of
from search_space.apply import (apply_plan, build_layer, check_sites, find_sites,
                                is_residual_block, regularizers, remove_plan, site_channels,
                                step_schedulers)

__all__ = [
    "Disout", "DropBlock2d", "DropBlock3d", "Dropout", "LinearScheduler", "PatternDropout",
    "SpatialDropout",
    "PLAN_FORMAT_VERSION", "Plan", "PlanError", "SiteSpec",
    "METHOD_LAYERS", "METHODS", "PARAM_BOUNDS", "SPACE_VERSION", "VOCAB",
    "Decision", "SearchSpace", "stage_of",
    "apply_plan", "build_layer", "check_sites", "find_sites", "is_residual_block",
    "regularizers", "remove_plan", "site_channels", "step_schedulers",
]
