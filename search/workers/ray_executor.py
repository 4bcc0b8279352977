"""The Ray executor: worker actors that each hold an evaluator (the dataset on its device).

One actor per GPU by default (fractions with `gpus_per_worker`), or one
CPU actor (num_cpus=1) per CPU when the cluster has no GPU. A candidate is
dispatched the moment a worker is idle. When a worker dies (its process, or
its whole node), its candidate goes back to the front of the queue for any
live worker (up to `max_retries` times, then it comes back as `failed`) and a
fresh actor is asked for in the dead one's slot; that actor counts as a worker
once Ray has placed it and it has built its evaluator. With no worker alive
the executor waits for the cluster to come back rather than give up.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter, deque

from primitives.util import one_line

from search.errors import ClusterError
from search.workers.executor import Executor, Finished, make_evaluator, safe_train


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

    def ready(self) -> int:
        """Answers once the actor is placed and its evaluator built (Ray runs methods only
        after __init__): the executor counts it as a worker from then on."""
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
        _check_reachable(address)
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=num_cpus, **kwargs)
    return True


def _check_reachable(address: str, timeout: float = 10.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) address must accept a connection: ray.init retries
    an unreachable cluster for minutes, where a user wants a one-line error at once."""
    import socket
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return                                  # "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConnectionError(f"nothing answers at {host}:{port} ({err.strerror or err})") from None


class WorkerStartError(ClusterError):
    """A worker actor raised while building its evaluator: the cluster, not a candidate, is wrong."""


class RayExecutor(Executor):
    """Worker slots, each in exactly one state: starting (its actor is created, but not yet
    placed on a node or still building its evaluator), idle, or training one candidate.

    Only idle slots get candidates, so a replacement that cannot be placed (its node is
    gone and no other has room) holds no candidate hostage: the candidate waits in the queue
    for any live worker, and the replacement joins when Ray places it (the node rejoins, or
    the autoscaler adds one for its pending resource demand)."""

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
        self.capacity = workers               # workers asked for; the driver keeps this many in flight
        self.max_retries = max_retries
        # max_concurrency=2: pid() answers while train() runs (one train per actor at a time:
        # the executor only dispatches to idle slots)
        self._actor_cls = ray.remote(num_cpus=1, num_gpus=gpus_per_worker, max_restarts=0,
                                     max_task_retries=0, max_concurrency=2)(_Worker)
        self._actors: dict = {}               # slot -> actor handle (starting or ready)
        self._starting: dict = {}             # ready() ObjectRef -> slot, until the actor answers
        self._pids: dict[int, int] = {}       # slot -> worker pid, for ready slots (idle or training)
        self._idle: deque = deque()           # ready slots with nothing to train
        self._queue: deque = deque()          # (candidate_id, graph_json) waiting for a worker
        self._running: dict = {}              # ObjectRef -> (slot, candidate_id, graph_json)
        self.retries: Counter = Counter()
        self.replaced = 0
        for slot in range(workers):
            self._start(slot)

    # -- the interface ------------------------------------------------------------------------
    def submit(self, candidate_id: int, graph_json: str) -> None:
        self._queue.append((candidate_id, graph_json))
        self._dispatch()

    @property
    def in_flight(self) -> int:
        return len(self._queue) + len(self._running)

    @property
    def workers_ready(self) -> int:
        return len(self._pids)

    def wait(self, timeout: float | None = None) -> list[Finished]:
        """What finished within `timeout`; also takes in workers that became ready meanwhile."""
        self._dispatch()
        refs = [*self._running, *self._starting]
        if not refs:
            return []
        ready, _ = self._ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
        out = []
        for ref in ready:
            if ref in self._starting:
                self._take_in(ref)
            else:
                out.extend(self._collect(ref))
        self._dispatch()
        return out

    def describe(self) -> str:
        """For the progress line: candidates training and waiting for a worker, and the live
        workers when fewer than asked for (a lost node, or a cluster still starting)."""
        text = f"training {len(self._running)} | queued {len(self._queue)}"
        if self.workers_ready < self.capacity:
            text += f" | workers {self.workers_ready}/{self.capacity}"
            if not self.workers_ready:
                text += ", waiting for a worker"
        return text

    def close(self) -> None:
        for actor in self._actors.values():
            try:
                self._ray.kill(actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._actors, self._running, self._starting = {}, {}, {}
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()

    # -- internals ------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while self._queue and self._idle:
            slot = self._idle.popleft()
            candidate_id, graph_json = self._queue.popleft()
            ref = self._actors[slot].train.remote(graph_json)
            self._running[ref] = (slot, candidate_id, graph_json)

    def _start(self, slot: int) -> None:
        """A new actor for `slot`; Ray places it when some node has room."""
        actor = self._actor_cls.remote(self.spec)
        self._actors[slot] = actor
        self._starting[actor.ready.remote()] = slot

    def _take_in(self, ref) -> None:
        """A starting actor answered: it is a worker now, or it died before it got there."""
        slot = self._starting.pop(ref)
        try:
            self._pids[slot] = self._ray.get(ref)
        except self._died as err:
            if getattr(err, "actor_init_failed", False):
                raise WorkerStartError(f"a Ray worker could not build its evaluator: "
                                       f"{str(err).strip().splitlines()[-1]}") from None
            self._start(slot)           # its node went away before it was ready: ask again
            return
        self._idle.append(slot)

    def _collect(self, ref) -> list[Finished]:
        """The outcome of one train call. A dead worker's candidate goes back to the front of
        the queue (for any live worker) until it has cost `max_retries` workers."""
        slot, candidate_id, graph_json = self._running.pop(ref)
        try:
            result, worker = self._ray.get(ref)
        except self._died as err:
            self._replace(slot)
            self.retries[candidate_id] += 1
            if self.retries[candidate_id] <= self.max_retries:
                self._queue.appendleft((candidate_id, graph_json))
                return []
            return [Finished(candidate_id, {
                "status": "failed", "seconds": 0.0,
                "reason": f"worker died {self.retries[candidate_id]} times: {type(err).__name__}"},
                f"ray-slot{slot}")]
        except self._ray.exceptions.RayError as err:  # anything else is this candidate's failure
            self._idle.append(slot)
            return [Finished(candidate_id, {"status": "failed", "seconds": 0.0,
                                            "reason": one_line(err)},
                             f"ray-slot{slot}")]
        self._idle.append(slot)
        return [Finished(candidate_id, result, worker)]

    def _replace(self, slot: int) -> None:
        try:
            self._ray.kill(self._actors[slot])
        except Exception:  # noqa: BLE001
            pass
        self._pids.pop(slot, None)
        self._start(slot)
        self.replaced += 1

    def worker_pids(self) -> dict[int, int]:
        """slot -> process id of each ready worker (fault tests kill one by pid)."""
        return dict(self._pids)

    def running(self) -> dict[int, int]:
        """candidate id -> worker slot (a key of worker_pids()) of what is training now."""
        return {cid: slot for slot, cid, _ in self._running.values()}

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until every slot has a ready worker (TimeoutError after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while self._starting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(self._starting)} of {self.capacity} workers not ready "
                                   f"after {timeout:.0f} s")
            ready, _ = self._ray.wait(list(self._starting), num_returns=len(self._starting),
                                      timeout=left)
            for ref in ready:
                self._take_in(ref)
        self._dispatch()
