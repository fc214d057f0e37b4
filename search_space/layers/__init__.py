"""Regularizer layers searched per site: exact DropBlock, Disout, AutoDropout patterns, dropout.

All layers but ``ConcreteDropout`` are stateless ``nn.Module``s (no parameters or buffers),
identity in ``eval()`` and at probability 0, and expose ``prob_attr`` naming the probability a
``LinearScheduler`` ramps. ``ConcreteDropout`` learns its rate: one parameter per site.
The layers bound to axes take a ``layout`` (`search_space.layouts`: "NCHW", "NHWC", "NCL",
"NTC", ...) and act on the axes it names, without copying the input.
"""

from search_space.layers._blocks import seed_rate
from search_space.layers.concrete import ConcreteDropout
from search_space.layers.disout import Disout
from search_space.layers.dropblock import DropBlock1d, DropBlock2d, DropBlock3d
from search_space.layers.pattern import PatternDropout, tiled_pattern
from search_space.layers.scheduler import LinearScheduler
from search_space.layers.simple import Dropout, SpatialDropout

__all__ = [
    "ConcreteDropout",
    "Disout",
    "DropBlock1d",
    "DropBlock2d",
    "DropBlock3d",
    "Dropout",
    "LinearScheduler",
    "PatternDropout",
    "SpatialDropout",
    "seed_rate",
    "tiled_pattern",
]
from search_space.layers.sequence import SequenceDropout  # noqa: E402, F401 (Transformer pattern)

__all__.append("SequenceDropout")
