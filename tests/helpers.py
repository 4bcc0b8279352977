"""Stand-ins the tests share (fixtures live in conftest.py)."""
from __future__ import annotations

import random

from search.executor import Executor, LocalExecutor


class QueuedExecutor(Executor):
    """Local training behind a queue: up to `capacity` candidates in flight, one finished per
    `wait`, first in first out or, with `shuffle_seed`, in a seeded random order (which
    exercises held duplicates). With a `log` it records every task it trains as (id, steps,
    seed) (None where the task is a bare graph or names no seed); with `stop_after` it
    raises KeyboardInterrupt (a Ctrl-C) instead of training once that many are logged."""

    def __init__(self, spec, capacity=2, log=None, stop_after=None, shuffle_seed=None):
        self.local, self.capacity, self.jobs = LocalExecutor(spec), capacity, []
        self.log, self.stop_after = log, stop_after
        self.rng = None if shuffle_seed is None else random.Random(shuffle_seed)

    def submit(self, candidate_id, task):
        self.jobs.append((candidate_id, task))

    @property
    def in_flight(self):
        return len(self.jobs)

    def wait(self, timeout=None):
        if not self.jobs:
            return []
        if self.stop_after is not None and len(self.log) >= self.stop_after:
            raise KeyboardInterrupt
        cid, task = self.jobs.pop(self.rng.randrange(len(self.jobs)) if self.rng else 0)
        if self.log is not None:
            settings = task if isinstance(task, dict) else {}
            self.log.append((cid, settings.get("steps"), settings.get("seed")))
        self.local.submit(cid, task)
        return self.local.wait()
