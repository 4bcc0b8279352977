"""The statistics a retrain's claims rest on: paired differences with Student-t intervals, and
where a tuned rate sits in its range.

Paired: `retrain` trains every layer with the same seeds, and a seed fixes the initial weights'
draw and the data order, so layer A's seed-s run and the reference's seed-s run share their
luck. The difference per seed, d_s = acc_A(s) - acc_ref(s), removes that shared part; its mean
over n seeds has the interval mean ± t(0.975, n - 1) · sd(d) / sqrt(n). A verdict (`>`, `<`)
is given only where that 95% interval excludes 0.

Edges: a rate tuned on a log range and found in the outer tenth of it (on the log scale) may
have its best beyond the range; `retrain` widens that side and tunes on (`search.analysis.retrain`).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

CONFIDENCE = 0.95
EDGE = 0.1          # the outer share of a log range where a tuned rate counts as at its edge


@dataclass(frozen=True)
class Paired:
    """A layer against a reference over the seeds both finished: the mean per-seed difference
    and its Student-t interval (None bounds with fewer than 2 pairs)."""

    n: int
    mean: float | None
    low: float | None
    high: float | None

    @property
    def verdict(self) -> str:
        """"better" or "worse" where the interval excludes 0, "within" where it does not,
        "n/a" with fewer than two pairs."""
        if self.low is None:
            return "n/a"
        return "better" if self.low > 0 else "worse" if self.high < 0 else "within"


def t_quantile(q: float, df: int) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def paired(mine: dict, reference: dict, confidence: float = CONFIDENCE) -> Paired:
    """`mine` and `reference`: seed -> accuracy (None or non-finite for a failed training);
    the pairs are the seeds where both are finite."""
    seeds = sorted(s for s in mine if s in reference and _finite(mine[s]) and _finite(reference[s]))
    diffs = [mine[s] - reference[s] for s in seeds]
    if not diffs:
        return Paired(0, None, None, None)
    mean = statistics.mean(diffs)
    if len(diffs) < 2:
        return Paired(1, mean, None, None)
    half = t_quantile(0.5 + confidence / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return Paired(len(diffs), mean, mean - half, mean + half)


def edge_of(value: float, low: float, high: float, edge: float = EDGE) -> str | None:
    """"low" or "high" when `value` lies in the outer `edge` share of [low, high] on the log
    scale, else None."""
    position = (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return "low" if position < edge else "high" if position > 1 - edge else None


def widened(low: float, high: float, side: str, factor: float = 4.0) -> tuple[float, float]:
    """The range with `side` moved out by `factor` (on the log scale: x4 on the high side,
    /4 on the low one)."""
    return (low / factor, high) if side == "low" else (low, high * factor)


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value)
