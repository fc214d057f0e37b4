"""Train one child network under one regularization plan, fast and honestly.

A search runs thousands of these, so the loop keeps data on the device, augments whole
batches at once and syncs with the host only every few steps. The validation metric it
returns is the controller's reward (`task_metric`: accuracy for image children, perplexity
for language models); the test split is loaded only when ``eval_test`` is set.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Mapping

import torch
from torch import nn

from search_space.errors import user_error

from .allocator import keep_freed_memory
from .augment import augment_batch
from .data import DataSplits, TextSplits, load_data, load_text
from .evaluation import evaluate, evaluate_lm
from .models import TRANSFORMER_MODELS, build_model, is_lm
from .optimizer import _lr_lambda, _make_optimizer
from .train_config import AMP_MODES, OPTIMIZERS, SCHEDULES, TrainConfig, _is_learning, _load_plan, task_metric

__all__ = [
    "TrainConfig",
    "train_child",
    "evaluate",
    "evaluate_lm",
    "resolve_device",
    "task_metric",
    "SCHEDULES",
    "AMP_MODES",
    "OPTIMIZERS",
]

log = logging.getLogger(__name__)

REPORTED = ("val_acc", "best_val_acc", "train_loss", "seconds", "images_per_second")
REPORTED_LM = ("val_loss", "val_ppl", "best_val_ppl", "train_loss", "seconds", "tokens_per_second")
EVAL_LOGITS = 2**24  # language-model evaluation: logits per batch (vocabularies reach 33k words)
GRAD_CLIP = 1.0  # gradient-norm clip for Transformer children (none for ConvNets)
CHECK_EVERY = 25  # steps between host syncs for the NaN/inf check
AUTO_EVALUATIONS = 20  # eval_every=0: about this many validations per training
ReportFn = Callable[[int, dict], None]


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available; asking for CUDA without one is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise user_error("device", name, "cpu, auto (CUDA is not available here)")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 dot products natively (AVX512-BF16 or AMX).

    There, oneDNN's bf16 channels_last convs train ResNet-20 ~1.6x faster than fp32
    (benchmarks/train.py); elsewhere bf16 is emulated, so ``amp="auto"`` stays in fp32.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.amp == "fp16" and device.type != "cuda":
        raise user_error("amp", "fp16", "none, bf16, auto (fp16 needs CUDA)")
    if cfg.amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]


class _Run:
    """One training: model, data, optimizer and the per-epoch step."""

    def __init__(self, cfg: TrainConfig, plan: Any) -> None:
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        if self.device.type == "cpu":
            keep_freed_memory()
        self.amp_dtype = _amp_dtype(cfg, self.device)
        torch.manual_seed(cfg.seed)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        model = self._data_and_model()  # sets batch_size and steps_per_epoch
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.plan = _load_plan(plan)
        self.step_schedulers: Callable[[nn.Module], None] | None = None
        self.learned_sites: dict[str, int | None] = {}
        self.learned_parameters: list[nn.Parameter] = []
        if cfg.learned or _is_learning(self.plan):
            self._apply_learned(model)
        elif self.plan is not None:
            from search_space.apply import apply_plan, step_schedulers

            apply_plan(model, self.plan, self.total_steps)
            self.step_schedulers = step_schedulers
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.forward: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if cfg.compile else model
        self.num_params = sum(p.numel() for p in model.parameters())
        self.optimizer = _make_optimizer(cfg, model, self.learned_parameters)
        self.clip = GRAD_CLIP if cfg.model in TRANSFORMER_MODELS else None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(self.total_steps, cfg.warmup_fraction, cfg.schedule)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(cfg.seed)
        self.train_seconds = 0.0
        self.images_seen = 0

    def _apply_learned(self, model: nn.Module) -> None:
        """Concrete Dropout at the plan's sites or every candidate site (`search_space.learned`);
        a search's learning plan says which sites learn (method ``learned``) and which of them
        per channel."""
        from search_space.learned import apply_learned, learned_parameters, learned_sites
        from search_space.plan import LEARNED_METHOD

        if _is_learning(self.plan):
            specs = {s: spec for s, spec in self.plan.sites.items() if spec.method == LEARNED_METHOD}
            probed = learned_sites(model, self.example_input(), list(specs))
            self.learned_sites = {s: probed[s] if spec.params.get("per_channel") else None for s, spec in specs.items()}
        else:
            sites = None if self.plan is None else list(self.plan.sites)
            self.learned_sites = learned_sites(model, self.example_input(), sites)
        lm = is_lm(self.cfg.model)  # a language model's loss is a mean over tokens: one data point each
        apply_learned(model, self.learned_sites, self.n_train, weight_decay=self.cfg.weight_decay,
                      example_dims=2 if lm else 1)  # fmt: skip
        self.learned_parameters = learned_parameters(model)

    def example_input(self) -> torch.Tensor:
        """Two training images on the CPU: the shapes that place the learned sites."""
        return self.data.train_x[:2].float().cpu()

    def _data_and_model(self) -> nn.Module:
        cfg = self.cfg
        self.channels_last = cfg.channels_last != "off"
        self.data: DataSplits = load_data(
            cfg.dataset,
            cfg.data_dir,
            cfg.train_size,
            cfg.split_seed,
            self.device,
            with_test=cfg.eval_test,
            image_shape=cfg.synthetic_shape,
            num_classes=cfg.synthetic_classes,
        )
        self.augment = self.data.augment if cfg.augment == "auto" else cfg.augment
        if self.data.train_x.dim() != 4:  # (N, C, L) sequences (mnist1d): no NHWC, no 2-D crops
            self.channels_last = False
            if self.augment != "none":
                raise user_error("augment", self.augment, f"auto, none (for the sequences of {cfg.dataset})")
        if cfg.augment == "auto" and cfg.model == "vit_tiny" and self.augment == "shift":
            # 1-pixel shifts of 8x8 digits under 2x2 patches with absolute positions: val acc
            # 0.35 vs 0.82 without, after 10 epochs (measured); CIFAR keeps crop + flip.
            self.augment = "none"
        n_train = self.n_train = len(self.data.train_y)
        self.batch_size = min(cfg.batch_size, n_train)
        self.steps_per_epoch = n_train // self.batch_size
        return build_model(
            cfg.model, self.data.num_classes, in_channels=self.data.in_channels, image_size=self.data.image_shape[-1]
        )

    def _epoch(self, n: int, batch_loss: Callable[[torch.Tensor], torch.Tensor], units: int = 1) -> float:
        """One pass over a fresh permutation of ``n`` examples, ``batch_loss(indices)`` per step;
        returns the mean training loss. The NaN/inf check syncs with the host only every
        CHECK_EVERY steps. ``units``: what one example counts for the throughput (tokens)."""
        self.model.train()
        start = time.perf_counter()
        perm = torch.randperm(n, device=self.device, generator=self.generator)
        loss_sum = torch.zeros((), device=self.device)
        checked = torch.zeros((), device=self.device)
        for step in range(self.steps_per_epoch):
            loss = batch_loss(perm[step * self.batch_size : (step + 1) * self.batch_size])
            self._step(loss)
            loss_sum += loss.detach().float()
            if (step + 1) % CHECK_EVERY == 0 or step + 1 == self.steps_per_epoch:
                self._check_finite(loss_sum - checked, step)
                checked = loss_sum.clone()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.train_seconds += time.perf_counter() - start
        self.images_seen += self.steps_per_epoch * self.batch_size * units
        return loss_sum.item() / self.steps_per_epoch

    def train_epoch(self) -> float:
        """One pass over a fresh permutation; returns the mean training loss."""
        data = self.data

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            xb = augment_batch(data.train_x[idx], self.augment, self.generator)
            if self.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
            ):
                return self.loss_fn(self.forward(xb), data.train_y[idx])

        return self._epoch(len(data.train_y), batch_loss)

    def _step(self, loss: torch.Tensor) -> None:
        """Backward (of the loss plus the learned rates' regularizer), optional gradient
        clipping, optimizer and schedule steps."""
        if self.learned_parameters:
            from search_space.learned import learned_regularizer

            loss = loss + learned_regularizer(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.step_schedulers is not None:
            self.step_schedulers(self.model)

    def _check_finite(self, recent: torch.Tensor, step: int) -> None:
        if not torch.isfinite(recent).item():
            lr = self.optimizer.param_groups[0]["lr"]
            raise Diverged(f"loss became {recent.item()} by step {step + 1} of the epoch (lr={lr:.4g})")

    def validate(self) -> dict[str, float]:
        return {"val_acc": self.accuracy("val")}

    def test_metrics(self) -> dict[str, float]:
        return {"test_acc": self.accuracy("test")}

    def accuracy(self, split: str) -> float:
        x, y = getattr(self.data, f"{split}_x"), getattr(self.data, f"{split}_y")
        return evaluate(self.forward, x, y, self.cfg.eval_batch_size, self.amp_dtype, self.channels_last)  # type: ignore[arg-type]


class _LMRun(_Run):
    """One language-model training: windows of ``seq_len`` tokens, next-token cross-entropy.

    Each epoch the window boundaries move by a random offset (so contexts differ between
    epochs) and the windows are shuffled; validation is `evaluate_lm` on the valid split.
    """

    def _data_and_model(self) -> nn.Module:
        cfg = self.cfg
        self.channels_last = False
        self.text: TextSplits = load_text(
            cfg.dataset, cfg.data_dir, cfg.train_size, self.device, with_test=cfg.eval_test
        )
        windows = (len(self.text.train) - cfg.seq_len) // cfg.seq_len  # whatever the epoch's offset
        if windows < 1:
            raise user_error("train_size", cfg.train_size, f"at least 2 * seq_len = {2 * cfg.seq_len} training tokens")
        self.windows = windows
        self.n_train = windows * cfg.seq_len  # tokens: the loss is a mean over them
        self.batch_size = min(cfg.batch_size, windows)
        self.steps_per_epoch = windows // self.batch_size
        return build_model(cfg.model, self.text.vocab_size, max_len=cfg.seq_len)

    def example_input(self) -> torch.Tensor:
        """One training window of token ids on the CPU."""
        return self.text.train[: self.cfg.seq_len].view(1, -1).cpu()

    def train_epoch(self) -> float:
        """Windows of seq_len tokens from a random offset (a new tiling each epoch)."""
        cfg, length = self.cfg, self.cfg.seq_len
        offset = int(torch.randint(0, length, (1,), generator=self.generator, device=self.device))
        n = self.windows
        stream = self.text.train[offset : offset + n * length + 1]
        inputs, targets = stream[:-1].view(n, length), stream[1:].view(n, length)

        def batch_loss(idx: torch.Tensor) -> torch.Tensor:
            with torch.autocast(
                self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
            ):
                logits = self.forward(inputs[idx])
            return nn.functional.cross_entropy(
                logits.float().flatten(0, 1), targets[idx].flatten(), label_smoothing=cfg.label_smoothing
            )

        return self._epoch(n, batch_loss, units=length)

    def _split_metrics(self, split: str) -> dict[str, float]:
        # eval_batch_size counts images; here windows, capped at ~2**24 logits (64 MB) per batch
        windows = min(self.cfg.eval_batch_size // 8, EVAL_LOGITS // (self.cfg.seq_len * self.text.vocab_size))
        loss = evaluate_lm(
            self.forward,
            getattr(self.text, split),
            self.cfg.seq_len,  # type: ignore[arg-type]
            max(1, windows),
            self.amp_dtype,
        )
        return {f"{split}_loss": loss, f"{split}_ppl": math.exp(min(loss, 700.0))}

    def validate(self) -> dict[str, float]:
        return self._split_metrics("val")

    def test_metrics(self) -> dict[str, float]:
        return self._split_metrics("test")


def _progress(enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="epoch", dynamic_ncols=True)


def train_child(
    config: TrainConfig | Mapping[str, Any], plan: Any = None, report: ReportFn | None = None, progress: bool = False
) -> dict:
    """Train ``config.model`` under ``plan``; return metrics with status ok | diverged | failed.

    Image children report ``val_acc``/``best_val_acc``/``images_per_second``; language models
    ``val_loss`` (mean NLL per token, nats), ``val_ppl`` (= exp(val_loss)), ``best_val_ppl``
    and ``tokens_per_second`` (see `task_metric`). Both report ``train_loss`` every epoch.

    A bad configuration (unknown model/dataset, invalid plan, missing data) raises ValueError;
    anything that goes wrong while training is returned as status "failed" with the message,
    and a NaN/inf loss ends the run with status "diverged". ``report(epoch, metrics)`` runs
    after every epoch outside the error handling, so a scheduler's stop signal propagates.
    """
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    start = time.perf_counter()
    lm = is_lm(cfg.model)
    metrics: dict[str, Any] = (
        {"val_loss": math.inf, "val_ppl": math.inf, "best_val_ppl": math.inf, "tokens_per_second": 0.0}
        if lm
        else {"val_acc": 0.0, "best_val_acc": 0.0, "images_per_second": 0.0}
    )
    result: dict[str, Any] = {
        **metrics,
        "train_loss": float("nan"),
        "epochs": 0,
        "seconds": 0.0,
        "status": "ok",
        "message": "",
        "model": cfg.model,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
    }
    reported, speed = (REPORTED_LM, "tokens_per_second") if lm else (REPORTED, "images_per_second")
    try:
        run = (_LMRun if lm else _Run)(cfg, plan)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported, not raised: one bad trial must not kill a search
        log.exception("child training setup failed")
        return {
            **result,
            "status": "failed",
            "message": f"setup: {type(exc).__name__}: {exc}",
            "seconds": time.perf_counter() - start,
        }
    result["num_params"] = run.num_params
    result["precision"] = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[
        run.amp_dtype
    ]  # amp=auto varies by CPU
    bar = _progress(progress, cfg.epochs)
    every = cfg.eval_every or max(1, math.ceil(cfg.epochs / AUTO_EVALUATIONS))
    for epoch in range(1, cfg.epochs + 1):
        evaluate_now = epoch % every == 0 or epoch == cfg.epochs
        try:
            result["train_loss"] = run.train_epoch()
            if evaluate_now:
                result.update(run.validate())
        except Diverged as exc:
            result.update(status="diverged", message=f"epoch {epoch}: {exc}")
            break
        except Exception as exc:  # noqa: BLE001
            log.exception("child training failed in epoch %d", epoch)
            result.update(status="failed", message=f"epoch {epoch}: {type(exc).__name__}: {exc}")
            break
        result["epochs"] = epoch
        if lm:
            result["best_val_ppl"] = min(result["best_val_ppl"], result["val_ppl"])
        else:
            result["best_val_acc"] = max(result["best_val_acc"], result["val_acc"])
        result["seconds"] = time.perf_counter() - start
        result[speed] = run.images_seen / max(run.train_seconds, 1e-9)
        if bar is not None:
            shown = f"{result['val_ppl']:.1f}" if lm else f"{result['val_acc']:.4f}"
            bar.set_postfix({"loss": f"{result['train_loss']:.3f}", "val_ppl" if lm else "val_acc": shown})
            bar.update(1)
        if report is not None and evaluate_now:
            report(epoch, {"epoch": epoch, **{k: result[k] for k in reported}})
    if bar is not None:
        bar.close()
    if cfg.eval_test and result["status"] == "ok":
        result.update(run.test_metrics())
    if run.learned_sites:
        from search_space.learned import learned_rates

        result["learned_rates"] = learned_rates(run.model)
    result["seconds"] = time.perf_counter() - start
    return result
