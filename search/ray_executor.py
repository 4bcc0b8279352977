"""The Ray executor: worker actors that each hold an evaluator (the dataset on its device).

One actor per GPU by default (fractions with `gpus_per_worker`), or one
CPU actor (num_cpus=1) per CPU when the cluster has no GPU. A candidate is
dispatched the moment a worker is idle. When a worker process dies, its
candidate goes back to the front of the queue (up to `max_retries` times,
then it comes back as `failed`) and a fresh actor takes the dead one's slot.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter, deque

from .executor import Executor, Finished, make_evaluator, safe_train


class _Worker:
    """The actor body (wrapped by ray.remote at run time)."""

    def __init__(self, spec: dict):
        import torch
        if not spec.get("gpu"):
            torch.set_num_threads(max(1, int(spec.get("threads", 1))))
        self.evaluator = make_evaluator(spec)
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def pid(self) -> int:
        return os.getpid()

    def train(self, graph_json: str) -> tuple[dict, str]:
        return safe_train(self.evaluator, graph_json), self.name


def _job_runtime_env() -> dict | None:
    """The runtime env of the Ray job this driver runs in (`ray job submit`), or None outside one.
    The job supervisor hands it to the entrypoint in RAY_JOB_CONFIG_JSON_ENV_VAR."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR
    text = os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR)
    if not text:
        return None
    try:
        return json.loads(text).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return {}


def code_runtime_env() -> dict | None:
    """What ships this project's packages to a remote cluster's workers: their directories as
    paths (Ray deep-copies a runtime env to merge it with a job's, and module objects do not
    copy). None when the job already carries them: a `ray job submit --working-dir .` of this
    checkout runs the driver from the unpacked working dir, which Ray gives every worker too;
    and a job that ships py_modules of its own would conflict with ours."""
    import evaluators
    import primitives
    import search
    dirs = [os.path.dirname(os.path.abspath(m.__file__)) for m in (primitives, evaluators, search)]
    job_env = _job_runtime_env()
    if job_env is not None:
        if job_env.get("py_modules"):
            return None
        here = os.path.realpath(os.getcwd())
        if job_env.get("working_dir") and all(
                os.path.commonpath([here, os.path.realpath(d)]) == here for d in dirs):
            return None
    return {"py_modules": dirs}


def init_ray(address: str | None = None, ship_code: bool | None = None, num_cpus: int | None = None) -> bool:
    """Connect to `address`, or start a local instance. Returns True when this call started Ray."""
    import ray
    if ray.is_initialized():
        return False
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    if address:
        if ship_code is None:
            ship_code = True
        runtime_env = code_runtime_env() if ship_code else None
        if runtime_env:
            kwargs["runtime_env"] = runtime_env
        kwargs.pop("include_dashboard")
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
    return True


class RayExecutor(Executor):
    def __init__(self, spec: dict, workers: int | None = None, gpus_per_worker: float | None = None,
                 address: str | None = None, max_retries: int = 2, ship_code: bool | None = None):
        import ray
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, WorkerCrashedError
        self._ray = ray
        self._died = (RayActorError, ActorDiedError, ActorUnavailableError, WorkerCrashedError)
        self._started = init_ray(address, ship_code)
        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0.0)
        if gpus_per_worker is None:
            gpus_per_worker = 1.0 if gpus >= 1 else 0.0
        if gpus_per_worker > 0 and gpus == 0:
            raise ValueError("gpus_per_worker > 0 but the Ray cluster has no GPU")
        if workers is None:
            workers = int(gpus // gpus_per_worker) if gpus_per_worker else int(resources.get("CPU", 1))
            workers = max(1, workers)
        self.spec = {**spec, "gpu": gpus_per_worker > 0, "threads": 1}
        self.capacity = workers
        self.max_retries = max_retries
        # max_concurrency=2: pid() answers while train() runs (one train per actor at a time:
        # the executor only dispatches to idle slots)
        self._actor_cls = ray.remote(num_cpus=1, num_gpus=gpus_per_worker, max_restarts=0,
                                     max_task_retries=0, max_concurrency=2)(_Worker)
        self._actors = [self._actor_cls.remote(self.spec) for _ in range(workers)]
        self._idle = deque(range(workers))
        self._queue: deque = deque()          # (candidate_id, graph_json) waiting for a worker
        self._running: dict = {}              # ObjectRef -> (slot, candidate_id, graph_json)
        self.retries: Counter = Counter()
        self.replaced = 0

    # -- the interface ------------------------------------------------------------------------
    def submit(self, candidate_id: int, graph_json: str) -> None:
        self._queue.append((candidate_id, graph_json))
        self._dispatch()

    @property
    def in_flight(self) -> int:
        return len(self._queue) + len(self._running)

    def wait(self, timeout: float | None = None) -> list[Finished]:
        self._dispatch()
        if not self._running:
            return []
        ready, _ = self._ray.wait(list(self._running), num_returns=1, timeout=timeout)
        if ready:
            ready, _ = self._ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
        out = []
        for ref in ready:
            slot, candidate_id, graph_json = self._running.pop(ref)
            try:
                result, worker = self._ray.get(ref)
            except self._died as err:
                self._replace(slot)
                self.retries[candidate_id] += 1
                if self.retries[candidate_id] > self.max_retries:
                    out.append(Finished(candidate_id, {
                        "status": "failed", "seconds": 0.0,
                        "reason": f"worker died {self.retries[candidate_id]} times: {type(err).__name__}"},
                        f"ray-slot{slot}"))
                else:
                    self._queue.appendleft((candidate_id, graph_json))
                continue
            except self._ray.exceptions.RayError as err:  # anything else is this candidate's failure
                self._idle.append(slot)
                out.append(Finished(candidate_id, {"status": "failed", "seconds": 0.0,
                                                   "reason": f"{type(err).__name__}: {err}"[:300]},
                                    f"ray-slot{slot}"))
                continue
            self._idle.append(slot)
            out.append(Finished(candidate_id, result, worker))
        self._dispatch()
        return out

    def close(self) -> None:
        for actor in self._actors:
            try:
                self._ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors, self._running = [], {}
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()

    # -- internals ------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while self._queue and self._idle:
            slot = self._idle.popleft()
            candidate_id, graph_json = self._queue.popleft()
            ref = self._actors[slot].train.remote(graph_json)
            self._running[ref] = (slot, candidate_id, graph_json)

    def _replace(self, slot: int) -> None:
        try:
            self._ray.kill(self._actors[slot])
        except Exception:  # noqa: BLE001
            pass
        self._actors[slot] = self._actor_cls.remote(self.spec)
        self._idle.append(slot)
        self.replaced += 1

    def worker_pids(self, timeout: float = 60.0) -> list[int]:
        """The process id of each worker actor (fault tests kill one by pid)."""
        return self._ray.get([a.pid.remote() for a in self._actors], timeout=timeout)

    def running(self) -> dict[int, int]:
        """candidate id -> worker slot (an index into worker_pids()) of what is training now."""
        return {cid: slot for slot, cid, _ in self._running.values()}

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until every worker has built its evaluator."""
        self.worker_pids(timeout)
