"""What can be searched and how a plan changes a model: layers, plans, the search space."""
from search_space.apply import (
                                 apply_plan,
                                 build_layer,
                                 check_sites,
                                 find_sites,
                                 is_residual_block,
                                 regularizers,
                                 remove_plan,
                                 site_channels,
                                 step_schedulers,
                                 transformer_sites,
)
from search_space.layers import (
                                 Disout,
                                 DropBlock2d,
                                 DropBlock3d,
                                 Dropout,
                                 LinearScheduler,
                                 PatternDropout,
                                 SequenceDropout,
                                 SpatialDropout,
)
from search_space.plan import PLAN_FORMAT_VERSION, Plan, PlanError, SiteSpec
from search_space.space import Decision, SearchSpace, block_of, stage_of
from search_space.vocab import (
                                 CONV_METHODS,
                                 METHOD_LAYERS,
                                 METHODS,
                                 PARAM_BOUNDS,
                                 SEQUENCE_METHODS,
                                 SPACE_VERSION,
                                 VOCAB,
)

__all__ = [
    "Disout", "DropBlock2d", "DropBlock3d", "Dropout", "LinearScheduler", "PatternDropout",
    "SequenceDropout", "SpatialDropout",
    "PLAN_FORMAT_VERSION", "Plan", "PlanError", "SiteSpec",
    "CONV_METHODS", "METHOD_LAYERS", "METHODS", "SEQUENCE_METHODS", "PARAM_BOUNDS", "SPACE_VERSION", "VOCAB",
    "Decision", "SearchSpace", "block_of", "stage_of",
    "apply_plan", "build_layer", "check_sites", "find_sites", "is_residual_block",
    "regularizers", "remove_plan", "site_channels", "step_schedulers", "transformer_sites",
]
