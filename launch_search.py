"""Search regularization plans with Ray Tune: the command users run, on a laptop or a cluster.

    python launch_search.py                       # digits, a few minutes on 2 cores
    python launch_search.py --dataset cifar10 --model resnet20 --data-dir data \\
        --epochs 30 --num-samples 200 --gpus-per-trial 0.25 --scheduler asha --address auto
    python launch_search.py --resume --name NAME  # finish an interrupted run

A thin command over the search API (``controller.run_search``) with our built-in children
(``child_trainer.trial``) or ``--child module:function`` (train_child's signature). Every flag
is checked before Ray starts. Everything lands in STORAGE/NAME/ (see README).
Exit codes: 0 finished, 2 bad arguments, 130 interrupted (resume with --resume), 1 crash.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

log = logging.getLogger("launch_search")

REPO_ROOT = Path(__file__).resolve().parent
EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PROG = "launch_search.py"
BASELINE_NAMES = ("none", "dropout", "dropblock", "disout")
# Digits defaults: a small training subset trained long enough to overfit (about 1,000 SGD
# steps), the regime where a regularizer can pay off.
DIGITS_DEFAULTS = {"train_size": 200, "epochs": 150, "batch_size": 32}
DEFAULT_EPOCHS = 30
# transformer_lm on the built-in corpus: 20k training tokens overfit within ~270 steps, where
# dropout-like regularizers pay off (at 10k tokens the model underfits and they only hurt).
LM_DEFAULTS = {"train_size": 20000, "epochs": 30, "batch_size": 32}
TRANSFORMERS = ("vit_tiny", "transformer_lm")
TRAIN_FLAGS = ("dataset", "data_dir", "model", "train_size", "epochs", "batch_size", "lr", "amp", "seq_len")
FLAG_OF = {"max_epochs": "--epochs", "num_threads": "--cpus-per-trial"}  # API/TrainConfig names that differ
SHIPPING_EXCLUDES = [".git/", "data/", "runs/", "**/__pycache__/", "*.egg-info/", ".pytest_cache/"]


class UsageError(ValueError):
    """A bad argument: reported as one line, exit code 2, before any long work."""


def build_parser() -> argparse.ArgumentParser:
    from child_trainer.flags import add_train_flags
    from search_space.errors import OneLineParser, typed

    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_train_flags(
        p,
        TRAIN_FLAGS,
        defaults={k: None for k in TRAIN_FLAGS},
        help_defaults={
            "dataset": "digits; builtin_text for transformer_lm",
            "model": "digits_cnn for digits, transformer_lm for text, resnet20 otherwise",
            "train_size": "200 for digits, 20000 tokens for transformer_lm, the whole training split otherwise",
            "epochs": f"150 for digits, 30 for transformer_lm, {DEFAULT_EPOCHS} otherwise",
            "batch_size": "32 for digits and transformer_lm, the trainer's otherwise",
            "seq_len": "64",
            "lr": "the trainer's, 0.1",
            "data_dir": "./data",
            "amp": "auto",
        },
    )
    p.add_argument(
        "--num-samples",
        type=typed(int),
        default=16,
        help="plans the searcher samples (default 16); baselines and the final stage come on top",
    )
    p.add_argument(
        "--search", default="controller", help="controller (LSTM + REINFORCE, default), random, or tpe (Optuna)"
    )
    p.add_argument(
        "--reward-seeds",
        type=typed(int),
        default=1,
        help="trainings per plan with different seeds; the reward is their mean (default 1)",
    )
    p.add_argument(
        "--baselines",
        default=None,
        help="hand-set plans trained in every search, never learned from (default "
        f"{','.join(BASELINE_NAMES)}; none,dropout for Transformers; '' for none)",
    )
    p.add_argument(
        "--final-top-k",
        type=typed(int),
        default=2,
        help="best sampled plans re-trained at the end with fresh seeds (default 2; 0: no final stage)",
    )
    p.add_argument(
        "--final-seeds", type=typed(int), default=2, help="fresh seeds per plan in the final stage (default 2)"
    )
    p.add_argument(
        "--max-concurrent",
        type=typed(int),
        default=None,
        help="trials at once (default: as many as the cluster's resources allow)",
    )
    p.add_argument(
        "--cpus-per-trial", type=typed(float), default=1.0, help="CPUs per trial, also its torch threads (default 1)"
    )
    p.add_argument(
        "--gpus-per-trial",
        type=typed(float),
        default=None,
        help="fractional allowed, e.g. 0.25 (default 0.25 if the cluster has GPUs, else 0)",
    )
    p.add_argument(
        "--scheduler",
        default="fifo",
        help="fifo (default) or asha: stops weak trials early, their last value is the reward",
    )
    p.add_argument(
        "--controller-batch", type=typed(int), default=4, help="finished trials per REINFORCE update (default 4)"
    )
    p.add_argument(
        "--controller-lr",
        type=typed(float),
        default=0.05,
        help="controller Adam learning rate in (0, 1] (default 0.05: budgets of tens of trials; 0.01 suits hundreds)",
    )
    p.add_argument(
        "--sites",
        default="stage",
        help="'stage' (default: one decision set per stage or Transformer block, what a budget "
        "of tens of trials can learn), 'all' (every site found in the model), or "
        "comma-separated module paths / glob patterns",
    )
    p.add_argument(
        "--child",
        default=None,
        help="module:function or path/file.py:function with child_trainer.train_child's "
        "signature (config, plan, report), trained instead of our child",
    )
    p.add_argument(
        "--address", default=None, help="join a running Ray cluster (host:port or 'auto'); default: local Ray"
    )
    p.add_argument("--storage-path", default="runs", help="parent folder of the run folder (default runs)")
    p.add_argument("--name", default=None, help="run folder name (default DATASET-MODEL-SEARCH-DATE-TIME)")
    p.add_argument("--resume", action="store_true", help="finish the run --name; its saved settings are used")
    p.add_argument("--seed", type=typed(int), default=0, help="seed of the searcher and the children (default 0)")
    return p


# ----------------------------------------------------------------------------- checks
def _usage(exc: ValueError) -> UsageError:
    """A FieldError under its flag's name; others as they are."""
    from search_space.errors import FieldError

    if isinstance(exc, FieldError):
        flag = FLAG_OF.get(exc.field) or "--" + exc.field.replace("_", "-")
        return UsageError(str(exc.renamed(flag)))
    return UsageError(" ".join(str(exc).split()))


def check_args(args: argparse.Namespace) -> None:
    """What only the command knows (the API checks the rest before Ray starts)."""
    from search_space.errors import FieldError

    try:
        if args.resume and not args.name:
            raise FieldError("resume", True, "--resume together with --name of the run", detail="needs --name")
        if args.baselines is not None:
            baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
            for b in baselines:
                if b not in BASELINE_NAMES:
                    raise FieldError("baselines", b, ", ".join(BASELINE_NAMES))
            if len(set(baselines)) != len(baselines):
                raise FieldError("baselines", args.baselines, "distinct names")
            args.baselines = ",".join(baselines)
        if args.child is not None:
            from child_trainer.trial import load_function

            load_function(args.child, "child")
            target, _, fn = args.child.rpartition(":")
            if target.endswith(".py"):  # workers start elsewhere: pass the file's absolute path
                args.child = f"{Path(target).resolve()}:{fn}"
    except FieldError as exc:
        raise _usage(exc) from None


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Model/dataset-dependent defaults, then the TrainConfig every trial shares (checked here)."""
    from child_trainer.data import TEXT_DATASETS
    from child_trainer.models import is_lm
    from child_trainer.train import TrainConfig

    if args.dataset is None:
        args.dataset = "builtin_text" if args.model and is_lm(args.model) else "digits"
    if args.model is None:
        args.model = {"digits": "digits_cnn"}.get(
            args.dataset, "transformer_lm" if args.dataset in TEXT_DATASETS else "resnet20"
        )
    defaults = (
        LM_DEFAULTS
        if is_lm(args.model)
        else DIGITS_DEFAULTS
        if args.dataset == "digits"
        else {"epochs": DEFAULT_EPOCHS}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.baselines is None:
        args.baselines = "none,dropout" if args.model in TRANSFORMERS else ",".join(BASELINE_NAMES)
    recipe = {k: getattr(args, k) for k in ("batch_size", "lr", "amp", "seq_len") if getattr(args, k) is not None}
    try:
        cfg = TrainConfig(
            model=args.model,
            dataset=args.dataset,
            epochs=args.epochs,
            train_size=args.train_size,
            data_dir=args.data_dir,
            seed=args.seed,
            num_threads=max(1, int(min(args.cpus_per_trial, 1024))),
            **recipe,
        )
    except ValueError as e:
        raise _usage(e) from None
    if cfg.amp == "fp16" and not args.address:
        import torch

        if not torch.cuda.is_available():
            raise UsageError(
                "--amp: bad value 'fp16'; allowed here: auto, none, bf16 (fp16 needs CUDA, and this machine has none)"
            )
    if (args.gpus_per_trial or 0) > 0 and not args.address:
        import torch

        if not torch.cuda.is_available():
            raise UsageError(
                f"--gpus-per-trial: bad value {args.gpus_per_trial:g}; allowed here: 0 "
                "(this machine has no GPU; use --address to join a GPU cluster)"
            )
    return cfg.to_dict()


def model_and_example(train: dict[str, Any]) -> tuple[Any, Any, Any, float]:
    """The model factory, one real input batch (the baselines place their layers by feature-map
    size), the objective and the penalty reward (the reward of chance level). Loads the data
    once on the driver, so a missing --data-dir fails here, not in every trial."""
    from child_trainer.train import task_metric
    from child_trainer.trial import ChildModel, chance_level
    from child_trainer.trial import model_and_example as example_of
    from controller.run_folder import Objective

    metric, mode = task_metric(train["model"])
    objective = Objective(metric, mode, "neg_log" if metric == "val_ppl" else "")
    try:
        _, example, _, _ = example_of(train)
        penalty = objective.reward(chance_level(train))
    except ValueError as e:
        raise _usage(e) from None
    return ChildModel(train), example, objective, penalty


def _saved_args(args: argparse.Namespace, run_dir: Path) -> argparse.Namespace:
    """--resume: the run's own settings, except where to find Ray and the run."""
    from controller.run_folder import SEARCH_CONFIG, read_json

    try:
        saved = read_json(run_dir / SEARCH_CONFIG)["args"]
        if not isinstance(saved, dict):
            raise TypeError("args is not an object")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UsageError(
            f"--resume: bad value {str(run_dir)!r}; its {SEARCH_CONFIG} is unreadable "
            f"({type(e).__name__}); nothing was changed"
        ) from None
    defaults = vars(build_parser().parse_args([]))
    ignored = [
        k
        for k, v in vars(args).items()
        if k not in ("address", "resume", "storage_path", "name") and v != defaults.get(k) and v != saved.get(k)
    ]
    if ignored:
        log.warning(
            "--resume uses the run's saved settings; ignoring %s",
            ", ".join("--" + k.replace("_", "-") for k in ignored),
        )
    return argparse.Namespace(
        **{
            **defaults,
            **saved,
            "address": args.address,
            "resume": True,
            "storage_path": args.storage_path,
            "name": args.name,
        }
    )


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    for name in ("launch_search", "controller.searcher", "controller.api"):
        logging.getLogger(name).setLevel(logging.INFO)


# ----------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    from controller.api import check_resumable, check_storage, run_search
    from search_space.errors import FieldError

    try:
        try:
            check_args(args)
            storage = check_storage(args.storage_path)
            if args.resume:
                check_resumable(storage / args.name)
                args = _saved_args(args, storage / args.name)
            train = resolve(args)
            model_fn, example, objective, penalty = model_and_example(train)
            from child_trainer.trial import ChildTrain

            args.name = args.name or f"{args.dataset}-{args.model}-{args.search}-{time.strftime('%Y%m%d-%H%M%S')}"
            result = run_search(
                model_fn,
                ChildTrain(train, args.child),
                metric=objective.metric,
                mode=objective.mode,
                reward_transform=objective.transform,
                num_samples=args.num_samples,
                search=args.search,
                storage_path=storage,
                name=args.name,
                resume=args.resume,
                resources_per_trial={"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial},
                max_concurrent=args.max_concurrent,
                scheduler=args.scheduler,
                max_epochs=args.epochs,
                sites=args.sites,
                model_name=args.model,
                seed=args.seed,
                reward_seeds=args.reward_seeds,
                baselines=[b for b in args.baselines.split(",") if b],
                example_input=example,
                final_top_k=args.final_top_k,
                final_seeds=args.final_seeds,
                controller_batch=args.controller_batch,
                controller_lr=args.controller_lr,
                penalty_reward=penalty,
                address=args.address,
                runtime_env=_runtime_env(args, storage),
                extra_config={"args": vars(args), "train": train},
            )
        except FieldError as e:
            raise _usage(e) from None
    except UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        log.warning("interrupted before the search started")
        return EXIT_INTERRUPTED
    if result.status == "interrupted":
        log.warning(
            "interrupted after %d trials; finish with: python launch_search.py --resume --name %s --storage-path %s",
            len(result.trials),
            args.name,
            args.storage_path,
        )
        return EXIT_INTERRUPTED
    print(result.summary)
    if result.status == "failed":
        log.error("search stopped: %s; resume with --resume --name %s once fixed", result.error, args.name)
        return EXIT_CRASH
    return EXIT_OK


def _runtime_env(args: argparse.Namespace, storage: Path) -> dict[str, Any] | None:
    """On a cluster the code travels as the job's working_dir (data and runs stay behind)."""
    if not args.address:
        return None
    excludes = list(SHIPPING_EXCLUDES)
    try:
        excludes.append(storage.relative_to(REPO_ROOT).as_posix() + "/")
    except ValueError:
        pass
    return {"working_dir": str(REPO_ROOT), "excludes": excludes}


if __name__ == "__main__":
    # Run as the importable module, so Ray pickles trial functions by reference.
    import launch_search

    sys.exit(launch_search.main())
