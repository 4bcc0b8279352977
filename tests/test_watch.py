"""Watching a search while it runs: the live Optuna study (RUN/study.journal) and `--mlflow`."""
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


# -- MLflow ----------------------------------------------------------------------------------------


def test_mlflow_flag_parses(tmp_path):
    from search.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["search", "--mlflow"]).mlflow == "run"
    assert parser.parse_args(["search", "--mlflow", "http://host:5000", "--budget", "3"]).mlflow == "http://host:5000"
    assert parser.parse_args(["search", "--mlflow", "--budget", "3"]).mlflow == "run"
    assert parser.parse_args(["search"]).mlflow is None


def test_mlflow_missing_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)      # `import mlflow` raises ImportError
    out = tmp_path / "r"
    code = main(["search", "--evaluator", "surrogate", "--executor", "local", "--mlflow", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pip install 'evonorm[mlflow]'" in err
    assert not out.exists()


def test_mlflow_unusable_uri_is_exit_2_and_writes_nothing(tmp_path, capsys):
    pytest.importorskip("mlflow")
    out = tmp_path / "r"
    code = main(["search", "--evaluator", "surrogate", "--executor", "local", "--mlflow", "bogus://nowhere",
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--mlflow bogus://nowhere: cannot log there" in err
    assert not out.exists()


def _children(client, parent):
    from mlflow.entities import ViewType

    runs = client.search_runs([client.get_run(parent).info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent}'",
                              run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)
    return {int(r.data.tags["evonorm.id"]): r for r in runs}


def test_mlflow_logs_the_run_and_each_candidate_and_resumes_into_the_same_parent(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    config = build_config(overrides={**FAST, "budget": 16, "out": str(run_dir), "mlflow": "run"})
    assert Session.start(config).run(quiet=True, stream=io.StringIO()) == 16
    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    parent = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["budget"] == "16" and run.data.params["evaluator"] == "surrogate"
    assert run.data.metrics["records"] == 16
    children = _children(client, parent)
    records = {r["id"]: r for r in load_run(run_dir).records()}
    assert sorted(children) == sorted(records)
    for cid, child in children.items():
        rec = records[cid]
        assert child.data.tags["status"] == rec["status"]
        assert child.data.params["formula"] == rec["formula"]
        assert child.data.params["graph_hash"] == rec["graph_hash"]
        assert child.data.params.get("parent_id") == (None if rec["parent_id"] is None else str(rec["parent_id"]))
        if rec["status"] == "ok":
            assert child.data.metrics["acc_resnet"] == pytest.approx(rec["acc_resnet"])
            assert child.data.metrics["steps_trained"] == rec["steps_trained"]
            assert child.info.status == "FINISHED"

    # a crash before the last two were logged, one of them half-way (left RUNNING)
    last = sorted(children)[-2:]
    for cid in last:
        client.delete_run(children[cid].info.run_id)
    client.create_run(run.info.experiment_id, tags={"mlflow.parentRunId": parent, "evonorm.id": str(last[0])})
    assert Session.resume(run_dir, budget=24).run(quiet=True, stream=io.StringIO()) == 8
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == parent
    children = _children(client, parent)
    assert sorted(children) == sorted(r["id"] for r in load_run(run_dir).records())
    assert all(c.info.status != "RUNNING" for c in children.values())
    run = client.get_run(parent)
    assert run.info.status == "FINISHED" and run.data.metrics["records"] == 24
    assert len(client.search_runs([run.info.experiment_id], filter_string="tags.`evonorm.run_dir` != ''")) == 1
