"""Claims that survive a skeptic (issue #29): results tied to the trainer that made them, rates
not clipped by their range, paired comparisons, auditable tuning, resume across a widening."""
import json
import math
from datetime import datetime, timezone
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

import evaluators.trainer
from evaluators.trainer import TRAINER_VERSION
from primitives import parse
from search.cli import main
from search.store.writer import RunStore

FRONT = ["x * sigmoid(x * v1) / layer_std(x) * gamma + beta", "tanh(x - instance_mean(x)) * gamma + beta"]
FAST = ["--top", "1", "--no-baselines", "--seeds", "2", "--archs", "resnet", "--no-held-out"]


def _run(path, trainer=None):
    info = {"config": {"dataset": "synthetic", "archs": ["resnet"], "steps": 10}, "seed": 0,
            "archs": ["resnet"], "objectives": [{"column": "acc_resnet", "goal": "max"}]}
    if trainer is not None:
        info["trainer"] = trainer
    with RunStore.create(path, info) as store:
        for i, formula in enumerate(FRONT):
            g = parse(formula)
            store.append({"id": i, "formula": str(g), "graph": g.to_json(), "graph_hash": g.hash, "status": "ok",
                          "acc_resnet": [0.9, 0.8][i], "params_per_channel": g.params_per_channel,
                          "uses_batch_stats": g.uses_batch_stats, "poly_degree": g.poly_degree, "seconds": 1.0,
                          "worker": "w", "created_at": datetime.now(timezone.utc)})
    return path


@pytest.fixture
def run_dir(tmp_path):
    return _run(tmp_path / "run", {"version": TRAINER_VERSION})


def _recorder(calls, val=lambda config: 0.5, test=lambda arch, config: 0.5):
    def fake(arch, factory, dataset, config, device, split="val", **kwargs):
        calls.append({"arch": arch, "split": split, "lr": config.lr, "seed": config.seed})
        score = val(config) if split == "val" else test(arch, config)
        return SimpleNamespace(accuracy=score, reason=None, ok=True, note=None)
    return fake


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.startswith("evonorm: error:") and err.count("\n") == 1, err
    for word in words:
        assert word in err, err
    return err


# -- 1. results tied to their code ----------------------------------------------------------------

def test_retrain_refuses_a_run_from_before_versioning_unless_allowed_and_then_records_it(tmp_path, capsys,
                                                                                       monkeypatch):
    path = _run(tmp_path / "old")                       # run.json without "trainer"
    monkeypatch.setattr(evaluators.trainer, "build_and_train", _recorder([]))
    assert main(["retrain", str(path), *FAST, "--trials", "1"]) == 2
    _one_line_error(capsys, "before versioning", f"trainer {TRAINER_VERSION}", "--allow-trainer-change")
    assert sorted(p.name for p in path.iterdir()) == ["candidates", "front.parquet", "run.json"]
    assert main(["retrain", str(path), *FAST, "--trials", "1", "--allow-trainer-change"]) == 0
    table = pq.read_table(path / "retrain.parquet")
    meta = json.loads(table.schema.metadata[b"evonorm"])
    assert meta["trainer"]["version"] == TRAINER_VERSION and meta["run_trainer"] is None
    assert set(table.column("trainer_version").to_pylist()) == {TRAINER_VERSION}


def test_retrain_refuses_a_journal_of_another_trainer_and_says_which_rows_came_from_which(run_dir, capsys,
                                                                                        monkeypatch):
    """A stopped retrain's journal written by trainer V: a retrain by trainer V+1 is refused;
    allowed, it replays V's training (row trainer_version V), trains the rest as V+1 and the
    table's metadata holds both journal headers."""
    from search.store.journal import Journal, key

    calls = []
    monkeypatch.setattr(evaluators.trainer, "build_and_train", _recorder(calls))
    journal = Journal(run_dir / "retrain.parquet.journal")
    journal.begin({"version": TRAINER_VERSION})
    # one trial (the warm start, lr 0.1): the test training of seed 1 at lr 0.1
    done = dict(formula=str(parse(FRONT[0])), arch="resnet", lr=0.1, seed=1, split="test", steps=20,
                batch_size=128, dataset="synthetic", device="cpu")
    journal.add(key(**done), {"accuracy": 0.77, "reason": None, "seconds": 1.0})
    monkeypatch.setattr(evaluators.trainer, "TRAINER_VERSION", TRAINER_VERSION + 1)
    argv = ["retrain", str(run_dir), *FAST, "--trials", "1", "--steps", "20"]
    assert main(argv) == 2                                       # the run itself is trainer V's
    _one_line_error(capsys, "run.json", f"trainer {TRAINER_VERSION} ", f"trainer {TRAINER_VERSION + 1}")
    info = json.loads((run_dir / "run.json").read_text())
    info["trainer"] = {"version": TRAINER_VERSION + 1}
    (run_dir / "run.json").write_text(json.dumps(info))
    assert main(argv) == 2                                       # its stopped retrain's journal is too
    _one_line_error(capsys, "retrain.parquet.journal", f"trainer {TRAINER_VERSION} ",
                    f"trainer {TRAINER_VERSION + 1}", "--allow-trainer-change")
    assert not calls
    assert main(argv + ["--allow-trainer-change"]) == 0
    assert len(calls) == 1 + 1                                   # the val trial and seed 2; seed 1 replayed
    table = pq.read_table(run_dir / "retrain.parquet")
    rows = table.to_pylist()
    assert [(r["seed"], r["test_acc"], r["trainer_version"]) for r in rows] == [
        (1, 0.77, TRAINER_VERSION), (2, 0.5, TRAINER_VERSION + 1)]
    headers = json.loads(table.schema.metadata[b"evonorm"])["journal_trainers"]
    assert [(h["trainer"]["version"], h["from_entry"]) for h in headers] == [(TRAINER_VERSION, 0),
                                                                            (TRAINER_VERSION + 1, 1)]


def test_resume_refuses_a_training_run_of_another_trainer_unless_allowed_and_records_the_change(tmp_path,
                                                                                             capsys):
    import io

    from search.config import build_config
    from search.errors import TrainerChangeError
    from search.session import Session

    config = build_config(overrides={"evaluator": "surrogate", "executor": "local", "population": 6,
                                     "tournament": 2, "archs": ["resnet"], "hurdles": False, "budget": 8,
                                     "out": str(tmp_path / "run")})
    Session.start(config).run(quiet=True, stream=io.StringIO())
    info_path = tmp_path / "run" / "run.json"
    info = json.loads(info_path.read_text())
    assert info["trainer"]["version"] == TRAINER_VERSION
    assert Session.resume(tmp_path / "run").run(quiet=True, stream=io.StringIO()) == 0   # same trainer
    info["config"]["evaluator"] = "train"        # a run whose numbers a trainer made ...
    del info["trainer"]                          # ... before versioning
    info_path.write_text(json.dumps(info))
    with pytest.raises(TrainerChangeError, match="before versioning"):
        Session.resume(tmp_path / "run")
    assert main(["resume", str(tmp_path / "run")]) == 2
    _one_line_error(capsys, "before versioning", "--allow-trainer-change")
    assert main(["resume", str(tmp_path / "run"), "--allow-trainer-change"]) == 0
    changed = json.loads(info_path.read_text())
    assert "trainer" not in changed                                      # the old record stays as it was
    [change] = changed["trainer_changes"]
    assert change["from_id"] == 8 and change["previous_version"] is None
    assert change["trainer"]["version"] == TRAINER_VERSION
    assert main(["resume", str(tmp_path / "run")]) == 0                  # now recorded: no flag needed


# -- 2. rates that are not clipped -----------------------------------------------------------------

def _peak(optimum):
    return lambda lr: -(math.log(lr) - math.log(optimum)) ** 2


@pytest.mark.parametrize("optimum", [1.5, 0.006])
def test_tune_lr_widens_until_an_optimum_beyond_the_first_range_is_found(optimum):
    from search.analysis.retrain import tune_lr

    tuned = tune_lr(_peak(optimum), 0.02, 0.5, 12, seed=0, warm=0.1)
    assert tuned.widenings >= 1 and tuned.edge is None
    assert not 0.02 <= tuned.lr <= 0.5 and tuned.low <= optimum <= tuned.high
    # within a tenth of the first range's width on the log scale
    assert abs(math.log(tuned.lr / optimum)) <= 0.1 * math.log(0.5 / 0.02)
    assert tuned.trials > 12


def test_tune_lr_does_not_widen_an_optimum_inside_and_stops_at_its_cap():
    from search.analysis.retrain import MAX_WIDENINGS, STARTUP_TRIALS, tune_lr

    inside = tune_lr(_peak(0.1), 0.02, 0.5, 12, seed=0, warm=0.1)
    assert (inside.widenings, inside.edge, inside.low, inside.high, inside.trials) == (0, None, 0.02, 0.5, 12)
    far = tune_lr(_peak(1000.0), 0.02, 0.5, 12, seed=0)
    assert far.widenings == MAX_WIDENINGS and far.edge == "high" and far.high == 0.5 * 4 ** MAX_WIDENINGS
    # the seeded start-up is common to every objective: the same first rates for every layer
    seen = {}
    for name, optimum in (("a", 0.03), ("b", 0.4)):
        rates = []
        tune_lr(lambda lr: rates.append(lr) or _peak(optimum)(lr), 0.02, 0.5, 8, seed=0, warm=0.1)
        seen[name] = rates[:STARTUP_TRIALS]
    assert seen["a"] == seen["b"] and seen["a"][0] == 0.1


# -- 3. paired comparisons -------------------------------------------------------------------------

def test_the_reports_paired_interval_matches_a_hand_computation():
    from search.analysis.report import report

    mine = [0.85, 0.86, 0.84, 0.87, 0.85]
    ref = [0.84, 0.845, 0.835, 0.85, 0.842]
    d = [a - b for a, b in zip(mine, ref)]            # 0.010 0.015 0.005 0.020 0.008
    mean = sum(d) / 5
    half = 2.7764451051977987 * math.sqrt(sum((x - mean) ** 2 for x in d) / 4) / math.sqrt(5)
    rows = [{"layer": layer, "arch": "resnet", "held_out": False, "seed": seed, "lr": 0.1, "formula": layer,
             "test_acc": acc, "transfer_gap": None}
            for layer, accs in (("#1", mine), ("bn-relu", ref)) for seed, acc in enumerate(accs, 1)]
    text = report(rows)
    cell = f"{100 * mean:+.2f} [{100 * (mean - half):+.2f}, {100 * (mean + half):+.2f}] >"
    assert cell == "+1.16 [+0.42, +1.90] >" and cell in text
    assert "paired 95% interval above bn-relu: #1 on resnet" in text and "5 seed pairs" in text
    # unpaired, the two means' standard errors overlap far more: the pairing is what makes it sharp
    rows[0]["test_acc"], rows[5]["test_acc"] = 0.83, 0.86   # seed 1 now favours the reference
    assert "no layer beats bn-relu" in report(rows)


def test_the_table_marks_a_rate_still_at_an_edge():
    from search.analysis.report import table

    rows = [{"layer": "#1", "arch": "resnet", "seed": 1, "lr": 7.9, "formula": "x", "test_acc": 0.8,
             "transfer_gap": None, "lr_edge": "high"},
            {"layer": "#2", "arch": "resnet", "seed": 1, "lr": 0.1, "formula": "x", "test_acc": 0.8,
             "transfer_gap": None}]                                     # an old table: no lr_edge column
    text = table(rows, ["resnet"])
    assert "7.9 (high edge!)" in text and "#1: the tuned rate sits at an edge" in text
    assert "0.1 (" not in text


# -- 4. auditable tuning ---------------------------------------------------------------------------

def test_the_lr_trials_stay_beside_the_table_readable_with_optuna(run_dir, capsys, monkeypatch):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    calls = []
    val = lambda config: 0.9 - abs(math.log(config.lr / 0.15)) / 10   # noqa: E731
    monkeypatch.setattr(evaluators.trainer, "build_and_train", _recorder(calls, val))
    assert main(["retrain", str(run_dir), "--top", "1", "--seeds", "1", "--trials", "6", "--archs", "resnet",
                 "--no-held-out", "--steps", "5"]) == 0
    capsys.readouterr()
    storage = JournalStorage(JournalFileBackend(str(run_dir / "retrain-studies.journal")))
    names = optuna.study.get_all_study_names(storage=storage)
    table = pq.read_table(run_dir / "retrain.parquet").to_pandas()
    assert names == list(dict.fromkeys(table["layer"])) and names[:2] == ["#0", "bn-relu"]
    study = optuna.load_study(study_name="#0", storage=storage)
    trials = study.trials
    assert len(trials) == 6 and trials[0].params["lr"] == pytest.approx(0.1)
    assert [t.params["lr"] for t in trials] == [c["lr"] for c in calls[:6]]
    for t in trials:
        assert t.value == pytest.approx(val(SimpleNamespace(lr=t.params["lr"])))
        assert t.user_attrs["val_resnet"] == pytest.approx(t.value)
        assert t.user_attrs["range"] == [0.02, 0.5] and t.user_attrs["stage"] == 0
    assert study.best_params["lr"] == table.loc[table["layer"] == "#0", "lr"].iloc[0]
    assert study.user_attrs["formula"] == str(parse(FRONT[0])) and study.user_attrs["widenings"] == 0
    assert not (run_dir / "retrain.parquet.journal").exists()         # the training journal goes
    assert main(["show", str(run_dir), "--trials"]) == 0
    out = capsys.readouterr().out
    assert "lr trials (" in out and "#0: 6 trials, range 0.02..0.5, best lr" in out and "resnet %" in out
    assert main(["show", str(run_dir), "0", "--trials"]) == 2
    capsys.readouterr()


# -- 5. resume across a widening ---------------------------------------------------------------------

def test_a_retrain_stopped_in_a_widened_stage_resumes_without_training_twice(run_dir, tmp_path, monkeypatch):
    import shutil

    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    argv = ["--top", "1", "--no-baselines", "--seeds", "2", "--archs", "resnet", "--no-held-out", "--steps", "5"]
    val = lambda config: 0.9 - abs(math.log(config.lr / 1.5)) / 10      # noqa: E731  best beyond 0.5
    test = lambda arch, config: config.lr / 10 + config.seed / 1000     # noqa: E731
    clean = tmp_path / "clean"
    shutil.copytree(run_dir, clean)
    calls = []
    monkeypatch.setattr(evaluators.trainer, "build_and_train", _recorder(calls, val, test))
    assert main(["retrain", str(clean), *argv]) == 0
    expected = pq.read_table(clean / "retrain.parquet").to_pandas()
    assert expected["widenings"].iloc[0] >= 1 and len(calls) > 12 + 2 and expected["lr"].iloc[0] > 0.5

    def lrs(path):
        storage = JournalStorage(JournalFileBackend(str(path / "retrain-studies.journal")))
        study = optuna.load_study(study_name="#0", storage=storage)
        return [(t.params["lr"], t.value, t.user_attrs["range"]) for t in study.trials]

    stopped, record = [], _recorder([], val, test)

    def stop_after_fourteen(*a, **kw):                # 12 trials of the first range, 2 widened ones
        if len(stopped) == 14:
            raise KeyboardInterrupt
        stopped.append(1)
        return record(*a, **kw)

    monkeypatch.setattr(evaluators.trainer, "build_and_train", stop_after_fourteen)
    assert main(["retrain", str(run_dir), *argv]) == 130
    partial = lrs(run_dir)
    assert len(partial) == 15 and partial[-2][2] != [0.02, 0.5]      # stopped inside the widened stage
    resumed_calls = []
    monkeypatch.setattr(evaluators.trainer, "build_and_train", _recorder(resumed_calls, val, test))
    assert main(["retrain", str(run_dir), *argv]) == 0
    assert len(resumed_calls) == len(calls) - 14
    resumed = pq.read_table(run_dir / "retrain.parquet").to_pandas()
    cols = ["layer", "arch", "seed", "lr", "val_acc_tuned", "test_acc", "lr_low", "lr_high", "lr_edge", "widenings"]
    assert resumed[cols].equals(expected[cols])
    assert lrs(run_dir) == lrs(clean)
