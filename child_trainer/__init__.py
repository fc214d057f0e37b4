"""Train one child network under one regularization plan: models, data, training loop, CLI."""

from .data import DATASETS, DataError, DataSplits, load_data
from .models import build_model, model_names
from .train import TrainConfig, evaluate, train_child

__all__ = [
    "DATASETS",
    "DataError",
    "DataSplits",
    "load_data",
    "build_model",
    "model_names",
    "TrainConfig",
    "evaluate",
    "train_child",
]
