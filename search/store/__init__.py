"""The run directory: its single writer (`RunStore`), its reader (`load_run`), the retrain journal
and the atomic, checked file writes every output goes through.

    from search.store import load_run
    run = load_run("results/demo")      # run.info, run.candidates, run.front()
"""
from search.store.reader import Run, load_run
from search.store.writer import MemoryStore, RunStore

__all__ = ["MemoryStore", "Run", "RunStore", "load_run"]
