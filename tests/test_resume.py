"""Killed drivers: SIGKILL mid-run then `evonorm resume`; Ctrl-C; half-written part files."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from search.cli import main
from search.store.reader import load_run

SEARCH = [sys.executable, "-m", "search.cli", "search", "--evaluator", "surrogate", "--executor", "local",
          "--population", "10", "--tournament", "3", "--quiet"]


def _wait_for_parts(run_dir: Path, n: int, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parts = list((run_dir / "candidates").glob("part-*.parquet"))
        if len(parts) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no part files appeared")


def _frame(run_dir):
    return load_run(run_dir).candidates.set_index("id").sort_index()


def test_sigkill_then_resume_gives_exactly_n_records(tmp_path):
    run_dir = tmp_path / "run"
    budget = 120
    proc = subprocess.Popen(SEARCH + ["--budget", str(budget), "--out", str(run_dir), "--flush-every", "5",
                                      "--surrogate-seconds", "0.02"], stderr=subprocess.PIPE)
    _wait_for_parts(run_dir, 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _frame(run_dir)
    assert 0 < len(before) < budget
    # what a kill in the middle of writing a part leaves behind: a hidden temporary file
    good = sorted((run_dir / "candidates").glob("part-*.parquet"))[0].read_bytes()
    (run_dir / "candidates" / ".part-000999.12345.tmp").write_bytes(good[: len(good) // 2])
    assert len(_frame(run_dir)) == len(before)

    done = subprocess.run([sys.executable, "-m", "search.cli", "resume", str(run_dir), "--quiet"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    after = _frame(run_dir)
    assert len(after) == budget
    assert after.index.is_unique
    assert after.index.min() == 0
    # every record from before the kill is intact
    common = before.columns.tolist()
    assert after.loc[before.index, common].equals(before[common])
    new = after.drop(before.index)
    assert new.index.min() > before.index.max()
    # the resumed run carries on exactly as if never killed: id by id, an uninterrupted run's
    # records (what was lost with the kill is proposed again from the same (seed, id) RNG)
    full_dir = tmp_path / "full"
    assert main(SEARCH[3:] + ["--budget", str(budget), "--out", str(full_dir)]) == 0
    full = _frame(full_dir)
    compared = ["parent_id", "mutation", "graph_hash", "status", "equivalent_to", "steps_trained",
                "acc_resnet", "acc_mobilenetv2", "acc_efficientnet"]
    assert list(full.index) == list(after.index)
    assert after[compared].astype(object).fillna(-1).equals(full[compared].astype(object).fillna(-1))


@pytest.mark.parametrize("executor,stop", [("local", signal.SIGINT), ("ray", signal.SIGTERM)])
def test_ctrl_c_or_kill_flushes_and_exits_130(tmp_path, executor, stop):
    """Nothing is flushed before Ctrl-C or `kill` (huge flush thresholds); after it, the records
    are there. With Ray, SIGTERM must reach our handler, not the one ray.init installs."""
    run_dir = tmp_path / "run"
    cmd = [c for c in SEARCH if c != "--quiet"]
    cmd[cmd.index("local")] = executor
    if executor == "ray":
        cmd += ["--workers", "1"]
    proc = subprocess.Popen(cmd + ["--budget", "100000", "--out", str(run_dir), "--flush-every", "100000",
                                   "--flush-seconds", "100000", "--surrogate-seconds", "0.01"],
                            stderr=subprocess.PIPE, text=True,
                            # Ctrl-C as at a terminal, even when the tests run in a background job
                            # (which starts every child with SIGINT ignored)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stderr:          # progress lines: "[done/budget] ..."
        if line.startswith("[") and int(line[1:line.index("/")]) >= 10:
            break
    assert not list((run_dir / "candidates").glob("part-*.parquet"))
    proc.send_signal(stop)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume" in err
    frame = _frame(run_dir)
    assert len(frame) >= 10 and frame.index.is_unique
    assert not list((run_dir / "candidates").glob(".*.tmp"))


def test_resume_of_a_complete_run_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    subprocess.run(SEARCH + ["--budget", "30", "--out", str(run_dir)], check=True, timeout=120)
    parts = sorted(os.listdir(run_dir / "candidates"))
    done = subprocess.run([sys.executable, "-m", "search.cli", "resume", str(run_dir)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "complete" in done.stderr
    assert sorted(os.listdir(run_dir / "candidates")) == parts
    assert len(_frame(run_dir)) == 30
