"""Search regularization plans with Ray Tune: the command users run, on a laptop or a cluster.

    python launch_search.py                       # digits, ~16 trials, a few minutes on 2 cores
    python launch_search.py --dataset cifar10 --model resnet20 --data-dir data \\
        --epochs 30 --num-samples 200 --gpus-per-trial 0.25 --scheduler asha --address auto
    python launch_search.py --resume --name NAME  # finish an interrupted run

Ray Tune does the scheduling, resources, failures and resume; this file only wires the
controller (controller/searcher.py), the child trainer and the bookkeeping together, and
checks every argument before Ray starts. Everything lands in STORAGE/NAME/ (see README).
Exit codes: 0 finished, 2 bad arguments, 130 interrupted (resume with --resume), 1 crash.

Test/benchmark hook: AUTODROPOUT_CHILD="module:function" or "/path/file.py:function" replaces
`child_trainer.train.train_child` (same signature) in every trial.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import importlib
import importlib.util
import json
import logging
import math
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

log = logging.getLogger("launch_search")

REPO_ROOT = Path(__file__).resolve().parent
CHILD_HOOK_ENV = "AUTODROPOUT_CHILD"
EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
SEARCHERS = ("controller", "random")
SCHEDULERS = ("fifo", "asha")
# Digits defaults: a small training subset trained long enough to overfit (about 1,000 SGD
# steps), the regime where a regularizer can pay off; 20 epochs on 500 images stops while the
# unregularized net is still underfitting, so every regularizer looked harmful there.
DIGITS_DEFAULTS = {"train_size": 200, "epochs": 150, "batch_size": 32}
DEFAULT_EPOCHS = 30
SHIPPING_EXCLUDES = [".git/", "data/", "runs/", "**/__pycache__/", "*.egg-info/", ".pytest_cache/"]
CONFIG_VERSION = 1


class UsageError(ValueError):
    """A bad argument: reported as one line, exit code 2, before any long work."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="launch_search.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", help="digits (default), cifar10, cifar100, synthetic")
    p.add_argument("--data-dir", default=None, help="folder holding CIFAR (default ./data)")
    p.add_argument("--model", default=None,
                   help="child network (default digits_cnn for digits, resnet20 otherwise)")
    p.add_argument("--train-size", type=int, default=None,
                   help=f"training subset per trial (default {DIGITS_DEFAULTS['train_size']} for "
                        "digits, the full training split otherwise)")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"epochs per child (default {DIGITS_DEFAULTS['epochs']} for digits, "
                        f"{DEFAULT_EPOCHS} otherwise)")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"child batch size (default {DIGITS_DEFAULTS['batch_size']} for digits, "
                        "the trainer's default otherwise)")
    p.add_argument("--amp", default=None, choices=["auto", "none", "bf16", "fp16"],
                   help="children's autocast (default auto: bf16 on CUDA and on CPUs with native bf16, "
                        "else fp32; pin it on a cluster of mixed CPUs so rewards compare)")
    p.add_argument("--lr", type=float, default=None, help="child peak learning rate "
                   "(default: the trainer's, 0.1)")
    p.add_argument("--num-samples", type=int, default=16,
                   help="trials in total, the all-'none' reference trial included (default 16)")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="trials at once (default: as many as the cluster's resources allow)")
    p.add_argument("--cpus-per-trial", type=float, default=1.0,
                   help="CPUs per trial, also its torch threads (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=None,
                   help="fractional allowed, e.g. 0.25 (default 0.25 if the cluster has GPUs, else 0)")
    p.add_argument("--search", choices=SEARCHERS, default="controller",
                   help="controller (default) or random, the baseline")
    p.add_argument("--scheduler", choices=SCHEDULERS, default="fifo",
                   help="fifo (default) or asha: stops weak trials early, their last val_acc is the reward")
    p.add_argument("--controller-batch", type=int, default=4,
                   help="finished trials per REINFORCE update (default 4)")
    p.add_argument("--controller-lr", type=float, default=None,
                   help="controller Adam learning rate (default: Reinforce's, 0.01); small "
                        "budgets (tens of trials) learn more with a larger one")
    p.add_argument("--sites", default="all",
                   help="'all' (default: every site found in the model), 'stage' (one decision set "
                        "per stage), or comma-separated module paths / glob patterns")
    p.add_argument("--address", default=None,
                   help="join a running Ray cluster (host:port or 'auto'); default: local Ray")
    p.add_argument("--storage-path", default="runs", help="parent folder of the run folder (default runs)")
    p.add_argument("--name", default=None,
                   help="run folder name (default DATASET-MODEL-SEARCH-DATE-TIME)")
    p.add_argument("--resume", action="store_true",
                   help="finish the run --name; its saved settings are used")
    p.add_argument("--seed", type=int, default=0, help="seed of the searcher and the children (default 0)")
    return p


# ----------------------------------------------------------------------------- validation
def check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked without Ray; raises UsageError."""
    for name in ("epochs", "num_samples", "controller_batch", "max_concurrent", "train_size",
                 "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')}: must be a positive integer (got {value})")
    if not (math.isfinite(args.cpus_per_trial) and args.cpus_per_trial > 0):
        raise UsageError(f"--cpus-per-trial: must be > 0 (got {args.cpus_per_trial})")
    for name in ("lr", "controller_lr"):
        value = getattr(args, name, None)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name.replace('_', '-')}: must be > 0 (got {value})")
    if args.gpus_per_trial is not None and not (math.isfinite(args.gpus_per_trial)
                                                and args.gpus_per_trial >= 0):
        raise UsageError(f"--gpus-per-trial: must be >= 0 (got {args.gpus_per_trial})")
    if args.gpus_per_trial is not None and args.gpus_per_trial > 1 and args.gpus_per_trial % 1:
        raise UsageError(f"--gpus-per-trial: above 1 it must be a whole number (got {args.gpus_per_trial})")
    if args.name is not None and (not args.name or "/" in args.name or args.name in (".", "..")):
        raise UsageError(f"--name: bad value {args.name!r}; allowed: a folder name without '/'")
    if args.resume and not args.name:
        raise UsageError("--resume: needs --name of the run to resume")
    run_dir = Path(args.storage_path).expanduser().resolve() / (args.name or "")
    if args.resume:
        missing = [f for f in ("search_config.json", "tuner.pkl") if not (run_dir / f).is_file()]
        if missing:
            raise UsageError(f"--resume: no resumable run at {run_dir} (missing {', '.join(missing)})")
    elif args.name and run_dir.exists():
        raise UsageError(f"--name: run folder {run_dir} already exists; add --resume to finish it "
                         "or choose another --name")


def default_name(args: argparse.Namespace) -> str:
    return f"{args.dataset}-{args.model}-{args.search}-{time.strftime('%Y%m%d-%H%M%S')}"


def train_config(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig every trial shares (validated here, not in the first trial)."""
    from child_trainer.train import TrainConfig

    num_threads = max(1, int(args.cpus_per_trial))
    recipe = {k: v for k, v in (("batch_size", args.batch_size), ("lr", args.lr), ("amp", args.amp))
              if v is not None}
    try:
        cfg = TrainConfig(model=args.model, dataset=args.dataset, epochs=args.epochs,
                          train_size=args.train_size, data_dir=args.data_dir, seed=args.seed,
                          num_threads=num_threads, **recipe)
    except ValueError as e:
        raise UsageError(f"--{str(e).split(':')[0].replace('_', '-')}: {str(e).split(':', 1)[-1].strip()}") from None
    return cfg.to_dict()


def build_space(args: argparse.Namespace, train: dict[str, Any]) -> tuple[Any, int]:
    """SearchSpace for --model/--sites and the dataset's class count (for the penalty reward).

    Loads the data once on the driver: a missing --data-dir fails here, not in every trial."""
    from child_trainer.data import load_data
    from child_trainer.models import build_model
    from search_space.apply import find_sites
    from search_space.space import SearchSpace

    try:
        data = load_data(args.dataset, args.data_dir, args.train_size, seed=train["split_seed"],
                         with_test=False, image_shape=tuple(train["synthetic_shape"]),
                         num_classes=train["synthetic_classes"])
    except ValueError as e:
        raise UsageError(f"--dataset {args.dataset}: {e}") from None
    try:
        model = build_model(args.model, data.num_classes, in_channels=data.in_channels)
    except ValueError as e:
        raise UsageError(f"--model: {e}") from None
    found = find_sites(model)
    share, sites = None, None
    if args.sites == "stage":
        share = "stage"
    elif args.sites != "all":
        sites = []
        for pattern in (s.strip() for s in args.sites.split(",") if s.strip()):
            names = [pattern] if pattern in found else fnmatch.filter(found, pattern)
            if not names:
                raise UsageError(f"--sites: {pattern!r} matches no site of {args.model}; allowed: "
                                 f"all, stage, or paths/patterns over {found}")
            sites += [n for n in names if n not in sites]
        if not sites:
            raise UsageError("--sites: empty list; allowed: all, stage, or comma-separated paths")
    try:
        space = SearchSpace.for_model(model, sites=sites, share=share, model_name=args.model)
    except ValueError as e:
        raise UsageError(f"--sites: {e}") from None
    return space, data.num_classes


def check_address(address: str) -> None:
    """Fail fast on an unreachable cluster instead of waiting for Ray's long timeout."""
    if address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address: bad value {address!r}; allowed: host:port or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise UsageError(f"--address: cannot reach Ray at {address} ({e.strerror or e})") from None


# ----------------------------------------------------------------------------- Ray
def start_ray(args: argparse.Namespace, run_dir: Path) -> bool:
    """Join --address (shipping the code) or start local Ray; returns True if we started it."""
    import ray

    if ray.is_initialized():  # e.g. a test session: use it as it is
        return False
    common = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if args.address:
        excludes = list(SHIPPING_EXCLUDES)
        try:
            excludes.append(run_dir.parent.relative_to(REPO_ROOT).as_posix() + "/")
        except ValueError:
            pass
        try:
            ray.init(address=args.address, runtime_env={"working_dir": str(REPO_ROOT),
                                                        "excludes": excludes}, **common)
        except (ConnectionError, RuntimeError) as e:
            text = f"{e} {e.__cause__ or ''}"
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            hint = ("; a cluster with token authentication needs RAY_AUTH_MODE=token and its token"
                    if "auth" in text.lower() or "Failed to connect" in text else "")
            raise UsageError(f"--address: cannot join Ray at {args.address} ({first}{hint})") from None
    else:
        import torch

        ray.init(num_cpus=os.cpu_count() or 1, num_gpus=torch.cuda.device_count(), **common)
    return True


def resources(args: argparse.Namespace) -> dict[str, float]:
    """Per-trial resources; checks GPUs against the cluster (UsageError if it has none)."""
    import ray

    total_gpus = float(ray.cluster_resources().get("GPU", 0))
    gpus = args.gpus_per_trial
    if gpus is None:
        gpus = 0.25 if total_gpus > 0 else 0.0
    if gpus > 0 and total_gpus == 0:
        raise UsageError(f"--gpus-per-trial {gpus}: the Ray cluster has no GPUs")
    if gpus > total_gpus:
        raise UsageError(f"--gpus-per-trial {gpus}: the Ray cluster has only {total_gpus:g} GPUs")
    total_cpus = float(ray.cluster_resources().get("CPU", 0))
    if args.cpus_per_trial > total_cpus:
        raise UsageError(f"--cpus-per-trial {args.cpus_per_trial:g}: the Ray cluster has only "
                         f"{total_cpus:g} CPUs")
    return {"cpu": args.cpus_per_trial, "gpu": gpus}


def max_concurrent(args: argparse.Namespace, res: dict[str, float]) -> int:
    import ray

    if args.max_concurrent:
        return args.max_concurrent
    total = ray.cluster_resources()
    fits = int(total.get("CPU", 1) // res["cpu"])
    if res["gpu"] > 0:
        fits = min(fits, int(total.get("GPU", 0) // res["gpu"]))
    return max(1, min(fits, args.num_samples))


# ----------------------------------------------------------------------------- trials
def load_child(spec: str | None) -> Callable[..., dict]:
    """The child trainer, or the AUTODROPOUT_CHILD hook ("module:fn" or "/path/file.py:fn")."""
    if not spec:
        from child_trainer.train import train_child

        return train_child
    target, _, fn = spec.rpartition(":")
    if not target or not fn:
        raise ValueError(f"{CHILD_HOOK_ENV}: bad value {spec!r}; allowed: module:function or file.py:function")
    if target.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location(Path(target).stem + "_child_hook", target)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"{CHILD_HOOK_ENV}: cannot load {target}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    return getattr(module, fn)


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, float) else v) for k, v in metrics.items()
            if isinstance(v, (int, float, str, bool)) or v is None}


def _node_name() -> str:
    import ray

    return f"{ray.util.get_node_ip_address()}/{ray.get_runtime_context().get_node_id()[:8]}"


def run_trial(config: dict[str, Any], child_spec: str | None = None) -> None:
    """One trial: train the child under the plan, report every epoch and a final status.

    The final report carries ``final=True`` (see controller.searcher.trial_outcome). A child
    that raises is reported as status "failed" with its error (and the traceback in Ray's
    result.json) and the function returns normally: Ray then keeps the worker process for
    the next trial instead of paying a new one (seconds of imports) per failure."""
    from ray import tune

    from child_trainer.train import TrainConfig
    from search_space.plan import Plan

    node = _node_name()
    state = {"in_report": False, "epoch": 0}

    def report(epoch: int, metrics: dict[str, Any]) -> None:
        state["in_report"], state["epoch"] = True, int(epoch)
        tune.report({**_scalars(metrics), "epoch": int(epoch), "status": "running",
                     "final": False, "node": node})
        state["in_report"] = False

    try:
        child = load_child(child_spec)
        train, plan = TrainConfig.from_dict(config["train"]), Plan.from_json(config["plan"])
        result = child(train, plan, report)
    except Exception as exc:
        if state["in_report"]:  # Tune itself is ending the trial: not a child failure
            raise
        tune.report({"final": True, "status": "failed", "error": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc(limit=-8), "val_acc": float("nan"),
                     "epoch": state["epoch"], "node": node})
        return
    tune.report({**_scalars(result), "epoch": int(result.get("epochs", 0)), "final": True,
                 "node": node, "error": str(result.get("message") or "")})


def make_trainable(child_spec: str | None) -> Callable[[dict[str, Any]], None]:
    """Closure so the hook travels with the trainable (workers need no environment)."""

    def run_trial_fn(config: dict[str, Any]) -> None:
        run_trial(config, child_spec)

    return run_trial_fn


def trial_name(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


# ----------------------------------------------------------------------------- driver
def _tuner(args: argparse.Namespace, run_dir: Path, space: Any, train: dict[str, Any],
           penalty: float, res: dict[str, float], child_spec: str | None) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from controller.searcher import ControllerSearcher, RandomSearcher

    trainable = tune.with_resources(make_trainable(child_spec), res)
    if args.resume:
        tuner = tune.Tuner.restore(str(run_dir), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
        _point_searcher_at(tuner, run_dir)
        return tuner
    cls = ControllerSearcher if args.search == "controller" else RandomSearcher
    extra: dict[str, Any] = {}
    if args.search == "controller":
        extra["controller_batch"] = args.controller_batch
        if args.controller_lr is not None:
            extra["reinforce_kwargs"] = {"lr": args.controller_lr}
    searcher = cls(space, train, num_samples=args.num_samples, run_dir=run_dir, seed=args.seed,
                   penalty_reward=penalty, **extra)
    limiter = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent(args, res))
    if args.scheduler == "asha":
        # max_t beyond the last epoch: the final report (same epoch) must reach the searcher.
        scheduler = ASHAScheduler(time_attr="epoch", max_t=args.epochs + 1, grace_period=1,
                                  reduction_factor=3)
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=limiter, scheduler=scheduler, metric="val_acc",
                                    mode="max", num_samples=args.num_samples, reuse_actors=True,
                                    trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(name=run_dir.name, storage_path=str(run_dir.parent), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                                  sync_config=tune.SyncConfig(sync_period=5)),
    )


def _point_searcher_at(tuner: Any, run_dir: Path) -> None:
    """The searcher comes back from the run's tuner.pkl with the folder it started in; a run
    folder that was moved must still get its files. (Reaches into Tuner internals, hence
    the guard: if they change, the saved path is kept.)"""
    try:
        searcher = tuner._local_tuner._tune_config.search_alg
        while hasattr(searcher, "searcher"):
            searcher = searcher.searcher
        if getattr(searcher, "run_dir", None) != run_dir:
            log.info("run folder moved: bookkeeping now goes to %s", run_dir)
            searcher.run_dir = run_dir
    except AttributeError:
        log.warning("could not check the searcher's run folder; keeping the saved one")


def _saved_args(args: argparse.Namespace, run_dir: Path) -> argparse.Namespace:
    """--resume: the run's own settings, except where to find Ray and the run."""
    from controller.searcher import read_json

    saved = read_json(run_dir / "search_config.json")["args"]
    defaults = vars(build_parser().parse_args([]))
    ignored = [k for k, v in vars(args).items() if k not in ("address", "resume", "storage_path", "name")
               and v != defaults[k] and v != saved.get(k)]
    if ignored:
        log.warning("--resume uses the run's saved settings; ignoring %s",
                    ", ".join(f"--{k.replace('_', '-')}" for k in ignored))
    return argparse.Namespace(**{**defaults, **saved, "address": args.address, "resume": True,
                                 "storage_path": args.storage_path, "name": args.name})


class _Signals:
    """SIGTERM behaves like SIGINT: inside Tune it asks Tune to stop (Tune's SIGUSR1 handler
    saves the experiment state); outside it raises KeyboardInterrupt. `install` again after
    ray.init, whose core worker replaces the SIGTERM handler with one that aborts."""

    def __init__(self) -> None:
        self.in_tune = False
        self.previous = signal.signal(signal.SIGTERM, self._handle)

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.in_tune and hasattr(signal, "SIGUSR1"):
            os.kill(os.getpid(), signal.SIGUSR1)
        else:
            raise KeyboardInterrupt

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self.previous)


def _completed(run_dir: Path) -> int:
    path = run_dir / "trials.csv"
    if not path.is_file():
        return 0
    with path.open(newline="", encoding="utf-8") as f:
        return sum(1 for _ in csv.DictReader(f))


def summary(run_dir: Path) -> str:
    """Best plan vs the no-regularization trials, and what to run next."""
    from search_space.plan import Plan

    with (run_dir / "trials.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    statuses = {s: sum(r["status"] == s for r in rows) for s in ("ok", "stopped", "diverged", "failed")}
    lines = [f"Search finished: {len(rows)} trials ("
             + ", ".join(f"{n} {s}" for s, n in statuses.items() if n) + f"); run folder {run_dir}"]
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: -float(r["val_acc"]))
    site_cols = [c for c in rows[0] if c.startswith("site:")] if rows else []
    plain = [r for r in ok if all(r[c] == "none" for c in site_cols)]
    regularized = [r for r in ok if r not in plain]
    ref = sum(float(r["val_acc"]) for r in plain) / len(plain) if plain else None

    def describe(label: str, row: dict[str, str]) -> str:
        acc = float(row["val_acc"])
        versus = f", {100 * (acc - ref):+.2f} points vs no regularization" if ref is not None else ""
        return (f"{label} (trial {row['trial_id']}, val_acc {acc:.4f}{versus}): "
                f"{Plan.from_json(row['plan_json']).summary()}")

    if not ok:
        lines.append("No trial finished with status ok: see the error column of trials.csv")
    else:
        lines.append(describe("Best plan", ok[0]))
        if regularized and regularized[0] is not ok[0]:
            lines.append(describe("Best regularizing plan", regularized[0]))
        lines.append(f"No regularization: val_acc {ref:.4f} ({len(plain)} trial{'s' * (len(plain) > 1)})"
                     if plain else "No regularization: no finished all-'none' trial to compare with")
    rel = os.path.relpath(run_dir)
    rel = str(run_dir) if rel.startswith("..") else rel
    lines += ["Next:", f"  python -m results summarize {rel}", f"  python -m results plot {rel}",
              f"  python -m results export {rel} --out best_plan.json",
              f"  python -m results retrain {rel}"]
    return "\n".join(lines)


class _DropTuneHints(logging.Filter):
    """Tune's end-of-run hints name Python APIs; our own log line says what to run instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not msg.startswith(("Experiment has been interrupted", "Trials did not complete"))


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                            stream=sys.stderr)
    for name in ("launch_search", "controller.searcher"):
        logging.getLogger(name).setLevel(logging.INFO)
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.WARNING)
    tune_log = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _DropTuneHints) for f in tune_log.filters):
        tune_log.addFilter(_DropTuneHints())


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # errors go to trials.csv
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no tables, our log lines
    signals = _Signals()
    started_ray = False
    run_dir: Path | None = None
    try:
        check_args(args)
        if args.resume:
            run_dir = Path(args.storage_path).expanduser().resolve() / args.name
            args = _saved_args(args, run_dir)
        if args.model is None:
            args.model = "digits_cnn" if args.dataset == "digits" else "resnet20"
        if args.dataset == "digits" and not args.resume:
            for key, value in DIGITS_DEFAULTS.items():
                if getattr(args, key) is None:
                    setattr(args, key, value)
        if args.epochs is None:
            args.epochs = DEFAULT_EPOCHS
        args.name = args.name or default_name(args)
        run_dir = Path(args.storage_path).expanduser().resolve() / args.name
        train = train_config(args)
        space, num_classes = build_space(args, train)
        if args.address:
            check_address(args.address)
        elif (args.gpus_per_trial or 0) > 0:
            import torch

            if not torch.cuda.is_available():
                raise UsageError(f"--gpus-per-trial {args.gpus_per_trial}: this machine has no GPU "
                                 "(use --address to join a GPU cluster)")
        started_ray = start_ray(args, run_dir)
        signals.install()
        res = resources(args)
        child_spec = os.environ.get(CHILD_HOOK_ENV) or None
        if not args.resume:
            from controller.searcher import atomic_write_text, now_iso

            run_dir.mkdir(parents=True, exist_ok=False)
            config = {"args": {k: v for k, v in vars(args).items()}, "train": train,
                      "space": space.to_dict(), "searcher": args.search, "started_at": now_iso(),
                      "version": CONFIG_VERSION}
            atomic_write_text(run_dir / "search_config.json", json.dumps(config, indent=2) + "\n")
        return _run(args, run_dir, space, train, 1.0 / num_classes, res, child_spec, signals)
    except UsageError as e:
        print(f"launch_search.py: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        log.warning("interrupted before the search started")
        return EXIT_INTERRUPTED
    finally:
        signals.restore()
        if started_ray:
            import ray

            ray.shutdown()


def _run(args: argparse.Namespace, run_dir: Path, space: Any, train: dict[str, Any],
         penalty: float, res: dict[str, float], child_spec: str | None, signals: _Signals) -> int:
    from controller.searcher import write_run_state

    log.info("%s %s search: %d trials of %s on %s (%g CPU, %g GPU per trial) -> %s",
             "resuming" if args.resume else "starting", args.search, args.num_samples,
             args.model, args.dataset, res["cpu"], res["gpu"], run_dir)
    write_run_state(run_dir, "running", args.num_samples, _completed(run_dir))
    start = time.time()
    signals.in_tune = True
    try:
        _tuner(args, run_dir, space, train, penalty, res, child_spec).fit()
    except KeyboardInterrupt:
        pass
    except Exception as e:  # noqa: BLE001 - the run stays resumable; say so
        signals.in_tune = False
        write_run_state(run_dir, "interrupted", args.num_samples, _completed(run_dir),
                        error=f"{type(e).__name__}: {e}")
        log.exception("search crashed; resume with --resume --name %s", args.name)
        return EXIT_CRASH
    finally:
        signals.in_tune = False
    done = _completed(run_dir)
    if done < args.num_samples:
        write_run_state(run_dir, "interrupted", args.num_samples, done)
        log.warning("interrupted after %d/%d trials; finish with: python launch_search.py "
                    "--resume --name %s --storage-path %s", done, args.num_samples, args.name,
                    args.storage_path)
        return EXIT_INTERRUPTED
    write_run_state(run_dir, "finished", args.num_samples, done,
                    seconds_this_session=round(time.time() - start, 1))
    print(summary(run_dir))
    return EXIT_OK


if __name__ == "__main__":
    # Run as the importable module, so Ray pickles trial functions by reference.
    import launch_search

    sys.exit(launch_search.main())
