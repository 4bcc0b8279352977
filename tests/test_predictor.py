"""The run's own predictor (search/engine/predictor.py) and its two uses in the driver."""
from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from primitives import parse
from primitives.library import REFERENCE_LAYERS
from search.engine.predictor import (MIN_TRAININGS, FullScorePredictor, ProposalPredictor, graph_features,
                                     optimistic_gain, predicted_stop)

ARCHS = ("resnet", "mobilenetv2")
FORMULAS = list(REFERENCE_LAYERS.values())


def _record(i, rung, full, curves=None):
    graph = parse(FORMULAS[i % len(FORMULAS)])
    return {"id": i, "status": "ok", "graph": graph.to_json(),
            "rung_scores": json.dumps([{"steps": 10, **{f"acc_{a}": v for a, v in zip(ARCHS, rung)}}]),
            **{f"acc_{a}": v for a, v in zip(ARCHS, full)}, "loss_curves": curves}


def _truth(rung):
    """The known function: full = 0.3 + 0.6 * rung on each proxy."""
    return [0.3 + 0.6 * v for v in rung]


def test_graph_features_work_for_every_reference_layer_transformer_ones_too():
    widths = {len(graph_features(parse(f))) for f in FORMULAS}
    assert len(widths) == 1
    assert graph_features(parse(REFERENCE_LAYERS["layernorm"]), compact=True)[1] == 0.0


def test_silent_until_enough_full_trainings_then_learns_the_known_function():
    rng = random.Random(0)
    predictor = FullScorePredictor(ARCHS, (10, 30), 30)
    g = parse(FORMULAS[0])
    for i in range(MIN_TRAININGS - 1):
        rung = [rng.uniform(0.2, 0.9) for _ in ARCHS]
        predictor.add(_record(i, rung, _truth(rung)))
        assert predictor.predict(0, g, [0.5, 0.5]) is None
    for i in range(MIN_TRAININGS - 1, 40):
        rung = [rng.uniform(0.2, 0.9) for _ in ARCHS]
        predictor.add(_record(i, rung, _truth(rung)))
    for rung in ([0.25, 0.8], [0.5, 0.5], [0.85, 0.3]):
        mu, sd = predictor.predict(0, g, rung)
        assert np.allclose(mu, _truth(rung), atol=0.01), (mu, _truth(rung))
        assert np.all(sd < 0.05)
    assert predictor.predict(1, g, [0.5, 0.5]) is None      # the last rung is the full score itself


def test_refit_follows_new_trainings():
    """Fitted on full = 0.3 + 0.6 * rung, then on many more rows of full = rung + 0.1: the
    refitted model moves to the new relation (it refits whenever rows arrive)."""
    rng = random.Random(1)
    predictor = FullScorePredictor(ARCHS, (10, 30), 30)
    g = parse(FORMULAS[0])
    for i in range(20):
        rung = [rng.uniform(0.2, 0.9) for _ in ARCHS]
        predictor.add(_record(i, rung, _truth(rung)))
    before = predictor.predict(0, g, [0.8, 0.8])[0]
    for i in range(20, 400):
        rung = [rng.uniform(0.2, 0.9) for _ in ARCHS]
        predictor.add(_record(i, rung, [v + 0.1 for v in rung]))
    after = predictor.predict(0, g, [0.8, 0.8])[0]
    assert np.allclose(before, 0.78, atol=0.01) and np.all(after > 0.85)


def test_loss_curves_are_used_when_every_row_has_them():
    """The full score is hidden in the curve's last point, not in the rung score: with the
    curves the predictor finds it."""
    rng = random.Random(2)
    predictor = FullScorePredictor(ARCHS, (10, 30), 30)
    g = parse(FORMULAS[0])
    for i in range(40):
        full = [rng.uniform(0.3, 0.9) for _ in ARCHS]
        rung = [rng.uniform(0.2, 0.9) for _ in ARCHS]
        curves = {a: [2.0] * 9 + [1.0 - f] for a, f in zip(ARCHS, full)}
        predictor.add(_record(i, rung, full, curves))
    curves = {a: [2.0] * 9 + [1.0 - 0.7] for a in ARCHS}
    mu, _ = predictor.predict(0, g, [0.3, 0.8], curves)
    assert np.allclose(mu, 0.7, atol=0.03)


def _dominates(f, u):
    return all(a >= b for a, b in zip(f, u)) and any(a > b for a, b in zip(f, u))


def test_predicted_stop_against_brute_force():
    rng = random.Random(3)
    for _ in range(300):
        front = [tuple(round(rng.random(), 1) for _ in range(3)) for _ in range(rng.randint(0, 6))]
        point = tuple(round(rng.random(), 1) for _ in range(3))
        assert predicted_stop(front, point, ["max"] * 3) == any(_dominates(f, point) for f in front)
    # a minimised objective (params per channel) turns around
    assert predicted_stop([(0.9, 2)], (0.8, 3), ["max", "min"])
    assert not predicted_stop([(0.9, 4)], (0.8, 3), ["max", "min"])


def test_optimistic_gain_is_zero_for_a_dominated_point_and_positive_beyond_the_front():
    front = [(0.8, 0.5), (0.5, 0.8)]
    assert optimistic_gain(front, (0.4, 0.4), ["max", "max"], (0.0, 0.0)) == 0.0
    assert optimistic_gain(front, (0.9, 0.9), ["max", "max"], (0.0, 0.0)) == pytest.approx(0.81 - 0.55)


def test_proposal_predictor_learns_from_graph_features():
    """Scores that depend on the graph alone (batch statistics or not) are learnt."""
    predictor = ProposalPredictor(ARCHS)
    for i in range(30):
        graph = parse(FORMULAS[i % len(FORMULAS)])
        score = 0.9 if graph.uses_batch_stats else 0.5
        predictor.add({"id": i, "status": "ok", "graph": graph.to_json(),
                       **{f"acc_{a}": score for a in ARCHS}})
    bn = predictor.predict(parse(REFERENCE_LAYERS["bn-relu"]))[0]
    ln = predictor.predict(parse(REFERENCE_LAYERS["layernorm"]))[0]
    assert np.all(bn > ln + 0.2)


# -- the driver -----------------------------------------------------------------------------------

def _driver(store, budget, executor=None, records=(), checkpoints=(), start_id=0, **overrides):
    from helpers import surrogate_driver
    settings = dict(budget=budget, population=8, tournament=3, steps=30, rungs=[0.34, 1.0], confirm=False,
                    predicted_hurdles=True, predicted_proposals=True, predictor_z=1.0)
    return surrogate_driver(store, {**settings, **overrides}, executor, records, checkpoints, start_id)[0]


def test_predicted_hurdles_and_proposals_decide_once_the_predictor_speaks():
    from search.store.writer import MemoryStore
    store = MemoryStore()
    driver = _driver(store, 90)
    driver.run()
    assert driver.predictor.ready(0) and driver.proposer.ready()
    predicted = [r for r in store.records if r["status"] == "stopped" and "predicted" in r["reason"]]
    assert predicted, "no candidate was stopped on its prediction"
    assert sorted(r["id"] for r in store.records) == list(range(90))


def test_a_resumed_run_with_predictors_makes_the_same_decisions_and_trains_nothing_twice(tmp_path):
    """Killed part-way and resumed: the records (ids, graphs, statuses, scores) equal those of
    the run that was never stopped, and no rung of any candidate is trained twice."""
    from helpers import QueuedExecutor
    from search.config import build_config
    from search.store.writer import MemoryStore, RunStore
    from search.workers.executor import evaluator_spec

    spec = evaluator_spec(build_config(overrides=dict(evaluator="surrogate")))
    whole = MemoryStore()
    _driver(whole, 70, executor=QueuedExecutor(spec, capacity=1)).run()
    info = {"config": {}, "archs": ["resnet", "mobilenetv2", "efficientnet"]}
    log = []
    store = RunStore.create(tmp_path / "run", info, flush_every=3)
    with pytest.raises(KeyboardInterrupt):
        _driver(store, 70, executor=QueuedExecutor(spec, capacity=1, log=log, stop_after=40)).run()
    store.close()
    store = RunStore.open(tmp_path / "run", flush_every=3)
    records, checkpoints = store.records(), store.checkpoints()
    _driver(store, 70, executor=QueuedExecutor(spec, capacity=1, log=log), records=records,
            checkpoints=checkpoints, start_id=store.next_id).run()
    store.close()
    final = sorted(RunStore.open(tmp_path / "run").records(), key=lambda r: r["id"])
    assert len(log) == len(set(log)), "a rung was trained twice"
    expected = sorted(whole.records, key=lambda r: r["id"])
    keys = ("id", "graph_hash", "status", "parent_id", "acc_resnet", "acc_mobilenetv2", "acc_efficientnet")
    assert [[r.get(k) for k in keys] for r in final] == [[r.get(k) for k in keys] for r in expected]
    assert any("predicted" in (r.get("reason") or "") for r in final)


def test_an_optimistic_point_carries_the_graphs_own_objectives_where_they_are_objectives():
    from search.store.writer import MemoryStore
    graph = parse(REFERENCE_LAYERS["evonorm-s0"])
    plain = _driver(MemoryStore(), 10)
    assert plain._objective_point([0.8, 0.7, 0.6], graph) == (0.8, 0.7, 0.6)
    costly = _driver(MemoryStore(), 10, cost=True)
    point = costly._objective_point([0.8, 0.7, 0.6], graph)
    assert point[:3] == (0.8, 0.7, 0.6)
    assert point[3:] == (float(graph.params_per_channel),) and point[3] > 0
