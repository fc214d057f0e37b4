"""Concrete Dropout (Gal, Hron & Kendall, NeurIPS 2017): dropout whose rate is learned by gradient.

The Bernoulli mask is relaxed to a continuous one, ``z = sigmoid((logit + log u - log(1 - u)) / t)``
(u uniform, t the temperature), so the drop rate ``p = sigmoid(logit)`` of a site is a
parameter trained with the weights. The training loss adds the layer's `regularizer`, the
approximate KL term of the paper divided by the data set size N:

* dropout term ``dropout_regularizer * K * (p log p + (1 - p) log(1 - p))`` (pushes p toward
  1/2), with K the mask entries per data point: channels for the per-channel (spatial)
  variant, the units of one example (the authors' ``x[0].numel()``) for the elementwise one;
* weight term ``weight_regularizer * ||W||^2 / (1 - p)`` on the weight W of the layer that
  consumes the site's output (this layer has none; pushes p toward 0).

``dropout_regularizer = 1 / (tau N)`` and ``weight_regularizer = l^2 / (2 tau N)`` (precision
tau, prior length-scale l). The authors' code writes ``2 / (tau N)`` and ``l^2 / (tau N)``
because its regression loss is twice the negative log-likelihood; their docstring says to drop
the factor of two for cross-entropy, whose loss is the mean NLL, as every child here trains.

The relaxed mask rounds to an exact Bernoulli(p) mask: ``z > 1/2`` exactly when
``logit + log u - log(1 - u) > 0``, which has probability p for any temperature. The default
temperature is the paper's 0.1 for both variants (the authors' spatial Keras notebook uses
2/3, a softer mask that regularizes less than the hard channel dropout a derived plan uses).

Paths: `concrete_reference` is the paper's formula as the authors write it (autograd through
``log p - log(1 - p)``, the sigmoid and the division); `concrete_dropout` computes the same
function in stable form with an analytic backward (``dy/dlogit = y (p - z / t)``) that saves
only the input and the mask, reduced over the shared axes first for the per-channel mask.
The logit and every mask computation stay in float32 (float64 with a float64 logit, for the
finite-difference test) whatever the input's dtype; the output has the input's dtype.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from search_space.errors import user_error

from ._dispatch import ONE_FAST_PATH, check_algorithm
from ._validate import check_finite, check_int, check_prob

__all__ = [
    "DEFAULT_TEMPERATURE",
    "ConcreteDropout",
    "concrete_dropout",
    "concrete_reference",
    "dropout_penalty",
    "logistic_noise",
    "mask_shape",
    "weight_penalty",
]

#: The paper's temperature (Gal, Hron & Kendall 2017, section 3: t = 0.1).
DEFAULT_TEMPERATURE = 0.1


def _compute_dtype(logit: torch.Tensor) -> torch.dtype:
    """float32, or float64 when the logit is float64 (never lower than float32)."""
    return torch.promote_types(logit.dtype, torch.float32)


def check_channel_dim(channel_dim: object) -> int | None:
    """``channel_dim`` if it is None (elementwise) or an int axis (negative allowed)."""
    if channel_dim is None:
        return None
    if isinstance(channel_dim, bool) or not isinstance(channel_dim, int):
        raise user_error("channel_dim", channel_dim, "None (elementwise) or an int axis such as 1 or -1")
    return channel_dim


def mask_shape(shape: torch.Size | tuple[int, ...], channel_dim: int | None) -> tuple[int, ...]:
    """The mask's shape for an input of ``shape``: the input's (elementwise, ``channel_dim``
    None), or one entry per (example, channel), 1 on every other axis (the batch is axis 0)."""
    shape = tuple(shape)
    if channel_dim is None:
        return shape
    rank = len(shape)
    if not -rank <= channel_dim < rank or channel_dim % rank == 0:
        raise user_error(
            "channel_dim",
            channel_dim,
            f"an axis of a rank-{rank} input other than the batch axis 0 (1..{rank - 1} or -{rank - 1}..-1)",
        )
    axis = channel_dim % rank
    return tuple(s if d in (0, axis) else 1 for d, s in enumerate(shape))


def logistic_noise(
    shape: tuple[int, ...], device: torch.device | str = "cpu", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Standard logistic noise ``log u - log(1 - u)`` (float32), u uniform in (0, 1)."""
    return torch.rand(shape, device=device, generator=generator).logit_(torch.finfo(torch.float32).tiny)


def concrete_reference(
    x: torch.Tensor, logit: torch.Tensor, noise: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE
) -> torch.Tensor:
    """The paper's relaxed dropout, literally: ``p = sigmoid(logit)``,
    ``z = sigmoid((log p - log(1 - p) + noise) / t)``, ``x * (1 - z) / (1 - p)``.
    ``noise`` (logistic, `logistic_noise`) has the mask's shape (`mask_shape`)."""
    dtype = _compute_dtype(logit)
    p = torch.sigmoid(logit.to(dtype))
    z = torch.sigmoid((torch.log(p) - torch.log(1 - p) + noise.to(dtype)) / temperature)
    return (x * ((1 - z) / (1 - p))).to(x.dtype)


class _ConcreteDrop(torch.autograd.Function):
    """``y = x * m`` with ``m = (1 - z) / (1 - p)``, ``1 - z = sigmoid(-(logit + L) / t)`` and
    ``dm/dlogit = m (p - z / t)``. Saves x and m (mask-sized: (N, C, 1, ...) per channel);
    a low-precision x is multiplied by m rounded to its dtype (no full-size float32 copy)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, logit: torch.Tensor, noise: torch.Tensor, temperature: float) -> torch.Tensor:
        theta = logit.detach().to(_compute_dtype(logit))
        m = torch.add(noise.to(theta.dtype), theta).mul_(-1.0 / temperature).sigmoid_().div_(torch.sigmoid(-theta))
        ctx.temperature = temperature
        ctx.shared = tuple(d for d in range(x.dim()) if m.shape[d] == 1 and x.shape[d] != 1)
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, theta, m)
        return _times(x, m)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        x, theta, m = ctx.saved_tensors
        grad_x = _times(grad, m) if ctx.needs_input_grad[0] else None
        grad_logit = None
        if ctx.needs_input_grad[1]:
            p, t = torch.sigmoid(theta), ctx.temperature
            if ctx.shared:  # reduce over the shared axes first, accumulating in float32 or float64
                gx = torch.sum(grad * x.to(grad.dtype), ctx.shared, keepdim=True, dtype=m.dtype)
            else:
                gx = grad.to(m.dtype) * x.to(m.dtype)
            z = torch.addcmul(torch.ones((), dtype=m.dtype), m, 1 - p, value=-1.0)  # z = 1 - m (1 - p)
            grad_logit = (gx * m * (p - z / t)).sum().reshape(theta.shape)
        return grad_x, grad_logit, None, None


def _times(t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """``t * m`` in ``t``'s dtype: rounded once when ``t`` is at least as precise as ``m``."""
    if t.dtype in (torch.float16, torch.bfloat16):
        return t * m.to(t.dtype)
    return (t * m).to(t.dtype)


def concrete_dropout(
    x: torch.Tensor, logit: torch.Tensor, noise: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE
) -> torch.Tensor:
    """`concrete_reference`'s function, stable and with the analytic backward (module docstring)."""
    return _ConcreteDrop.apply(x, logit, noise, float(temperature))


def dropout_penalty(logit: torch.Tensor) -> torch.Tensor:
    """``p log p + (1 - p) log(1 - p)`` (the negative entropy; finite for any logit)."""
    theta = logit.to(_compute_dtype(logit))
    p = torch.sigmoid(theta)
    return p * F.logsigmoid(theta) + (1 - p) * F.logsigmoid(-theta)


def weight_penalty(logit: torch.Tensor, squared_norm: torch.Tensor) -> torch.Tensor:
    """``||W||^2 / (1 - p)`` from ``squared_norm = ||W||^2``."""
    theta = logit.to(_compute_dtype(logit))
    return squared_norm.to(theta.dtype) / torch.sigmoid(-theta)


class ConcreteDropout(nn.Module):
    """Dropout with a learned rate at one site; identity in ``eval()`` (module docstring).

    ``init_rate``: the starting rate; ``n_train``: the training set size N (the number of data
    points the loss averages over: images, or tokens for a language model); ``channel_dim``:
    None for an elementwise mask (flat and token features), else the channel axis of a map
    (1 for NCHW/NCL/NCDHW, -1 for NHWC): one mask entry per (example, channel), constant over
    the other axes. ``example_dims``: leading axes that index the data points (2 for the
    (N, T, C) or (T, N, C) sites of a language model whose loss is a mean over tokens), which
    sets K of the elementwise dropout term. ``length_scale`` l and ``precision`` tau: the
    regularizer strengths (module docstring); l = 0 (default) means no weight term.

    Unlike the other layers it owns a parameter, ``logit`` (float32, one per site): an
    optimizer must train it (without weight decay: decay would pull the rate to 1/2).
    """

    prob_attr: ClassVar[str] = "drop_prob"

    def __init__(
        self,
        init_rate: float = 0.1,
        *,
        n_train: int,
        channel_dim: int | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
        length_scale: float = 0.0,
        precision: float = 1.0,
        example_dims: int = 1,
        algorithm: str = "auto",
    ) -> None:
        super().__init__()
        rate = check_prob("init_rate", init_rate)
        if rate == 0.0:
            raise user_error("init_rate", init_rate, "a number in (0, 1) (a rate of 0 has no gradient)")
        self.n_train = check_int("n_train", n_train)
        self.channel_dim = check_channel_dim(channel_dim)
        self.temperature = check_finite("temperature", temperature)
        if self.temperature <= 0:
            raise user_error("temperature", temperature, "a number > 0 (the paper: 0.1)")
        self.length_scale = check_finite("length_scale", length_scale)
        self.precision = check_finite("precision", precision)
        if self.length_scale < 0 or self.precision <= 0:
            bad = ("length_scale", length_scale) if self.length_scale < 0 else ("precision", precision)
            raise user_error(bad[0], bad[1], "a number >= 0" if bad[0] == "length_scale" else "a number > 0")
        self.example_dims = check_int("example_dims", example_dims)
        self.algorithm = check_algorithm(algorithm, ONE_FAST_PATH)
        self.logit = nn.Parameter(torch.tensor(math.log(rate) - math.log1p(-rate), dtype=torch.float32))
        self.units = 0  # K, mask entries per data point: set by the first training forward

    @property
    def dropout_regularizer(self) -> float:
        """``1 / (tau N)`` (module docstring)."""
        return 1.0 / (self.precision * self.n_train)

    @property
    def weight_regularizer(self) -> float:
        """``l^2 / (2 tau N)`` (module docstring)."""
        return self.length_scale**2 / (2.0 * self.precision * self.n_train)

    @property
    def drop_prob(self) -> float:
        """The current learned rate ``sigmoid(logit)``, as a plain number."""
        return float(torch.sigmoid(self.logit.detach().float()))

    def rate(self) -> torch.Tensor:
        """The learned rate as a differentiable tensor."""
        return torch.sigmoid(self.logit)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2:
            raise user_error("ConcreteDropout input", allowed="rank >= 2 (a batch axis first)",
                             detail=f"bad value rank {x.dim()} (shape {tuple(x.shape)})")  # fmt: skip
        if not self.training:
            return x
        shape = mask_shape(x.shape, self.channel_dim)
        if self.channel_dim is None:
            self.units = math.prod(x.shape[min(self.example_dims, x.dim() - 1) :])
        else:
            self.units = x.shape[self.channel_dim]
        noise = logistic_noise(shape, x.device)
        if self.algorithm == "reference":
            return concrete_reference(x, self.logit, noise, self.temperature)
        return concrete_dropout(x, self.logit, noise, self.temperature)

    def regularizer(self, weight: torch.Tensor | None = None, *, decayed: bool = False) -> torch.Tensor:
        """This site's loss term: the dropout term, plus the weight term on ``weight`` (the
        weight that consumes the site's output) when given and ``length_scale > 0``.

        ``decayed=True``: the optimizer already applies ``weight_regularizer * ||W||^2`` as
        weight decay (SGD decay ``2 * weight_regularizer``), so only the rest of the paper's
        term, ``weight_regularizer * ||W||^2 * p / (1 - p)``, is added. Needs one training
        forward first (it sets K from the input's shape).
        """
        if self.units == 0:
            raise user_error("ConcreteDropout.regularizer", detail="called before any training forward",
                             allowed="a training forward first (it sets K from the input's shape)")  # fmt: skip
        term = self.dropout_regularizer * self.units * dropout_penalty(self.logit)
        if weight is not None and self.length_scale > 0:
            squared = weight.to(term.dtype).pow(2).sum()
            term = term + self.weight_regularizer * weight_penalty(self.logit, squared)
            if decayed:
                term = term - self.weight_regularizer * squared
        return term

    def extra_repr(self) -> str:
        return (
            f"rate={self.drop_prob:.4g}, n_train={self.n_train}, channel_dim={self.channel_dim}, "
            f"temperature={self.temperature:g}, length_scale={self.length_scale:g}, algorithm={self.algorithm!r}"
        )
