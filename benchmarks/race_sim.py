"""Does the race export a truly better plan more often than fixed top-k x 3 seeds, at the same
number of final trainings, without exporting more by chance? (issue 25, item 3)

    python benchmarks/race_sim.py                 # the table: 2000 stages per cell (~1 min, 1 core)
    python benchmarks/race_sim.py --rho 0         # no shared noise: noisier paired differences
    python benchmarks/race_sim.py --grid          # screen race settings (500 stages per cell, ~10 min)

Synthetic final stages, no training: each contender has a true mean (in points of the metric)
and each (contender, seed) value is ``mean + shared[seed] + own[contender, seed]``, Gaussian,
with total standard deviation ``--noise`` (0.4 points) of which the share ``--rho`` (0.3,
about the paired correlation of the digits finals in docs/benchmarks.md) is shared by every
contender on that seed. Contenders: ``--searched`` searched plans (4) and 6 baselines (4
hand-set and 2 tuned), as in the issue's planted runs. Scenarios:

- ``gap1`` / ``gap2.5``: one searched plan 1 (2.5) points above the best baseline, the other
  searched plans at 0, -0.25, -0.5; baselines at 0, -0.1, ..., -0.5;
- ``null``: every contender equal;
- ``near-null``: the best searched plans equal to the best baseline, the rest as in gap1.

Per scheme and scenario: the share of stages that export a searched plan (``exp``), that
export one truly better than the best baseline (``good``), and the mean trainings spent.
"today" is ``controller.final.final_rows`` on every contender x 3 seeds (each searched plan's
95% interval against the best baseline by mean, no correction); "race" is
``controller.race.Race`` with the stated budget (its confirmation included).

Speed: ``controller.stats.paired`` spends ~0.8 ms in scipy per call; the script swaps in a
vectorised equivalent (same formula through ``scipy.special``) after checking on 3,000 random
comparisons that it gives the same words and p-values to 1e-9.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from _machine import cpu_model  # noqa: E402 (benchmarks/ is the script's folder)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASELINES = [("tuned-dropblock", "tuned"), ("tuned-dropout", "tuned"), ("dropblock", "baseline")]
BASELINES += [("dropout", "baseline"), ("disout", "baseline"), ("none", "baseline")]
BASE_MEANS = [0.0, -0.1, -0.2, -0.3, -0.4, -0.5]


def scenario(name: str, k: int) -> dict[str, float]:
    """True means (points) of the k searched plans then the baselines."""
    rest = [0.0, -0.25, -0.5] + [-0.5] * max(0, k - 4)
    searched = {
        "gap1": [1.0, *rest],
        "gap2.5": [2.5, *rest],
        "null": [0.0] * k,
        "near-null": [0.0, *rest],
    }[name][:k]
    base = [0.0] * len(BASELINES) if name == "null" else BASE_MEANS
    means = {f"searched#{i + 1}": m for i, m in enumerate(searched)}
    means.update({label: m for (label, _), m in zip(BASELINES, base)})
    return means


def contenders(k: int) -> list[tuple[str, str]]:
    return [*BASELINES, *[(f"searched#{i + 1}", "searched") for i in range(k)]]


class Noise:
    """Values of (contender, seed) drawn once per stage, so every scheme sees the same draws."""

    def __init__(self, rng: np.random.Generator, labels: list[str], n_seeds: int, sd: float, rho: float) -> None:
        shared = rng.normal(0, sd * math.sqrt(rho), n_seeds)
        own = rng.normal(0, sd * math.sqrt(1 - rho), (len(labels), n_seeds))
        self.draw = {label: shared + own[i] for i, label in enumerate(labels)}

    def value(self, means: dict[str, float], label: str, seed: int) -> float:
        return means[label] + float(self.draw[label][seed])


# ----------------------------------------------------------------------------- fast paired
def fast_paired(a, b, mode="max"):
    """``controller.stats.paired`` with scipy.special in place of scipy.stats (same formulas)."""
    from scipy import special

    from controller.stats import BETTER, CANNOT_TELL, MIN_SEEDS, TOO_FEW, WORSE, Paired

    sign = 1.0 if mode == "max" else -1.0
    common = sorted(k for k in a if k in b and math.isfinite(a[k]) and math.isfinite(b[k]))
    d = np.array([sign * (a[k] - b[k]) for k in common])
    n, nan = len(d), float("nan")
    if n == 0:
        return Paired(0, nan, nan, nan, nan, nan, TOO_FEW)
    mean = math.fsum(d) / n
    if n == 1:
        return Paired(1, mean, nan, nan, nan, nan, TOO_FEW)
    se = math.sqrt(math.fsum((d - mean) ** 2) / (n - 1)) / math.sqrt(n)
    half = float(special.stdtrit(n - 1, 0.975)) * se
    low, high = mean - half, mean + half
    p = float(2 * special.stdtr(n - 1, -abs(mean / se))) if se > 0 else (1.0 if mean == 0 else 0.0)
    word = TOO_FEW if n < MIN_SEEDS else BETTER if low > 0 else WORSE if high < 0 else CANNOT_TELL
    return Paired(n, mean, se, low, high, p, word)


def check_fast_paired(rng: np.random.Generator) -> None:
    from controller.stats import paired

    for _ in range(3000):
        n = int(rng.integers(2, 12))
        a = {s: float(v) for s, v in enumerate(rng.normal(0, 1, n))}
        b = {s: float(v) + float(rng.normal(0, 0.5)) for s, v in a.items()}
        mode = "max" if rng.random() < 0.5 else "min"
        x, y = paired(a, b, mode), fast_paired(a, b, mode)
        assert x.word == y.word and abs(x.p_value - y.p_value) < 1e-9 and abs(x.ci95_low - y.ci95_low) < 1e-9, (x, y)


# ----------------------------------------------------------------------------- schemes
def run_today(means, noise, k: int, seeds: int) -> tuple[str | None, int]:
    from controller.final import final_rows
    from controller.run_folder import Objective

    records = [
        {"label": label, "plan_json": "{}", "methods": "", "status": "ok", "val_acc": noise.value(means, label, s)}
        | {"seed": s}
        for label, _ in contenders(k)
        for s in range(seeds)
    ]
    rows = final_rows(records, Objective(), [b for b, kind in BASELINES if kind == "baseline"], seeds)
    chosen = next(r for r in rows if r["chosen"])
    return (chosen["label"] if chosen["kind"] == "searched" else None), len(records)


def run_race(means, noise, k: int, budget: int, settings) -> tuple[str | None, int]:
    from controller.race import SEARCHED, Race

    race = Race(contenders(k), list(range(budget)), budget, settings, "max")
    while not race.done:
        for label, seed in race.requests():
            race.record(label, seed, noise.value(means, label, seed))
    kind = dict(contenders(k))
    return (race.exported if race.exported and kind[race.exported] == SEARCHED else None), race.recorded


def evaluate(schemes, scen: str, stages: int, args, seed: int) -> dict[str, tuple[float, float, float]]:
    """scheme name -> (share exporting a searched plan, share exporting a truly better one, share
    exporting one truly worse than the best baseline (harm), mean trainings)."""
    means = scenario(scen, args.searched)
    best_base = max(m for label, m in means.items() if not label.startswith("searched"))
    labels = list(means)
    out = {name: [0, 0, 0, 0] for name in schemes}
    rng = np.random.default_rng(seed)
    for _ in range(stages):
        noise = Noise(rng, labels, 200, args.noise, args.rho)
        for name, fn in schemes.items():
            exported, used = fn(means, noise)
            out[name][0] += exported is not None
            out[name][1] += exported is not None and means[exported] > best_base + 1e-9
            out[name][2] += exported is not None and means[exported] < best_base - 1e-9
            out[name][3] += used
    return {name: tuple(x / stages for x in v) for name, v in out.items()}


def race_scheme(budget: int, settings):
    """A race at ``budget`` (None when the settings need more than that)."""
    from controller.race import Race

    if Race.min_budget(contenders(ARGS.searched), settings) > budget:
        return None
    return lambda means, noise: run_race(means, noise, ARGS.searched, budget, settings)


def main() -> None:
    global ARGS
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stages", type=int, default=None, help="stages per cell (2000; 500 with --grid)")
    p.add_argument("--noise", type=float, default=0.4, help="total sd of one training's value, points")
    p.add_argument("--rho", type=float, default=0.3, help="share of the noise variance shared per seed")
    p.add_argument("--searched", type=int, default=4, help="searched finalists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", action="store_true", help="screen race settings instead of the table")
    p.add_argument("--scenarios", default="gap1,gap2.5,null,near-null")
    ARGS = args = p.parse_args()
    if args.stages is None:
        args.stages = 500 if args.grid else 2000

    import controller.final
    import controller.race
    import controller.race_confirmation
    from controller.race import RaceSettings

    rng = np.random.default_rng(args.seed)
    check_fast_paired(rng)
    controller.race.paired = fast_paired
    controller.race_confirmation.paired = fast_paired
    controller.final.paired = fast_paired
    n_contenders = args.searched + len(BASELINES)
    today = n_contenders * 3
    print(f"race_sim: {cpu_model()}; {args.stages} stages per cell; noise sd {args.noise} points, rho {args.rho}; ")
    print(
        f"  {args.searched} searched + {len(BASELINES)} baselines; today = every contender x 3 seeds = {today}",
        flush=True,
    )
    schemes = {"today (x3 seeds)": lambda means, noise: run_today(means, noise, args.searched, 3)}
    if args.grid:
        for budget in (today, today + 10, today + 20, 2 * today):
            for start in (2, 3):
                for growth in ("x2", "+1"):
                    for race_alpha in (0.05, 0.2):
                        for cs in (4, 5, 6):
                            for cb in (1, 2):
                                s = RaceSettings(start, growth, race_alpha, 0.05, cs, 1, cb)
                                name = f"race b{budget} s{start} {growth} a{race_alpha} c{cs} vs{cb}"
                                schemes[name] = race_scheme(budget, s)
    else:
        d = RaceSettings()
        vs1 = RaceSettings(confirm_baselines=1)
        schemes[f"race, budget {today}, against the best baseline only"] = race_scheme(today, vs1)
        for budget in (today + 5, today + 10, 2 * today):
            schemes[f"race, budget {budget} (defaults)"] = race_scheme(budget, d)
        schemes[f"race, budget {today + 10}, against the best baseline only"] = race_scheme(today + 10, vs1)
        schemes[f"race, budget {today + 10}, x2 growth"] = race_scheme(today + 10, RaceSettings(growth="x2"))
        schemes[f"race, budget {2 * today}, x2 growth"] = race_scheme(2 * today, RaceSettings(growth="x2"))
        schemes[f"race, budget {today + 10}, 2 plans confirmed"] = race_scheme(today + 10, RaceSettings(confirm_max=2))
    schemes = {name: fn for name, fn in schemes.items() if fn is not None}
    scens = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    results = {}
    for i, scen in enumerate(scens):
        start = time.process_time()
        results[scen] = evaluate(schemes, scen, args.stages, args, args.seed + 1 + i)
        print(f"  {scen}: {time.process_time() - start:.0f} s CPU", file=sys.stderr)
    head = "| scheme | trainings | " + " | ".join(f"{s}: exported (better, worse)" for s in scens) + " |"
    print(head)
    print("|---" * (2 + len(scens)) + "|")
    for name in schemes:
        used = [results[s][name][3] for s in scens]
        cells = [f"{results[s][name][0]:.3f} ({results[s][name][1]:.3f}, {results[s][name][2]:.3f})" for s in scens]
        print(f"| {name} | {min(used):.0f}-{max(used):.0f} | " + " | ".join(cells) + " |")


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
