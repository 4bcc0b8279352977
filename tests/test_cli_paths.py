"""The command-line paths users take every day: `evonorm check` as the README shows it, a
search stopped with Ctrl-C and resumed with a raised budget, and the bad inputs of resume
and of the Ray options (one line on stderr, exit 2, nothing written)."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.cli import main
from search.store.reader import load_run

ROOT = Path(__file__).resolve().parents[1]
README_HASH = "cbc63aab668e75fd"
ACCS = ["acc_resnet", "acc_mobilenetv2", "acc_efficientnet"]
COMPARED = ["parent_id", "mutation", "graph_hash", "status", "equivalent_to", "steps_trained", *ACCS]
SURROGATE = ["--evaluator", "surrogate", "--executor", "local", "--population", "8", "--tournament", "3",
             "--flush-every", "5", "--quiet"]


def _cli(argv, capsys):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line(err: str) -> bool:
    return err.count("\n") == 1 and err.startswith("evonorm: error: ")


def _listing(run_dir: Path) -> dict:
    """Every file under the run directory with its size and mtime: 'nothing written'."""
    return {str(p.relative_to(run_dir)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


# -- evonorm check ----------------------------------------------------------------------------------

def _readme_check_example():
    """The README's `$ evonorm check "..."` block: the formula and the lines it shows."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r'\$ evonorm check "([^"]+)"\n(.*?)```', text, re.S)
    assert match, "README.md has no evonorm check example"
    shown = [line for line in match.group(2).splitlines() if line.strip() and line.strip() != "..."]
    return match.group(1), shown


def test_check_prints_what_the_readme_shows(capsys):
    formula, shown = _readme_check_example()
    assert f"hash             {README_HASH}" in shown
    rc, out, err = _cli(["check", formula], capsys)
    assert rc == 0, err
    lines = out.splitlines()
    for line in shown:
        assert line in lines, (line, out)
    assert any(line.startswith("output (train)") and "NON-FINITE" not in line for line in lines)


@pytest.mark.parametrize("formula", ["x +", "relu(x, x)", "x.real", "__import__('os')", "x ** 1.5",
                                     "foo(x)", "group_std(x, groups=0)", ""])
def test_check_of_a_bad_formula_is_one_line_and_exit_2(capsys, formula):
    rc, out, err = _cli(["check", formula], capsys)
    assert rc == 2 and out == ""
    assert _one_line(err) and "bad formula" in err, err


# -- Ctrl-C, then resume with a raised budget -----------------------------------------------------------

def _frame(run_dir):
    return load_run(run_dir).candidates.set_index("id").sort_index()


def _same_records(a, b):
    """Id by id, the fields a deterministic search fixes (not times, workers or dates)."""
    assert list(a.index) == list(b.index)
    left, right = a[COMPARED].astype(object), b[COMPARED].astype(object)
    left, right = left.where(left.notna(), None), right.where(right.notna(), None)
    for cid in a.index:
        assert left.loc[cid].tolist() == right.loc[cid].tolist(), (cid, left.loc[cid], right.loc[cid])


def _wait_for_parts(run_dir: Path, n: int, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list((run_dir / "candidates").glob("part-*.parquet"))) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no part files appeared")


def test_ctrl_c_then_resume_with_a_raised_budget_equals_an_uninterrupted_run(tmp_path, capsys):
    stopped, full = tmp_path / "stopped", tmp_path / "full"
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "search", *SURROGATE, "--budget", "40", "--out", str(stopped),
         "--surrogate-seconds", "0.05"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # Ctrl-C as at a terminal, even when the tests run in a background job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_parts(stopped, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    before = _frame(stopped)
    assert 10 <= len(before) < 40
    rc, out, err = _cli(["resume", stopped, "--budget", 60, "--quiet"], capsys)
    assert rc == 0, err
    assert out.strip() == str(stopped)
    rc, _, err = _cli(["search", *SURROGATE, "--budget", 60, "--out", full], capsys)
    assert rc == 0, err
    after = _frame(stopped)
    assert len(after) == 60
    _same_records(after, _frame(full))
    _same_records(after.loc[before.index], before)          # nothing recorded was changed


@pytest.fixture
def finished_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc, _, err = _cli(["search", *SURROGATE, "--budget", 30, "--out", run_dir], capsys)
    assert rc == 0, err
    return run_dir


def test_resume_with_a_lowered_budget_is_refused(finished_run, capsys):
    before = _listing(finished_run)
    rc, out, err = _cli(["resume", finished_run, "--budget", 10], capsys)
    assert rc == 2 and out == ""
    assert _one_line(err) and "below" in err, err
    assert _listing(finished_run) == before


def test_resume_with_a_raised_budget_continues_the_run(finished_run, capsys):
    before = _frame(finished_run)
    rc, _, err = _cli(["resume", finished_run, "--budget", 40, "--quiet"], capsys)
    assert rc == 0, err
    after = _frame(finished_run)
    assert list(after.index) == list(range(40))
    _same_records(after.loc[before.index], before)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_resume_with_a_corrupt_part_file_is_refused(finished_run, capsys, damage):
    part = sorted((finished_run / "candidates").glob("part-*.parquet"))[1]
    data = part.read_bytes()
    part.write_bytes({"garbage": b"not parquet at all" * 10, "truncated": data[: len(data) // 2],
                      "empty": b""}[damage])
    before = _listing(finished_run)
    rc, out, err = _cli(["resume", finished_run, "--budget", 40], capsys)
    assert rc == 2 and out == ""
    assert _one_line(err) and part.name in err, err
    assert _listing(finished_run) == before


# -- Ray options ------------------------------------------------------------------------------------------

def test_unreachable_address_is_one_line_and_exit_2(tmp_path):
    out = tmp_path / "run"
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "search.cli", "search", "--address", "127.0.0.1:1",
                           "--evaluator", "surrogate", "--budget", "5", "--out", str(out)],
                          capture_output=True, text=True, timeout=90)
    assert done.returncode == 2, done.stderr
    assert _one_line(done.stderr), done.stderr
    assert not out.exists()
    assert time.monotonic() - start < 60
    assert "127.0.0.1:1" in done.stderr


@pytest.fixture(scope="module")
def cpu_only_ray():
    """A local Ray cluster with no GPU, as the CLI finds it when one is running."""
    import ray
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=1, num_gpus=0, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    if started:
        ray.shutdown()


def test_gpus_per_worker_on_a_cluster_without_gpus_is_one_line_and_exit_2(cpu_only_ray, tmp_path, capsys):
    assert cpu_only_ray.cluster_resources().get("GPU", 0) == 0
    out = tmp_path / "run"
    rc, stdout, err = _cli(["search", "--executor", "ray", "--gpus-per-worker", 1, "--evaluator", "surrogate",
                            "--budget", 5, "--out", out], capsys)
    assert rc == 2 and stdout == ""
    assert _one_line(err) and "GPU" in err, err
    assert not out.exists()
