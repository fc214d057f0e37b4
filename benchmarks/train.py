"""Child-trainer speed targets, measured in one run (interleaved, repeated: the CPU may be shared).

1. digits_cnn on digits with the default recipe: validation accuracy and wall/CPU seconds
   (target: >= 97% in <= 30 s on 2 CPU cores).
2. ResNet-20 training throughput on synthetic CIFAR-shaped data: train_child vs a plain PyTorch
   loop (DataLoader over a TensorDataset, fp32, NCHW) with the same threads and batch size
   (target: >= 1.5x on CPU, >= 5x and >= 40k images/s on one H100).
3. A random search-space plan on ResNet-20 vs no plan: training-epoch slowdown (target <= 15%).

Throughputs are steady-state: each side trains a warm-up epoch first (oneDNN primitive
creation, the layers' cached seed rates and offset tables) and the next epoch is timed, as in
the long trainings of a search; ``--images`` sets the images per epoch.

    python benchmarks/train.py --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from child_trainer import TrainConfig, build_model, load_data, train_child


def plain_loop_ips(device: str, images: int, batch_size: int, seed: int) -> float:
    """The baseline users write first: DataLoader over a TensorDataset, fp32, default layout.
    Images per second of its second epoch."""
    torch.manual_seed(seed)
    data = load_data("synthetic", train_size=images, seed=seed, device="cpu", with_test=False)
    model = build_model("resnet20", 10).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader = DataLoader(TensorDataset(data.train_x, data.train_y), batch_size=batch_size, shuffle=True, drop_last=True)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    model.train()
    for _epoch in range(2):
        start, seen = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
        if device == "cuda":
            torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def ours(device: str, images: int, batch_size: int, seed: int, plan=None, **kw) -> float:
    """train_child's images per second in its second epoch (from the cumulative figures it reports)."""
    cfg = TrainConfig(
        model="resnet20",
        dataset="synthetic",
        train_size=images,
        epochs=2,
        batch_size=batch_size,
        device=device,
        seed=seed,
        **kw,
    )
    cumulative: list[float] = []
    result = train_child(cfg, plan, report=lambda epoch, m: cumulative.append(m["images_per_second"]))
    assert result["status"] == "ok", result
    per_epoch = images // min(batch_size, images) * min(batch_size, images)
    seconds = [(k + 1) * per_epoch / ips for k, ips in enumerate(cumulative)]  # training seconds so far
    return per_epoch / (seconds[1] - seconds[0])


def bench_digits(repeats: int, threads: int | None) -> dict:
    rows = []
    for seed in range(repeats):
        cpu0 = time.process_time()
        r = train_child(TrainConfig(seed=seed, num_threads=threads))
        rows.append(
            {"seed": seed, "val_acc": r["val_acc"], "wall_s": r["seconds"], "cpu_s": time.process_time() - cpu0}
        )
        print(
            f"digits seed={seed}: val_acc={r['val_acc']:.4f} wall={r['seconds']:.1f}s cpu={rows[-1]['cpu_s']:.1f}s",
            flush=True,
        )
    return {
        "runs": rows,
        "min_val_acc": min(r["val_acc"] for r in rows),
        "median_wall_s": statistics.median(r["wall_s"] for r in rows),
        "median_cpu_s": statistics.median(r["cpu_s"] for r in rows),
    }


def bench_throughput(device: str, repeats: int, images: int, batch_size: int, compile_: bool) -> dict:
    plain, our, ratios = [], [], []
    for rep in range(repeats):  # interleaved so load changes hit both sides alike
        p = plain_loop_ips(device, images, batch_size, rep)
        o = ours(device, images, batch_size, rep, compile=compile_)
        plain.append(p), our.append(o), ratios.append(o / p)
        print(f"resnet20 {device} round {rep}: plain={p:.0f} img/s ours={o:.0f} img/s ratio={o / p:.2f}", flush=True)
    return {
        "plain_ips": plain,
        "ours_ips": our,
        "median_ratio": statistics.median(ratios),
        "median_ours_ips": statistics.median(our),
    }


def bench_plan_overhead(device: str, repeats: int, images: int, batch_size: int) -> dict:
    from search_space import SearchSpace

    space = SearchSpace.for_model(build_model("resnet20", 10))
    ratios = []
    for rep in range(repeats):
        plan = space.random_plan(seed=rep)
        base = ours(device, images, batch_size, rep)
        with_plan = ours(device, images, batch_size, rep, plan=plan)
        ratios.append(base / with_plan)
        print(
            f"plan overhead round {rep}: no plan={base:.0f} img/s, plan={with_plan:.0f} img/s, "
            f"epoch slowdown={100 * (base / with_plan - 1):+.1f}%  [{plan.summary()[:90]}...]",
            flush=True,
        )
    return {
        "slowdowns_percent": [100 * (r - 1) for r in ratios],
        "median_slowdown_percent": 100 * (statistics.median(ratios) - 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=1024, help="synthetic training images per throughput epoch")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="also torch.compile our model")
    ap.add_argument("--skip", nargs="*", default=[], choices=["digits", "throughput", "plan"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}", flush=True)
    out = {"threads": torch.get_num_threads(), "device": args.device}
    if "digits" not in args.skip:
        out["digits"] = bench_digits(args.repeats, args.threads)
    if "throughput" not in args.skip:
        out["throughput"] = bench_throughput(args.device, args.repeats, args.images, args.batch_size, args.compile)
    if "plan" not in args.skip:
        out["plan"] = bench_plan_overhead(args.device, args.repeats, args.images, args.batch_size)
    print(
        "summary:",
        {
            k: v
            for k, v in {
                "digits_min_val_acc": out.get("digits", {}).get("min_val_acc"),
                "digits_median_wall_s": out.get("digits", {}).get("median_wall_s"),
                "digits_median_cpu_s": out.get("digits", {}).get("median_cpu_s"),
                "resnet20_speedup_vs_plain": out.get("throughput", {}).get("median_ratio"),
                "resnet20_ours_ips": out.get("throughput", {}).get("median_ours_ips"),
                "plan_median_slowdown_percent": out.get("plan", {}).get("median_slowdown_percent"),
            }.items()
            if v is not None
        },
    )
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
