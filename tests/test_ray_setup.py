"""The parts of the Ray executor that decide how a driver joins a cluster and what ships to
its workers, and the actor's body run in this process: no Ray started (tests/test_ray_executor.py
and test_ray_cluster.py run the real thing)."""
import json
import os
import socket

import pytest
import torch

from primitives import parse
from search.workers import ray_executor
from search.workers.ray_executor import _check_reachable, _job_runtime_env, _Worker, code_runtime_env, init_ray

from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR as JOB_ENV  # noqa: E402
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(ray_executor.__file__)))   # .../search
REPO = os.path.dirname(ROOT)


@pytest.fixture
def job(monkeypatch):
    """Sets the job config the Ray job supervisor would hand the driver."""
    def set_runtime_env(runtime_env, raw=None):
        monkeypatch.setenv(JOB_ENV, raw if raw is not None else json.dumps({"runtime_env": runtime_env}))
    monkeypatch.delenv(JOB_ENV, raising=False)
    return set_runtime_env


def test_outside_a_job_there_is_no_job_runtime_env(job):
    assert _job_runtime_env() is None


def test_a_job_runtime_env_is_read_and_a_broken_one_is_empty(job):
    job({"working_dir": "/tmp/x"})
    assert _job_runtime_env() == {"working_dir": "/tmp/x"}
    job(None, raw="{not json")
    assert _job_runtime_env() == {}


def test_the_three_packages_ship_as_directories_outside_a_job(job):
    dirs = code_runtime_env()["py_modules"]
    assert [os.path.basename(d) for d in dirs] == ["primitives", "evaluators", "search"]
    assert all(os.path.isfile(os.path.join(d, "__init__.py")) for d in dirs)


def test_a_job_that_carries_the_code_ships_nothing_more(job, monkeypatch, tmp_path):
    job({"py_modules": ["/elsewhere/pkg"]})
    assert code_runtime_env() is None                   # its own py_modules: ours would conflict
    job({"working_dir": "."})
    monkeypatch.chdir(REPO)
    assert code_runtime_env() is None                   # the working dir is this checkout
    monkeypatch.chdir(tmp_path)
    assert code_runtime_env()["py_modules"]             # a working dir without our packages


def test_an_address_nothing_answers_at_is_an_error_at_once():
    with socket.socket() as s:                          # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"nothing answers at 127.0.0.1:{port}"):
        _check_reachable(f"127.0.0.1:{port}", timeout=2)
    with pytest.raises(ConnectionError):
        _check_reachable(f"ray://127.0.0.1:{port}", timeout=2)
    assert _check_reachable("auto") is None             # Ray resolves it


def test_init_ray_checks_the_address_before_ray_tries_for_minutes(monkeypatch):
    import ray
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("ray.init called for an unreachable address"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ConnectionError):
        init_ray(f"127.0.0.1:{port}")
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    assert init_ray("anything") is False                 # joined already: nothing started


def test_the_actor_body_trains_with_one_thread_and_names_itself():
    before = torch.get_num_threads()
    try:
        worker = _Worker({"kind": "surrogate", "archs": ["resnet", "vit"], "surrogate_seconds": 0.0,
                          "gpu": False, "threads": 1})
        assert torch.get_num_threads() == 1
        assert worker.pid() == worker.ready() == os.getpid()
        record, name = worker.train(parse("x * gamma + beta").to_json())
        assert name == f"{socket.gethostname()}:{os.getpid()}"
        assert record["status"] == "ok" and {"acc_resnet", "acc_vit"} <= set(record)
        bad, _ = worker.train("{not a graph")
        assert bad["status"] == "failed" and bad["reason"]
    finally:
        torch.set_num_threads(before)
