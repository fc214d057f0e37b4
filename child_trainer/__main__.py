"""``python -m child_trainer``: train one child network from the command line.

Every TrainConfig field is a flag (``--batch-size``, ``--eval-test``/``--no-eval-test``, ...).
Bad arguments give a one-line error and exit code 2; a diverged or failed run exits 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from .flags import add_train_flags, train_fields
from .train import TrainConfig, train_child

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m child_trainer", description=__doc__.splitlines()[0])
    add_train_flags(parser)
    parser.add_argument("--threads", dest="num_threads", type=int, help="alias of --num-threads")
    parser.add_argument("--plan", type=Path, help="regularization plan JSON (search_space.Plan)")
    parser.add_argument("--json", action="store_true", help="print the result dict as the last stdout line")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    return parser


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    fields = set(train_fields())
    try:
        config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
        plan = None
        if args.plan is not None:
            from search_space.plan import Plan

            if not args.plan.is_file():
                return _fail(f"plan: file not found: {args.plan}")
            plan = Plan.load(args.plan)
        result = train_child(config, plan, progress=sys.stderr.isatty() and not args.json)
    except ValueError as exc:
        return _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        if "val_ppl" in result:  # language model
            test = f" test_ppl={result['test_ppl']:.2f}" if "test_ppl" in result else ""
            metrics = (f"val_ppl={result['val_ppl']:.2f} best_val_ppl={result['best_val_ppl']:.2f}{test} "
                       f"epochs={result['epochs']} seconds={result['seconds']:.1f} "
                       f"tokens/s={result['tokens_per_second']:.0f}")
        else:
            test = f" test_acc={result['test_acc']:.4f}" if "test_acc" in result else ""
            metrics = (f"val_acc={result['val_acc']:.4f} best_val_acc={result['best_val_acc']:.4f}{test} "
                       f"epochs={result['epochs']} seconds={result['seconds']:.1f} "
                       f"images/s={result['images_per_second']:.0f}")
        print(f"{config.model} on {config.dataset}: status={result['status']} {metrics} {result['message']}".rstrip())
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
