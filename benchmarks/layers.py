"""Forward+backward speed and realized drop rate of our DropBlock against the references.

Run by hand (not CI): ``python benchmarks/layers.py [--repeats 60] [--threads 2]``.
Prints ONE markdown table: per device, shape and layer the median fwd+bwd time over many
round-robin repeats (robust to other processes sharing the cores), the ratio to our layer
with the same semantics (shared mask vs per-channel mask), and the realized zeroed fraction
on a ones tensor. Reference implementations are imported here only, never at runtime.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from search_space.layers import DropBlock2d

log = logging.getLogger("benchmarks.layers")

P, BLOCK = 0.1, 5
SHAPES = [(128, 64, 16, 16), (32, 256, 32, 32)]


class FixedMask(nn.Module):
    """Multiply by a precomputed mask: the floor any mask-multiplying DropBlock pays."""

    def __init__(self, shared: bool) -> None:
        super().__init__()
        self.shared = shared
        self.mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask is None or self.mask.device != x.device:
            shape = (x.shape[0], 1 if self.shared else x.shape[1], *x.shape[2:])
            self.mask = (torch.rand(shape, device=x.device) >= P).to(x.dtype) / (1 - P)
        return x * self.mask


def candidates(device: torch.device) -> list[tuple[str, str, Callable[[], nn.Module]]]:
    """(row name, name of our row it is compared with, factory); the rows marked [.. algo]
    force the sampler that ``algorithm="auto"`` does not pick on this device."""
    import dropblock
    import timm.layers

    other = "dense" if device.type == "cpu" else "sparse"
    rows: list[tuple[str, str, Callable[[], nn.Module]]] = [
        ("ours shared", "ours shared", lambda: DropBlock2d(P, BLOCK, share_channels=True)),
        ("ours per-channel", "ours per-channel", lambda: DropBlock2d(P, BLOCK, share_channels=False)),
        (f"ours shared [{other} algo]", "ours shared", lambda: DropBlock2d(P, BLOCK, True, algorithm=other)),
        (f"ours per-channel [{other} algo]", "ours per-channel", lambda: DropBlock2d(P, BLOCK, False, algorithm=other)),
        ("dropblock.DropBlock2D (shared)", "ours shared", lambda: dropblock.DropBlock2D(P, BLOCK)),
        ("timm DropBlock2d couple_channels=True (shared)", "ours shared",
         lambda: timm.layers.DropBlock2d(P, BLOCK, couple_channels=True)),
        ("timm DropBlock2d couple_channels=False (per-channel)", "ours per-channel",
         lambda: timm.layers.DropBlock2d(P, BLOCK, couple_channels=False)),
        ("floor: x * precomputed shared mask", "ours shared", lambda: FixedMask(True)),
        ("floor: x * precomputed per-channel mask", "ours per-channel", lambda: FixedMask(False)),
        ("nn.Dropout", "ours per-channel", lambda: nn.Dropout(P)),
        ("identity", "ours per-channel", lambda: nn.Identity()),
    ]
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_all(layers: dict[str, nn.Module], shape: tuple[int, ...], device: torch.device, repeats: int) -> dict[str, float]:
    """Median fwd+bwd milliseconds per layer, interleaving the layers round-robin."""
    x = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape, device=device)
    times: dict[str, list[float]] = {name: [] for name in layers}
    for it in range(repeats + 3):
        for name, layer in layers.items():
            x.grad = None
            _sync(device)
            t0 = time.perf_counter()
            layer(x).backward(grad)
            _sync(device)
            if it >= 3:  # warm-up
                times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(v) for name, v in times.items()}


@torch.no_grad()
def realized(layer: nn.Module, shape: tuple[int, ...], device: torch.device, passes: int = 10) -> float:
    x = torch.ones(shape, device=device)
    return sum(float((layer(x) == 0).float().mean()) for _ in range(passes)) / passes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    lines = [
        f"drop_prob={P}, block_size={BLOCK}, fp32, forward+backward, median of {args.repeats} round-robin repeats, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads",
        "",
        "| device | shape | layer | fwd+bwd ms (median) | ratio to ours (same semantics) | realized drop fraction |",
        "|---|---|---|---:|---:|---:|",
    ]
    for device in devices:
        for shape in SHAPES:
            rows = candidates(device)
            layers = {name: make().to(device).train() for name, _, make in rows}
            ms = time_all(layers, shape, device, args.repeats)
            for name, ref, _ in rows:
                rate = realized(layers[name], shape, device)
                lines.append(
                    f"| {device.type} | {'x'.join(map(str, shape))} | {name} | {ms[name]:.2f} | "
                    f"{ms[name] / ms[ref]:.2f}x vs {ref} | {rate:.4f} |"
                )
    print("\n".join(lines))  # the table is this script's output


if __name__ == "__main__":
    main()
