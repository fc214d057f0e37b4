"""The command line of ``python -m results``: its flags, and every check of them made before
any file is read or written (one line naming the flag, exit status 2, as argparse's own).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from search_space.errors import SEED_MAX, OneLineParser, check_number, choice_of, typed, user_error

from .commands import cmd_export, cmd_plot, cmd_retrain, cmd_summarize
from .tables import FORMATS

PROG = "python -m results"


def _train_size(text: str) -> str | int:
    if text in ("full", "search"):
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad value {text!r}; allowed: full, search, or a positive integer") from None


def _writable_dir(flag: str, text: str | None) -> Path | None:
    """--out of plot/retrain: a folder that exists or can be created, and is writable."""
    from search_space.files import writable_folder

    if text is None:
        return None
    writable_folder(flag, text)
    return Path(text)


def _writable_file(flag: str, text: str) -> Path:
    """--out of export: a file path whose folder exists or can be created."""
    if text == "" or text.endswith(("/", os.sep)):
        raise user_error(flag, text, "a file path such as plan.json")
    path = Path(text)
    if path.is_dir():
        raise user_error(flag, text, "a file path such as plan.json", detail=f"bad value {text!r} (a folder)")
    _writable_dir(flag, str(path.parent) if str(path.parent) else ".")
    return path


def _int_in(flag: str, value: int, low: int, high: int | None = None) -> int:
    check_number(flag, value, low, high, integer=True)
    return value


def build_parser() -> argparse.ArgumentParser:
    from search_space.baselines import BASELINES

    p = OneLineParser(
        prog=PROG,
        description="Tables, figures, plan export and retraining against baselines "
        "for a search run written by launch_search.py.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    p.commands = {}  # name -> its parser (whose .flags name its settings)

    def add(name: str, help_: str, many: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_, description=help_)
        p.commands[name] = sp
        sp.add_argument(
            "run_dir",
            nargs="+" if many else None,
            metavar="RUN_DIR",
            help="STORAGE/NAME written by launch_search.py" + (" (several to compare searches)" if many else ""),
        )
        sp.add_argument(
            "--allow-running",
            action="store_true",
            help="read a run whose run_state.json still says running (its process died)",
        )
        return sp

    s = add("summarize", "tables: top plans, methods per site, searcher comparison, failures, compute", many=True)
    s.add_argument("--top", type=typed(int), default=5, help="number of best plans to list (default 5)")
    s.add_argument("--format", type=choice_of(FORMATS), default="text", help=f"{', '.join(FORMATS)} (default text)")
    s.set_defaults(func=cmd_summarize)
    pl = add("plot", "PNG figures: rewards, controller entropy, method heatmap, masks of the best plan", many=True)
    pl.add_argument("--out", help="output folder (default RUN_DIR/results)")
    pl.add_argument("--seed", type=typed(int), default=0, help="seed of the example masks")
    pl.set_defaults(func=cmd_plot)
    e = add("export", "write the plan of a ranked trial as a loadable Plan JSON")
    e.add_argument("--out", required=True, help="plan file to write, e.g. plan.json")
    e.add_argument("--rank", type=typed(int), default=1, help="1 = best validation accuracy (default)")
    e.set_defaults(func=cmd_export)
    r = add("retrain", "retrain top plans and baselines with several seeds; test once")
    r.add_argument("--top", type=typed(int), default=1, help="number of best searched plans (default 1)")
    r.add_argument("--seeds", type=typed(int), default=3, help="seeds per plan (default 3)")
    r.add_argument("--epochs", type=typed(int), default=None, help="epochs (default: the search's)")
    r.add_argument(
        "--train-size",
        type=_train_size,
        default="full",
        help="full (whole training split, default), search (the search's subset) or N images",
    )
    r.add_argument(
        "--baselines",
        nargs="*",
        default=list(BASELINES),
        type=choice_of(BASELINES),
        help=f"baselines to include (default all: {' '.join(BASELINES)})",
    )
    r.add_argument(
        "--seed-offset",
        type=typed(int),
        default=None,
        help="first seed, seeds offset..offset+S-1 (default: the first S seeds the search never used)",
    )
    r.add_argument("--no-tuned", action="store_true", help="leave out the search's tuned global recipes")
    r.add_argument("--no-learned", action="store_true", help="leave out the search's learned-rates plan")
    r.add_argument("--device", default=None, help="override the run's device (cpu, cuda, auto)")
    r.add_argument(
        "--num-threads", type=typed(int), default=None, help="torch CPU threads per training (default: its CPUs)"
    )
    r.add_argument("--address", default=None, help="join a running Ray cluster (host:port or auto); default: local Ray")
    r.add_argument(
        "--cpus-per-trial", type=typed(float), default=1.0, help="CPUs per training, also its torch threads (default 1)"
    )
    r.add_argument(
        "--gpus-per-trial",
        type=typed(float),
        default=None,
        help="fractional allowed, e.g. 0.25 (default 0.25 if the cluster has GPUs, else 0)",
    )
    r.add_argument("--out", help="output folder (default RUN_DIR/results)")
    r.set_defaults(func=cmd_retrain)
    return p


def _check(args: argparse.Namespace) -> None:
    """Every flag, before any file is read or written."""
    if args.command == "summarize":
        _int_in("--top", args.top, 1)
    elif args.command == "plot":
        _int_in("--seed", args.seed, 0, SEED_MAX)
        _writable_dir("--out", args.out)
    elif args.command == "export":
        _int_in("--rank", args.rank, 1)
        _writable_file("--out", args.out)
    elif args.command == "retrain":
        _int_in("--top", args.top, 0)
        _int_in("--seeds", args.seeds, 1, 1000)
        if args.seed_offset is not None:
            _int_in("--seed-offset", args.seed_offset, 0, SEED_MAX - 1000)
        if args.epochs is not None:
            _int_in("--epochs", args.epochs, 1)
        if args.num_threads is not None:
            _int_in("--num-threads", args.num_threads, 1, 1024)
        if args.device is not None and not (
            args.device in ("auto", "cpu", "cuda") or (args.device.startswith("cuda:") and args.device[5:].isdigit())
        ):
            raise user_error("--device", args.device, "auto, cpu, cuda, cuda:N")
        _check_ray_flags(args)
        _writable_dir("--out", args.out)


def _check_ray_flags(args: argparse.Namespace) -> None:
    """--address, --cpus-per-trial and --gpus-per-trial as the search checks them, before Ray starts."""
    from controller.checks import _check_local_cpus, check_address, check_resources

    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    check_resources(resources)
    check_address(args.address)
    if args.address is None:
        _check_local_cpus(resources)
        if (args.gpus_per_trial or 0) > 0:
            import torch

            if not torch.cuda.is_available():  # on a cluster the nodes may have what this machine lacks
                raise user_error(
                    "--gpus-per-trial",
                    detail=f"bad value {args.gpus_per_trial:g}; allowed here: 0 (this machine has no GPU; "
                    "use --address to join a GPU cluster)",
                )
