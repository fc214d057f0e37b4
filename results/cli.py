"""``python -m results summarize|plot|export|retrain RUN_DIR``: the commands users run after a search.

Any unusable input (bad RUN_DIR, bad rank, unknown option value) ends with one line on
stderr and exit status 2, like argparse's own usage errors. A retrain that did not finish
says so in one line, with exit status 130 (Ctrl+C, SIGTERM) or 1 (trainings that ended
without a result); run the same command again to finish it.

The flags and their checks are ``results.cli_args``; what each command does is
``results.commands``.
"""

from __future__ import annotations

import logging
import sys

from search_space.errors import FieldError, UserError

from .cli_args import PROG, _check, build_parser
from .retrain_ray import RetrainIncomplete

__all__ = ["main", "build_parser"]

EXIT_INTERRUPTED = 130  # as launch_search.py: Ctrl+C or SIGTERM; the same command goes on


def main(argv: list[str] | None = None) -> int:
    """Run one command; 0 on success, 2 (one line on stderr) on unusable input; for retrain also
    130 when interrupted and 1 when trainings ended without a result (the same command goes on)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _check(args)
        return int(args.func(args))
    except FieldError as exc:  # a setting named by its flag where the command has one
        flag = "--" + exc.field.replace("_", "-")
        msg = str(exc.renamed(flag) if flag in parser.commands[args.command].flags else exc)
        print(f"{PROG}: error: {' '.join(msg.split())}", file=sys.stderr)
        return 2
    except (UserError, ValueError) as exc:  # ValueError: results/retrain.py's own checks, for now
        msg = " ".join(str(exc).split())
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; what finished is kept: run the same command again to go on", file=sys.stderr)
        return EXIT_INTERRUPTED
    except RetrainIncomplete as exc:
        print(f"{PROG}: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_INTERRUPTED if exc.interrupted else 1
