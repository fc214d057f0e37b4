"""Cost of regularization plans inside real training: ResNet-20, synthetic CIFAR, CPU.

Run by hand (not CI): ``python benchmarks/plans.py --threads 1 [--random 7] [--layers]``.
Measures, in one process and interleaved round-robin (robust to other load on the cores):

1. ms per training step (forward + backward + SGD, batch 128, channels_last as the trainer
   uses it) with every one of the 30 sites using one method, and with no plan;
2. the slowdown of a step under random plans of the search space (``space.random_plan(seed)``
   for seeds 0..N-1) versus no plan: issue 5's target is <= 15% (median); and its floor, the
   same plan with every regularizer reduced to one multiply (the extra pass alone);
3. with ``--layers``: fwd+bwd ms of each method's layer alone on ResNet-20's three site
   shapes, channels_last (where the time of (1) goes).

``--ab REV`` times, interleaved with each configuration above, the same configuration with
the regularizer layers of ``search_space/layers`` as of git ``REV`` (same plans, same
parameters; run from the repository root: ``PYTHONPATH=. python benchmarks/plans.py``).
"""

from __future__ import annotations

import argparse
import copy
import random
import resource
import statistics
import time
from collections.abc import Callable
from types import ModuleType

import torch
from torch import nn

import search_space.layers as _layers
from child_trainer import build_model
from child_trainer.allocator import keep_freed_memory
from child_trainer.train import cpu_has_native_bf16
from search_space import (
    Plan,
    SearchSpace,
    SiteSpec,
    apply_plan,
    find_sites,
    step_schedulers,
)
from search_space.apply import build_layer

#: one representative setting per method (the papers' defaults where they exist)
METHOD_PARAMS: dict[str, dict] = {
    "dropout": {"drop_prob": 0.1},
    "spatial_dropout": {"drop_prob": 0.1},
    "dropblock": {"drop_prob": 0.1, "block_size": 5, "share_channels": False},
    "dropblock_shared": {"drop_prob": 0.1, "block_size": 5, "share_channels": True},
    "disout": {"dist_prob": 0.09, "block_size": 6, "alpha": 1.0},
    "pattern": {
        "size": 2,
        "stride": 4,
        "repeat": 2,
        "rotate": 15.0,
        "shear_x": 0.1,
        "shear_y": 0.0,
        "share_channels": False,
        "residual": False,
    },
}
SITE_SHAPES = [(128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8)]


def as_layer_of(layer: nn.Module, layers: ModuleType) -> nn.Module:
    """``layer`` turned, in place, into the same-named regularizer of ``layers`` (an older
    version of the package, `benchmarks.layers.load_layers_at`): same attributes, its code.
    Schedulers stay (search_space.insertion recognizes them by class; they only set an attribute)."""
    name = type(layer).__name__
    if type(layer).__module__.startswith(_layers.__name__) and name != "LinearScheduler":
        layer.__class__ = getattr(layers, name)
    return layer


def method_of(name: str) -> str:
    return "dropblock" if name.startswith("dropblock") else name


class Step:
    """One training configuration: a model (optionally under a plan), its optimizer and data."""

    def __init__(
        self, plan: Plan | None, batch: int, seed: int, amp: bool = False, layers: ModuleType | None = None
    ) -> None:
        self.amp = amp
        torch.manual_seed(seed)
        self.model = build_model("resnet20", 10)
        if plan is not None:
            apply_plan(self.model, plan, total_steps=None)
            if layers is not None:
                for m in self.model.modules():
                    as_layer_of(m, layers)
        self.model.to(memory_format=torch.channels_last).train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
        self.y = torch.randint(0, 10, (batch,), generator=g)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

    def __call__(self) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp):
            loss = self.loss_fn(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        step_schedulers(self.model)


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter
FAULTS: dict[str, list[int]] = {}  # minor page faults per call (fresh memory from the OS is slow here)


def time_round_robin(runs: dict[str, Callable[[], None]], rounds: int, per_round: int) -> dict[str, float]:
    """Median ms per call of each callable; the callables take turns ``per_round`` calls at a
    time, in a fresh random order each round (a fixed order biases the later ones)."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    order = list(runs.items())
    for r in range(rounds + 1):
        random.Random(r).shuffle(order)
        for name, fn in order:
            for _ in range(per_round):
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t0 = clock()
                fn()
                if r:  # round 0 is warm-up
                    times[name].append(clock() - t0)
                    FAULTS.setdefault(name, []).append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def uniform_plan(sites: list[str], name: str) -> Plan:
    if name == "none":
        return Plan.none(sites, model="resnet20")
    return Plan({s: SiteSpec(method_of(name), dict(METHOD_PARAMS[name])) for s in sites}, model="resnet20")


def bench_methods(sites: list[str], methods: list[str], args: argparse.Namespace) -> dict[str, float]:
    runs = {
        m: Step(None if m == "none" else uniform_plan(sites, m), args.batch, 0, args.bf16) for m in ["none", *methods]
    }
    if args.before is not None:
        for m in methods:
            runs[f"{m} [before]"] = Step(uniform_plan(sites, m), args.batch, 0, args.bf16, args.before)
    return time_round_robin(runs, args.rounds, args.steps)


def _scale_only(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x * 1.0001 if layer.training else x


def as_floor(step: Step) -> Callable[[], None]:
    """``step`` with every regularizer reduced to one multiply by a constant (forward and
    backward): the cost of a site's extra pass alone, without sampling any mask."""
    classes = {type(m) for m in step.model.modules() if type(m).__name__ in _layers.__all__}

    def run() -> None:
        saved = {cls: cls.forward for cls in classes}
        try:
            for cls in classes:
                cls.forward = _scale_only
            step()
        finally:
            for cls, forward in saved.items():
                cls.forward = forward

    return run


def bench_random(sites: list[str], args: argparse.Namespace) -> list[tuple[int, float, float, float, str]]:
    space = SearchSpace.for_model(build_model("resnet20", 10))
    rows = []
    for seed in range(args.random):
        plan = space.random_plan(seed)
        with_plan = Step(plan, args.batch, seed, args.bf16)
        runs = {"none": Step(None, args.batch, seed, args.bf16), "plan": with_plan, "floor": as_floor(with_plan)}
        if args.before is not None:
            runs["before"] = Step(plan, args.batch, seed, args.bf16, args.before)
        ms = time_round_robin(runs, args.rounds, args.steps)
        rows.append((seed, ms["none"], ms["plan"], ms["floor"], plan.summary()))
        before = f", [before] {ms['before']:.1f} ms" if "before" in ms else ""
        print(
            f"random plan seed={seed}: none {ms['none']:.1f} ms, plan {ms['plan']:.1f} ms "
            f"({100 * (ms['plan'] / ms['none'] - 1):+.1f}%), floor {ms['floor']:.1f} ms "
            f"({100 * (ms['floor'] / ms['none'] - 1):+.1f}%){before}",
            flush=True,
        )
    return rows


def bench_layers(methods: list[str], args: argparse.Namespace) -> list[str]:
    lines = [
        "| layer | " + " | ".join("x".join(map(str, s)) for s in SITE_SHAPES) + " |",
        "|---|" + "---:|" * len(SITE_SHAPES),
    ]
    for name in methods:
        layer = build_layer(SiteSpec(method_of(name), {k: v for k, v in METHOD_PARAMS[name].items()})).train()
        if hasattr(layer, "weight_behind"):
            layer.weight_behind = torch.randn(32, 16, 3, 3)
        cells = []
        for shape in SITE_SHAPES:
            if hasattr(layer, "weight_behind"):
                layer.weight_behind = torch.randn(shape[1], shape[1], 3, 3)
            dtype = torch.bfloat16 if args.bf16 else torch.float32
            x = torch.randn(shape, dtype=dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
            g = torch.randn(shape, dtype=dtype).contiguous(memory_format=torch.channels_last)

            def run(layer=layer, x=x, g=g) -> None:
                x.grad = None
                layer(x).backward(g)

            def ident(x=x, g=g):
                (x * 1.0).backward(g)

            runs = {"layer": run, "identity": ident}
            if args.before is not None:
                old = as_layer_of(copy.copy(layer), args.before)
                runs["before"] = lambda old=old, x=x, g=g: (setattr(x, "grad", None), old(x).backward(g))
            ms = time_round_robin(runs, args.rounds, args.steps)
            before = f" [before {ms['before']:.2f}]" if "before" in ms else ""
            cells.append(f"{ms['layer']:.2f}{before} (id {ms['identity']:.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=12, help="interleaved rounds (after one warm-up round)")
    ap.add_argument("--steps", type=int, default=1, help="steps per configuration per round")
    ap.add_argument(
        "--clock",
        choices=list(CLOCK),
        default="wall",
        help="wall time, or this process's CPU time (less noisy on a shared machine)",
    )
    ap.add_argument("--methods", nargs="*", default=list(METHOD_PARAMS), choices=list(METHOD_PARAMS))
    ap.add_argument("--random", type=int, default=5, help="number of random plans (0: skip)")
    ap.add_argument("--layers", action="store_true", help="also time each layer alone per site shape")
    ap.add_argument("--skip-methods", action="store_true")
    ap.add_argument(
        "--amp",
        choices=["auto", "bf16", "none"],
        default="auto",
        help="bf16 autocast; auto = as the trainer (bf16 where the CPU has native bf16)",
    )
    ap.add_argument("--ab", metavar="REV", help="also time the layers of search_space/layers as of git REV")
    args = ap.parse_args()
    if args.ab:
        from benchmarks.layers import cpu_model, load_layers_at

        args.before = load_layers_at(args.ab)
    else:
        from benchmarks.layers import cpu_model

        args.before = None
    args.bf16 = args.amp == "bf16" or (args.amp == "auto" and cpu_has_native_bf16())
    keep_freed_memory()  # as every training process does
    torch.set_num_threads(args.threads)
    global clock
    clock = CLOCK[args.clock]
    print(f"CPU: {cpu_model()}" + (f"; [before] = layers at {args.ab}" if args.ab else ""))
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"{'bf16' if args.bf16 else 'fp32'}, median of {args.rounds}x{args.steps} steps, {args.clock} clock",
        flush=True,
    )
    sites = find_sites(build_model("resnet20", 10))
    if args.layers:
        print(f"\nfwd+bwd ms of one layer, channels_last, {'bf16' if args.bf16 else 'fp32'} (id = x * 1.0 fwd+bwd):")
        print("\n".join(bench_layers(args.methods, args)), flush=True)
    if not args.skip_methods:
        ms = bench_methods(sites, args.methods, args)
        print(f"\nms per training step, all {len(sites)} sites one method:")
        print("| method | ms/step | vs none | page faults/step |\n|---|---:|---:|---:|")
        for m, v in ms.items():
            print(
                f"| {m} | {v:.1f} | {100 * (v / ms['none'] - 1):+.1f}% | {statistics.median(FAULTS[m]):.0f} |",
                flush=True,
            )
    if args.random:
        rows = bench_random(sites, args)
        slow = [100 * (p / n - 1) for _, n, p, _, _ in rows]
        floor = [100 * (f / n - 1) for _, n, _, f, _ in rows]
        print(
            f"\nrandom plans: median slowdown {statistics.median(slow):+.1f}% "
            f"(min {min(slow):+.1f}%, max {max(slow):+.1f}%) over seeds 0..{args.random - 1}; "
            f"floor (one multiply per regularizer, no sampling) {statistics.median(floor):+.1f}%"
        )


if __name__ == "__main__":
    main()
