"""What watching a search costs per flush: a real run's records replayed through the run
store, its part files and front timed against the live Optuna study (RUN/study.journal)
and, when MLflow is installed, the MLflow logger (a SQLite store in the run directory).

The records of RUN (default results/default-v2) go into a new run directory in their
order, `--flush-every` at a time (the default flush, 20 records), as a search writes
them. Each flush is timed in three parts: the part file and the front (the flush
itself), the journal's appends, MLflow's runs. Prints milliseconds per flush and per
record for each, and each watcher's cost as a ratio of the flush.

    python benchmarks/watch_cost.py [RUN] [--flush-every 20] [--no-mlflow] [--keep DIR]

`--keep DIR` keeps the replayed run directory (its study.journal is what
optuna-dashboard showed for the README's screenshots).
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import tempfile
import time

from search.store import load_run
from search.store.writer import RunStore
from search.watch.study import LiveStudy


class Timed:
    """A watcher with a stopwatch: seconds spent in each `flushed`."""

    def __init__(self, watcher):
        self.watcher, self.times = watcher, []

    def flushed(self, rows):
        start = time.perf_counter()
        self.watcher.flushed(rows)
        self.times.append(time.perf_counter() - start)


def replay(run, out: str, flush_every: int, mlflow: bool):
    """Every record of `run` appended to a new store in `out`; returns the flush seconds
    (watchers included) and the Timed watchers by name."""
    store = RunStore.create(out, run.info, flush_every=flush_every, flush_seconds=1e9)
    report = io.StringIO()
    watchers = {"journal": Timed(LiveStudy.open(out, store.info, report=report.write))}
    if mlflow:
        from search.watch.mlflow_log import MlflowLog
        watchers["mlflow"] = Timed(MlflowLog.open(out, store.info, "run", report=report.write))
    store.watchers = list(watchers.values())
    flushes = []
    original = store.flush

    def timed_flush():
        rows = len(store._buffer)
        start = time.perf_counter()
        original()
        if rows:
            flushes.append(time.perf_counter() - start)

    store.flush = timed_flush
    for record in run.records():
        store.append(record)
    store.close()
    assert not report.getvalue(), report.getvalue()
    return flushes, watchers


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", default="results/default-v2")
    parser.add_argument("--flush-every", type=int, default=20)
    parser.add_argument("--no-mlflow", action="store_true")
    parser.add_argument("--keep", metavar="DIR", help="keep the replayed run directory here")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow  # noqa: F401
        mlflow_ok = not args.no_mlflow
    except ImportError:
        mlflow_ok = False
    run = load_run(args.run)
    tmp = tempfile.mkdtemp(prefix="watch-cost-")
    out = args.keep or os.path.join(tmp, run.name)
    try:
        flushes, watchers = replay(run, out, args.flush_every, mlflow_ok)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    n = len(flushes)
    watched = sum(sum(w.times) for w in watchers.values())
    own = (sum(flushes) - watched) / n
    records = len(run.records())
    print(f"{records} records of {args.run}, {n} flushes of {args.flush_every}")
    print(f"{'part':>10}  {'ms/flush':>9}  {'ms/record':>9}  {'x flush':>7}")
    print(f"{'flush':>10}  {own * 1e3:9.1f}  {own * n / records * 1e3:9.2f}  {1:7.2f}")
    for name, w in watchers.items():
        per = sum(w.times) / n
        print(f"{name:>10}  {per * 1e3:9.1f}  {per * n / records * 1e3:9.2f}  {per / own:7.2f}")


if __name__ == "__main__":
    main()
