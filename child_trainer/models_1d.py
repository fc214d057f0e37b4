"""Children for 1-D signals (MNIST-1D): the paper's small ConvNet and its MLP.

Greydanus & Kobak's reference models (``mnist1d`` repository, ``notebooks/models.py``):
``ConvBase`` is three Conv1d layers of 25 channels (kernel 5 then 3, stride 2, padding 1) with
ReLUs and a linear head on the flattened (25 x 5) map; ``MLPBase`` is Linear-ReLU, a residual
Linear-ReLU, and a linear head. Our ConvNet adds a BatchNorm1d after each convolution: its
outputs, (N, C, L) maps of 19, 10 and 5 positions, are where the AutoDropout paper puts its
patterns, and they are the sites a search finds (the logits never are). Both accept (N, 1, L)
or (N, L) input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from search_space.errors import user_error

__all__ = ["MNIST1DCNN", "MNIST1DMLP", "SEQUENCE_MODELS", "conv1d_length"]

#: Built-in children that take (N, C, L) sequences (the datasets in data.SEQUENCE_DATASETS).
SEQUENCE_MODELS = ("mnist1d_cnn", "mnist1d_mlp")


def conv1d_length(length: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a Conv1d (no dilation)."""
    return (length + 2 * padding - kernel) // stride + 1


class MNIST1DCNN(nn.Module):
    """The MNIST-1D ConvNet: (conv -> BatchNorm1d -> ReLU) x 3, flatten, linear.

    ``conv{i}``/``bn{i}``: 25 channels at lengths 19, 10, 5 for the standard 40-sample input.
    ``batch_norm=False`` gives the paper's exact ``ConvBase`` (biased convs, no norm layers).
    """

    KERNELS = (5, 3, 3)

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, length: int = 40, width: int = 25, batch_norm: bool = True
    ) -> None:
        super().__init__()
        out = length
        for k in self.KERNELS:
            out = conv1d_length(out, k, 2, 1)
        if out < 1:
            raise user_error("image_size", length, "a sequence length of at least 3 (mnist1d_cnn)")
        channels = in_channels
        for i, k in enumerate(self.KERNELS, 1):
            setattr(self, f"conv{i}", nn.Conv1d(channels, width, k, stride=2, padding=1, bias=not batch_norm))
            if batch_norm:
                setattr(self, f"bn{i}", nn.BatchNorm1d(width))
            channels = width
        self.batch_norm = batch_norm
        self.fc = nn.Linear(width * out, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        for i in range(1, len(self.KERNELS) + 1):
            x = getattr(self, f"conv{i}")(x)
            if self.batch_norm:
                x = getattr(self, f"bn{i}")(x)
            x = F.relu(x)
        return self.fc(torch.flatten(x, 1))


class MNIST1DMLP(nn.Module):
    """The MNIST-1D MLP: fc1 -> ReLU, h + ReLU(fc2(h)), fc3 (the paper's ``MLPBase``).

    Sites (found from shapes): the outputs of ``fc1`` and ``fc2``, (N, hidden) features.
    """

    def __init__(self, num_classes: int = 10, in_features: int = 40, hidden: int = 100) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(torch.flatten(x, 1)))
        h = h + F.relu(self.fc2(h))
        return self.fc3(h)
