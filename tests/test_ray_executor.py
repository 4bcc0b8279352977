"""The Ray executor: steady state, a worker killed by pid costs no candidate, bounded retries,
and a search against a Ray head started on loopback."""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

ray = pytest.importorskip("ray")

# Starting Ray and worker actors (each imports torch) takes 10-30 s on a 2-core machine.
pytestmark = pytest.mark.slow

from search.config import build_config  # noqa: E402
from search.evolution import Driver  # noqa: E402
from search.executor import evaluator_spec, make_screen  # noqa: E402
from search.modes import get_mode  # noqa: E402
from search.ray_executor import RayExecutor  # noqa: E402
from search.store import MemoryStore

SPEC = {"kind": "surrogate", "archs": ["resnet", "mobilenetv2", "efficientnet"], "eval": {}}


@pytest.fixture(scope="module")
def local_ray():
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    if started:
        ray.shutdown()


def test_worker_killed_mid_run_costs_no_candidate(local_ray):
    config = build_config(overrides=dict(evaluator="surrogate", budget=40, population=8, tournament=3,
                                         surrogate_seconds=0.25))
    executor = RayExecutor(evaluator_spec(config), workers=2, max_retries=2)
    executor.wait_ready()
    killed = []

    def kill_one(driver, record):
        running = executor.running()
        if running and not killed and driver.done >= 4:
            pid = executor.worker_pids()[next(iter(running.values()))]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    store = MemoryStore()
    try:
        driver = Driver(config, get_mode("batch"), store, make_screen(evaluator_spec(config)), executor,
                        progress=None, on_record=kill_one)
        driver.run()
        assert killed
        assert len(store.records) == 40 and len({r["id"] for r in store.records}) == 40
        assert not any("worker died" in (r["reason"] or "") for r in store.records)
        assert executor.replaced == 1 and sum(executor.retries.values()) == 1
        assert killed[0] not in executor.worker_pids()        # the dead worker was replaced
        workers = {r["worker"] for r in store.records if r["worker"] != "driver"}
        assert len(workers) >= 2
    finally:
        executor.close()


def test_retries_are_bounded_then_failed(local_ray):
    executor = RayExecutor({**SPEC, "surrogate_seconds": 30.0}, workers=1, max_retries=1)
    try:
        executor.wait_ready()
        executor.submit(7, get_mode("batch").random_graph(__import__("random").Random(0)).to_json())
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


def test_search_against_a_ray_head_on_loopback(tmp_path):
    """`ray start --head` on loopback, `evonorm search --address`, then stop that head.
    The head runs with --block in its own session, so stopping it means signalling its
    process group (not `ray stop`, which would stop every Ray on the machine)."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")   # short: Ray's unix socket paths
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
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
        from search.rundir import load_run
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


def test_cli_default_executor_is_local_ray(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "search.cli", "search", "--evaluator", "surrogate",
                           "--budget", "25", "--population", "8", "--tournament", "3",
                           "--surrogate-seconds", "0.05", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 worker(s), ray executor" in done.stderr
    from search.rundir import load_run
    assert len(load_run(out).candidates) == 25
