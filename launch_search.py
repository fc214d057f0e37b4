"""Search regularization plans with Ray Tune: the command users run, on a laptop or a cluster.

    python launch_search.py                       # digits, a few minutes on 2 cores
    python launch_search.py --dataset cifar10 --model resnet20 --data-dir data \\
        --epochs 30 --num-samples 200 --gpus-per-trial 0.25 --scheduler asha --address auto
    python launch_search.py --resume --name NAME  # finish an interrupted run
    python launch_search.py --model mymodels:make_net --describe   # your model's sites, no Ray

A thin command over the search API (``controller.run_search``) with our built-in children
(``child_trainer.trial``) or ``--child module:function`` (train_child's signature). Every flag
is checked before Ray starts. Everything lands in STORAGE/NAME/ (see README).
``--model package.module:factory`` trains your own model (importable from the current folder)
with the built-in trainer; ``--describe`` prints the model's sites (output shapes, stages,
allowed methods) and exits without starting Ray.
Exit codes: 0 finished, 2 bad arguments, 130 interrupted (resume with --resume), 1 crash or a
search in which every trial failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from search_space.errors import UserError, UserTypeError, user_error

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
# Flags passed to run_search under the same name.
SAME_NAMES = ("num_samples", "search", "max_concurrent", "scheduler", "sites", "seed", "reward_seeds",
              "final_top_k", "final_seeds", "controller_batch", "controller_lr", "address",
              "tuned_trials", "trial_timeout")  # fmt: skip
SHIPPING_EXCLUDES = [".git/", "data/", "runs/", "**/__pycache__/", "*.egg-info/", ".pytest_cache/"]


class UsageError(UserError, ValueError):
    """A bad argument: reported as one line, exit code 2, before any long work."""


# (flag, type, default, help) of the search's own flags; the child's recipe flags come from
# TrainConfig (TRAIN_FLAGS), as in `python -m child_trainer`.
SEARCH_FLAGS: list[tuple[str, type, Any, str]] = [
    (
        "--num-samples",
        int,
        16,
        "trainings of the search: tuned global recipes + sampled plans "
        "(hand-set baselines and the final stage come on top)",
    ),
    ("--search", str, "controller", "controller (LSTM + REINFORCE), random, or tpe (Optuna)"),
    ("--reward-seeds", int, 1, "trainings per plan with different seeds; the reward is their mean"),
    ("--baselines", str, None, "hand-set plans in every search (default: all 4; none,dropout for Transformers)"),
    (
        "--tuned-trials",
        str,
        "auto",
        "trainings of --num-samples that tune one method at every site (dropout, "
        "DropBlock or the sequence pattern) on a small grid; auto: a quarter; 0: off",
    ),
    ("--final-top-k", int, 2, "best sampled plans re-trained at the end with fresh seeds (0: no final stage)"),
    ("--final-seeds", int, 3, "fresh seeds per plan in the final stage (3 or more for a paired interval)"),
    ("--max-concurrent", int, None, "trials at once (default: what the cluster's resources allow)"),
    ("--cpus-per-trial", float, 1.0, "CPUs per trial, also its torch threads"),
    ("--gpus-per-trial", float, None, "fractional allowed, e.g. 0.25 (default 0.25 if the cluster has GPUs, else 0)"),
    ("--scheduler", str, "fifo", "fifo or asha (stops weak trials early; their last value is the reward)"),
    ("--controller-batch", int, 4, "finished trials per REINFORCE update"),
    ("--controller-lr", float, 0.05, "controller Adam learning rate in (0, 1] (0.01 suits hundreds of trials)"),
    ("--sites", str, "stage", "stage (one decision set per stage or block), all, or module paths / globs"),
    (
        "--layouts",
        str,
        None,
        "site=LAYOUT pairs for sites whose layout the model does not show, e.g. 'stages.*=NHWC,head.0=NC' "
        "(NCHW, NHWC, NCL, NCDHW, NDHWC, NTC, TNC, NC; see --describe's layout and note columns)",
    ),
    (
        "--child",
        str,
        None,
        "module:function or file.py:function with train_child's signature (config, plan, "
        "report); sites come from the module's child_model(config) when it has one, else from --model",
    ),
    (
        "--trial-timeout",
        float,
        None,
        "seconds one trial may run (all its reward seeds); past it the trial is recorded as "
        "timeout with the penalty reward and the search goes on (default: no limit)",
    ),
    ("--address", str, None, "join a running Ray cluster (host:port or auto); default: local Ray"),
    ("--storage-path", str, "runs", "parent folder of the run folder"),
    ("--name", str, None, "run folder name (default DATASET-MODEL-SEARCH-DATE-TIME)"),
    ("--seed", int, 0, "seed of the searcher and the children"),
]
TRAIN_HELP = {
    "dataset": "digits; builtin_text for transformer_lm",
    "model": "digits_cnn for digits, transformer_lm for text, resnet20 otherwise; or package.module:factory",
    "train_size": "200 for digits, 20000 tokens for transformer_lm, the whole training split otherwise",
    "epochs": f"150 for digits, 30 for transformer_lm, {DEFAULT_EPOCHS} otherwise",
    "batch_size": "32 for digits and transformer_lm, the trainer's otherwise",
    "seq_len": "64",
    "lr": "the trainer's, 0.1 (SGD) or 3e-3 (AdamW)",
    "data_dir": "./data",
    "amp": "auto",
}


def build_parser() -> argparse.ArgumentParser:
    from child_trainer.flags import add_train_flags
    from search_space.errors import OneLineParser, typed

    p = OneLineParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_train_flags(p, TRAIN_FLAGS, defaults=dict.fromkeys(TRAIN_FLAGS), help_defaults=TRAIN_HELP)
    for flag, kind, default, text in SEARCH_FLAGS:
        p.add_argument(
            flag, type=typed(kind) if kind is not str else None, default=default, help=f"{text} (default {default})"
        )
    p.add_argument("--resume", action="store_true", help="finish the run --name; its saved settings are used")
    p.add_argument(
        "--describe",
        action="store_true",
        help="print the model's candidate sites (output shape, stage, allowed methods) and exit; Ray does not start",
    )
    return p


# ----------------------------------------------------------------------------- checks
def _usage(exc: ValueError) -> UsageError:
    """A FieldError under its flag's name; others as they are."""
    from search_space.errors import FieldError

    if isinstance(exc, FieldError):
        flag = FLAG_OF.get(exc.field) or "--" + exc.field.replace("_", "-")
        return user_error(flag, exc.value, exc.allowed, detail=exc.detail, hint=exc.hint, cls=UsageError)
    return user_error(detail=" ".join(str(exc).split()), cls=UsageError)


def check_args(args: argparse.Namespace) -> None:
    """What only the command knows (the API checks the rest before Ray starts)."""
    from search_space.errors import FieldError

    try:
        if args.resume and not args.name:
            raise user_error("resume", True, "--resume together with --name of the run", detail="needs --name")
        if args.baselines is not None:
            baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
            for b in baselines:
                if b not in BASELINE_NAMES:
                    raise user_error("baselines", b, ", ".join(BASELINE_NAMES))
            if len(set(baselines)) != len(baselines):
                raise user_error("baselines", args.baselines, "distinct names")
            args.baselines = ",".join(baselines)
        if args.tuned_trials != "auto":
            try:
                args.tuned_trials = int(args.tuned_trials)
            except (TypeError, ValueError):
                raise user_error("tuned_trials", args.tuned_trials, "auto or an integer >= 0") from None
        if args.child is not None:
            from child_trainer.trial import load_function

            check_child_signature(args.child, load_function(args.child, "child"))
            target, _, fn = args.child.rpartition(":")
            if target.endswith(".py"):  # workers start elsewhere: pass the file's absolute path
                args.child = f"{Path(target).resolve()}:{fn}"
    except FieldError as exc:
        raise _usage(exc) from None


def check_child_signature(spec: str, fn: Any) -> None:
    """--child must take (config, plan, report) like train_child: refused here, not in every trial."""
    import inspect

    try:
        inspect.signature(fn).bind(None, None, None)
    except TypeError as exc:
        raise user_error(
            "child",
            spec,
            "a function taking (config, plan, report) like child_trainer.train_child",
            detail=f"bad value {spec!r} ({exc})",
        ) from None
    except ValueError:  # no signature to read (some builtins): the trial will say
        pass


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
    defaults = LM_DEFAULTS if is_lm(args.model) else DIGITS_DEFAULTS if args.dataset == "digits" else {}
    defaults = {"epochs": DEFAULT_EPOCHS, **defaults}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.baselines is None and args.model in TRANSFORMERS:
        args.baselines = "none,dropout"
    elif args.baselines is None and ":" not in args.model and not args.child:
        args.baselines = ",".join(BASELINE_NAMES)  # your own model: set in main, from its space
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


def parse_layouts(text: str | None) -> dict[str, str] | None:
    """--layouts 'stages.*=NHWC,head.0=NC' -> {"stages.*": "NHWC", "head.0": "NC"} (the names
    are checked against the sites and their shapes by the search space)."""
    if text is None:
        return None
    out: dict[str, str] = {}
    for pair in (p.strip() for p in text.split(",") if p.strip()):
        site, sep, layout = pair.partition("=")
        if not sep or not site.strip() or not layout.strip():
            raise user_error("--layouts", pair, "site=LAYOUT pairs, e.g. stages.*=NHWC", cls=UsageError)
        out[site.strip()] = layout.strip()
    return out


def describe_model(model_fn: Any, example: Any, layouts: dict[str, str] | None = None) -> str:
    """--describe: the sites table of the chosen model on one real input."""
    import pandas as pd

    from search_space.describe import describe

    table = describe(model_fn(), example, layouts=layouts)
    with pd.option_context("display.max_rows", None, "display.max_colwidth", 60, "display.width", 200):
        return table.to_string(index=False)


def default_baselines(model_fn: Any, example: Any, layouts: dict[str, str] | None = None) -> str:
    """Your own model: every baseline that applies (all four for a ConvNet with 2-D maps),
    else none,dropout."""
    from search_space.baselines import available_baselines
    from search_space.space import SearchSpace

    space = SearchSpace.for_model(model_fn(), example_input=example, layouts=layouts)
    return ",".join(available_baselines(space))


def _saved_args(args: argparse.Namespace, run_dir: Path) -> argparse.Namespace:
    """--resume: the run's own settings, except where to find Ray and the run."""
    from controller.run_folder import SEARCH_CONFIG, read_json

    try:
        saved = read_json(run_dir / SEARCH_CONFIG)["args"]
        if not isinstance(saved, dict):
            raise user_error(detail="args is not an object", cls=UserTypeError)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise user_error(
            "--resume",
            detail=f"bad value {str(run_dir)!r}; its {SEARCH_CONFIG} is unreadable ({type(e).__name__})",
            hint="nothing was changed",
            cls=UsageError,
        ) from None
    defaults = vars(build_parser().parse_args([]))
    code = _code_flags(args, saved)
    ignored = [
        k
        for k, v in vars(args).items()
        if k not in ("address", "resume", "storage_path", "name", *code) and v != defaults.get(k) and v != saved.get(k)
    ]
    if ignored:
        log.warning(
            "--resume uses the run's saved settings; ignoring %s",
            ", ".join("--" + k.replace("_", "-") for k in ignored),
        )
    keep = {"address": args.address, "resume": True, "storage_path": args.storage_path, "name": args.name, **code}
    return argparse.Namespace(**{**defaults, **saved, **keep})


def _code_flags(args: argparse.Namespace, saved: dict[str, Any]) -> dict[str, Any]:
    """--child and a --model package.module:factory name code to import: on --resume they come
    from the command line, never from the run folder (whoever can write a folder must not be
    able to choose what a resume runs). Refused when the run used one and it is not given."""
    out: dict[str, Any] = {}
    for key in ("child", "model"):
        was = saved.get(key)
        names_code = isinstance(was, str) and (key == "child" or ":" in was)
        if not names_code:
            continue
        given = getattr(args, key)
        if not given:
            raise user_error(
                f"--{key}",
                None,
                f"the --{key} this run was started with ({was!r}), given again "
                "(a resume never imports code that a run folder names)",
                cls=UsageError,
            )
        if given != was:
            log.warning("--resume with --%s %s (the run started with %s)", key, given, was)
        out[key] = given
    return out


def _setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    for name in ("launch_search", "controller.searcher", "controller.policies", "controller.api"):
        logging.getLogger(name).setLevel(logging.INFO)


# ----------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    if str(Path.cwd()) not in sys.path:  # --model package.module:factory, from the current folder
        sys.path.insert(0, str(Path.cwd()))
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
            model_fn, example, objective, penalty = model_and_example(train, args.child)
            layouts = parse_layouts(args.layouts)
            if args.describe:
                print(describe_model(model_fn, example, layouts))
                return EXIT_OK
            if args.baselines is None:
                args.baselines = default_baselines(model_fn, example, layouts)
            from child_trainer.trial import ChildTrain

            args.name = args.name or f"{args.dataset}-{args.model}-{args.search}-{time.strftime('%Y%m%d-%H%M%S')}"
            result = run_search(
                model_fn, ChildTrain(train, args.child, paths=[str(Path.cwd())]),
                **{k: getattr(args, k) for k in SAME_NAMES},
                metric=objective.metric, mode=objective.mode, reward_transform=objective.transform,
                storage_path=storage, name=args.name, resume=args.resume, max_epochs=args.epochs,
                resources_per_trial={"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial},
                model_name=args.model, baselines=[b for b in args.baselines.split(",") if b],
                example_input=example, layouts=layouts, penalty_reward=penalty, runtime_env=_runtime_env(args, storage),
                extra_config={"args": vars(args), "train": train},
            )  # fmt: skip
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
    if result.status == "failed" and result.error.startswith(("every trial failed", "no trial of")):
        log.error("search failed: %s", result.error)
        return EXIT_CRASH
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
