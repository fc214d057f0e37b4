"""Site layouts: which axis of a site's output holds the examples, the channels and the map or
sequence, named once for the whole project.

A layout is a name (``"NHWC"``) and the axes it implies. The probe (`search_space.probe`)
decides each site's layout from evidence, `apply_plan` hands it to the regularizer, and each
layer works on the axes it names: block methods on the map axes, channel dropout over C, the
sequence pattern along T (or L). So a regularizer acts on the right axes however a model
stores its tensors:

============  =======================================  =========  ==============  ===========
layout        axes                                     kind       channel axis    map/seq axes
============  =======================================  =========  ==============  ===========
``NCHW``      batch, channels, height, width           map        1               2, 3
``NHWC``      batch, height, width, channels           map        3               1, 2
``NCL``       batch, channels, length (Conv1d)         map        1               2
``NCDHW``     batch, channels, depth, height, width    map        1               2, 3, 4
``NDHWC``     batch, depth, height, width, channels    map        4               1, 2, 3
``NTC``       batch, tokens, channels                  tokens     2               1
``TNC``       tokens, batch, channels                  tokens     2               0
``NC``        batch, features                          features   1               (none)
``unknown``   the evidence is missing or contradicts   unknown    None            (none)
============  =======================================  =========  ==============  ===========

`methods_for` says which methods run on a layout and shape (layout-free ``none`` and
``dropout`` everywhere, the rest only where their axes exist). Names may be written with
commas (``"N,H,W,C"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from search_space.errors import FieldError, UserError, user_error
from search_space.vocab import METHODS

if TYPE_CHECKING:
    import torch

__all__ = [
    "LAYOUTS",
    "UNKNOWN",
    "Layout",
    "MIN_BLOCK_MAP",
    "LAYOUT_FREE",
    "get_layout",
    "channel_axis",
    "spatial_axes",
    "batch_axis",
    "layout_from_axes",
    "methods_for",
    "allowed_methods",
]

UNKNOWN = "unknown"
#: A map smaller than this on any axis has no block to drop (a 1x1 map after global pooling).
MIN_BLOCK_MAP = 2
#: Methods that need no axes: they run on any tensor, whatever its layout.
LAYOUT_FREE = ("none", "dropout")


@dataclass(frozen=True)
class Layout:
    """One layout: the axis of the examples, of the channels, and the map (or token) axes.

    ``letters`` spells the axes (``"NHWC"``); ``kind`` is "map", "tokens", "features" or
    "unknown". The permutation helpers give a channels-first view (N, C, *spatial) and back
    without copying, so a layer written for N,C,H,W runs on N,H,W,C through strides.
    """

    name: str
    letters: str
    kind: str
    batch: int | None
    channel: int | None
    spatial: tuple[int, ...]

    @property
    def rank(self) -> int | None:
        """The tensor rank this layout describes (None for "unknown")."""
        return len(self.letters) or None

    @property
    def axes(self) -> str:
        """The axes as shown to users: ``"N,H,W,C"`` (``"unknown"``)."""
        return ",".join(self.letters) if self.letters else UNKNOWN

    @property
    def channels_first_order(self) -> tuple[int, ...]:
        """The permutation that puts this layout's axes in (N, C, *spatial) order."""
        if self.batch is None or self.channel is None:
            raise user_error("layout", self.name, "a layout with a batch and a channel axis")
        return (self.batch, self.channel, *self.spatial)

    def to_channels_first(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, *spatial) view of ``x`` (``x`` itself when already in that order)."""
        order = self.channels_first_order
        return x if order == tuple(range(x.dim())) else x.permute(order)

    def from_channels_first(self, y: torch.Tensor) -> torch.Tensor:
        """The inverse of `to_channels_first`: ``y`` (N, C, *spatial) back in this layout's order."""
        order = self.channels_first_order
        if order == tuple(range(y.dim())):
            return y
        return y.permute([order.index(a) for a in range(len(order))])


def _make(name: str, kind: str) -> Layout:
    letters = "" if name == UNKNOWN else name
    batch = letters.index("N") if "N" in letters else None
    channel = letters.index("C") if "C" in letters else None
    spatial = tuple(i for i, a in enumerate(letters) if a not in "NC")
    return Layout(name, letters, kind, batch, channel, spatial)


#: Every layout by name (see the module docstring).
LAYOUTS: Mapping[str, Layout] = MappingProxyType(
    {
        name: _make(name, kind)
        for name, kind in (
            ("NCHW", "map"),
            ("NHWC", "map"),
            ("NCL", "map"),
            ("NCDHW", "map"),
            ("NDHWC", "map"),
            ("NTC", "tokens"),
            ("TNC", "tokens"),
            ("NC", "features"),
            (UNKNOWN, "unknown"),
        )
    }
)


def get_layout(name: object, field: str = "layout", cls: type[UserError] = FieldError) -> Layout:
    """The `Layout` called ``name`` ("NHWC", "N,H,W,C" or "unknown"); a ``cls`` error naming
    ``field`` otherwise."""
    if isinstance(name, Layout):
        return name
    key = name.replace(",", "").replace(" ", "") if isinstance(name, str) else None
    key = UNKNOWN if key is not None and key.lower() == UNKNOWN else key
    if key not in LAYOUTS:
        raise user_error(field, name, ", ".join(LAYOUTS), cls=cls)
    return LAYOUTS[key]


def channel_axis(name: str) -> int | None:
    """The channel axis of layout ``name`` (None for "unknown": elementwise methods only)."""
    return get_layout(name).channel


def spatial_axes(name: str) -> tuple[int, ...]:
    """The map axes (L; H, W; D, H, W) or the token axis T of layout ``name``, outer first."""
    return get_layout(name).spatial


def batch_axis(name: str) -> int | None:
    """The axis of the examples in layout ``name`` (None for "unknown")."""
    return get_layout(name).batch


def layout_from_axes(rank: int, channel: int, batch_first: bool | None = True) -> str | None:
    """The layout of a rank-``rank`` tensor whose channels are at axis ``channel``: channels
    first (NC, NCL, NCHW, NCDHW) or last (NC, NTC/TNC by ``batch_first``, NHWC, NDHWC); None
    when no layout fits (or rank 3 channels-last with the batch axis unknown)."""
    channel = channel % rank if rank else channel
    if rank == 2:
        return "NC" if channel == 1 else None
    if channel == 1:
        return {3: "NCL", 4: "NCHW", 5: "NCDHW"}.get(rank)
    if channel == rank - 1:
        if rank == 3:
            return None if batch_first is None else ("NTC" if batch_first else "TNC")
        return {4: "NHWC", 5: "NDHWC"}.get(rank)
    return None


#: Where each layout-bound method runs: the layout kinds and the number of map axes it needs
#: (None: any). A method not listed here (none, dropout, or one added later that handles
#: the layout itself) runs on any layout.
_NEEDS: Mapping[str, tuple[tuple[str, ...], tuple[int, ...] | None]] = MappingProxyType(
    {
        "spatial_dropout": (("map",), None),
        "dropblock": (("map",), (1, 2, 3)),
        "disout": (("map",), (2,)),
        "pattern": (("map",), (2,)),
        "seq_pattern": (("tokens", "map"), (1,)),
    }
)


def methods_for(layout: str | Layout, shape: Sequence[int]) -> tuple[tuple[str, ...], str]:
    """The methods that run on an output of ``shape`` in ``layout``, in table order, and a note
    saying why some are left out ("" when none is):

    - maps (NCHW, NHWC): dropout, spatial_dropout, and dropblock, disout, pattern when every
      map axis is at least `MIN_BLOCK_MAP`;
    - 1-D maps (NCL): dropout, spatial_dropout, dropblock (along L) and seq_pattern (the
      AutoDropout pattern along L) when L is at least `MIN_BLOCK_MAP`;
    - volumes (NCDHW, NDHWC): dropout, spatial_dropout, dropblock (cubes);
    - tokens (NTC, TNC): dropout, seq_pattern; features (NC) and "unknown": dropout.

    Channel dropout needs at least two channels (with one it drops whole examples).
    """
    lay = get_layout(layout)
    shape = tuple(int(s) for s in shape)
    if lay.rank is not None and len(shape) != lay.rank:
        raise user_error("layout", lay.name, f"a layout of rank {len(shape)} for shape {shape}")
    sides = [shape[a] for a in lay.spatial]
    small = lay.kind == "map" and min(sides) < MIN_BLOCK_MAP
    one_channel = lay.kind == "map" and shape[lay.channel] < 2  # type: ignore[index]
    fits = []
    for method in METHODS:
        kinds, ranks = _NEEDS.get(method, ((lay.kind,), None))
        if lay.kind not in kinds or (ranks is not None and len(sides) not in ranks):
            continue
        if method == "spatial_dropout" and one_channel:
            continue
        if method != "spatial_dropout" and method in _NEEDS and small:
            continue
        fits.append(method)
    notes = []
    if lay.kind == UNKNOWN:
        notes.append("layout unknown: only layout-free methods")
    if small:
        notes.append(f"map {'x'.join(map(str, sides))}: no blocks")
    if one_channel:
        notes.append("one channel: no channel dropout")
    return tuple(fits), "; ".join(notes)


def allowed_methods(layout: str | Layout) -> tuple[str, ...]:
    """The methods that can run on ``layout`` at all (on a map of any size): what a plan may
    put at a site of that layout."""
    lay = get_layout(layout)
    shape = (8,) * (lay.rank or 4)
    return methods_for(lay, shape)[0] if lay.rank else tuple(m for m in METHODS if m not in _NEEDS)
