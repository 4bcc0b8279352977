"""Executors: where candidates are trained. One narrow interface, two implementations.

    executor.capacity                       # candidates it can train at once
    executor.submit(candidate_id, graph_json)
    executor.wait(timeout) -> [Finished]    # what finished; [] when nothing did in time
    executor.in_flight                      # submitted and not yet returned by wait
    executor.describe()                     # its part of the progress line, or None
    executor.close()

`LocalExecutor` trains in this process, one candidate at a time, inside
`wait` (tests, and a single GPU without Ray). `search.workers.ray_executor.RayExecutor`
trains on Ray worker actors. Both build their evaluator from a plain dict
(`evaluator_spec`), so the same spec travels to remote workers.
"""
from __future__ import annotations

import time
import traceback
from collections import deque
from dataclasses import dataclass

from primitives.util import one_line


@dataclass
class Finished:
    candidate_id: int
    result: dict        # Evaluator.train(): status, reason, acc_<arch>..., seconds, stage_seconds
    worker: str


def evaluator_spec(config) -> dict:
    """The picklable recipe for a worker's evaluator, from a SearchConfig."""
    return {"kind": config.evaluator, "eval": config.eval_config_dict(),
            "archs": list(config.archs), "surrogate_seconds": config.surrogate_seconds}


def make_evaluator(spec: dict):
    if spec["kind"] == "surrogate":
        from search.workers.surrogate import SurrogateEvaluator
        return SurrogateEvaluator(spec["archs"], seconds=spec.get("surrogate_seconds", 0.0))
    from evaluators.evaluate import EvalConfig, Evaluator
    return Evaluator(EvalConfig.from_dict(spec["eval"]))


def make_screen(spec: dict):
    """The driver-side cheap rejection that matches the evaluator."""
    if spec["kind"] == "surrogate":
        from search.workers.surrogate import SurrogateScreen
        return SurrogateScreen()
    from evaluators.evaluate import EvalConfig, Screen
    return Screen(EvalConfig.from_dict(spec["eval"]))


def safe_train(evaluator, graph_json: str) -> dict:
    """Evaluator.train, with any exception turned into a `failed` result."""
    start = time.perf_counter()
    try:
        return evaluator.train(graph_json)
    except Exception as err:  # noqa: BLE001 - one bad candidate must not stop the search
        last = traceback.extract_tb(err.__traceback__)[-1:]
        where = f" at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno}" if last else ""
        return {"status": "failed", "reason": f"{one_line(err, limit=None)}{where}"[:300],
                "seconds": time.perf_counter() - start}


class Executor:
    capacity: int = 1

    def submit(self, candidate_id: int, graph_json: str) -> None:
        raise NotImplementedError

    def wait(self, timeout: float | None = None) -> list[Finished]:
        raise NotImplementedError

    @property
    def in_flight(self) -> int:
        raise NotImplementedError

    def describe(self) -> str | None:
        """The progress line's word on what this executor is doing (None: the driver's count)."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalExecutor(Executor):
    """Trains in this process; `wait` runs the oldest submitted candidate."""

    capacity = 1

    def __init__(self, spec: dict | None = None, evaluator=None, name: str = "local"):
        self.evaluator = evaluator if evaluator is not None else make_evaluator(spec)
        self.name = name
        self._queue: deque = deque()

    def submit(self, candidate_id: int, graph_json: str) -> None:
        self._queue.append((candidate_id, graph_json))

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def wait(self, timeout: float | None = None) -> list[Finished]:
        if not self._queue:
            return []
        candidate_id, graph_json = self._queue[0]
        result = safe_train(self.evaluator, graph_json)
        self._queue.popleft()
        return [Finished(candidate_id, result, self.name)]
