"""``python -m child_trainer``: train one child network from the command line.

Every TrainConfig field is a flag (``--batch-size``, ``--eval-test``/``--no-eval-test``, ...).
Bad arguments give a one-line error and exit code 2; a diverged or failed run exits 1; Ctrl-C
stops it with exit code 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from search_space.errors import FieldError, OneLineParser, typed, user_error

from .flags import add_train_flags, flag_of, train_fields
from .train import TrainConfig, train_child

PROG = "python -m child_trainer"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
    add_train_flags(
        parser,
        defaults={"dataset": None, "model": None},
        help_defaults={"dataset": "digits; builtin_text for transformer_lm, mnist1d for mnist1d_*",
                       "lr": "0.1 (SGD) or 3e-3 (AdamW)", "label_smoothing": "0.1 for images, 0 for transformer_lm",
                       "model": "digits_cnn; mnist1d_cnn for --dataset mnist1d"},
    )  # fmt: skip
    parser.add_argument("--threads", dest="num_threads", type=typed(int), help="alias of --num-threads")
    parser.add_argument("--plan", help="regularization plan JSON (search_space.Plan)")
    parser.add_argument("--json", action="store_true", help="print the result dict as the last stdout line")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    return parser


def _fail(message: str) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def load_plan_file(text: str) -> Any:
    """--plan: a readable plan JSON file (FieldError naming --plan otherwise)."""
    from search_space.plan import Plan

    path = Path(text)
    if text == "" or not path.exists():
        raise user_error("--plan", text, "a plan JSON file", detail=f"bad value {text!r} (not found)")
    if not path.is_file():
        raise user_error("--plan", text, "a plan JSON file", detail=f"bad value {text!r} (not a file)")
    try:
        return Plan.load(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise user_error(
            "--plan", text, "a plan JSON file", detail=f"bad value {text!r} (unreadable: {type(exc).__name__})"
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    fields = set(train_fields())
    if args.model is None:  # the data's own model: sequences need a 1-D child
        args.model = "mnist1d_cnn" if args.dataset == "mnist1d" else TrainConfig.model
    if args.dataset is None:  # the model's own data: a language model reads text, a 1-D child MNIST-1D
        from .models import is_lm
        from .models_1d import SEQUENCE_MODELS

        args.dataset = "builtin_text" if is_lm(args.model) else "mnist1d" if args.model in SEQUENCE_MODELS else "digits"
    try:
        config = TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})
        plan = load_plan_file(args.plan) if args.plan is not None else None
        result = train_child(config, plan, progress=sys.stderr.isatty() and not args.json)
    except FieldError as exc:  # a TrainConfig field is the flag of the same name
        return _fail(str(exc if exc.field.startswith("-") else exc.renamed(flag_of(exc.field))))
    except ValueError as exc:
        return _fail(str(exc) or type(exc).__name__)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        if "val_ppl" in result:  # language model
            test = f" test_ppl={result['test_ppl']:.2f}" if "test_ppl" in result else ""
            metrics = (
                f"val_ppl={result['val_ppl']:.2f} best_val_ppl={result['best_val_ppl']:.2f}{test} "
                f"epochs={result['epochs']} seconds={result['seconds']:.1f} "
                f"tokens/s={result['tokens_per_second']:.0f}"
            )
        else:
            test = f" test_acc={result['test_acc']:.4f}" if "test_acc" in result else ""
            metrics = (
                f"val_acc={result['val_acc']:.4f} best_val_acc={result['best_val_acc']:.4f}{test} "
                f"epochs={result['epochs']} seconds={result['seconds']:.1f} "
                f"images/s={result['images_per_second']:.0f}"
            )
        print(f"{config.model} on {config.dataset}: status={result['status']} {metrics} {result['message']}".rstrip())
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
