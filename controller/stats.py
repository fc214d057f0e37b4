"""What "better" may mean: paired comparisons over shared seeds, Student's t at n - 1 df.

Two plans trained on the same seeds differ by ``d_i = sign * (a_i - b_i)`` per seed (``sign``
+1 for max-mode metrics, -1 for min-mode ones, so a positive difference is always better).
The 95% interval of the mean difference is ``mean +- t(0.975, n - 1) * sd / sqrt(n)``
(scipy's Student t; at 2 seeds the critical value is 12.7, not 2) and the two-sided p-value
is ``scipy.stats.ttest_rel``'s. The words follow the interval and nothing else:

- ``better``: the interval lies wholly above 0;
- ``worse``: wholly below 0;
- ``cannot tell``: it contains 0 (a tie included);
- ``cannot tell: too few seeds``: fewer than ``MIN_SEEDS`` paired seeds, whatever the
  numbers say (an interval from 2 seeds is too wide, and its width too noisy, to lean on).

Only the standard library, numpy and scipy are imported: ``results`` uses this without torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "MIN_SEEDS",
    "BETTER",
    "WORSE",
    "CANNOT_TELL",
    "TOO_FEW",
    "Paired",
    "paired",
    "sign_of",
    "standard_error",
    "holm",
    "holm_adjusted",
]

MIN_SEEDS = 3
BETTER, WORSE, CANNOT_TELL, TOO_FEW = "better", "worse", "cannot tell", "cannot tell: too few seeds"


@dataclass(frozen=True)
class Paired:
    """One paired comparison of plan A against plan B (positive = A better)."""

    n: int  # seeds both finished
    mean: float  # mean paired difference
    se: float  # its standard error (sd / sqrt(n))
    ci95_low: float
    ci95_high: float
    p_value: float  # two-sided paired t (NaN when undefined)
    word: str  # better | worse | cannot tell | cannot tell: too few seeds

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sign_of(mode: str) -> float:
    """+1 when larger values are better (``mode="max"``), -1 otherwise."""
    return 1.0 if mode == "max" else -1.0


def standard_error(values: Any) -> float:
    """Standard error of the mean of the finite ``values`` (sample sd / sqrt(n)); NaN below 2."""
    vals = [float(v) for v in values if _finite(v)]
    n = len(vals)
    if n < 2:
        return float("nan")
    mean = math.fsum(vals) / n
    return math.sqrt(math.fsum((v - mean) ** 2 for v in vals) / (n - 1)) / math.sqrt(n)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def paired(a: Mapping[Any, float], b: Mapping[Any, float], mode: str = "max") -> Paired:
    """Compare A with B over the seeds where both have a finite value (keys: seeds).

    With zero spread (every seed differs by the same amount, e.g. two identical plans trained
    deterministically) the interval is that single value: a tie (0) is "cannot tell", a
    constant non-zero difference is decided by its sign.
    """
    from scipy import stats

    sign = sign_of(mode)
    common = sorted(k for k in a if k in b and _finite(a[k]) and _finite(b[k]))
    diffs = [sign * (float(a[k]) - float(b[k])) for k in common]
    n = len(diffs)
    nan = float("nan")
    if n == 0:
        return Paired(0, nan, nan, nan, nan, nan, TOO_FEW)
    mean = math.fsum(diffs) / n
    if n == 1:
        return Paired(1, mean, nan, nan, nan, nan, TOO_FEW)
    se = standard_error(diffs)
    half = float(stats.t.ppf(0.975, n - 1)) * se
    low, high = mean - half, mean + half
    if se > 0:
        p = float(stats.ttest_rel([sign * float(a[k]) for k in common], [sign * float(b[k]) for k in common]).pvalue)
    else:
        p = 1.0 if mean == 0 else 0.0
    if n < MIN_SEEDS:
        word = TOO_FEW
    elif low > 0:
        word = BETTER
    elif high < 0:
        word = WORSE
    else:
        word = CANNOT_TELL
    return Paired(n, mean, se, low, high, p, word)


def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down correction: which of m hypotheses are rejected at family-wise ``alpha``.

    Sort the p-values; the i-th smallest (i from 1) is rejected while it stays below
    ``alpha / (m - i + 1)``, stopping at the first that does not (``REFERENCES.md``). A NaN
    p-value is never rejected and still counts in m: a comparison that could not be made is
    one of the contenders the family covers. Returned in the input's order.
    """
    m = len(p_values)
    order = sorted(
        range(m), key=lambda i: (not _finite(p_values[i]), float(p_values[i]) if _finite(p_values[i]) else 0)
    )
    rejected = [False] * m
    for rank, i in enumerate(order):
        if not _finite(p_values[i]) or float(p_values[i]) >= alpha / (m - rank):
            break
        rejected[i] = True
    return rejected


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (for reading only: `holm` decides), in input
    order: the i-th smallest becomes the running maximum of ``(m - j + 1) * p_(j)``, capped at 1;
    NaN stays NaN. A hypothesis is rejected at ``alpha`` exactly when its adjusted value is
    below ``alpha``."""
    m = len(p_values)
    finite = sorted((float(p), i) for i, p in enumerate(p_values) if isinstance(p, (int, float)) and math.isfinite(p))
    out = [float("nan")] * m
    running = 0.0
    for rank, (p, i) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
