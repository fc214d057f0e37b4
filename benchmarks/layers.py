"""Forward+backward speed and realized drop rate of our layers against the references.

Run by hand (not CI), from the repository root so that its packages are imported:
``PYTHONPATH=. python benchmarks/layers.py [--repeats 60] [--threads 1] [--ab REV]``.
Prints the CPU model, then ONE markdown table: per device, shape and layer the median
fwd+bwd time over many round-robin repeats (robust to other processes sharing the cores),
the time above the one-multiply floor of the same semantics (``x * precomputed mask``: what
any masking layer pays), the ratio to our layer with the same semantics (shared mask vs
per-channel mask), and the realized zeroed fraction on a ones tensor. ``--ab REV`` adds
``search_space/layers`` as of git ``REV`` (imported under another name), timed interleaved
with today's. Reference implementations are imported here only, never at runtime.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from _machine import cpu_model  # noqa: E402 (benchmarks/ is the script's folder)
from torch import nn

import search_space.layers as ours

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


def load_layers_at(rev: str, name: str = "layers_before") -> ModuleType:
    """``search_space/layers`` as of git ``rev`` of this repository, imported as the top-level
    package ``name`` (its absolute self-imports renamed), for same-process A/B timings."""
    root = Path(__file__).resolve().parents[1]
    git = ["git", "-C", str(root)]
    files = subprocess.run(
        [*git, "ls-tree", "--name-only", rev, "search_space/layers/"], check=True, capture_output=True, text=True
    ).stdout.split()
    pkg = Path(tempfile.mkdtemp(prefix="ab_layers_")) / name
    pkg.mkdir()
    for path in files:
        if path.endswith(".py"):
            text = subprocess.run([*git, "show", f"{rev}:{path}"], check=True, capture_output=True, text=True).stdout
            (pkg / Path(path).name).write_text(text.replace("search_space.layers", name))
    sys.path.insert(0, str(pkg.parent))
    return importlib.import_module(name)


def candidates(
    device: torch.device,
    before: ModuleType | None = None,
) -> list[tuple[str, str, Callable[[], nn.Module]]]:
    """(row name, name of our row it is compared with, factory); the rows marked [.. algo]
    force the sampler that ``algorithm="auto"`` does not pick on this device; rows marked
    [before] are the layers of ``before`` (`load_layers_at`)."""
    import dropblock
    import timm.layers

    other = "dense" if device.type == "cpu" else "sparse"
    rows: list[tuple[str, str, Callable[[], nn.Module]]] = [
        ("ours shared", "ours shared", lambda: ours.DropBlock2d(P, BLOCK, share_channels=True)),
        ("ours per-channel", "ours per-channel", lambda: ours.DropBlock2d(P, BLOCK, share_channels=False)),
        (f"ours shared [{other} algo]", "ours shared", lambda: ours.DropBlock2d(P, BLOCK, True, algorithm=other)),
        (
            f"ours per-channel [{other} algo]",
            "ours per-channel",
            lambda: ours.DropBlock2d(P, BLOCK, False, algorithm=other),
        ),
        (
            "ours shared [reference algo]",
            "ours shared",
            lambda: ours.DropBlock2d(P, BLOCK, True, algorithm="reference"),
        ),
        (
            "ours per-channel [reference algo]",
            "ours per-channel",
            lambda: ours.DropBlock2d(P, BLOCK, False, algorithm="reference"),
        ),
        ("dropblock.DropBlock2D (shared)", "ours shared", lambda: dropblock.DropBlock2D(P, BLOCK)),
        (
            "timm DropBlock2d couple_channels=True (shared)",
            "ours shared",
            lambda: timm.layers.DropBlock2d(P, BLOCK, couple_channels=True),
        ),
        (
            "timm DropBlock2d couple_channels=False (per-channel)",
            "ours per-channel",
            lambda: timm.layers.DropBlock2d(P, BLOCK, couple_channels=False),
        ),
        ("floor: x * precomputed shared mask", "ours shared", lambda: FixedMask(True)),
        ("floor: x * precomputed per-channel mask", "ours per-channel", lambda: FixedMask(False)),
        ("nn.Dropout", "ours Dropout", lambda: nn.Dropout(P)),
        ("ours Dropout", "ours Dropout", lambda: ours.Dropout(P)),
        ("ours Disout (block 5)", "ours Disout (block 5)", lambda: ours.Disout(P, BLOCK)),
        ("ours PatternDropout", "ours PatternDropout", lambda: ours.PatternDropout(2, 4, 2, rotate=15.0)),
        ("identity", "ours per-channel", lambda: nn.Identity()),
    ]
    if before is not None:
        rows += [
            ("[before] ours shared", "ours shared", lambda: before.DropBlock2d(P, BLOCK, share_channels=True)),
            (
                "[before] ours per-channel",
                "ours per-channel",
                lambda: before.DropBlock2d(P, BLOCK, share_channels=False),
            ),
            ("[before] ours Dropout", "ours Dropout", lambda: before.Dropout(P)),
            ("[before] ours Disout (block 5)", "ours Disout (block 5)", lambda: before.Disout(P, BLOCK)),
            (
                "[before] ours PatternDropout",
                "ours PatternDropout",
                lambda: before.PatternDropout(2, 4, 2, rotate=15.0),
            ),
        ]
    return rows


def floor_of(ref: str) -> str:
    """The one-multiply floor row for a semantics: a mask per example, or one per unit/channel."""
    return "floor: x * precomputed shared mask" if ref == "ours shared" else "floor: x * precomputed per-channel mask"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}


def time_all(
    layers: dict[str, nn.Module],
    shape: tuple[int, ...],
    device: torch.device,
    repeats: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Median fwd+bwd milliseconds per layer, interleaving the layers round-robin in a fresh
    random order each round (a layer's place in the round, e.g. after a large allocation,
    biases its time by a few per cent)."""
    x = torch.randn(shape, device=device, requires_grad=True)
    grad = torch.randn(shape, device=device)
    times: dict[str, list[float]] = {name: [] for name in layers}
    order = list(layers.items())
    for it in range(repeats + 3):
        random.Random(it).shuffle(order)
        for name, layer in order:
            x.grad = None
            _sync(device)
            t0 = clock()
            layer(x).backward(grad)
            _sync(device)
            if it >= 3:  # warm-up
                times[name].append(clock() - t0)
    return {name: 1e3 * statistics.median(v) for name, v in times.items()}


@torch.no_grad()
def realized(layer: nn.Module, shape: tuple[int, ...], device: torch.device, passes: int = 10) -> float:
    x = torch.ones(shape, device=device)
    return sum(float((layer(x) == 0).float().mean()) for _ in range(passes)) / passes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--shapes", nargs="*", default=["x".join(map(str, s)) for s in SHAPES], help="NxCxHxW input shapes")
    ap.add_argument("--ab", metavar="REV", help="also time search_space/layers as of git REV, interleaved")
    ap.add_argument(
        "--clock",
        choices=list(CLOCK),
        default="wall",
        help="wall time, or this process's CPU time (less noisy on a shared machine; CPU only)",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    before = load_layers_at(args.ab) if args.ab else None
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    lines = [
        f"CPU: {cpu_model()}",
        f"drop_prob={P}, block_size={BLOCK}, fp32, forward+backward, median of {args.repeats} round-robin repeats, "
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {args.clock} clock"
        + (f", [before] = {args.ab}" if args.ab else ""),
        "",
        (
            "| device | shape | layer | fwd+bwd ms (median) | above floor ms | ratio to ours (same semantics) "
            "| realized drop fraction |"
        ),
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for device in devices:
        for shape in [tuple(int(v) for v in s.split("x")) for s in args.shapes]:
            rows = candidates(device, before)
            layers = {name: make().to(device).train() for name, _, make in rows}
            clock = CLOCK[args.clock] if device.type == "cpu" else time.perf_counter
            ms = time_all(layers, shape, device, args.repeats, clock)
            for name, ref, _ in rows:
                rate = realized(layers[name], shape, device)
                above = ms[name] - ms[floor_of(ref)]
                lines.append(
                    f"| {device.type} | {'x'.join(map(str, shape))} | {name} | {ms[name]:.2f} | {above:+.2f} | "
                    f"{ms[name] / ms[ref]:.2f}x vs {ref} | {rate:.4f} |"
                )
    print("\n".join(lines))  # the table is this script's output


if __name__ == "__main__":
    main()
