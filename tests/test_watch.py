"""Watching a search while it runs: the live Optuna study (RUN/study.journal)."""
import io
import json
import sys
import threading

import pytest

from search.cli import main
from search.config import build_config
from search.session import Session
from search.store.reader import load_run

FAST = {"evaluator": "surrogate", "executor": "local", "population": 6, "tournament": 2,
        "archs": ["resnet", "mobilenetv2"], "flush_every": 4}


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")


def _study(run_dir):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(run_dir / "study.journal")))
    (name,) = optuna.study.get_all_study_names(storage=storage)
    return optuna.load_study(study_name=name, storage=storage)


def _expected(run_dir):
    """The ids of the records that are trials: ok (with scores) and stopped."""
    from search.analysis.studies import is_trial

    run = load_run(run_dir)
    return sorted(r["id"] for r in run.records() if is_trial(r, run.objectives))


class Pause:
    """A watcher that holds the search at its first flush holding a trial until released."""

    def __init__(self):
        self.reached, self.go, self.rows = threading.Event(), threading.Event(), 0

    def flushed(self, rows):
        self.rows += len(rows)
        if not self.reached.is_set() and any(r["status"] in ("ok", "stopped") for r in rows):
            self.reached.set()
            assert self.go.wait(120)


def test_the_journal_shows_trials_while_the_search_runs(tmp_path):
    import optuna

    session = Session.start(build_config(overrides={**FAST, "budget": 40, "out": str(tmp_path / "run")}))
    pause = Pause()
    session.watch(pause)
    result = {}
    thread = threading.Thread(target=lambda: result.update(n=session.run(quiet=True, stream=io.StringIO())))
    thread.start()
    try:
        assert pause.reached.wait(120)
        study = _study(tmp_path / "run")           # read with optuna's own API, mid-run
        seen = [t.user_attrs["id"] for t in study.trials]
        assert thread.is_alive() and 0 < len(seen) <= pause.rows < 40
        assert study.study_name == "run" and [d.name for d in study.directions] == ["MAXIMIZE"] * 2
    finally:
        pause.go.set()
        thread.join(120)
    assert result["n"] == 40
    study = _study(tmp_path / "run")
    ids = [t.user_attrs["id"] for t in study.trials]
    assert sorted(ids) == _expected(tmp_path / "run") and set(seen) <= set(ids)
    front = load_run(tmp_path / "run").front()["id"].tolist()
    assert sorted(t.user_attrs["id"] for t in study.best_trials) == sorted(front)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(t.user_attrs["formula"] and len(t.values) == 2 for t in complete)


def test_resume_adds_what_the_journal_missed_and_nothing_twice(tmp_path, monkeypatch):
    from search.watch.study import LiveStudy

    run_dir = tmp_path / "run"
    config = build_config(overrides={**FAST, "budget": 24, "out": str(run_dir), "hurdles": True})
    # the journal's appends fail after the first part file: what a crash between the two leaves
    original, calls = LiveStudy.add, []

    def failing(self, rows):
        calls.append(len(rows))
        if len(calls) > 1:
            raise OSError("disk full")
        original(self, rows)

    monkeypatch.setattr(LiveStudy, "add", failing)
    log = io.StringIO()
    assert Session.start(config).run(quiet=True, stream=log) == 24
    monkeypatch.setattr(LiveStudy, "add", original)
    assert "live study: OSError: disk full; trying again" in log.getvalue()
    assert "evonorm resume adds them" in log.getvalue()
    before = [t.user_attrs["id"] for t in _study(run_dir).trials]
    assert 0 < len(before) < len(_expected(run_dir))
    with open(run_dir / "study.journal", "a") as f:     # and an append torn by the crash
        f.write('{"op_code": 4, "worker_id": "x", "study_id": 0, "datetime_start": "20')
    assert Session.resume(run_dir, budget=36).run(quiet=True, stream=io.StringIO()) == 12
    ids = [t.user_attrs["id"] for t in _study(run_dir).trials]
    assert len(ids) == len(set(ids)) and sorted(ids) == _expected(run_dir)
    statuses = set(load_run(run_dir).candidates["status"])
    assert {"ok", "stopped"} <= statuses
    # a complete run resumed adds nothing
    assert Session.resume(run_dir).run(quiet=True, stream=io.StringIO()) == 0
    assert sorted(t.user_attrs["id"] for t in _study(run_dir).trials) == sorted(ids)


def test_no_live_study_writes_no_journal(tmp_path, capsys):
    code = main(["search", "--evaluator", "surrogate", "--executor", "local", "--population", "6",
                 "--tournament", "2", "--budget", "8", "--quiet", "--no-live-study", "--out", str(tmp_path / "r")])
    assert code == 0, capsys.readouterr().err
    assert not (tmp_path / "r" / "study.journal").exists()
    assert json.loads((tmp_path / "r" / "run.json").read_text())["config"]["live_study"] is False
