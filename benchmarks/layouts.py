"""Channels-last and 1-D layouts against N,C,H,W: speed and realized rate per layer.

Run by hand (not CI), from the repository root:
``PYTHONPATH=. python benchmarks/layouts.py [--repeats 40] [--threads 1]``.
Prints the CPU model, then one markdown table: per layer, the median forward+backward CPU
time (process time, one torch thread: robust to other processes sharing the cores) on

- ``NCHW``: an N,C,H,W tensor, the layer's default;
- ``NHWC``: the same units stored N,H,W,C with ``layout="NHWC"`` (a permuted view, no copy);
- ``copy``: what a user would write without layouts: ``permute().contiguous()`` to N,C,H,W,
  the layer, and back;

timed round-robin in one process, with the ratios NHWC / NCHW and NHWC / copy, and the
realized zeroed fraction on NHWC ones. The 1-D rows compare N,C,L with N,T,C (``layout="NTC"``).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch
from _machine import cpu_model  # noqa: E402 (benchmarks/ is the script's folder)
from torch import nn

from search_space.layers import Disout, DropBlock1d, DropBlock2d, PatternDropout, SequenceDropout, SpatialDropout
from search_space.layouts import Layout, get_layout

MAP = (64, 64, 16, 16)  # N, C, H, W
SEQ = (64, 64, 128)  # N, C, L

LAYERS: dict[str, tuple[Callable[[str], nn.Module], tuple[int, ...], str]] = {
    "DropBlock2d p=.1 b=5": (lambda lay: DropBlock2d(0.1, 5, layout=lay), MAP, "NHWC"),
    "DropBlock2d p=.1 b=5 shared": (lambda lay: DropBlock2d(0.1, 5, True, layout=lay), MAP, "NHWC"),
    "DropBlock2d p=.3 b=3": (lambda lay: DropBlock2d(0.3, 3, layout=lay), MAP, "NHWC"),
    "Disout p=.09 b=5": (lambda lay: Disout(0.09, 5, 5.0, layout=lay), MAP, "NHWC"),
    "PatternDropout shared": (lambda lay: PatternDropout(2, 4, 2, share_channels=True, layout=lay), MAP, "NHWC"),
    "SpatialDropout p=.2": (lambda lay: SpatialDropout(0.2, layout=lay), MAP, "NHWC"),
    "DropBlock1d p=.1 b=5": (lambda lay: DropBlock1d(0.1, 5, layout=lay), SEQ, "NTC"),
    "DropBlock1d p=.1 b=5 shared": (lambda lay: DropBlock1d(0.1, 5, True, layout=lay), SEQ, "NTC"),
    "SequenceDropout p=.2 s=2 st=4": (
        lambda lay: SequenceDropout(0.2, 2, 4, share_t=True, layout=lay),
        SEQ,
        "NTC",
    ),
}


def copied(layer: nn.Module, lay: Layout) -> Callable[[torch.Tensor], torch.Tensor]:
    """``layer`` on a contiguous channels-first copy of a channels-last input, copied back."""
    return lambda t: lay.from_channels_first(layer(lay.to_channels_first(t).contiguous())).contiguous()


def step(layer: nn.Module, x: torch.Tensor, wrap: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
    grad = torch.ones_like(x)

    def run() -> None:
        xi = x.detach().requires_grad_()
        wrap(xi).backward(grad)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}; {args.threads} thread(s); process time, median of "
          f"{args.repeats} round-robin repeats\n")  # fmt: skip
    print("| layer | first (ms) | last, no copy (ms) | copy to first and back (ms) | last / first | last / copy "
          "| realized (last) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, (make, shape, last) in LAYERS.items():
        lay = get_layout(last)
        first_name = {4: "NCHW", 3: "NCL"}[len(shape)]
        first = torch.randn(shape)
        stored = lay.from_channels_first(first).contiguous()  # the same units, stored channels last
        plain, told = make(first_name).train(), make(last).train()
        runs = {
            "first": step(plain, first, plain),
            "last": step(told, stored, told),
            "copy": step(plain, stored, copied(plain, lay)),
        }
        times: dict[str, list[float]] = {k: [] for k in runs}
        for k in runs:  # warm-up
            runs[k]()
        for _ in range(args.repeats):
            order = list(runs)
            random.shuffle(order)
            for k in order:
                start = time.process_time()
                runs[k]()
                times[k].append(time.process_time() - start)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        with torch.no_grad():
            ones = torch.ones_like(stored)
            rate = statistics.mean(float((told(ones) == 0).double().mean()) for _ in range(40))
        print(
            f"| {name} ({first_name} vs {last}) | {med['first']:.2f} | {med['last']:.2f} | {med['copy']:.2f} | "
            f"{med['last'] / med['first']:.2f} | {med['last'] / med['copy']:.2f} | {rate:.4f} |"
        )


if __name__ == "__main__":
    main()
