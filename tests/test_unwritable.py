"""Outputs that cannot be written: one line on stderr, exit 2, nothing half-written, for
every command that writes (search, resume, export, plot, show --graph, retrain, to-optuna)."""
from __future__ import annotations

import contextlib
import os
import subprocess

import pytest

from search.cli import main
from search.store.files import UnwritableError, check_writable_dir, check_writable_file, write_atomic


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def listing(path):
    """Every file under `path` with its size and mtime: what 'nothing written' compares."""
    return {(p, p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")}


@contextlib.contextmanager
def read_only(directory):
    """`directory` made unwritable: chmod for ordinary users, the immutable attribute for
    root (who writes through permission bits)."""
    os.chmod(directory, 0o555)
    immutable = False
    try:
        try:
            check_writable_dir(directory)
        except UnwritableError:
            pass
        else:  # root
            done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True)
            immutable = done.returncode == 0
            if not immutable:
                pytest.skip("no way to make a directory unwritable here (root without chattr)")
        yield directory
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        os.chmod(directory, 0o755)


def assert_refused(code, err):
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("evonorm: error: cannot "), err
    assert "Traceback" not in err


# -- the helper ------------------------------------------------------------------------------------

def test_write_atomic_names_an_unwritable_path():
    # replacing whole or not at all: tests/test_util.py, for this wrapper too
    with pytest.raises(UnwritableError, match="cannot write /proc/evonorm-test"):
        write_atomic("/proc/evonorm-test", b"x")


def test_checks_leave_nothing_behind(tmp_path, a_file):
    check_writable_dir(tmp_path / "new" / "deeper")
    check_writable_file(tmp_path / "file.txt")
    assert sorted(os.listdir(tmp_path)) == ["a-file"]
    for check, path, why in ((check_writable_dir, "/proc/evonorm-x", "cannot create /proc/evonorm-x"),
                             (check_writable_dir, a_file / "run", "not a directory"),
                             (check_writable_file, a_file / "l.py", "not a directory"),
                             (check_writable_file, tmp_path, "is a directory"),
                             (check_writable_file, "/proc/l.py", "cannot write /proc/l.py")):
        with pytest.raises(UnwritableError, match=why):
            check(path)
    (tmp_path / "new").mkdir()
    with read_only(tmp_path / "new") as locked:
        with pytest.raises(UnwritableError, match="cannot write in"):
            check_writable_dir(locked)
        assert os.listdir(locked) == []


# -- every command ---------------------------------------------------------------------------------

SURROGATE = ["--evaluator", "surrogate", "--executor", "local", "--workers", "1", "--population", "2", "--tournament", "2",
             "--quiet"]


@pytest.mark.parametrize("where", ["proc", "below-a-file"])
def test_search_out_unwritable(capsys, tmp_path, a_file, where):
    out = "/proc/evonorm-run" if where == "proc" else a_file / "run"
    before = listing(tmp_path)
    assert_refused(*cli(capsys, "search", "--out", out, "--budget", "4", *SURROGATE)[::2])
    assert listing(tmp_path) == before


def test_resume_into_an_unwritable_run_dir(capsys, tmp_path):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "search", "--out", run, "--budget", "2", *SURROGATE)  # killed at 2 of 4
    assert code == 0, err
    before = listing(run)
    with read_only(run):
        code, _, err = cli(capsys, "resume", run, "--budget", "4")
        assert_refused(code, err)
        assert listing(run) == before


def test_export_plot_show_to_optuna_retrain_unwritable(capsys, tmp_path, a_file, real_run):
    before = listing(real_run)
    for target in ("/proc/evonorm-out", a_file / "out"):
        for argv in (["export", "relu(x)", "-o", f"{target}.py"],
                     ["export", real_run, "0", "-o", f"{target}.py"],
                     ["plot", real_run, "-o", f"{target}.png"],
                     ["show", real_run, "0", "--graph", f"{target}.png"],
                     ["to-optuna", real_run, "--storage", f"{target}.log"],
                     ["retrain", real_run, "--top", "1", "--steps", "1", "-o", f"{target}.parquet"]):
            assert_refused(*cli(capsys, *argv)[::2])
    assert listing(real_run) == before and sorted(os.listdir(tmp_path)) == ["a-file", "run"]


def test_retrain_refuses_a_read_only_run_dir_before_training(capsys, real_run):
    before = listing(real_run)
    with read_only(real_run):
        code, _, err = cli(capsys, "retrain", real_run, "--top", "1", "--steps", "1")
        assert_refused(code, err)
        assert "retrain.parquet" in err
    assert listing(real_run) == before


def test_plot_failure_midway_leaves_no_partial_image(capsys, tmp_path, real_run, monkeypatch):
    from search.analysis import plots as plot
    out = tmp_path / "front.png"
    out.write_bytes(b"the old plot")

    def broken(run, output, dpi=120, fmt=None):
        output.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(plot, "draw", broken)
    assert_refused(*cli(capsys, "plot", real_run, "-o", out)[::2])
    assert out.read_bytes() == b"the old plot" and sorted(os.listdir(tmp_path)) == ["front.png", "run"]
