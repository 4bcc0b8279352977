"""evaluate(): one candidate -> one record; Evaluator (protocol 5 and the proxies); EvalConfig."""
from __future__ import annotations

import json

import pytest

from evaluators.evaluate import EvalConfig, Evaluator, Screen, describe, evaluate
from primitives import parse
from primitives.library import REFERENCE_LAYERS

S0 = REFERENCE_LAYERS["evonorm-s0"]
TINY = dict(dataset="synthetic", archs=("resnet",), steps=6, quality_steps=6, batch_size=16,
            quality_threshold=0.0)


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator(EvalConfig(**TINY))


def test_config_round_trips_through_a_dict_and_json():
    config = EvalConfig(dataset="synthetic", archs=["resnet", "efficientnet"], steps=50, seed=3)
    d = config.to_dict()
    assert d["archs"] == ["resnet", "efficientnet"]
    back = EvalConfig.from_dict(json.loads(json.dumps(d)))
    assert back == config and back.archs == ("resnet", "efficientnet")


def test_config_defaults_follow_the_trainer():
    from evaluators.trainer import TrainConfig
    config, train = EvalConfig(), TrainConfig()
    # a CNN proxy's recipe is the trainer's defaults: every field of its training config
    assert config.train_config(arch="resnet") == TrainConfig(compile=config.compile)
    assert (config.steps, config.batch_size, config.lr) == (train.steps, None, None)
    assert config.archs == ("resnet", "mobilenetv2", "efficientnet")
    assert 1 <= config.quality_steps <= config.steps
    assert config.train_config().seed == config.seed


@pytest.mark.parametrize("bad", [{"steps": 0}, {"archs": ()}, {"quality_threshold": 2},
                                 {"stability_threshold": -1}, {"lr": 0}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        EvalConfig(**bad)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown"):
        EvalConfig.from_dict({"stepz": 3})


def test_describe():
    g = parse(S0)
    d = describe(g)
    assert d == {"formula": str(g), "graph": g.to_json(), "graph_hash": g.hash, "params_per_channel": 3,
                 "uses_batch_stats": False, "poly_degree": None, "inference_degree": None,
                 "he_depth": None}


REJECTED = {
    "x * 0 + beta": "invalid",
    "v1": "invalid",
    "x - x": "invalid",
    "batch_mean(x)": "invalid",
    "log(x)": "unstable",
    "x / (x - x)": "unstable",
    "sqrt(x)": "unstable",
    "exp(exp(x))": "unstable",
    "x ** 3": "unstable",
}


@pytest.mark.parametrize("formula,status", sorted(REJECTED.items()))
def test_bad_layers_end_rejected_with_a_reason(formula, status, evaluator):
    record = evaluate(formula, evaluator.config, evaluator=evaluator, candidate_id=4)
    assert record["status"] == status, record
    assert record["reason"]
    assert record["acc_resnet"] is None
    assert record["seconds"] >= 0


def test_record_has_the_run_directory_fields(evaluator):
    record = evaluate(S0, evaluator.config, evaluator=evaluator)
    for key in ("formula", "graph", "graph_hash", "status", "reason", "equivalent_to", "acc_resnet",
                "params_per_channel", "uses_batch_stats", "poly_degree", "seconds", "stage_seconds"):
        assert key in record
    assert record["status"] == "ok" and record["reason"] is None
    assert 0 <= record["acc_resnet"] <= 1
    assert {"validity", "duplicate", "equivalence", "stability", "quality"} <= set(record["stage_seconds"])


def test_same_seed_same_layer_identical_accuracy(evaluator):
    g = parse(S0).to_json()
    first = evaluator.train(g)
    second = Evaluator(EvalConfig(**TINY)).train(g)
    assert first["status"] == second["status"] == "ok"
    assert first["acc_resnet"] == second["acc_resnet"]


def test_training_that_diverges_is_failed_with_a_reason(evaluator):
    # past the screen (which would call it unstable), training itself must not raise
    record = evaluator.train(parse("exp(exp(exp(x * 30)))").to_json())
    assert record["status"] == "failed"
    assert "resnet" in record["reason"] and record["acc_resnet"] is None


def test_train_takes_bad_graph_json_as_a_failure(evaluator):
    record = evaluator.train('{"nodes": [], "output": 3}')
    assert record["status"] == "failed" and "does not load" in record["reason"]


def test_low_quality_stops_before_the_other_proxies():
    config = EvalConfig(**{**TINY, "archs": ("resnet", "mobilenetv2"), "quality_steps": 2,
                           "quality_threshold": 1.0})
    ev = Evaluator(config)
    record = ev.train(parse(S0).to_json())
    assert record["status"] == "low_quality" and "after 2 steps on resnet" in record["reason"]
    assert record["acc_resnet"] is None and record["acc_mobilenetv2"] is None
    assert list(record["stage_seconds"]) == ["quality"]
    assert ev.quality.stats()["rejected"] == 1


def test_equivalent_candidates_point_at_the_earlier_one(evaluator):
    screen = Screen(evaluator.config)
    first = evaluate("x * gamma + v1 * gamma", evaluator.config, screen=screen, evaluator=evaluator,
                     candidate_id=1)
    assert first["status"] in ("ok", "low_quality", "failed")
    second = evaluate("(x + v1) * gamma", evaluator.config, screen=screen, evaluator=evaluator,
                      candidate_id=2)
    assert second["status"] == "equivalent" and second["equivalent_to"] == 1
    assert second["acc_resnet"] is None  # the driver copies the scores
