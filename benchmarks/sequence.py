"""SequenceDropout (AutoDropout's Transformer pattern): realized rate error and speed vs nn.Dropout.

Run by hand (not CI), from the repository root:
``PYTHONPATH=. python benchmarks/sequence.py [--repeats 40] [--threads 1] [--device cuda] [--dtype bf16]``.
Prints the CPU model, then two markdown tables measured in the same run:
1. realized dropped fraction minus ``expected_rate`` over sizes, strides and both sharing
   flags (mean over draws on a ones tensor, with the binomial-ish standard error);
2. median forward+backward time of each sharing mode against ``nn.Dropout`` at the same
   shape and rate, round-robin over repeats so other processes on the cores hit all rows alike.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import statistics
import time

import torch
from _machine import cpu_model  # noqa: E402 (benchmarks/ is the script's folder)
from torch import nn

from search_space.layers import SequenceDropout

log = logging.getLogger("benchmarks.sequence")

P = 0.1
RATE_SHAPE = (32, 64, 64)
SPEED_SHAPES = [(32, 64, 128), (16, 256, 256)]


def rate_table(draws: int, device: torch.device) -> list[str]:
    rows = ["| size | stride | share_t | share_c | expected | realized | error | 1 s.e. |", "|---" * 8 + "|"]
    x = torch.ones(RATE_SHAPE, device=device)
    worst = 0.0
    for size, stride in [(1, 2), (1, 8), (2, 4), (3, 6), (4, 3), (4, 8)]:
        for share_t, share_c in itertools.product((False, True), repeat=2):
            layer = SequenceDropout(P, size, stride, share_t, share_c)
            rates = [(layer(x) == 0).float().mean().item() for _ in range(draws)]
            mean, se = statistics.fmean(rates), statistics.stdev(rates) / draws**0.5
            err = mean - layer.expected_rate
            worst = max(worst, abs(err))
            rows.append(
                f"| {size} | {stride} | {share_t} | {share_c} | {layer.expected_rate:.4f} | {mean:.4f} "
                f"| {err:+.4f} | {se:.4f} |"
            )
    rows.append(f"\nlargest |error| {worst:.4f} (p={P}, shape {RATE_SHAPE}, {draws} draws per row)")
    return rows


def speed_table(repeats: int, device: torch.device, dtype: torch.dtype) -> list[str]:
    rows = ["| shape (N,T,C) | layer | median fwd+bwd ms | ratio to nn.Dropout |", "|---|---|---|---|"]
    for shape in SPEED_SHAPES:
        layers = {"nn.Dropout": nn.Dropout(P)}
        for share_t, share_c in itertools.product((False, True), repeat=2):
            layers[f"seq_pattern size 2 stride 4 share_t={share_t} share_c={share_c}"] = SequenceDropout(
                P, 2, 4, share_t, share_c
            )
        x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
        grad = torch.randn_like(x)
        times: dict[str, list[float]] = {k: [] for k in layers}
        for _ in range(repeats):
            for name, layer in layers.items():  # round robin
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                layer(x).backward(grad)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - start)
                x.grad = None
        base = statistics.median(times["nn.Dropout"])
        for name, ts in times.items():
            med = statistics.median(ts)
            rows.append(f"| {shape} | {name} | {1000 * med:.3f} | {med / base:.2f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    log.info(
        "# SequenceDropout on %s (%s, %d thread(s), torch %s, %s)\n",
        device,
        where,
        args.threads,
        torch.__version__,
        args.dtype,
    )
    log.info("\n".join(rate_table(args.draws, device)))
    log.info("")
    log.info("\n".join(speed_table(args.repeats, device, dtype)))


if __name__ == "__main__":
    main()
