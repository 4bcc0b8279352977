"""The Python face of a run: Session.start / run / stop / Session.resume, and its errors."""
import io
import subprocess
import sys
import threading
import time

import pytest

from search.config import build_config
from search.errors import ConfigError, EvonormError, RunDirError, UsageError
from search.store.reader import load_run
from search.session import Session

FAST = {"evaluator": "surrogate", "executor": "local", "population": 6, "tournament": 2,
        "archs": ["resnet", "mobilenetv2"], "hurdles": False, "flush_every": 5}


def test_a_stopped_session_resumes_to_its_budget(tmp_path):
    """stop() from another thread ends run() early with every record flushed; a resumed
    session carries on to the budget, and to a raised one."""
    config = build_config(overrides={**FAST, "budget": 40, "surrogate_seconds": 0.05,
                                     "out": str(tmp_path / "run")})
    session = Session.start(config)
    assert not (tmp_path / "run").exists()          # start checks; run writes

    def stop_after_five():
        while session.driver is None or session.driver.done < 5:
            time.sleep(0.01)
        session.stop()

    watcher = threading.Thread(target=stop_after_five, daemon=True)
    watcher.start()
    log = io.StringIO()
    written = session.run(quiet=True, stream=log)
    watcher.join(timeout=5)
    assert 5 <= written < 40 and log.getvalue().startswith("search: ")
    before = load_run(session.dir).candidates
    assert len(before) == written
    assert Session.resume(session.dir).run(quiet=True, stream=io.StringIO()) == 40 - written
    assert Session.resume(session.dir, budget=47).run(quiet=True, stream=io.StringIO()) == 7
    after = load_run(session.dir).candidates
    assert len(after) == 47 and after["id"].is_unique
    assert after.set_index("id").loc[before["id"], "graph_hash"].tolist() == before["graph_hash"].tolist()
    done = io.StringIO()
    assert Session.resume(session.dir).run(stream=done) == 0 and "complete" in done.getvalue()


def test_bad_input_raises_the_library_errors_not_the_clis(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    cases = [
        (lambda: Session.start(build_config(overrides={**FAST, "out": str(tmp_path / "full")})),
         RunDirError, "not empty"),
        (lambda: Session.start(build_config(overrides={**FAST, "seed_formulas": ["x +"]})),
         ConfigError, "bad seed formula"),
        (lambda: Session.resume(tmp_path / "missing"), RunDirError, "does not exist"),
        (lambda: Session.resume(tmp_path / "full"), RunDirError, "no run.json"),
        (lambda: Session.resume(tmp_path / "full", dataset="cifar10"), ConfigError, "cannot change dataset"),
    ]
    for call, kind, text in cases:
        with pytest.raises(kind, match=text) as err:
            call()
        assert isinstance(err.value, EvonormError) and not isinstance(err.value, UsageError)
    assert not (tmp_path / "missing").exists()


def test_the_library_does_not_import_the_cli():
    code = "import sys, search.session; sys.exit('search.cli' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
