"""Loss curves in the record and the cross-run training cache (evaluators/cache.py)."""
from __future__ import annotations

import json

import pytest

from evaluators.cache import TrainingCache, training_key
from evaluators.evaluate import EvalConfig, Evaluator, loss_curve
from evaluators.trainer import TrainConfig
from primitives import parse
from primitives.library import REFERENCE_LAYERS

S0 = REFERENCE_LAYERS["evonorm-s0"]
TINY = dict(dataset="synthetic", archs=("resnet", "mobilenetv2"), steps=30, quality_steps=6, batch_size=16,
            quality_threshold=0.0)


@pytest.fixture
def cache_on(tmp_path, monkeypatch):
    monkeypatch.setenv("EVONORM_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "trainings"


def test_loss_curve_means_each_thirtieth_of_the_budget():
    assert loss_curve(list(range(300)), 300)[:3] == [4.5, 14.5, 24.5]
    assert len(loss_curve(list(range(300)), 300)) == 30
    assert len(loss_curve(list(range(102)), 300)) == 10          # complete thirtieths only
    assert loss_curve([1.0] * 6, 6) == [1.0] * 6                # fewer steps than points
    assert loss_curve([1.0, float("nan")] * 15, 30)[1] is None


def test_a_rung_curve_is_a_prefix_of_the_full_one():
    evaluator = Evaluator(EvalConfig(**TINY, cache=False))
    g = parse(S0).to_json()
    rung = evaluator.train({"graph": g, "steps": 12, "total": 30, "state": None})
    full = evaluator.train({"graph": g, "steps": 30, "total": 30, "state": rung["checkpoint"]})
    whole = evaluator.train(g)
    for arch in TINY["archs"]:
        assert len(rung["loss_curves"][arch]) == 12 and len(full["loss_curves"][arch]) == 30
        assert full["loss_curves"][arch] == whole["loss_curves"][arch]
        assert rung["loss_curves"][arch] == whole["loss_curves"][arch][:12]
    assert whole["cached"] is False


def test_the_driver_records_loss_curves(tmp_path):
    from search.config import build_config
    from search.session import Session
    from search.store.reader import load_run
    config = build_config(overrides={"evaluator": "surrogate", "executor": "local", "budget": 12,
                                     "out": str(tmp_path / "run"), "live_study": False})
    Session.start(config).run(quiet=True)
    df = load_run(tmp_path / "run").candidates
    ok = df[df.status == "ok"]
    assert len(ok)
    for text in ok["loss_curves"]:
        curves = json.loads(text)
        assert set(curves) == set(config.archs) and all(len(c) == 30 for c in curves.values())
    stopped = df[df.status == "stopped"]
    for text in stopped["loss_curves"]:
        assert all(len(c) == 10 for c in json.loads(text).values())


def _key(**change):
    parts = dict(graph_hash="abc", arch="resnet", data="synthetic", split="val", stop_at=100,
                 config=TrainConfig(steps=300, batch_size=16, lr=0.05, seed=0), device="cpu")
    parts.update(change)
    return training_key(**parts)


def test_a_hit_returns_the_stored_result_and_any_key_part_misses(tmp_path):
    cache = TrainingCache(tmp_path)
    result = {"accuracy": 0.5, "losses": [2.0, 1.0], "reason": None}
    cache.put(_key(), result)
    assert cache.get(_key()) == result
    for change in [dict(graph_hash="abd"), dict(arch="mobilenetv2"), dict(data="fashion-mnist"),
                   dict(split="test"), dict(stop_at=102),
                   dict(config=TrainConfig(steps=301, batch_size=16, lr=0.05, seed=0)),
                   dict(config=TrainConfig(steps=300, batch_size=32, lr=0.05, seed=0)),
                   dict(config=TrainConfig(steps=300, batch_size=16, lr=0.1, seed=0)),
                   dict(config=TrainConfig(steps=300, batch_size=16, lr=0.05, seed=1)),
                   dict(config=TrainConfig(steps=300, batch_size=16, lr=0.05, seed=0, grad_clip=None))]:
        assert cache.get(_key(**change)) is None, change
    key = _key()
    key["device"] = "cuda:NVIDIA H100"
    assert cache.get(key) is None
    key = _key()
    key["trainer_version"] += 1
    assert cache.get(key) is None


def test_a_torn_or_foreign_file_is_a_miss(tmp_path):
    cache = TrainingCache(tmp_path)
    cache.put(_key(), {"accuracy": 0.5})
    cache.path(_key()).write_text("{not json")
    assert cache.get(_key()) is None
    cache.path(_key()).write_text(json.dumps({"key": {"other": 1}, "result": {"accuracy": 1}}))
    assert cache.get(_key()) is None


def test_an_evaluator_pays_once_then_reads_the_cache(cache_on):
    g = parse(S0).to_json()
    first = Evaluator(EvalConfig(**TINY)).train(g)
    assert first["status"] == "ok" and first["cached"] is False
    assert len(list(cache_on.rglob("*.json"))) == 3            # quality run (6 steps) and two proxies
    second = Evaluator(EvalConfig(**TINY)).train(g)
    assert second["cached"] is True
    for k in ("status", "acc_resnet", "acc_mobilenetv2", "loss_curves", "steps_trained"):
        assert second[k] == first[k]
    other_seed = Evaluator(EvalConfig(**{**TINY, "seed": 1})).train(g)
    assert other_seed["cached"] is False
    off = Evaluator(EvalConfig(**TINY, cache=False)).train(g)
    assert off["cached"] is False and off["acc_resnet"] == first["acc_resnet"]


def test_cached_rungs_continue_without_state(cache_on):
    """A rung from the cache carries no training state: the next rung trains afresh and gets
    what the continued training would have, and a fully cached candidate trains nothing."""
    g = parse(S0).to_json()
    fresh = Evaluator(EvalConfig(**TINY, cache=False))
    rung = fresh.train({"graph": g, "steps": 12, "total": 30, "state": None})
    full = fresh.train({"graph": g, "steps": 30, "total": 30, "state": rung["checkpoint"]})
    cached = Evaluator(EvalConfig(**TINY))
    cached.train({"graph": g, "steps": 12, "total": 30, "state": None})       # fills the rung entries
    again = cached.train({"graph": g, "steps": 12, "total": 30, "state": None})
    assert again["cached"] is True and again["acc_resnet"] == rung["acc_resnet"] and again["checkpoint"]
    rest = cached.train({"graph": g, "steps": 30, "total": 30, "state": again["checkpoint"]})
    assert rest["cached"] is False
    assert rest["acc_resnet"] == full["acc_resnet"] and rest["loss_curves"] == full["loss_curves"]
    assert cached.train({"graph": g, "steps": 30, "total": 30, "state": again["checkpoint"]})["cached"] is True


def test_no_cache_is_a_search_flag():
    from search.config import build_config
    assert build_config().eval_config().cache is True
    assert build_config(overrides={"cache": False}).eval_config().cache is False


def test_transformer_proxies_record_loss_curves_and_use_the_cache(cache_on):
    """vit and charlm (a layer that keeps tokens apart): a curve per proxy, and a second
    evaluation reads both trainings from the cache (the text proxy's key names its data)."""
    config = dict(dataset="synthetic", archs=("vit", "charlm"), steps=3, quality_steps=1, batch_size=4,
                  quality_threshold=0.0)
    g = parse(REFERENCE_LAYERS["layernorm"]).to_json()
    first = Evaluator(EvalConfig(**config)).train(g)
    assert first["status"] == "ok", first["reason"]
    assert {a: len(c) for a, c in first["loss_curves"].items()} == {"vit": 3, "charlm": 3}
    second = Evaluator(EvalConfig(**config)).train(g)
    assert second["cached"] is True and second["loss_curves"] == first["loss_curves"]
    keys = [json.loads(p.read_text())["key"] for p in cache_on.rglob("*.json")]
    assert {k["data"] for k in keys} == {"synthetic", "text"}


def test_datasets_and_trainings_share_one_cache_folder_and_off_turns_only_the_trainings_off(monkeypatch, tmp_path):
    from evaluators.cache import cache_dir as trainings_dir
    from evaluators.cache import enabled
    from evaluators.datasets import cache_dir

    monkeypatch.setenv("EVONORM_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c" and trainings_dir() == tmp_path / "c" / "trainings" and enabled()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    for off in ("off", "OFF", "0", "none"):
        monkeypatch.setenv("EVONORM_CACHE", off)
        assert not enabled()
        assert cache_dir() == tmp_path / "xdg" / "evonorm"     # a download does not land in ./off
    monkeypatch.delenv("EVONORM_CACHE")
    assert trainings_dir() == tmp_path / "xdg" / "evonorm" / "trainings" and enabled()
