"""What one child training is given: its `TrainConfig`, each field checked when made (one line
naming it), and its plan (`_load_plan`: a Plan, its dict or the JSON text a Ray trial config
carries); and `task_metric`, the metric a search of that child optimises.

Apart from the training loop (`child_trainer.train`, which re-exports every name here) because
the command line, the search and the retrain build and check configs without training.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from search_space.errors import SEED_MAX, check_number, user_error

from .augment import AUGMENTATIONS
from .data import DATASETS, TEXT_DATASETS
from .models import TRANSFORMER_MODELS, is_lm

__all__ = ["TrainConfig", "task_metric", "SCHEDULES", "AMP_MODES", "OPTIMIZERS"]

SCHEDULES = ("onecycle", "cosine")
AMP_MODES = ("auto", "none", "bf16", "fp16")
AUTO_OFF_ON = ("auto", "on", "off")
OPTIMIZERS = ("auto", "sgd", "adamw")
DEFAULT_LR = {"sgd": 0.1, "adamw": 3e-3}


def task_metric(model_name: str) -> tuple[str, str]:
    """The search metric of a child and its mode: ("val_ppl", "min") for language models,
    ("val_acc", "max") otherwise (vit_tiny included).

    The controller's reward for language models is ``-ln(val_ppl)`` (= ``-val_loss``, the
    mean validation NLL per token in nats): monotone decreasing in perplexity, so the best
    plan by reward is the best by perplexity, and on a log scale where equal relative
    perplexity gains give equal reward steps.
    """
    return ("val_ppl", "min") if is_lm(model_name) else ("val_acc", "max")


@dataclass
class TrainConfig:
    """Everything that defines one child training. Defaults = the fast digits recipe (~97% val).

    Transformers (vit_tiny, transformer_lm) default to AdamW at 3e-3 with gradient clipping;
    a 2-core demo: ``vit_tiny`` on digits, 20 epochs (~0.94 val acc, ~20 s on one thread), or
    ``transformer_lm`` on ``builtin_text`` with train_size=20000 tokens, seq_len=64,
    batch_size=32, 30 epochs (~30-50 s on one thread; overfits, so dropout pays).
    """

    model: str = "digits_cnn"
    dataset: str = "digits"  # images, or for transformer_lm: builtin_text, ptb, wikitext2
    epochs: int = 20
    batch_size: int = 64  # images, or windows of seq_len tokens
    lr: float | None = None  # None = the optimizer's default (0.1 SGD, 3e-3 AdamW), set at construction
    optimizer: str = "auto"  # auto = AdamW for Transformers (vit_tiny, transformer_lm), else SGD + Nesterov
    seq_len: int = 64  # transformer_lm: tokens per training/validation window
    schedule: str = "onecycle"
    warmup_fraction: float = 0.2  # share of steps spent warming up (onecycle ramp / cosine warm-up)
    weight_decay: float = 5e-4
    label_smoothing: float | None = None  # None = 0.1 for images, 0 for language models (set at construction)
    momentum: float = 0.9
    nesterov: bool = True
    seed: int = 0  # weights, batch order, augmentation, regularizer masks
    split_seed: int = 0  # train/val/test split: the same for every trial so rewards compare
    device: str = "auto"
    amp: str = "auto"  # auto = bf16 on CUDA (fp16 if unsupported) and on CPUs with native bf16, else none
    channels_last: str = "auto"  # auto = on (NHWC convs: ~1.3x faster on CPU too, benchmarks/train.py)
    compile: bool = False  # torch.compile the model (pays compile time once per trial)
    augment: str = "auto"  # auto = the dataset's default (crop+flip CIFAR, shifts digits; none for vit_tiny on digits)
    train_size: int | None = None  # images, or for text datasets the number of training tokens
    data_dir: str | None = None
    eval_test: bool = False
    # validate every N epochs and at the last one (0 = auto: every epoch up to 20 epochs, else about
    # 20 times): with the unused training images in validation, evaluating 1,238 digits images after
    # each of 150 epochs cost more than the training itself
    eval_every: int = 0
    eval_batch_size: int = 1024
    num_threads: int | None = None
    synthetic_shape: tuple[int, int, int] = (3, 32, 32)
    synthetic_classes: int = 10
    # learn the per-site dropout rates in this training (Concrete Dropout, search_space.learned): at
    # the plan's sites (its methods are ignored; a search's learning plan: its "learned" sites, per
    # channel where it says so) or, without a plan, at every candidate site; the result adds
    # learned_rates (site -> rate). A learning plan turns it on by itself.
    learned: bool = False

    def __post_init__(self) -> None:
        self.synthetic_shape = tuple(int(v) for v in self.synthetic_shape)  # type: ignore[assignment]
        choices = {
            "dataset": DATASETS + TEXT_DATASETS,
            "schedule": SCHEDULES,
            "amp": AMP_MODES,
            "channels_last": AUTO_OFF_ON,
            "augment": ("auto", *AUGMENTATIONS),
            "optimizer": OPTIMIZERS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise user_error(name, getattr(self, name), ", ".join(allowed))
        lm = is_lm(self.model)
        if lm and self.dataset not in TEXT_DATASETS:
            raise user_error(
                "dataset",
                self.dataset,
                ", ".join(TEXT_DATASETS),
                detail=f"bad value {self.dataset!r} for model {self.model}",
            )
        if not lm and self.dataset in TEXT_DATASETS:
            raise user_error(
                "model",
                self.model,
                "transformer_lm",
                detail=f"bad value {self.model!r} for text dataset {self.dataset}",
            )
        _check_sequence_pairing(self.model, self.dataset)
        if lm and self.augment not in ("auto", "none"):
            raise user_error("augment", self.augment, "auto, none (a language model)")
        check_number("seq_len", self.seq_len, 2, 4096, integer=True)
        check_number("eval_every", self.eval_every, 0, 100000, integer=True)
        if self.lr is None:
            self.lr = DEFAULT_LR[self.resolved_optimizer]
        if self.label_smoothing is None:
            self.label_smoothing = 0.0 if lm else 0.1
        positive = {
            "epochs": (self.epochs, True, MAX_EPOCHS),
            "batch_size": (self.batch_size, True, None),
            "lr": (self.lr, False, MAX_LR),
            "eval_batch_size": (self.eval_batch_size, True, None),
        }
        for name, (value, integer, high) in positive.items():
            check_number(name, value, 0.0, high, integer=integer, low_open=True)
        check_number("synthetic_classes", self.synthetic_classes, 2, 1000, integer=True)
        if self.train_size is not None:
            check_number("train_size", self.train_size, 1, None, integer=True)
        for name in ("seed", "split_seed"):
            check_number(name, getattr(self, name), 0, SEED_MAX, integer=True)
        for name in ("weight_decay", "label_smoothing", "momentum", "warmup_fraction"):
            check_number(name, getattr(self, name), 0.0, 1.0, high_open=True)
        if self.num_threads is not None:
            check_number("num_threads", self.num_threads, 1, MAX_THREADS, integer=True)
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        ):
            raise user_error("device", self.device, "auto, cpu, cuda, cuda:N")

    @property
    def resolved_optimizer(self) -> str:
        """ "sgd" or "adamw" (``optimizer="auto"``: AdamW for Transformer children)."""
        if self.optimizer != "auto":
            return self.optimizer
        return "adamw" if self.model in TRANSFORMER_MODELS else "sgd"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build from a (JSON) dict; unknown keys are an error naming the key and the allowed ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise user_error(
                unknown[0], d[unknown[0]], f"the TrainConfig fields {', '.join(names)}", detail="unknown field"
            )
        return cls(**d)

    def to_dict(self) -> dict:
        """JSON-able dict (inverse of from_dict)."""
        out = dataclasses.asdict(self)
        out["synthetic_shape"] = list(self.synthetic_shape)
        return out


def _check_sequence_pairing(model: str, dataset: str) -> None:
    """The MNIST-1D children take (N, C, L) sequences and the image children (N, C, H, W)
    maps: a mismatch is a config error here, not a shape error in every trial. A user's own
    model (``package.module:factory``) may take either."""
    from .data import SEQUENCE_DATASETS
    from .models_1d import SEQUENCE_MODELS

    if model in SEQUENCE_MODELS and dataset not in SEQUENCE_DATASETS:
        raise user_error(
            "dataset", dataset, ", ".join(SEQUENCE_DATASETS), detail=f"bad value {dataset!r} for model {model}"
        )
    if dataset in SEQUENCE_DATASETS and model not in SEQUENCE_MODELS and (":" not in model or model.startswith("tv:")):
        raise user_error(
            "model",
            model,
            f"{', '.join(SEQUENCE_MODELS)}, package.module:factory",
            detail=f"bad value {model!r} for the 1-D sequences of {dataset}",
        )


MAX_THREADS = 1024  # far above any machine's cores; larger values crash inside OpenMP
MAX_EPOCHS = 1_000_000  # years of training on any data set; 2**70 would "run" until killed
MAX_LR = 1e6  # far above any useful rate (a diverging one is reported as diverged); 1e308 overflows


def _load_plan(plan: Any) -> Any:
    """Accept a Plan, its dict or its JSON text (the Ray trial config carries JSON)."""
    if plan is None or hasattr(plan, "sites"):
        return plan
    from search_space.plan import Plan

    if isinstance(plan, str):
        return Plan.from_json(plan)
    if isinstance(plan, Mapping):
        return Plan.from_dict(dict(plan))
    raise user_error("plan", type(plan).__name__, "a Plan, its dict, its JSON text or None")


def _is_learning(plan: Any) -> bool:
    """A search's ``learned`` trial: its plan learns the rates of some sites (`search_space.learned`)."""
    from search_space.learned import is_learning_plan

    return plan is not None and is_learning_plan(plan)
