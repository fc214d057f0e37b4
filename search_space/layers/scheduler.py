"""Linear ramp of any regularizer's probability (the ``dropblock`` package's scheduler, generalised)."""

from __future__ import annotations

import torch
from torch import nn

from search_space.errors import user_error

from ._validate import check_int


class LinearScheduler(nn.Module):
    """Wrap ``layer`` and ramp its ``prob_attr`` from ``start_value`` to ``stop_value``.

    The values are ``np.linspace(start_value, stop_value, nr_steps)``; the i-th ``.step()``
    sets the i-th value and later steps hold the last one, exactly like ``dropblock``'s
    scheduler. Deviations that avoid a ramp stuck at ``start_value``: the layer is set to
    ``start_value`` at construction; ``nr_steps == 0`` sets ``stop_value`` at once and
    ``nr_steps == 1`` steps straight to ``stop_value``. Adds no parameters or buffers.
    """

    def __init__(self, layer: nn.Module, start_value: float, stop_value: float, nr_steps: int) -> None:
        super().__init__()
        attr = getattr(layer, "prob_attr", None)
        if attr is None:
            raise user_error("layer", type(layer).__name__, "a regularizer layer (one that defines prob_attr)")
        self.layer = layer
        self.nr_steps = check_int("nr_steps", nr_steps, minimum=0)
        # The ramp is derived per step (as np.linspace computes it: start + i * delta, the last
        # value exactly stop) rather than stored: a list of nr_steps floats per layer reached
        # hundreds of MB for a long CIFAR schedule with dozens of ramped sites.
        self.start_value, self.stop_value = float(start_value), float(stop_value)
        self._delta = (self.stop_value - self.start_value) / (self.nr_steps - 1) if self.nr_steps > 1 else 0.0
        self.i = 0
        self._set(self.stop_value if self.nr_steps == 0 else self.start_value)

    @property
    def value(self) -> float:
        """The probability currently set on the wrapped layer."""
        return float(getattr(self.layer, self.layer.prob_attr))

    def _set(self, value: float) -> None:
        setattr(self.layer, self.layer.prob_attr, value)

    def step(self) -> None:
        """Advance the ramp by one value (holds the last value after ``nr_steps`` steps)."""
        if self.i < self.nr_steps:
            last = self.i == self.nr_steps - 1
            self._set(self.stop_value if last else self.i * self._delta + self.start_value)
        self.i += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def extra_repr(self) -> str:
        return f"step={self.i}/{self.nr_steps}, values=[{self._first():g} .. {self.stop_value:g}]"

    def _first(self) -> float:
        return self.start_value if self.nr_steps > 1 else self.stop_value
