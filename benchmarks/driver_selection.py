"""Driver time per new candidate with a long history: selection and bookkeeping only.

The driver starts as if resumed after `--history` records (100k by default):
100k known scores, 100k hashes in the duplicate memory, the front of 100k
random score points, a full population. It then makes `--candidates` more:
tournament, mutation, the duplicate lookup, describing the graph (formula,
canonical JSON, hash), the record, the front update, aging, and the run store
(in memory by default; `--store` uses search.store.writer.RunStore in a temporary
directory, part-file writes amortised). Training is replaced by an executor
that answers at once with made-up scores, so what is timed is the driver.
Target: under 10 ms per candidate.

    python benchmarks/driver_selection.py [--history 100000] [--candidates 3000] [--store]
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time

import numpy as np

from search.config import build_config
from search.engine.driver import Driver
from search.workers.executor import Executor, Finished
from search.engine.modes import get_mode
from search.pareto import pareto_mask
from search.engine.selection import Member
from search.workers.surrogate import describe
from search.store.writer import MemoryStore


class HashScreen:
    """Duplicate memory only (the screen's bookkeeping part)."""

    def __init__(self):
        self.hashes: dict[str, int] = {}

    def check(self, graph, candidate_id):
        out = {**describe(graph), "status": None, "reason": None, "equivalent_to": None, "stage_seconds": {}}
        if graph.hash in self.hashes:
            out.update(status="duplicate", equivalent_to=self.hashes[graph.hash])
        else:
            self.hashes[graph.hash] = candidate_id
        return out


class Instant(Executor):
    capacity = 1

    def __init__(self, archs):
        self.archs, self.jobs = archs, []

    def submit(self, candidate_id, graph_json):
        self.jobs.append(candidate_id)

    @property
    def in_flight(self):
        return len(self.jobs)

    def wait(self, timeout=None):
        out = []
        for cid in self.jobs:
            r = random.Random(cid)
            out.append(Finished(cid, {"status": "ok", "seconds": 0.0,
                                      **{f"acc_{a}": r.random() for a in self.archs}}, "bench"))
        self.jobs = []
        return out


def bench_selection(history: int = 100_000, candidates: int = 3000, population: int = 32,
                    use_store: bool = False) -> float:
    """ms per new candidate of the driver (selection + bookkeeping) after `history` records."""
    n = history
    config = build_config(overrides=dict(budget=n + candidates, population=population,
                                         tournament=min(8, population), evaluator="surrogate"))
    mode = get_mode("batch")
    tmp = None
    if use_store:
        from search.store.writer import RunStore
        tmp = tempfile.TemporaryDirectory()
        store = RunStore.create(tmp.name + "/run", {"config": config.to_dict(), "archs": list(config.archs)})
    else:
        store = MemoryStore()
    screen = HashScreen()
    driver = Driver(config, mode, store, screen, Instant(config.archs), start_id=n, done=n, progress=None)

    # a history of n records: scores, duplicate memory, front, population
    rng = np.random.default_rng(0)
    accs = rng.random((n, len(config.archs)))
    for i in range(n):
        driver.scores[i] = dict(zip(driver.acc_keys, accs[i].tolist()))
        screen.hashes[f"{i:016x}"] = i
    driver.front = [tuple(p) for p in accs[pareto_mask(accs, config.goals)].tolist()]
    prng = random.Random(0)
    for i in range(n - population, n):
        driver.population.add(Member(i, mode.random_graph(prng), tuple(accs[i].tolist())))

    start = time.perf_counter()
    driver.run()
    if use_store:
        store.close()
    per = (time.perf_counter() - start) / candidates
    if tmp is not None:
        tmp.cleanup()
    print(f"driver with {n} records in history, {candidates} new candidates, population {population}, "
          f"front {len(driver.front)} points, store {'RunStore (default flush policy)' if use_store else 'in memory'}")
    print(f"  selection + mutation + screen memory + record + front + aging: {per * 1000:.2f} ms per candidate "
          f"(target < 10 ms: {'met' if per < 0.010 else 'NOT met'})")
    return per * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--candidates", type=int, default=3000)
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--store", action="store_true", help="use search.store.writer.RunStore")
    args = parser.parse_args()
    bench_selection(args.history, args.candidates, args.population, args.store)


if __name__ == "__main__":
    main()
