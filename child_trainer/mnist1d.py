"""MNIST-1D (Greydanus & Kobak, "Scaling down deep learning", ICML 2024), generated offline.

The pip package ``mnist1d`` builds the data set from ten hard-coded templates with a fixed
seed (42): ``make_dataset(get_dataset_args())`` gives 4,000 training and 1,000 test sequences
of length 40, always the same, in about 0.7 s of one CPU core. Its ``get_dataset`` helper
downloads a pickle (and writes one) by default, so it is never called here: nothing touches
the network or the disk, and nothing is unpickled.

``make_dataset`` seeds Python's and NumPy's global random generators; their states are put
back afterwards, so loading the data changes no other random stream of the process. The
arrays are kept (read-only) for the life of the process and each call returns copies: a Ray
worker or a benchmark that trains many times pays the generation once.
"""

from __future__ import annotations

import functools
import random

import numpy as np

__all__ = ["MNIST1D_LENGTH", "MNIST1D_SIZES", "generate_mnist1d"]

MNIST1D_LENGTH = 40  # samples per sequence (the package's final_seq_length)
MNIST1D_SIZES = (4000, 1000)  # training and test sequences


def generate_mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, x_test, y_test)``: float32 (N, 1, 40) sequences and int64 labels 0..9 of the
    standard MNIST-1D, generated on the spot (deterministic; fresh copies every call)."""
    return tuple(a.copy() for a in _generated())  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def _generated() -> tuple[np.ndarray, ...]:
    from mnist1d.data import get_dataset_args, make_dataset

    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    out = (
        np.asarray(data["x"], dtype=np.float32)[:, None, :],
        np.asarray(data["y"], dtype=np.int64),
        np.asarray(data["x_test"], dtype=np.float32)[:, None, :],
        np.asarray(data["y_test"], dtype=np.int64),
    )
    for array in out:
        array.setflags(write=False)
    return out
