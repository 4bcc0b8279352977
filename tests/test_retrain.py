"""`evonorm retrain`: tuned, multi-seed test-set comparison written to retrain.parquet."""
import math
from datetime import datetime, timezone
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from primitives import parse
from primitives.library import REFERENCE_LAYERS
from search.cli import main
from search.store import RunStore

FRONT = ["x * sigmoid(x * v1) / layer_std(x) * gamma + beta", "tanh(x - instance_mean(x)) * gamma + beta",
         "relu(x / group_rms(x, groups=4)) * gamma"]


@pytest.fixture
def run_dir(tmp_path):
    path = tmp_path / "run"
    info = {"config": {"dataset": "synthetic", "archs": ["resnet"], "steps": 10}, "seed": 0,
            "archs": ["resnet"], "objectives": [{"column": "acc_resnet", "goal": "max"}]}
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
    out = capsys.readouterr().out
    table = pq.read_table(run_dir / "retrain.parquet").to_pandas()
    assert list(dict.fromkeys(table["layer"])) == ["#0", "bn-relu", "gn-relu", "evonorm-b0", "evonorm-s0"]
    assert len(table) == 5 * 2  # 5 layers x 2 seeds x 1 proxy
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
            return SimpleNamespace(accuracy=1 - abs(math.log(config.lr / 0.1)) / 10, reason=None, ok=True)
        return SimpleNamespace(accuracy=config.lr / 10 + config.seed / 1000, reason=None, ok=True)

    monkeypatch.setattr(evaluators.trainer, "build_and_train", fake)
    assert main(["retrain", str(run_dir), "--top", "1", "--no-baselines", "--seeds", "2", "--trials", "6",
                 "--steps", "7", "--archs", "resnet"]) == 0
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
    argv = ["--top", "1", "--seeds", "1", "--trials", "1", "--steps", "8", "--archs", "resnet"]
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
            "archs": ["resnet", "mobilenetv2"],
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
            "--trials", "1", "--seeds", "1"]
    assert main(argv) == 0
    table = pq.read_table(path / "retrain.parquet").to_pandas()
    assert list(table["layer"]) == ["#0", "#2"]  # #1 scored exactly like #0: the same run renamed
