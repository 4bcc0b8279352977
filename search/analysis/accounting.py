"""Where a run's worker time went: candidates judged per worker-hour, and the full
trainings that each rejection protocol and the progressive hurdles saved.

A search is worth what it judges per worker-hour, and every candidate rejected or
stopped before the full budget is a training bought back. The unit of account is one
full training (the first seed, every proxy): the median worker-seconds of the run's
`ok` records, their second-seed confirmation left out. A record that ended early saved
`1 - seconds / that median` of one (never less than 0); the confirmations cost their
own seconds in the same unit. Worker-hours are the records' `seconds` summed, so time a
worker spent idle, or the driver spent proposing, is not counted.

Records read from the cross-run training cache (`cached` true: every training behind
them came from an earlier run) cost what the lookups took, and their `seconds` stay that
real time in the worker-hours; but they are neither in the unit's median (a lookup is not
a training) nor counted as trainings saved by a protocol or a hurdle (the cache saved
them): they are counted apart, `cached`.

Torch-free: it reads the run's records only (`evonorm show DIR` prints it).
"""
from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field

from evaluators.record import STATUSES
from primitives.util import is_missing


@dataclass
class Accounting:
    records: int
    worker_hours: float
    counts: dict[str, int]                    # records per status, in STATUSES order
    confirmed: int = 0                        # ok records trained on a second seed
    training_seconds: float | None = None     # one full training: the unit of `saved`
    saved: dict[str, float] = field(default_factory=dict)   # status -> full trainings saved
    confirm_cost: float = 0.0                 # full trainings spent on second seeds
    cached: int = 0                           # records whose every training came from the cache

    @property
    def judged_per_worker_hour(self) -> float | None:
        return self.records / self.worker_hours if self.worker_hours > 0 else None

    def lines(self) -> list[str]:
        rate = self.judged_per_worker_hour
        out = [f"{self.records} records in {self.worker_hours:.2f} worker-hours"
               + (f" ({rate:.1f} judged per worker-hour)" if rate is not None else ""),
               "  " + ", ".join(f"{s} {n}" for s, n in self.counts.items() if n)]
        if self.cached:
            out.append(f"  {self.cached} from the training cache (trained in an earlier run; their seconds "
                       f"are the lookups')")
        if self.training_seconds is None:
            out.append("  trainings saved: unknown (no full training recorded yet)")
            return out
        out.append(f"  full trainings {self.counts.get('ok', 0)}, {self.confirmed} confirmed on a second seed "
                   f"(costing {self.confirm_cost:.1f} full trainings of {self.training_seconds:.0f} s, the median)")
        saved = [f"{s} {v:.1f}" for s, v in self.saved.items() if v > 0]
        total = sum(self.saved.values())
        out.append(f"  full trainings saved {total:.1f}" + (f": {', '.join(saved)}" if saved else ""))
        return out


def _stage(value, name: str) -> float:
    """One stage's seconds from a record's `stage_seconds` JSON (0 when absent or unreadable)."""
    if is_missing(value):
        return 0.0
    try:
        stages = json.loads(value) if isinstance(value, str) else dict(value)
        return float(stages.get(name) or 0.0)
    except (ValueError, TypeError, AttributeError):
        return 0.0


def _seconds(value) -> float:
    return 0.0 if is_missing(value) or not math.isfinite(float(value)) else float(value)


def account(candidates) -> Accounting:
    """The accounting of a run's records (a DataFrame with `status`, `seconds` and, where
    recorded, `stage_seconds`: the run directory's columns)."""
    rows = candidates.to_dict(orient="records")
    seconds = [_seconds(r.get("seconds")) for r in rows]
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    acc = Accounting(records=len(rows), worker_hours=sum(seconds) / 3600, counts=counts)
    cached = [not is_missing(r.get("cached")) and bool(r.get("cached")) for r in rows]
    acc.cached = sum(cached)
    rows = [r for r, c in zip(rows, cached) if not c]
    seconds = [s for s, c in zip(seconds, cached) if not c]
    ok = [(r, s) for r, s in zip(rows, seconds) if r["status"] == "ok"]
    confirms = [_stage(r.get("stage_seconds"), "confirm") for r, _ in ok]
    firsts = [s - c for (_, s), c in zip(ok, confirms) if s - c > 0]
    if not firsts:
        return acc
    unit = statistics.median(firsts)
    acc.training_seconds = unit
    acc.confirmed = sum(c > 0 for c in confirms)
    acc.confirm_cost = sum(confirms) / unit
    for status in STATUSES:
        early = [s for r, s in zip(rows, seconds) if r["status"] == status]
        if status != "ok" and early:
            acc.saved[status] = sum(max(0.0, 1.0 - s / unit) for s in early)
    return acc
