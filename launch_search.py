"""Search regularization plans with Ray Tune: the command users run, on a laptop or a cluster.

    python launch_search.py                       # digits, a few minutes on 2 cores
    python launch_search.py --dataset cifar10 --model resnet20 --data-dir data \\
        --epochs 30 --num-samples 200 --gpus-per-trial 0.25 --scheduler asha --address auto
    python launch_search.py --resume --name NAME  # finish an interrupted run
    python launch_search.py --model mymodels:make_net --describe   # your model's sites, no Ray

A thin command over the search API (``controller.run_search``) with our built-in children
(``child_trainer.trial``) or ``--child module:function`` (train_child's signature). Its search
flags are the fields of ``controller.config.SearchConfig`` and ``RunConfig`` (generated: their
help is the fields'); its training flags are the child's ``TrainConfig``, with the recipe
defaults below. Every flag is checked before Ray starts. Everything lands in STORAGE/NAME/.
``--model package.module:factory`` trains your own model (importable from the current folder)
with the built-in trainer; ``--describe`` prints the model's sites (output shapes, stages,
allowed methods) and exits without starting Ray.
Exit codes: 0 finished, 2 bad arguments, 130 interrupted (resume with --resume), 1 crash or a
search in which every trial failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from search_space.errors import UserError, user_error

log = logging.getLogger("launch_search")

EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
PROG = "launch_search.py"
# The built-in children's recipes. Digits: a small training subset trained long enough to
# overfit (about 1,000 SGD steps), the regime where a regularizer can pay off.
DIGITS_DEFAULTS = {"train_size": 200, "epochs": 150, "batch_size": 32}
DEFAULT_EPOCHS = 30
# transformer_lm on the built-in corpus: 20k training tokens overfit within ~270 steps, where
# dropout-like regularizers pay off (at 10k tokens the model underfits and they only hurt).
LM_DEFAULTS = {"train_size": 20000, "epochs": 30, "batch_size": 32}
# MNIST-1D: 1,000 training sequences for 100 epochs, where tuned global dropout beats none by
# 7 points on test (docs/benchmarks.md, benchmarks/mnist1d_headroom.py), ~5 CPU s a training.
MNIST1D_DEFAULTS = {"train_size": 1000, "epochs": 100, "batch_size": 64}
RECIPES = {"digits": DIGITS_DEFAULTS, "mnist1d": MNIST1D_DEFAULTS}
TRAIN_FLAGS = ("dataset", "data_dir", "model", "train_size", "epochs", "batch_size", "lr", "amp", "seq_len")
TRAIN_HELP = {
    "dataset": "digits; builtin_text for transformer_lm; mnist1d for mnist1d_cnn and mnist1d_mlp",
    "model": "digits_cnn for digits, mnist1d_cnn for mnist1d, transformer_lm for text, resnet20 otherwise; "
    "or package.module:factory",
    "train_size": "200 for digits, 1000 for mnist1d, 20000 tokens for transformer_lm, the whole training split "
    "otherwise",
    "epochs": f"150 for digits, 100 for mnist1d, 30 for transformer_lm, {DEFAULT_EPOCHS} otherwise",
    "batch_size": "32 for digits and transformer_lm, 64 for mnist1d, the trainer's otherwise",
    "seq_len": "64",
    "lr": "the trainer's, 0.1 (SGD) or 3e-3 (AdamW)",
    "data_dir": "./data",
    "amp": "auto",
}
FLAG_OF = {"max_epochs": "--epochs", "num_threads": "--cpus-per-trial"}  # settings the command derives


class UsageError(UserError, ValueError):
    """A bad argument: reported as one line, exit code 2, before any long work."""


def build_parser() -> argparse.ArgumentParser:
    from child_trainer.flags import add_train_flags
    from controller.config import RunConfig, SearchConfig, add_flags
    from search_space.errors import OneLineParser

    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_train_flags(p, TRAIN_FLAGS, defaults=dict.fromkeys(TRAIN_FLAGS), help_defaults=TRAIN_HELP)
    p.set_defaults(search_flags=add_flags(p, SearchConfig), run_flags=add_flags(p, RunConfig))
    p.add_argument("--resume", action="store_true", help="finish the run --name; its saved settings are used")
    p.add_argument(
        "--describe",
        action="store_true",
        help="print the model's candidate sites (output shape, stage, allowed methods) and exit; Ray does not start",
    )
    return p


def _usage(exc: ValueError) -> UsageError:
    """A FieldError under its flag's name; others as they are."""
    from search_space.errors import FieldError

    if isinstance(exc, FieldError):
        flag = FLAG_OF.get(exc.field) or "--" + exc.field.replace("_", "-")
        return user_error(flag, exc.value, exc.allowed, detail=exc.detail, hint=exc.hint, cls=UsageError)
    return user_error(detail=" ".join(str(exc).split()), cls=UsageError)


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe defaults of the chosen model and dataset, then the TrainConfig every trial
    shares (checked here)."""
    from child_trainer.data import TEXT_DATASETS
    from child_trainer.models import is_lm
    from child_trainer.train import TrainConfig

    if args.dataset is None:
        model = args.model or ""
        args.dataset = "builtin_text" if is_lm(model) else "mnist1d" if model.startswith("mnist1d_") else "digits"
    if args.model is None:
        args.model = {"digits": "digits_cnn", "mnist1d": "mnist1d_cnn"}.get(
            args.dataset, "transformer_lm" if args.dataset in TEXT_DATASETS else "resnet20"
        )
    defaults = LM_DEFAULTS if is_lm(args.model) else RECIPES.get(args.dataset, {})
    for key, value in {"epochs": DEFAULT_EPOCHS, **defaults}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    recipe = {k: getattr(args, k) for k in ("batch_size", "lr", "amp", "seq_len") if getattr(args, k) is not None}
    threads = max(1, int(min(args.cpus_per_trial, 1024)))
    try:
        cfg = TrainConfig(model=args.model, dataset=args.dataset, epochs=args.epochs, train_size=args.train_size,
                          data_dir=args.data_dir, seed=args.seed, num_threads=threads, **recipe)  # fmt: skip
    except ValueError as e:
        raise _usage(e) from None
    if not args.address and (cfg.amp == "fp16" or (args.gpus_per_trial or 0) > 0):
        import torch

        if not torch.cuda.is_available():  # on a cluster the nodes may have what this machine lacks
            if cfg.amp == "fp16":
                raise user_error(
                    "--amp", detail="bad value 'fp16'; allowed here: auto, none, bf16 (fp16 needs CUDA)", cls=UsageError
                )
            raise user_error(
                "--gpus-per-trial",
                detail=f"bad value {args.gpus_per_trial:g}; allowed here: 0 (this machine has no GPU; "
                "use --address to join a GPU cluster)",
                cls=UsageError,
            )
    return cfg.to_dict()


def model_and_example(train: dict[str, Any], child: str | None = None) -> tuple[Any, Any, Any, float]:
    """The model factory, one real input batch (the baselines place their layers by feature-map
    size), the objective and the penalty reward (the reward of chance level). Loads the data
    once on the driver, so a missing --data-dir fails here, not in every trial."""
    from child_trainer.train import task_metric
    from child_trainer.trial import ChildModel, driver_data
    from controller.run_folder import Objective

    metric, mode = task_metric(train["model"])
    objective = Objective(metric, mode, "neg_log" if metric == "val_ppl" else "")
    try:
        data = driver_data(train)  # the driver's one load of the data
    except ValueError as e:
        raise _usage(e) from None
    model_fn = ChildModel(train, child, paths=[str(Path.cwd())], sizes=data.sizes)
    return model_fn, data.example, objective, objective.reward(data.chance)


def describe_model(model_fn: Any, example: Any, layouts: dict[str, str] | None = None) -> str:
    """--describe: the sites table of the chosen model on one real input."""
    import pandas as pd

    from search_space.describe import describe

    table = describe(model_fn(), example, layouts=layouts)
    with pd.option_context("display.max_rows", None, "display.max_colwidth", 60, "display.width", 200):
        return table.to_string(index=False)


def default_baselines(model_fn: Any, example: Any, layouts: dict[str, str] | None = None) -> tuple[str, ...]:
    """Every hand-set baseline that applies to the model's space (all four for a ConvNet with
    2-D maps; none and dropout for a Transformer, a recurrent model or one without maps)."""
    from search_space.baselines import available_baselines
    from search_space.space import SearchSpace

    return tuple(available_baselines(SearchSpace.for_model(model_fn(), example_input=example, layouts=layouts)))


def given(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The settings given on this command line (a resume compares them with the folder's)."""
    out: dict[str, Any] = {k: getattr(args, k) for k in args.search_flags if getattr(args, k) != parser.get_default(k)}
    train = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    return {**out, "train": train} if train else out


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    for name in ("launch_search", "controller.searcher", "controller.policies", "controller.api"):
        logging.getLogger(name).setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging()
    if str(Path.cwd()) not in sys.path:  # --model package.module:factory, from the current folder
        sys.path.insert(0, str(Path.cwd()))
    from controller.api import check_resumable, check_storage, run_search
    from controller.config import RunConfig, SearchConfig
    from controller.ray_session import code_runtime_env
    from controller.run_folder.settings import resume_settings
    from search_space.errors import FieldError

    try:
        try:
            run = RunConfig(**{k: getattr(args, k) for k in args.run_flags})
            if args.resume and not args.name:
                raise user_error("resume", True, "--resume together with --name of the run", detail="needs --name")
            if args.child is not None:
                from child_trainer.user_code import check_child

                args.child = check_child(args.child)
            storage = check_storage(args.storage_path)
            if args.resume:  # the folder's settings; from this command line only the code
                config = resume_settings(check_resumable(storage / args.name), given(parser, args))
                train, child = config.train, config.child
                if train is None:  # run_search's own model and train_fn: only Python has them
                    raise user_error("resume", args.name, "a run of launch_search.py (resume this one with run_search)")
            else:
                train, child = resolve(args), args.child
            model_fn, example, objective, penalty = model_and_example(train, child)
            if args.describe:
                print(describe_model(model_fn, example, args.layouts if not args.resume else config.layouts))
                return EXIT_OK
            if not args.resume:
                flags = {k: getattr(args, k) for k in args.search_flags}
                if flags["baselines"] is None:
                    flags["baselines"] = default_baselines(model_fn, example, flags["layouts"])
                config = SearchConfig(
                    **flags, train=train, max_epochs=train["epochs"], model_name=train["model"],
                    metric=objective.metric, mode=objective.mode, reward_transform=objective.transform,
                    penalty_reward=penalty,
                )  # fmt: skip
            name = args.name or f"{train['dataset']}-{train['model']}-{config.search}-{time.strftime('%Y%m%d-%H%M%S')}"
            run = dataclasses.replace(run, name=name, runtime_env=code_runtime_env(args.address, storage))
            from child_trainer.trial import ChildTrain

            train_fn = ChildTrain(train, child, paths=[str(Path.cwd())])
            result = run_search(model_fn, train_fn, config, run, resume=args.resume, example_input=example)
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
            name,
            args.storage_path,
        )
        return EXIT_INTERRUPTED
    print(result.summary)
    if result.status == "failed" and result.error.startswith(("every trial failed", "no trial of")):
        log.error("search failed: %s", result.error)
        return EXIT_CRASH
    if result.status == "failed":
        log.error("search stopped: %s; resume with --resume --name %s once fixed", result.error, name)
        return EXIT_CRASH
    return EXIT_OK


if __name__ == "__main__":
    # Run as the importable module, so Ray pickles trial functions by reference.
    import launch_search

    sys.exit(launch_search.main())
