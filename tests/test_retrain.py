"""`evonorm retrain`: tuned, multi-seed test-set comparison written to retrain.parquet."""
import json
import math
from datetime import datetime, timezone
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from primitives import parse
from primitives.library import REFERENCE_LAYERS
from search.cli import main
from search.store import load_run
from search.store.writer import RunStore
from evaluators.trainer import TRAINER_VERSION

TRAINER = {"version": TRAINER_VERSION}   # run.json's "trainer" (the full fingerprint in a real run)
FRONT = ["x * sigmoid(x * v1) / layer_std(x) * gamma + beta", "tanh(x - instance_mean(x)) * gamma + beta",
         "relu(x / group_rms(x, groups=4)) * gamma"]


@pytest.fixture
def run_dir(tmp_path):
    path = tmp_path / "run"
    info = {"config": {"dataset": "synthetic", "archs": ["resnet"], "steps": 10}, "seed": 0,
            "archs": ["resnet"], "objectives": [{"column": "acc_resnet", "goal": "max"}], "trainer": TRAINER}
    with RunStore.create(path, info) as store:
        for i, formula in enumerate(FRONT + [REFERENCE_LAYERS["evonorm-s0"]]):
            g = parse(formula)
            store.append({"id": i, "formula": str(g), "graph": g.to_json(), "graph_hash": g.hash,
                          "status": "ok" if i < 3 else "low_quality", "acc_resnet": [0.9, 0.8, 0.7, 0.95][i],
                          "params_per_channel": g.params_per_channel, "uses_batch_stats": g.uses_batch_stats,
                          "poly_degree": g.poly_degree, "seconds": 1.0, "worker": "w",
                          "created_at": datetime.now(timezone.utc)})
    return path


def test_retrain_top_layers_and_baselines(run_dir, capsys):
    # a front of ties except id 0 (best): the front is {0}; top 1 + 4 baselines
    assert main(["retrain", str(run_dir), "--top", "1", "--seeds", "2", "--trials", "2", "--steps", "12"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "TPE never left random sampling" in captured.err
    table = pq.read_table(run_dir / "retrain.parquet").to_pandas()
    assert list(dict.fromkeys(table["layer"])) == ["#0", "bn-relu", "gn-relu", "evonorm-b0", "evonorm-s0"]
    assert len(table) == 5 * 2 * 2  # 5 layers x 2 seeds x (1 proxy + the held-out plainnet)
    assert set(table.loc[table["held_out"], "arch"]) == {"plainnet"}
    assert set(table.loc[~table["held_out"], "arch"]) == {"resnet"}
    assert set(table["seed"]) == {1, 2} and (table["steps"] == 12).all()
    # one tuned lr per layer, used for all its seeds (how it is chosen: the test below)
    assert (table.groupby("layer")["lr"].nunique() == 1).all()
    assert (table.groupby("layer")["val_acc_tuned"].nunique() == 1).all()
    assert table["test_acc"].between(0, 1).all() and table["val_acc_tuned"].between(0, 1).all()
    for name in ("#0", "bn-relu", "evonorm-s0"):
        assert any(line.startswith(name) for line in out.splitlines())
    assert "±" in out
    assert not any(p.name.startswith(".retrain") for p in run_dir.iterdir())


def test_lr_is_chosen_on_validation_and_scored_on_test(run_dir, capsys, monkeypatch):
    """Every trial trains on the validation split; the lr with the best validation score is
    the one trained, with fresh seeds, on the test split, and the rows report those test
    scores. Trainings are replaced by a recorder whose accuracies identify split and lr."""
    import evaluators.trainer
    calls = []

    def fake(arch, factory, dataset, config, device, split="val", **kwargs):
        calls.append({"arch": arch, "split": split, "lr": config.lr, "seed": config.seed,
                      "steps": config.steps})
        if split == "val":   # best near lr = 0.1
            return SimpleNamespace(accuracy=1 - abs(math.log(config.lr / 0.1)) / 10, reason=None, ok=True, note=None)
        return SimpleNamespace(accuracy=config.lr / 10 + config.seed / 1000, reason=None, ok=True, note=None)

    monkeypatch.setattr(evaluators.trainer, "build_and_train", fake)
    assert main(["retrain", str(run_dir), "--top", "1", "--no-baselines", "--seeds", "2", "--trials", "6",
                 "--steps", "7", "--archs", "resnet", "--no-held-out"]) == 0
    tuning, testing = calls[:6], calls[6:]
    assert [c["split"] for c in tuning] == ["val"] * 6 and [c["split"] for c in testing] == ["test"] * 2
    assert len({c["lr"] for c in tuning}) == 6 and all(0.02 <= c["lr"] <= 0.5 for c in tuning)
    best = max(tuning, key=lambda c: 1 - abs(math.log(c["lr"] / 0.1)) / 10)
    assert {c["lr"] for c in testing} == {best["lr"]}
    assert {c["seed"] for c in testing}.isdisjoint({c["seed"] for c in tuning})
    assert all(c["steps"] == 7 for c in calls)
    table = pq.read_table(run_dir / "retrain.parquet").to_pandas()
    assert list(table["layer"]) == ["#0", "#0"] and (table["lr"] == best["lr"]).all()
    assert table["val_acc_tuned"].tolist() == [pytest.approx(1 - abs(math.log(best["lr"] / 0.1)) / 10)] * 2
    assert table["test_acc"].tolist() == [pytest.approx(best["lr"] / 10 + c["seed"] / 1000) for c in testing]


@pytest.mark.parametrize("argv", [["{missing}"], ["{run}", "--seeds", "0"], ["{run}", "--archs", "vgg"],
                                  ["{run}", "--lr-range", "0.5", "0.1"], ["{run}", "--dataset", "imagenet"]])
def test_bad_input_exits_2_and_writes_nothing(argv, run_dir, tmp_path, capsys):
    argv = ["retrain"] + [a.format(run=run_dir, missing=tmp_path / "nope") for a in argv]
    assert main(argv) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (run_dir / "retrain.parquet").exists()


def test_retrain_in_worker_processes_matches_in_process(run_dir, tmp_path, capsys):
    argv = ["--top", "1", "--seeds", "1", "--trials", "1", "--steps", "8", "--archs", "resnet", "--no-held-out"]
    assert main(["retrain", str(run_dir), *argv, "--workers", "2"]) == 0
    pooled = pq.read_table(run_dir / "retrain.parquet").to_pandas()
    assert main(["retrain", str(run_dir), *argv]) == 0
    single = pq.read_table(run_dir / "retrain.parquet").to_pandas()
    assert list(pooled["layer"]) == list(single["layer"]) == ["#0", "bn-relu", "gn-relu", "evonorm-b0", "evonorm-s0"]
    assert list(pooled["lr"]) == list(single["lr"])
    # one torch thread per worker against torch's default here: equal up to float reassociation
    assert (abs(pooled["test_acc"] - single["test_acc"]) <= 0.05).all()
    assert pooled["test_acc"].between(0, 1).all()
    assert main(["retrain", str(run_dir), "--workers", "0"]) == 2


def test_front_members_with_identical_scores_are_retrained_once(tmp_path):
    path = tmp_path / "run"
    info = {"config": {"dataset": "synthetic", "archs": ["resnet", "mobilenetv2"], "steps": 10}, "seed": 0,
            "archs": ["resnet", "mobilenetv2"], "trainer": TRAINER,
            "objectives": [{"column": "acc_resnet", "goal": "max"}, {"column": "acc_mobilenetv2", "goal": "max"}]}
    members = [("x * gamma + beta", 0.9, 0.7), ("x * v5 + beta", 0.9, 0.7), ("tanh(x) * gamma", 0.7, 0.85)]
    with RunStore.create(path, info) as store:
        for i, (formula, a, b) in enumerate(members):
            g = parse(formula)
            store.append({"id": i, "formula": str(g), "graph": g.to_json(), "graph_hash": g.hash, "status": "ok",
                          "acc_resnet": a, "acc_mobilenetv2": b, "params_per_channel": g.params_per_channel,
                          "uses_batch_stats": g.uses_batch_stats, "poly_degree": g.poly_degree, "seconds": 1.0,
                          "worker": "w", "created_at": datetime.now(timezone.utc)})
    argv = ["retrain", str(path), "--top", "2", "--no-baselines", "--archs", "resnet", "--steps", "2",
            "--trials", "1", "--seeds", "1", "--no-held-out"]
    assert main(argv) == 0
    table = pq.read_table(path / "retrain.parquet").to_pandas()
    assert list(table["layer"]) == ["#0", "#2"]  # #1 scored exactly like #0: the same run renamed


def _recorder(calls, val_score=lambda config: 0.5, test_score=lambda arch, config: 0.5, note=lambda arch, split: None):
    def fake(arch, factory, dataset, config, device, split="val", **kwargs):
        calls.append({"arch": arch, "split": split, "lr": config.lr, "seed": config.seed,
                      "steps": config.steps, "batch_size": config.batch_size})
        score = val_score(config) if split == "val" else test_score(arch, config)
        return SimpleNamespace(accuracy=score, reason=None, ok=True, note=note(arch, split))
    return fake


def test_the_lr_study_starts_at_the_searchs_rate_and_leaves_tpes_start_up(run_dir, capsys, monkeypatch):
    """By default: 12 trials, the first at the run's own lr (0.1 at batch 128), more than
    the TPE sampler's random start-up (no warning); the best one is trained on test."""
    import optuna

    import evaluators.trainer
    from search.analysis.retrain import DEFAULT_TRIALS, STARTUP_TRIALS
    calls, samplers = [], []
    real = optuna.samplers.TPESampler

    def recording_sampler(**kwargs):
        samplers.append(kwargs)
        return real(**kwargs)
    monkeypatch.setattr(optuna.samplers, "TPESampler", recording_sampler)
    peak = lambda config: 1 - abs(math.log(config.lr / 0.2))   # noqa: E731
    monkeypatch.setattr(evaluators.trainer, "build_and_train", _recorder(calls, val_score=peak))
    assert main(["retrain", str(run_dir), "--top", "1", "--no-baselines", "--seeds", "1", "--steps", "5",
                 "--archs", "resnet", "--no-held-out"]) == 0
    assert "never left" not in capsys.readouterr().err
    assert DEFAULT_TRIALS > STARTUP_TRIALS
    tuning = [c["lr"] for c in calls if c["split"] == "val"]
    assert len(tuning) == DEFAULT_TRIALS and tuning[0] == pytest.approx(0.1)
    assert [s["n_startup_trials"] for s in samplers] == [STARTUP_TRIALS]
    assert len(set(tuning)) == DEFAULT_TRIALS
    best = max(tuning, key=lambda lr: 1 - abs(math.log(lr / 0.2)))
    assert [c["lr"] for c in calls if c["split"] == "test"] == [best]


def test_held_out_proxy_uses_the_lr_tuned_on_the_searched_ones_and_reports_the_gap(run_dir, capsys,
                                                                                   monkeypatch):
    import evaluators.trainer
    calls = []
    scores = {"resnet": 0.9, "plainnet": 0.85}
    monkeypatch.setattr(evaluators.trainer, "build_and_train",
                        _recorder(calls, test_score=lambda arch, config: scores[arch] + config.seed / 1000))
    assert main(["retrain", str(run_dir), "--top", "1", "--no-baselines", "--seeds", "2", "--trials", "3",
                 "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert {c["arch"] for c in calls if c["split"] == "val"} == {"resnet"}
    assert {c["arch"] for c in calls if c["split"] == "test"} == {"resnet", "plainnet"}
    table = pq.read_table(run_dir / "retrain.parquet").to_pandas()
    assert table["lr"].nunique() == 1
    # seeds 1 and 2 on both: the gap is 0.85 - 0.9 exactly
    assert table["transfer_gap"].tolist() == [pytest.approx(-0.05)] * 4
    assert "held out" in out and "-5.00" in out


def test_batch_size_scales_the_lr_range_warm_start_and_steps(run_dir, capsys, monkeypatch):
    import evaluators.trainer
    from evaluators.evaluate import recommended_steps
    calls = []
    monkeypatch.setattr(evaluators.trainer, "build_and_train", _recorder(calls))
    assert main(["retrain", str(run_dir), "--top", "1", "--no-baselines", "--seeds", "1", "--trials", "6",
                 "--batch-size", "8", "--no-held-out"]) == 0
    assert {c["batch_size"] for c in calls} == {8}
    assert {c["steps"] for c in calls} == {2 * recommended_steps(8)}
    tuning = [c["lr"] for c in calls if c["split"] == "val"]
    assert tuning[0] == pytest.approx(0.1 * 8 / 128)
    assert all(0.02 / 16 <= lr <= 0.5 / 16 for lr in tuning)


def test_a_stopped_retrain_resumes_from_its_journal_without_training_twice(run_dir, tmp_path, capsys,
                                                                          monkeypatch):
    """Stopped (Ctrl-C) after 9 trainings, the same command resumes: those 9 are replayed
    from the journal, the study proposes the same rates, the rest is trained once, and the
    table equals an uninterrupted run's. The journal goes once the table is written."""
    import shutil

    import evaluators.trainer
    argv = ["--top", "1", "--seeds", "2", "--trials", "7", "--archs", "resnet"]   # + plainnet: 5 x 11
    val = lambda config: 1 - abs(math.log(config.lr / 0.15)) / 10 + config.seed / 100   # noqa: E731
    test = lambda arch, config: config.lr + config.seed / 1000 + len(arch) / 100          # noqa: E731
    clean = tmp_path / "clean"
    shutil.copytree(run_dir, clean)
    calls = []
    monkeypatch.setattr(evaluators.trainer, "build_and_train", _recorder(calls, val, test))
    assert main(["retrain", str(clean), *argv]) == 0
    assert len(calls) == 5 * 11
    expected = pq.read_table(clean / "retrain.parquet").to_pandas()

    stopped, record = [], _recorder([], val, test)

    def stop_after_nine(*a, **kw):
        if len(stopped) == 9:
            raise KeyboardInterrupt
        stopped.append(1)
        return record(*a, **kw)

    monkeypatch.setattr(evaluators.trainer, "build_and_train", stop_after_nine)
    assert main(["retrain", str(run_dir), *argv]) == 130
    journal = run_dir / "retrain.parquet.journal"
    assert "run the same command to resume" in capsys.readouterr().err
    lines = journal.read_text().splitlines()
    assert not (run_dir / "retrain.parquet").exists() and len(lines) == 1 + 9   # the trainer's header, 9 trainings
    assert json.loads(lines[0])["header"]["trainer"]["version"] == TRAINER_VERSION
    with open(journal, "a") as f:
        f.write('{"key": "torn by a cra')            # a crash mid-line: skipped on reading
    calls = []
    monkeypatch.setattr(evaluators.trainer, "build_and_train", _recorder(calls, val, test))
    assert main(["retrain", str(run_dir), *argv]) == 0
    assert "resuming: 9 finished trainings" in capsys.readouterr().err
    assert len(calls) == 5 * 11 - 9
    resumed = pq.read_table(run_dir / "retrain.parquet").to_pandas()
    cols = ["layer", "arch", "seed", "lr", "val_acc_tuned", "test_acc"]
    assert resumed[cols].equals(expected[cols])
    assert not journal.exists()


def test_a_changed_setting_does_not_replay_the_journal(run_dir, capsys, monkeypatch):
    import evaluators.trainer
    from search.store.journal import Journal, key
    argv = ["--top", "1", "--no-baselines", "--seeds", "1", "--trials", "2", "--archs", "resnet", "--no-held-out"]
    journal = Journal(run_dir / "retrain.parquet.journal")
    journal.begin({"version": TRAINER_VERSION})
    done = dict(formula=str(parse(FRONT[0])), arch="resnet", lr=0.1, seed=0, split="val", steps=20,
                batch_size=128, dataset="synthetic", device="cpu")
    journal.add(key(**done), {"accuracy": 0.99, "reason": None, "seconds": 1.0})
    calls = []
    monkeypatch.setattr(evaluators.trainer, "build_and_train", _recorder(calls))
    assert main(["retrain", str(run_dir), *argv, "--steps", "20"]) == 0   # the first trial replays
    assert len(calls) == 1 + 1 and calls[0]["lr"] != 0.1
    journal = Journal(run_dir / "retrain.parquet.journal")
    journal.begin({"version": TRAINER_VERSION})
    journal.add(key(**done), {"accuracy": 0.99, "reason": None, "seconds": 1.0})
    calls.clear()
    assert main(["retrain", str(run_dir), *argv, "--steps", "30"]) == 0   # another budget: trained
    assert len(calls) == 2 + 1 and calls[0]["lr"] == pytest.approx(0.1)


# -- the report: versus BN-ReLU, paired per seed, Student-t 95% intervals ------------------------------------

def _rows(scores):
    """retrain.parquet-like rows from {layer: {arch: [test accuracies, one per seed]}}."""
    return [{"layer": layer, "arch": arch, "held_out": arch == "plainnet", "seed": seed, "lr": 0.1,
             "formula": layer, "test_acc": acc, "transfer_gap": None}
            for layer, per_arch in scores.items() for arch, accs in per_arch.items()
            for seed, acc in enumerate(accs, 1)]


def test_versus_flags_only_paired_intervals_that_exclude_zero():
    from search.analysis.report import versus

    rows = _rows({"bn-relu": {"resnet": [0.880, 0.882, 0.884], "plainnet": [0.80, 0.81, 0.82]},
                  # resnet: +1 point on every seed: beyond; plainnet: -1, +2, +1 points: within
                  "#7": {"resnet": [0.890, 0.892, 0.894], "plainnet": [0.79, 0.83, 0.83]},
                  "#9": {"resnet": [0.850, 0.852, 0.854], "plainnet": [0.81]}})
    got = {(v["layer"], v["arch"]): v for v in versus(rows, ["resnet", "plainnet"])}
    assert got["#7", "resnet"]["verdict"] == "better"
    assert got["#7", "resnet"]["diff"] == pytest.approx(0.01)
    assert got["#7", "resnet"]["low"] == pytest.approx(0.01) == got["#7", "resnet"]["high"]
    assert got["#7", "plainnet"]["diff"] == pytest.approx(0.02 / 3)
    assert got["#7", "plainnet"]["verdict"] == "within"
    assert got["#9", "resnet"]["verdict"] == "worse"
    assert got["#9", "plainnet"]["verdict"] == "n/a"   # one seed: no interval
    assert ("bn-relu", "resnet") not in got


def test_report_puts_held_out_proxies_last_and_says_whether_any_layer_beats_bn_relu():
    from search.analysis.report import report

    tie = {"resnet": [0.88, 0.89, 0.90], "plainnet": [0.80, 0.81, 0.82]}
    text = report(_rows({"#1": tie, "bn-relu": tie}))
    assert "test plainnet % (held out)" in text
    assert text.index("test resnet %") < text.index("test plainnet %")
    assert "no layer beats bn-relu (paired 95% interval above 0) on any proxy" in text
    better = {"resnet": [0.95, 0.96, 0.97], "plainnet": tie["plainnet"]}
    text = report(_rows({"#1": better, "bn-relu": tie}))
    assert "paired 95% interval above bn-relu: #1 on resnet" in text


def test_show_prints_the_retrain_report_of_a_finished_retrain(run_dir, capsys):
    assert main(["retrain", str(run_dir), "--top", "1", "--seeds", "2", "--trials", "1", "--steps", "6"]) == 0
    printed = capsys.readouterr().out
    assert main(["show", str(run_dir)]) == 0
    shown = capsys.readouterr().out
    assert "vs bn-relu" in shown and "vs bn-relu" in printed
    assert shown.split("\n\nretrain (")[1].split("\n", 1)[1].strip() == printed.strip()


def test_show_reports_a_retrain_table_written_elsewhere(run_dir, capsys):
    other = run_dir / "baselines.parquet"
    assert main(["retrain", str(run_dir), "--top", "0", "--seeds", "2", "--trials", "1", "--steps", "6",
                 "-o", str(other)]) == 0
    printed = capsys.readouterr().out
    assert main(["show", str(run_dir)]) == 0
    assert "vs bn-relu" not in capsys.readouterr().out               # DIR/retrain.parquet: none yet
    assert main(["show", str(run_dir), "--retrain", str(other)]) == 0
    shown = capsys.readouterr().out
    assert f"retrain ({other})" in shown and shown.split("\n\nretrain (")[1].split("\n", 1)[1].strip() == printed.strip()
    for argv in (["show", str(run_dir), "--retrain", str(run_dir / "missing.parquet")],
                 ["show", str(run_dir), "0", "--retrain", str(other)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("evonorm: error:") and err.count("\n") == 1


@pytest.mark.parametrize("how", ["ctrl-c", "kill"])
def test_ctrl_c_or_kill_stops_a_retrain_in_worker_processes_at_once(run_dir, how):
    """Ctrl-C reaches the whole foreground process group; `kill PID` (SIGTERM) reaches only
    the parent of a retrain started in the background, where SIGINT is ignored. Either way
    the parent terminates its workers: the queued layers are not trained first (they once
    were, for hours), finished trainings stay in the journal, and no process is left behind
    (after a kill the workers once trained on as orphans)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    # as from a terminal, or as a shell's background job, which ignores SIGINT (and a Python
    # started so never turns SIGINT into KeyboardInterrupt)
    sigint = signal.SIG_DFL if how == "ctrl-c" else signal.SIG_IGN

    journal = run_dir / "retrain.parquet.journal"
    total = 5 * (6 + 3 * 2)          # 5 layers x (6 trials + 3 seeds x (resnet + plainnet))
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", "retrain", str(run_dir), "--top", "1",
                             "--workers", "2", "--trials", "6", "--steps", "60"],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (journal.exists() and journal.read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "no training finished"
            time.sleep(0.2)
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=90)    # seconds at most (a loaded CI machine): the queued
                                                 # layers would take far longer; the count below tells
        for _ in range(50):          # the manager and pool processes go with the parent
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail("worker processes outlived the retrain")
    finally:
        try:                         # whatever is left, the parent or orphaned workers
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert proc.returncode == 130, err[-2000:]
    assert "run the same command to resume" in err
    assert 2 <= journal.read_text().count("\n") < total


def test_a_torn_journal_line_does_not_swallow_the_next_entry(tmp_path):
    from search.store.journal import Journal

    path = tmp_path / "j"
    Journal(path).add("a", {"accuracy": 0.5})
    with open(path, "a") as f:
        f.write('{"key": "b", "resu')                # a crash mid-line
    journal = Journal(path).load()
    journal.add("c", {"accuracy": 0.7})
    assert Journal(path).load().done == {"a": {"accuracy": 0.5}, "c": {"accuracy": 0.7}}


def test_bn_relu_on_the_front_is_the_reference_under_its_front_name():
    from search.analysis.report import versus_table

    relu = str(parse(REFERENCE_LAYERS["bn-relu"]))
    rows = _rows({"#0": {"resnet": [0.88, 0.882, 0.884]}, "#5": {"resnet": [0.90, 0.902, 0.904]}})
    for r in rows:
        r["formula"] = relu if r["layer"] == "#0" else "x"
    text = versus_table(rows, ["resnet"])
    assert text.splitlines()[0].startswith("vs bn-relu (#0)")
    assert "paired 95% interval above bn-relu (#0): #5 on resnet" in text
    assert "\n#0 " not in text


def test_a_sample_mode_report_compares_with_the_batch_free_standards_too():
    from search.analysis.report import report

    tie = {"resnet": [0.88, 0.89, 0.90]}
    rows = _rows({"#1": {"resnet": [0.95, 0.96, 0.97]}, "bn-relu": tie, "gn-relu": tie, "evonorm-s0": tie})
    text = report(rows, "sample")
    for ref in ("bn-relu", "gn-relu", "evonorm-s0"):
        assert f"paired 95% interval above {ref}: #1 on resnet" in text
    assert "above gn-relu" not in report(rows, "batch")


def test_a_transformer_report_compares_with_layernorm_rmsnorm_dyt_and_derf_not_bn_relu():
    from search.analysis.report import report

    tie = {"vit": [0.70, 0.71, 0.72], "postvit": [0.80, 0.81, 0.82]}
    refs = ("layernorm", "rmsnorm", "dyt", "derf")
    rows = _rows({"#1": {"vit": [0.75, 0.76, 0.77], "postvit": tie["postvit"]}, "identity": tie,
                  **{ref: tie for ref in refs}})
    text = report(rows)
    for ref in refs:
        assert f"paired 95% interval above {ref}: #1 on vit" in text
    assert "bn-relu" not in text and "vs identity" not in text
    mixed = rows + _rows({"#1": {"resnet": [0.9, 0.91, 0.92]}, "bn-relu": {"resnet": [0.8, 0.81, 0.82]}})
    assert "paired 95% interval above bn-relu: #1 on resnet" in report(mixed)


def test_a_sample_mode_run_is_retrained_against_gn_relu_and_the_s_series(run_dir, capsys, monkeypatch):
    import json

    import evaluators.trainer
    info_path = run_dir / "run.json"
    info = json.loads(info_path.read_text())
    info["config"]["mode"] = "sample"
    info_path.write_text(json.dumps(info))
    monkeypatch.setattr(evaluators.trainer, "build_and_train", _recorder([]))
    assert main(["retrain", str(run_dir), "--top", "0", "--seeds", "2", "--trials", "1", "--no-held-out"]) == 0
    table = pq.read_table(run_dir / "retrain.parquet").to_pandas()
    assert list(dict.fromkeys(table["layer"])) == ["bn-relu", "gn-relu", "evonorm-s0", "evonorm-s1", "evonorm-s2"]
    out = capsys.readouterr().out
    assert "vs gn-relu" in out and "vs evonorm-s0" in out


def test_a_polynomial_mode_run_is_retrained_against_the_square_and_the_library_polynomial(run_dir, capsys,
                                                                                          monkeypatch):
    import json

    import evaluators.trainer
    info_path = run_dir / "run.json"
    info = json.loads(info_path.read_text())
    info["config"]["mode"] = "polynomial"
    info_path.write_text(json.dumps(info))
    escaped = "2 test rows non-finite, counted wrong"
    monkeypatch.setattr(evaluators.trainer, "build_and_train",
                        _recorder([], note=lambda arch, split: escaped if split == "test" else None))
    assert main(["retrain", str(run_dir), "--top", "0", "--seeds", "2", "--trials", "1", "--no-held-out"]) == 0
    table = pq.read_table(run_dir / "retrain.parquet").to_pandas()
    assert list(dict.fromkeys(table["layer"])) == ["bn-relu", "bn-square", "bn-poly"]
    assert (table["note"] == escaped).all()                                # the trainer's note, per row
    out = capsys.readouterr().out
    assert "vs bn-square" in out and "vs bn-poly" in out


# -- the retrain from Python --------------------------------------------------------------------

def test_retrain_from_python_plans_then_trains(run_dir, tmp_path):
    from search.analysis.retrain import plan_retrain, retrain

    out = tmp_path / "r.parquet"
    plan = plan_retrain(run_dir, top=1, seeds=1, trials=1, steps=4, archs=["resnet"], held_out=False,
                        baselines=False, device="cpu", output=out)
    assert (plan.steps, plan.batch_size, plan.warm_lr, plan.lr_range) == (4, 128, 0.1, (0.02, 0.5))
    assert [layer["name"] for layer in plan.layers] == ["#0"] and plan.trainings == 2
    assert plan.warnings() and plan.finished() == 0 and not out.exists()
    said = []
    rows = retrain(plan, progress=said.append)
    assert len(said) == plan.trainings and said[0].startswith("#0 resnet")
    assert [(r["layer"], r["arch"], r["seed"], r["steps"]) for r in rows] == [("#0", "resnet", 1, 4)]
    assert pq.read_table(out).to_pylist() == rows and not plan.journal_path.exists()
    # left to the run: twice its 10 steps at its batch size
    assert plan_retrain(load_run(run_dir), top=0, trials=12, device="cpu").steps == 20


@pytest.mark.parametrize("kwargs,error", [({"seeds": 0}, "ConfigError"), ({"steps": 0}, "ConfigError"),
                                          ({"archs": ["vgg"]}, "ConfigError"), ({"dataset": "imagenet"}, "ConfigError"),
                                          ({"output": "/proc/nope.parquet"}, "UnwritableError"),
                                          ({"top": 0, "baselines": False}, "ConfigError")])
def test_plan_retrain_refuses_bad_input_before_any_training(run_dir, kwargs, error):
    import search.errors
    from search.analysis.retrain import plan_retrain

    with pytest.raises(getattr(search.errors, error)):
        plan_retrain(run_dir, device="cpu", **kwargs)
    with pytest.raises(search.errors.RunDirError):
        plan_retrain(run_dir / "missing")
    assert sorted(p.name for p in run_dir.iterdir()) == ["candidates", "front.parquet", "run.json"]


def test_a_transformer_run_retrains_with_its_recipes_references_and_held_out_postvit(tmp_path, capsys, monkeypatch):
    """A run on vit and charlm: the baselines are the Transformer references the language writes,
    the held-out proxy is postvit (not plainnet), each proxy trains its AdamW recipe at its rate
    times the tuned factor (the warm start trains the recipe's rate), and a layer that mixes
    positions is not trained on charlm."""
    import evaluators.trainer
    from evaluators.proxies import PROXIES, transformer_references
    path = tmp_path / "run"
    archs = ["vit", "charlm"]
    info = {"config": {"dataset": "synthetic", "archs": archs, "steps": 10}, "seed": 0, "archs": archs,
            "trainer": TRAINER,
            "objectives": [{"column": f"acc_{a}", "goal": "max"} for a in archs]}
    with RunStore.create(path, info) as store:
        for i, formula in enumerate(["x * sigmoid(x) / channel_rms(x) * gamma", "x / layer_std(x) * gamma"]):
            g = parse(formula)
            store.append({"id": i, "formula": str(g), "graph": g.to_json(), "graph_hash": g.hash, "status": "ok",
                          "acc_vit": 0.9 - i / 10, "acc_charlm": 0.5 + i / 10,
                          "params_per_channel": g.params_per_channel, "uses_batch_stats": g.uses_batch_stats,
                          "poly_degree": g.poly_degree, "seconds": 1.0, "worker": "w",
                          "created_at": datetime.now(timezone.utc)})
    calls = []
    monkeypatch.setattr(evaluators.trainer, "build_and_train", _recorder(calls))
    assert main(["retrain", str(path), "--top", "2", "--seeds", "1", "--trials", "1", "--steps", "2"]) == 0
    table = pq.read_table(path / "retrain.parquet").to_pandas()
    assert list(dict.fromkeys(table["layer"])) == ["#0", "#1", *transformer_references()]
    assert set(table.loc[table["held_out"], "arch"]) == {"postvit"}
    for arch in ("vit", "charlm", "postvit"):   # one trial: the warm start, i.e. each recipe's rate
        recipe = PROXIES[arch].recipe
        assert {(c["lr"], c["batch_size"]) for c in calls if c["arch"] == arch} == {(recipe.lr, recipe.batch_size)}
    mixing = table[(table["layer"] == "#1") & (table["arch"] == "charlm")]
    assert mixing["test_acc"].isna().all() and mixing["reason"].str.contains("mixes positions").all()
    assert not any(c["arch"] == "charlm" and c["lr"] is None for c in calls)
    assert len([c for c in calls if c["arch"] == "charlm"]) == 2 * (1 + len(transformer_references()))
