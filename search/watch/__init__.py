"""Watching a search while it runs, in the tools people already use.

    study.py       LiveStudy: RUN/study.journal, an Optuna journal that optuna-dashboard reads
    mlflow_log.py  MlflowLog: the run as an MLflow parent run, each candidate a child run

Each is a watcher of the run store (`RunStore.watchers`): `flushed(rows)` is called once
a part file holding `rows` is on disk, so what a watcher shows never runs ahead of the
run directory. Opened on a resumed run, a watcher first adds the records it lacks (a
crash between a part file and its watchers' appends leaves some out), and never adds a
candidate twice. A watcher that cannot write (a full disk, an MLflow server down) says
so once and keeps its rows for the next flush: the search goes on, the parquet files
stay the record, and a resume adds what is still missing.
"""
from __future__ import annotations

import sys

from primitives.util import one_line


class Watcher:
    """What the watchers share: rows waiting to be added (`pending`), the ids added
    (`done`), one report when adding starts failing and one when it works again."""

    what = "watcher"           # how reports name it

    def __init__(self, report=None):
        self.report = report or (lambda line: print(line, file=sys.stderr))
        self.done: set[int] = set()
        self.pending: list[dict] = []
        self.failing = False

    def flushed(self, rows) -> None:
        """Add the records of a part file just written (and any kept from a failed try)."""
        self.pending.extend(r for r in rows if r["id"] not in self.done)
        self.push()

    def push(self) -> bool:
        """Add what is pending; True when nothing is left."""
        rows = [r for r in self.pending if r["id"] not in self.done]
        try:
            if rows:
                self.add(rows)
        except Exception as err:  # noqa: BLE001 - the search goes on; resume adds what is missing
            self.pending = [r for r in rows if r["id"] not in self.done]
            if not self.failing:
                self.report(f"evonorm: {self.what}: {one_line(err)}; trying again at the next flush")
            self.failing = True
            return False
        self.pending = []
        if self.failing:
            self.report(f"evonorm: {self.what}: caught up")
        self.failing = False
        return True

    def add(self, rows: list[dict]) -> None:
        """Add `rows` (none of them done), putting each id in `done` once it is added."""
        raise NotImplementedError

    def close(self, finished: bool = True) -> None:
        """A last try at what is pending; `finished`: the run reached its budget."""
        if not self.push():
            self.report(f"evonorm: {self.what}: {len(self.pending)} record(s) not added; "
                        "evonorm resume adds them")
