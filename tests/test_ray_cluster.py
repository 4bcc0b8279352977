"""Slow: real Ray clusters on loopback, as a cluster user meets them. A search submitted as a
Ray job (`ray job submit --working-dir .`), and a two-node cluster that loses its second node
mid-candidate and gets it back.

Each node is its own `ray start --block` process in its own session with its own temp dir
and ports, so stopping it signals that process group and nothing else: other Ray instances
on the machine (`ray stop` would stop them all) are left alone."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import ray
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]  # one Ray at a time

REPO = Path(__file__).resolve().parents[1]
# Node death is noticed after health_check_failure_threshold missed checks; the defaults
# (3 s x 5) are for real networks, loopback can be quicker.
FAST_HEALTH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
               "RAY_health_check_initial_delay_ms": "1000"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    """`ray` and `evonorm` from this interpreter's environment (a venv need not be activated);
    token authentication unless the caller chose otherwise."""
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token"),
            **FAST_HEALTH}


class Node:
    """One `ray start` node: a head (`address=None`) or a node joining `address`."""

    def __init__(self, address: str | None = None, num_cpus: int = 1, dashboard_port: int | None = None):
        self.temp_dir = tempfile.mkdtemp(prefix="rn", dir="/tmp")   # short: Ray's socket paths
        self.port = _free_port()
        ports = ["--node-manager-port", str(_free_port()), "--object-manager-port", str(_free_port()),
                 "--dashboard-agent-listen-port", str(_free_port()),
                 "--dashboard-agent-grpc-port", str(_free_port()),
                 "--metrics-export-port", str(_free_port()), "--runtime-env-agent-port", str(_free_port())]
        if address is None:
            where = ["--head", "--port", str(self.port), "--ray-client-server-port", str(_free_port())]
            where += (["--dashboard-port", str(dashboard_port), "--dashboard-host", "127.0.0.1"]
                      if dashboard_port else ["--include-dashboard=false"])
        else:
            where = ["--address", address]
        self.log = open(os.path.join(self.temp_dir, "start.log"), "w")
        self.proc = subprocess.Popen(
            ["ray", "start", *where, "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus),
             "--temp-dir", self.temp_dir, "--disable-usage-stats", "--block", *ports],
            env=_env(), start_new_session=True, stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def raylet_pid(self, timeout: float = 60.0) -> int:
        """This node's raylet: the raylet process whose command line names this node's temp dir."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = subprocess.run(["pgrep", "-f", f"raylet/raylet .*{self.temp_dir}"],
                                   capture_output=True, text=True).stdout.split()
            if found:
                return int(found[0])
            time.sleep(0.5)
        raise TimeoutError(f"no raylet for {self.temp_dir}")

    def stop(self) -> None:
        for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # anything of this node that left its process group (by pid, nothing else)
        left = subprocess.run(["pgrep", "-f", self.temp_dir], capture_output=True, text=True).stdout.split()
        for pid in left:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _alive_nodes() -> int:
    return sum(1 for n in ray.nodes() if n["Alive"])


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.5)


def _wait_port(port: int, timeout: float = 120.0) -> None:
    def open_() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    _wait_for(open_, timeout, f"nothing listens on port {port}")


def test_search_submitted_as_a_ray_job(tmp_path):
    """The README's job command: `ray job submit --working-dir . -- evonorm search --address auto`
    (the job carries the code; the driver must not ship it again as module objects)."""
    dashboard = _free_port()
    head = Node(num_cpus=2, dashboard_port=dashboard)
    try:
        _wait_port(dashboard)
        out = tmp_path / "run"
        done = subprocess.run(
            ["ray", "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".",
             "--", "evonorm", "search", "--address", "auto", "--evaluator", "surrogate", "--budget", "12",
             "--population", "6", "--tournament", "3", "--surrogate-seconds", "0.05", "--out", str(out)],
            cwd=REPO, env=_env(), capture_output=True, text=True, timeout=400)
        log = done.stdout + done.stderr
        assert done.returncode == 0, log[-3000:]
        assert "succeeded" in log and "2 worker(s), ray executor" in log
        from search.store.reader import load_run
        df = load_run(out).candidates
        assert sorted(df["id"]) == list(range(12))
        assert (df["worker"] != "driver").any()
    finally:
        head.stop()


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _lost_node_driver(address: str, raylet: int) -> None:
    """The driver side of the lost-node test, in its own process (a Ray driver with token
    authentication; pytest's process stays out of the cluster). Prints one JSON line after the
    first run, waits for a line on stdin (the node is back), prints one after the second."""
    import io
    import json

    from search.config import build_config
    from search.engine.driver import Driver
    from search.workers.executor import evaluator_spec, make_screen
    from search.engine.modes import get_mode
    from search.workers.ray_executor import RayExecutor
    from search.store.writer import MemoryStore

    def config(budget, seconds):
        return build_config(overrides=dict(evaluator="surrogate", budget=budget, population=6,
                                           tournament=3, surrogate_seconds=seconds))
    spec = evaluator_spec(config(14, 2.0))
    executor = RayExecutor(spec, workers=2, address=address, max_retries=2)
    try:
        _wait_for(lambda: _alive_nodes() == 2, 120, "the second node did not join")
        executor.wait_ready(timeout=180)
        killed = {}

        def kill_second_node(driver, record):
            on_second = [cid for cid, slot in executor.running().items()
                         if _parent(executor.worker_pids()[slot]) == raylet]
            if on_second and not killed and driver.done >= 2:
                os.kill(raylet, signal.SIGKILL)
                killed["candidate"] = on_second[0]

        store, log = MemoryStore(), io.StringIO()
        Driver(config(14, 2.0), get_mode("batch"), store, make_screen(spec), executor, progress=log,
               progress_seconds=0.2, on_record=kill_second_node).run()
        print("RESULT", json.dumps({"killed": killed.get("candidate"), "retries": dict(executor.retries),
                          "ready": executor.workers_ready, "log": log.getvalue(),
                          "records": [{k: r[k] for k in ("id", "status", "reason", "worker")}
                                      for r in store.records]}), flush=True)
        sys.stdin.readline()                               # the test brings the node back
        # a loaded machine (CI trains beside this test) may take long to start a node: its
        # joining is not what is tested, the replacement's placement once it has joined is
        start = time.monotonic()
        _wait_for(lambda: _alive_nodes() == 2, 240, "the node did not rejoin")
        joined = time.monotonic()
        while executor.workers_ready < 2 and time.monotonic() < joined + 240:
            executor.wait(timeout=0.5)
        again = MemoryStore()
        if executor.workers_ready == 2:
            Driver(config(6, 1.0), get_mode("batch"), again, make_screen(spec), executor, progress=None).run()
        print("RESULT", json.dumps({"ready": executor.workers_ready, "state": executor.describe(),
                          "join_s": round(joined - start, 1), "ready_s": round(time.monotonic() - joined, 1),
                          "workers": sorted({r["worker"] for r in again.records if r["worker"] != "driver"})}),
              flush=True)
    finally:
        executor.close()


def _read_result(proc, timeout: float) -> dict:
    """The driver's next RESULT line (Ray writes its own notices to the same stdout)."""
    import json
    import select
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        line = proc.stdout.readline() if ready else ""
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
        if ready and not line:
            break                                           # the driver exited
    raise AssertionError(f"no result from the driver: "
                         f"{proc.stderr.read()[-3000:] if proc.poll() is not None else 'still running'}")


def test_a_lost_node_costs_no_candidate_and_the_run_grows_back():
    """Two one-CPU nodes, two workers; the second node's raylet is killed while its worker
    trains: the run finishes with one worker, every id recorded once, the progress line says
    so; the node comes back and the waiting replacement makes two workers again."""
    head = Node(num_cpus=1)
    second = rejoined = driver = None
    try:
        _wait_port(head.port)
        second = Node(address=head.address, num_cpus=1)
        driver = subprocess.Popen([sys.executable, __file__, head.address, str(second.raylet_pid())],
                                  cwd=REPO, env=_env(), text=True, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = _read_result(driver, 400)
        assert first["killed"] is not None, "no candidate trained on the second node"
        records = first["records"]
        assert sorted(r["id"] for r in records) == list(range(14))          # each id once
        # the one candidate on the dead worker (the one training at the kill, or the next one
        # sent there before Ray saw the node go) was retried once, on the live worker
        assert list(first["retries"].values()) == [1]
        retried = next(r for r in records if str(r["id"]) in first["retries"])
        assert "worker died" not in (retried["reason"] or "") and retried["worker"] != "driver"
        assert first["ready"] == 1 and "training 1 | queued 1 | workers 1/2" in first["log"]

        rejoined = Node(address=head.address, num_cpus=1)               # the node comes back
        driver.stdin.write("back\n")
        driver.stdin.flush()
        second_run = _read_result(driver, 600)
        assert second_run["ready"] == 2 and len(second_run["workers"]) == 2, second_run
        assert driver.wait(timeout=60) == 0
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
            driver.wait()
        for node in (rejoined, second, head):
            if node is not None:
                node.stop()


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    _lost_node_driver(sys.argv[1], int(sys.argv[2]))
