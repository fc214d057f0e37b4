"""Which axes a layer acts on: its ``layout`` argument (`search_space.layouts`).

Every layer is written for channels-first inputs (N, C, *spatial). A layer told another
layout (N,H,W,C; N,T,C; T,N,C) looks at its input through a permuted view in (N, C, *spatial)
order and permutes its output back: no copy, since the kernels take any dense strides (an
N,H,W,C tensor seen as N,C,H,W has exactly torch's channels_last strides), and the same
exact sampling, so the realized rate is the same as on N,C,H,W.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from search_space.errors import user_error
from search_space.layouts import LAYOUTS, Layout, get_layout

from ._validate import check_rank


def layouts_with(spatial: tuple[int, ...]) -> tuple[str, ...]:
    """The layout names with a batch and a channel axis and one of ``spatial`` numbers of
    map (or token) axes."""
    return tuple(
        n
        for n, lay in LAYOUTS.items()
        if lay.channel is not None and lay.batch is not None and len(lay.spatial) in spatial
    )


class LayoutAxes:
    """Mixin for a layer with a ``layout`` attribute (settable: `apply_plan` sets it from the
    site's layout). ``_spatial``: the numbers of map axes the layer accepts."""

    _spatial: ClassVar[tuple[int, ...]] = (2,)

    def _set_layout(self, value: object) -> None:
        allowed = layouts_with(self._spatial)
        lay = get_layout(value, f"{type(self).__name__} layout")
        if lay.name not in allowed:
            raise user_error(f"{type(self).__name__} layout", value, ", ".join(allowed))
        object.__setattr__(self, "_layout", lay)

    @property
    def layout(self) -> str:
        """The layout of the inputs (see `search_space.layouts`)."""
        return self._layout.name

    @layout.setter
    def layout(self, value: object) -> None:
        self._set_layout(value)

    def _checked(self, x: torch.Tensor) -> Layout:
        """The layer's layout, after checking ``x``'s rank against it."""
        lay: Layout = self._layout
        check_rank(type(self).__name__, x, (lay.rank,), f"({lay.axes})")
        return lay
