"""The Ray executor on a local Ray: a worker killed mid-candidate costs no candidate and is
replaced; a replacement that cannot be placed holds no candidate; bounded retries; and
(slow) searches against a Ray head started on loopback."""
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

import ray

from search.config import build_config  # noqa: E402
from search.engine.driver import Driver  # noqa: E402
from search.workers.executor import evaluator_spec, make_screen  # noqa: E402
from search.engine.modes import get_mode  # noqa: E402
from search.workers.ray_executor import RayExecutor, WorkerStartError  # noqa: E402
from search.store.writer import MemoryStore  # noqa: E402

SPEC = {"kind": "surrogate", "archs": ["resnet", "mobilenetv2", "efficientnet"], "eval": {}}
LOCAL_CPUS = 2


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=LOCAL_CPUS, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    if started:
        ray.shutdown()


def test_worker_killed_mid_candidate_is_recorded_once_and_replaced(local_ray):
    config = build_config(overrides=dict(evaluator="surrogate", budget=16, population=6, tournament=3,
                                         surrogate_seconds=0.3))
    executor = RayExecutor(evaluator_spec(config), workers=2, max_retries=2)
    executor.wait_ready()
    killed = []

    def kill_one(driver, record):
        running = executor.running()
        if running and not killed and driver.done >= 3:
            pid = executor.worker_pids()[next(iter(running.values()))]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    store = MemoryStore()
    try:
        driver = Driver(config, get_mode("batch"), store, make_screen(evaluator_spec(config)), executor,
                        progress=None, on_record=kill_one)
        driver.run()
        assert killed
        assert sorted(r["id"] for r in store.records) == list(range(16))   # every id, once
        assert not any("worker died" in (r["reason"] or "") for r in store.records)
        assert executor.replaced == 1 and sum(executor.retries.values()) == 1
        executor.wait_ready()
        pids = executor.worker_pids()
        assert len(pids) == 2 and killed[0] not in pids.values()      # the dead worker was replaced
        workers = {r["worker"] for r in store.records if r["worker"] != "driver"}
        assert len(workers) >= 2
    finally:
        executor.close()


@ray.remote(num_cpus=1)
class _Blocker:
    """Holds a CPU, as a lost node's absence would: the replacement worker cannot be placed."""

    def ready(self) -> bool:
        return True


def _drain(executor, until, timeout=60.0):
    finished, seen = [], []
    deadline = time.monotonic() + timeout
    while not until(finished) and time.monotonic() < deadline:
        finished += executor.wait(timeout=0.2)
        seen.append(executor.describe())
    return finished, seen


def test_unplaced_replacement_holds_no_candidate_and_joins_when_placed(local_ray):
    """Worker B dies mid-candidate while its CPU is taken (a node lost, the cluster full): the
    retry goes to live worker A, the progress says 1/2, and B's replacement joins once placed."""
    assert ray.cluster_resources()["CPU"] == LOCAL_CPUS
    executor = RayExecutor({**SPEC, "surrogate_seconds": 0.6}, workers=2, max_retries=2)
    blocker = None
    try:
        executor.wait_ready()
        graphs = [get_mode("batch").random_graph(random.Random(i)).to_json() for i in range(6)]
        for cid in (0, 1):
            executor.submit(cid, graphs[cid])
        assert executor.describe() == "training 2 | queued 0"
        victim_cid, victim_slot = next(iter(executor.running().items()))
        pids = executor.worker_pids()
        survivor = next(pid for slot, pid in pids.items() if slot != victim_slot)
        os.kill(pids[victim_slot], signal.SIGKILL)
        blocker = _Blocker.remote()
        ray.get(blocker.ready.remote(), timeout=60)       # placed on the dead worker's CPU
        for cid in (2, 3):
            executor.submit(cid, graphs[cid])
        finished, seen = _drain(executor, lambda f: len(f) == 4)
        assert sorted(f.candidate_id for f in finished) == [0, 1, 2, 3]
        assert not any("worker died" in (f.result.get("reason") or "") for f in finished)
        assert executor.retries[victim_cid] == 1 and executor.replaced == 1
        retried = next(f for f in finished if f.candidate_id == victim_cid)
        assert retried.worker.endswith(f":{survivor}")     # the retry went to the live worker
        assert executor.workers_ready == 1                  # the replacement is still unplaced
        assert any("queued" in s and "workers 1/2" in s for s in seen)
        ray.kill(blocker)
        blocker = None
        deadline = time.monotonic() + 60
        while executor.workers_ready < 2 and time.monotonic() < deadline:
            executor.wait(timeout=0.2)
        assert executor.workers_ready == 2 and executor.describe() == "training 0 | queued 0"
        executor.submit(4, graphs[4])
        executor.submit(5, graphs[5])
        assert executor.describe() == "training 2 | queued 0"    # both workers take one
        finished, _ = _drain(executor, lambda f: len(f) == 2)
        assert sorted(f.candidate_id for f in finished) == [4, 5] and len({f.worker for f in finished}) == 2
    finally:
        if blocker is not None:
            ray.kill(blocker)
        executor.close()


def test_a_worker_that_cannot_build_its_evaluator_is_an_error_not_a_wait(local_ray):
    """A broken worker setup (here an unknown dataset) is the cluster's fault, not a candidate's:
    it must stop the run with the reason, not be replaced forever or fail every candidate."""
    executor = RayExecutor({"kind": "train", "eval": {"dataset": "no-such"}, "archs": ["resnet"]}, workers=1)
    try:
        with pytest.raises(WorkerStartError, match="could not build its evaluator.*no-such"):
            executor.wait_ready(timeout=120)
    finally:
        executor.close()


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_retries_are_bounded_then_failed(local_ray):
    executor = RayExecutor({**SPEC, "surrogate_seconds": 30.0}, workers=1, max_retries=1)
    try:
        executor.wait_ready()
        executor.submit(7, get_mode("batch").random_graph(random.Random(0)).to_json())
        finished = []
        for _ in range(2):                      # the first try and the one retry both lose their worker
            time.sleep(0.5)
            os.kill(executor.worker_pids()[0], signal.SIGKILL)
            deadline = time.monotonic() + 60
            while not finished and executor.retries[7] < 1 + _ and time.monotonic() < deadline:
                finished += executor.wait(timeout=0.5)
            executor.wait_ready()
        while not finished:
            finished += executor.wait(timeout=0.5)
        assert [f.candidate_id for f in finished] == [7]
        assert finished[0].result["status"] == "failed"
        assert "worker died 2 times" in finished[0].result["reason"]
        assert executor.in_flight == 0 and executor.replaced == 2
    finally:
        executor.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_search_against_a_ray_head_on_loopback(tmp_path):
    """`ray start --head` on loopback, `evonorm search --address`, then stop that head.
    The head runs with --block in its own session, so stopping it means signalling its
    process group (not `ray stop`, which would stop every Ray on the machine)."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")   # short: Ray's unix socket paths
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"),
           "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    head = subprocess.Popen(["ray", "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                             "--num-cpus", "2", "--temp-dir", temp_dir, "--include-dashboard=false",
                             "--disable-usage-stats", "--block"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = tmp_path / "run"
        done = subprocess.run([sys.executable, "-m", "search.cli", "search", "--address", f"127.0.0.1:{port}",
                               "--evaluator", "surrogate", "--budget", "30", "--population", "8",
                               "--tournament", "3", "--surrogate-seconds", "0.05", "--out", str(out), "--quiet"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        from search.store.reader import load_run
        df = load_run(out).candidates
        assert len(df) == 30 and df["id"].is_unique
        trained = df[df["worker"] != "driver"]
        assert len(trained) > 0
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        # anything of this head that left its process group (by pid, nothing else)
        left = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.split()
        for pid in left:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.mark.slow
@pytest.mark.xdist_group("ray")
def test_cli_default_executor_is_local_ray(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "search.cli", "search", "--evaluator", "surrogate",
                           "--budget", "25", "--population", "8", "--tournament", "3",
                           "--surrogate-seconds", "0.05", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 worker(s), ray executor" in done.stderr
    from search.store.reader import load_run
    assert len(load_run(out).candidates) == 25
