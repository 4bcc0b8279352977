""".ci/setup picks the Python environment the README's commands run through (`--which`, which
installs nothing): an active virtual environment as it is, otherwise the project's .venv, which
a stock Debian/Ubuntu Python (externally managed: its pip refuses to install) needs. The install
itself runs in CI (.ci/run: the README's test command with only the system directories on PATH)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SETUP = Path(__file__).resolve().parents[1] / ".ci" / "setup"
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture
def checkout(tmp_path):
    """A directory holding only .ci/setup: where it would put .venv (nothing else is read)."""
    (tmp_path / ".ci").mkdir()
    shutil.copy(SETUP, tmp_path / ".ci" / "setup")
    return tmp_path


def which(checkout, **env) -> subprocess.CompletedProcess:
    env = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run(["bash", str(checkout / ".ci" / "setup"), "--which"], env=env,
                          capture_output=True, text=True, timeout=60)


def system_python_is_externally_managed() -> bool:
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    probe = ("import os, sysconfig; "
             "print(os.path.isfile(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))")
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True).stdout.strip() == "True"


@pytest.mark.skipif(not system_python_is_externally_managed(),
                    reason="needs a Debian/Ubuntu system Python at /usr/bin/python3")
def test_stock_debian_python_gets_the_project_venv(checkout):
    done = which(checkout, PATH=SYSTEM_PATH, VIRTUAL_ENV=None, CONDA_PREFIX=None, PYTHON=None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ".venv"
    assert not (checkout / ".venv").exists()          # --which changes nothing


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    return path


def test_an_active_venv_is_used_as_it_is(checkout, tmp_path):
    env_dir = _venv(tmp_path / "userenv")
    done = which(checkout, PATH=f"{env_dir}/bin:{os.environ['PATH']}", VIRTUAL_ENV=str(env_dir), PYTHON=None)
    assert done.returncode == 0, done.stderr
    assert os.path.realpath(done.stdout.strip()) == os.path.realpath(env_dir)


def test_an_earlier_project_venv_is_kept_and_the_active_one_named(checkout, tmp_path):
    (checkout / ".venv").mkdir()
    env_dir = _venv(tmp_path / "userenv")
    done = which(checkout, PATH=f"{env_dir}/bin:{os.environ['PATH']}", VIRTUAL_ENV=str(env_dir), PYTHON=None)
    assert done.returncode == 0 and done.stdout.strip() == ".venv"
    assert str(env_dir) in done.stderr and "remove .venv" in done.stderr


def test_a_missing_python_is_one_line(checkout):
    done = which(checkout, PYTHON="/nonexistent/python3")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "setup: no /nonexistent/python3" in done.stderr


# -- .ci/run: every step must stop CI when it fails ----------------------------------------------

RUN = SETUP.with_name("run")


def ci_run(tmp_path, setup_status: int, pytest_statuses: tuple[int, ...]) -> tuple[int, list[str]]:
    """.ci/run in a checkout whose .ci/setup exits with `setup_status` and whose
    .venv/bin/python answers its n-th call with pytest_statuses[n]; (exit status, the calls)."""
    (tmp_path / ".ci").mkdir(parents=True)
    shutil.copy(RUN, tmp_path / ".ci" / "run")
    (tmp_path / ".ci" / "setup").write_text(f"exit {setup_status}\n")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    calls = tmp_path / "calls"
    statuses = " ".join(map(str, pytest_statuses))
    (bin_dir / "python").write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        f'n=$(wc -l < {calls}); set -- {statuses}; shift $((n - 1)); exit "$1"\n')
    (bin_dir / "python").chmod(0o755)
    done = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=60)
    return done.returncode, calls.read_text().splitlines() if calls.exists() else []


def test_ci_fails_and_runs_no_test_when_setup_fails(tmp_path):
    status, calls = ci_run(tmp_path, setup_status=3, pytest_statuses=(0, 0, 0))
    assert status == 3 and calls == []


def test_ci_fails_when_the_fast_suite_fails_and_skips_the_slow_one(tmp_path):
    status, calls = ci_run(tmp_path, setup_status=0, pytest_statuses=(1, 0, 0))
    assert status == 1 and calls == ["-m pytest"]


def test_ci_fails_when_a_module_is_under_the_coverage_floor_and_skips_the_slow_suite(tmp_path):
    status, calls = ci_run(tmp_path, setup_status=0, pytest_statuses=(0, 1, 0))
    assert status == 1 and calls == ["-m pytest", ".ci/coverage_floor.py 75"]


def test_ci_passes_both_suites_and_fails_on_a_slow_failure(tmp_path):
    status, calls = ci_run(tmp_path / "a", setup_status=0, pytest_statuses=(0, 0, 0))
    assert status == 0 and calls == ["-m pytest", ".ci/coverage_floor.py 75", "-m pytest -m slow -n 2 --dist loadgroup"]
    assert ci_run(tmp_path / "b", setup_status=0, pytest_statuses=(0, 0, 5))[0] == 0   # none selected
    assert ci_run(tmp_path / "c", setup_status=0, pytest_statuses=(0, 0, 1))[0] == 1


def test_the_coverage_floor_names_the_modules_below_it(tmp_path):
    import coverage
    import importlib.util

    (tmp_path / "half.py").write_text("def used():\n    return 1\n\n\ndef unused():\n    a = 1\n    b = 2\n    return a + b\n")
    (tmp_path / "full.py").write_text("X = 1\n")
    cov = coverage.Coverage(data_file=str(tmp_path / ".coverage"), include=[str(tmp_path / "*")])
    sys.path.insert(0, str(tmp_path))
    try:
        cov.start()
        import full  # noqa: F401
        import half
        half.used()
        cov.stop()
        cov.save()
    finally:
        sys.path.remove(str(tmp_path))
    spec = importlib.util.spec_from_file_location("coverage_floor", SETUP.with_name("coverage_floor.py"))
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    low = floor.below(75, str(tmp_path / ".coverage"))
    assert [(Path(p).name, round(v)) for p, v in low] == [("half.py", 50)]   # 3 of 6 statements
    assert floor.below(50, str(tmp_path / ".coverage")) == []
