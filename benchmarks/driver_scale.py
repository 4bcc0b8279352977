"""Driver bookkeeping per new candidate with a long history (100k records by default).

`bench_front_update(n)`: the run store's share: a run directory holding `n`
records is resumed (RunStore.open: every part read, the front rebuilt), then
new candidates are appended with the default flush policy (a new part file
every 20 records, front.parquet rewritten atomically after each flush). Prints
the time per candidate of append + flush + front bookkeeping, amortised, and
the worst single append (one that flushes). `main` then runs
`driver_selection.bench_selection` (tournament, mutation, screen memory, the
record, front and aging in the driver) and prints the sum. Target for the
whole driver: under 10 ms.

    python benchmarks/driver_scale.py [--history 100000] [--candidates 2000] [--objectives 2|3]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

FORMULAS = [
    "relu((x - batch_mean(x)) / batch_std(x) * gamma + beta)",
    "x / max(batch_std(x, eps=0.001), v1 * x + instance_std(x, eps=0.001)) * gamma + beta",
    "x * sigmoid(v1 * x) / group_std(x) * gamma + beta",
    "tanh(x - instance_mean(x)) * gamma + beta",
]
ARCHS = ("resnet", "mobilenetv2", "efficientnet")
STATUSES = ["ok"] * 3 + ["invalid", "duplicate", "equivalent", "unstable", "low_quality", "failed"]


def _record(i: int, rng: random.Random, archs) -> dict:
    status = rng.choice(STATUSES)
    formula = rng.choice(FORMULAS)
    rec = {"id": i, "parent_id": rng.randrange(i) if i > 50 else None, "formula": formula,
           "graph": json.dumps({"nodes": [formula]}), "graph_hash": f"{rng.getrandbits(64):016x}",
           "status": status, "reason": None if status == "ok" else status,
           "params_per_channel": rng.randint(1, 6), "uses_batch_stats": "batch" in formula,
           "poly_degree": None, "seconds": rng.random(), "worker": "w0", "mutation": "rewire",
           "created_at": datetime.now(timezone.utc), "stage_seconds": {"screen": 0.003}}
    if status in ("ok", "low_quality"):
        for a in archs:
            rec[f"acc_{a}"] = rng.random()
    return rec


def bench_front_update(n: int = 100_000, candidates: int = 2000, objectives: int = 2, seed: int = 0) -> float:
    """ms per candidate of RunStore append + flush + front bookkeeping with `n` records in history."""
    from search.store.writer import RunStore

    archs = ARCHS[:objectives]
    info = {"archs": list(archs), "objectives": [{"column": f"acc_{a}", "goal": "max"} for a in archs]}
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        start = time.perf_counter()
        with RunStore.create(run_dir, info, flush_every=10_000) as store:   # history, in large parts
            for i in range(n):
                store.append(_record(i, rng, archs))
        setup = time.perf_counter() - start

        start = time.perf_counter()
        store = RunStore.open(run_dir)                                       # default flush policy
        resume = time.perf_counter() - start
        front_before = len(store.front())
        records = [_record(n + i, rng, archs) for i in range(candidates)]
        each = []
        start = time.perf_counter()
        for rec in records:
            t = time.perf_counter()
            store.append(rec)
            each.append(time.perf_counter() - t)
        store.close()
        total = time.perf_counter() - start
        parts = len(list((run_dir / "candidates").glob("part-*.parquet")))
        front_after = len(store.front())
    per = 1000 * total / candidates
    print(f"run store with {n} records in history, {objectives} objectives "
          f"(history written in {setup:.1f} s, resumed in {resume * 1000:.0f} ms, front {front_before} -> {front_after})")
    print(f"  append + flush + front: {per:.3f} ms per candidate over {candidates} candidates "
          f"({parts} part files at the end)")
    print(f"  median append {1000 * statistics.median(each):.3f} ms, worst (a flush) {1000 * max(each):.2f} ms")
    print(f"  target < 10 ms per candidate for the whole driver: store share {per / 10:.1%} of it")
    return per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--candidates", type=int, default=2000)
    parser.add_argument("--objectives", type=int, default=2, choices=(1, 2, 3))
    parser.add_argument("--no-selection", action="store_true", help="skip the driver's selection share")
    args = parser.parse_args()
    store_ms = bench_front_update(args.history, args.candidates, args.objectives)
    if not args.no_selection:
        from driver_selection import bench_selection   # benchmarks/driver_selection.py
        driver_ms = bench_selection(args.history, args.candidates)
        total = store_ms + driver_ms
        print(f"whole driver per new candidate (selection + bookkeeping + run store): {total:.2f} ms "
              f"(target < 10 ms: {'met' if total < 10 else 'NOT met'})")


if __name__ == "__main__":
    main()
