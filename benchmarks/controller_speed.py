"""Controller cost per plan: sampling and REINFORCE updates for 20, 50 and 100 sites on CPU.

The controller must never be the bottleneck of a search (target: well under 10 ms per plan
at 50 sites). Decisions per site come from the real search space (method + every parameter
decision of search_space.vocab), with its active_mask as the REINFORCE mask.

    python benchmarks/controller_speed.py [--sites 20 50 100] [--batch 16] [--repeats 5] [--hidden 64]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# This checkout's packages, whatever is installed. (A benchmark is never named like a package:
# Ray puts the script's folder on its workers' sys.path, where it would shadow that package.)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from controller import LSTMController, Reinforce  # noqa: E402
from search_space import SearchSpace  # noqa: E402

log = logging.getLogger("benchmarks.controller_speed")


def _median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (wall, CPU) time of ``fn`` in ms after one warm-up call. CPU time (this
    process) is the figure to trust on a shared machine, where wall time includes waiting."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - w0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def bench(num_sites: int, batch: int, repeats: int, hidden: int) -> dict[str, float]:
    """Per-plan costs: sample a batch, sample one plan alone, update on a batch."""
    space = SearchSpace([(f"site{i}", [f"site{i}"]) for i in range(num_sites)])
    policy = LSTMController(space.vocab_sizes, hidden_size=hidden)
    trainer = Reinforce(policy, active_fn=space.active_mask)
    tokens = trainer.sample(batch)
    rewards = [0.5 + 0.01 * i for i in range(batch)]
    result: dict[str, float] = {"sites": num_sites, "decisions": len(space.vocab_sizes)}
    for name, fn, per in [
        ("sample_1", lambda: trainer.sample(1), 1),
        ("sample", lambda: trainer.sample(batch), batch),
        ("update", lambda: trainer.update(tokens, rewards), batch),
    ]:
        wall, cpu = _median_ms(fn, repeats)
        result[f"{name}_wall"], result[f"{name}_cpu"] = wall / per, cpu / per
    for kind in ("wall", "cpu"):
        result[f"total_{kind}"] = result[f"sample_{kind}"] + result[f"update_{kind}"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hidden", type=int, default=64, help="LSTM hidden size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log.info(
        "torch %s, hidden size %d, load average %s",
        torch.__version__,
        args.hidden,
        " ".join(f"{x:.1f}" for x in os.getloadavg()),
    )
    cols = ["sample_1", "sample", "update", "total"]
    log.info(
        "%5s %9s  " + "  ".join(["%17s"] * len(cols)),
        "sites",
        "decisions",
        "sample 1 alone",
        f"sample (batch {args.batch})",
        "update",
        "sample+update",
    )
    log.info("%5s %9s  " + "  ".join(["%17s"] * len(cols)), "", "", *(["cpu ms / wall ms"] * len(cols)))
    for num_sites in args.sites:
        r = bench(num_sites, args.batch, args.repeats, args.hidden)
        cells = [f"{r[c + '_cpu']:7.2f} / {r[c + '_wall']:7.2f}" for c in cols]
        log.info("%5d %9d  " + "  ".join(["%17s"] * len(cols)), r["sites"], r["decisions"], *cells)
    log.info("per plan; medians of %d runs; the controller runs on 1 intra-op thread", args.repeats)


if __name__ == "__main__":
    main()
