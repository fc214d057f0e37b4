"""How any image or sequence data set becomes honest fixed splits on the training device.

The validation split is the search's reward, so it is carved out of the *training* set with a
fixed seed (the same for every trial) and stratified by class; the unused training images of a
``train_size`` subset join it; every split is normalised with the full training split's
per-channel statistics. Shared by every loader in `child_trainer.data`, and the home of
`DataError`, which the text loader (`child_trainer.text_data`) raises too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from search_space.errors import FieldError, user_error

VAL_EXTRA_MAX = 10000  # unused training images that join validation (an epoch's evaluation cost)


class DataError(FieldError):
    """A dataset cannot be loaded (missing files, bad size): a configuration error, not a crash."""


@dataclass
class DataSplits:
    """Normalised float tensors (N, C, H, W), or (N, C, L) for sequences, and int64 labels;
    test only when requested."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    num_classes: int
    in_channels: int
    name: str
    augment: str = "none"  # "cifar" (crop+flip), "shift" (small shifts), "none"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])  # type: ignore[return-value]


def stratified_split(labels: np.ndarray, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (rest, held_out) with ``size`` held out, class proportions preserved."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    rest, held = train_test_split(idx, test_size=size, stratify=labels, random_state=seed)
    return np.sort(rest), np.sort(held)


def _subset(
    x: np.ndarray, y: np.ndarray, size: int | None, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Stratified training subset of ``size`` images (the small-data regime), and the indices
    of the training images it leaves unused."""
    if size is None or size == len(y):
        return (x, y), np.zeros(0, dtype=np.int64)
    n_classes = len(np.unique(y))
    if not n_classes <= size < len(y):
        raise user_error(
            "train_size",
            size,
            f"an integer from {n_classes} (one per class) to {len(y) - 1} (below the training split's {len(y)} images)",
            cls=DataError,
        )
    unused, keep = stratified_split(y, size, seed + 1)
    return (x[keep], y[keep]), unused


def _train_and_val(
    train_x: np.ndarray, train_y: np.ndarray, val: tuple[np.ndarray, np.ndarray], train_size: int | None, seed: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The training subset, and a validation split as large as the data allows: the fixed
    validation images plus the training images the subset leaves unused (at most
    ``VAL_EXTRA_MAX``, a seeded choice), all fixed by ``split_seed``. The reward then moves in
    steps of 1/1,238 on digits at 200 training images instead of 1/360; the test split is
    never touched."""
    train, unused = _subset(train_x, train_y, train_size, seed)
    if len(unused) > VAL_EXTRA_MAX:
        unused = np.sort(np.random.default_rng(seed + 2).choice(unused, VAL_EXTRA_MAX, replace=False))
    if len(unused):
        val = (np.concatenate([val[0], train_x[unused]]), np.concatenate([val[1], train_y[unused]]))
    return {"train": train, "val": val}


def _to_device(
    x: np.ndarray, y: np.ndarray, mean: np.ndarray, std: np.ndarray, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    xt = torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=torch.float32)
    per_channel = (1, -1) + (1,) * (xt.dim() - 2)  # (N, C, H, W) images or (N, C, L) sequences
    m = torch.as_tensor(mean, dtype=torch.float32, device=device).view(per_channel)
    s = torch.as_tensor(std, dtype=torch.float32, device=device).view(per_channel)
    return (xt - m) / s, torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)


def _finish(
    name: str,
    parts: dict[str, tuple[np.ndarray, np.ndarray] | None],
    num_classes: int,
    device: torch.device | str,
    augment: str,
    stats_x: np.ndarray,
) -> DataSplits:
    """Normalise every split with the per-channel statistics of the full training split
    (before any ``train_size`` subset, so validation tensors are identical across subsets)."""
    tx = stats_x.astype(np.float32, copy=False)
    axes = (0, *range(2, tx.ndim))  # all but the channels
    mean = tx.mean(axis=axes)
    std = tx.std(axis=axes) + 1e-6
    out = {k: _to_device(v[0], v[1], mean, std, device) if v is not None else (None, None) for k, v in parts.items()}
    return DataSplits(
        *out["train"],
        *out["val"],
        *out["test"],
        num_classes=num_classes,
        in_channels=tx.shape[1],
        name=name,
        augment=augment,
    )
