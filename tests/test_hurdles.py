"""Progressive hurdles: halted trainings continue exactly, the hurdle decision, the driver's
rungs (exact budgets, `stopped` records, resume between rungs), and the default evaluation path."""
from __future__ import annotations

import io
import json
import random

import pytest
import torch

from evaluators.datasets import load_dataset
from evaluators.evaluate import EvalConfig, Evaluator
from evaluators.trainer import TrainConfig, build_and_train
from primitives import compile_layer, parse
from primitives.library import REFERENCE_LAYERS
from search.config import build_config
from helpers import QueuedExecutor, surrogate_driver
from search.workers.executor import evaluator_spec
from search.engine.hurdles import Hurdles
from search.store.writer import MemoryStore, RunStore

S0 = REFERENCE_LAYERS["evonorm-s0"]


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic")


def _round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)


def test_a_halted_training_continues_to_the_uninterrupted_result(synthetic):
    """Halted at step 7 of 20 (mid-epoch, augmented) and continued in a fresh model from a
    serialised state: the same losses and accuracy, bit for bit."""
    graph = parse(S0)
    config = TrainConfig(steps=20, batch_size=32, augment=True, threads=1)
    factory = lambda c: compile_layer(graph, c)  # noqa: E731
    whole = build_and_train("resnet", factory, synthetic, config)
    first = build_and_train("resnet", factory, synthetic, config, stop_at=7)
    assert first.steps_done == 7 and first.state is not None and first.accuracy is not None
    rest = build_and_train("resnet", factory, synthetic, config, resume=_round_trip(first.state))
    assert rest.steps_done == 20 and rest.state is None
    assert rest.losses == whole.losses and rest.accuracy == whole.accuracy
    assert first.losses == whole.losses[:7]


def test_the_batch_stream_resumes_where_it_stopped(synthetic):
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    n = len(synthetic.train_y)
    whole = synthetic.train_batches(64, gen(), augment_from_epoch=1)
    expected = [next(whole) for _ in range(n // 64 + 5)]          # crosses into epoch 1
    part = synthetic.train_batches(64, gen(), augment_from_epoch=1)
    for _ in range(n // 64 - 1):
        next(part)
    state = _round_trip(part.state())
    resumed = synthetic.train_batches(64, torch.Generator().manual_seed(99), augment_from_epoch=1)
    resumed.load_state(state)
    for want in expected[n // 64 - 1:]:
        got = next(resumed)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


TINY = dict(dataset="synthetic", archs=("resnet", "efficientnet"), steps=12, quality_steps=3,
            batch_size=16, quality_threshold=0.0)


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator(EvalConfig(**TINY))


def test_default_evaluation_path_scores_every_proxy_like_a_direct_training(evaluator):
    """Protocol 5 scores archs[0] after quality_steps and its training goes on; every proxy
    is trained to the budget; the first proxy's score is that of one direct training."""
    graph = parse(S0)
    record = evaluator.train(graph.to_json())
    assert record["status"] == "ok" and record["steps_trained"] == 12 and "checkpoint" not in record
    assert set(record["stage_seconds"]) == {"quality", "resnet", "efficientnet"}
    assert all(v > 0 for v in record["stage_seconds"].values())
    for arch in TINY["archs"]:
        direct = evaluator.train_arch(graph, arch)
        assert record[f"acc_{arch}"] == direct.accuracy


def test_rungs_add_up_to_the_whole_training(evaluator):
    graph_json = parse(S0).to_json()
    whole = evaluator.train(graph_json)
    rung = evaluator.train({"graph": graph_json, "steps": 5, "total": 12, "state": None})
    assert rung["status"] == "ok" and rung["steps_trained"] == 5 and rung["checkpoint"]
    rest = evaluator.train({"graph": graph_json, "steps": 12, "total": 12, "state": rung["checkpoint"]})
    assert "quality" not in rest["stage_seconds"] and "checkpoint" not in rest
    for arch in TINY["archs"]:
        assert rest[f"acc_{arch}"] == whole[f"acc_{arch}"]


def test_a_rung_for_another_budget_fails_as_data(evaluator):
    from search.workers.executor import safe_train
    out = safe_train(evaluator, {"graph": parse(S0).to_json(), "steps": 5, "total": 300, "state": None})
    assert out["status"] == "failed" and "300" in out["reason"]


def _dominated_by(point, peers):
    return sum(all(q >= p for q, p in zip(peer, point)) and any(q > p for q, p in zip(peer, point))
               for peer in peers)


@pytest.mark.parametrize("seed", range(5))
def test_hurdle_decision_matches_brute_force(seed):
    rng = random.Random(seed)
    hurdles = Hurdles(rungs=2, share=0.3, window=10, min_peers=4)
    history = []
    for _ in range(60):
        point = tuple(round(rng.random(), 1) for _ in range(3))   # ties on purpose
        verdict = hurdles.judge(0, point)
        peers = history[-10:]
        dominated = _dominated_by(point, peers)
        assert verdict.peers == len(peers) and verdict.dominated_by == dominated
        assert verdict.passed == (len(peers) < 4 or dominated <= 0.3 * len(peers))
        hurdles.add(0, point)
        history.append(point)


def _driver(store, budget=80, executor=None, records=(), checkpoints=(), start_id=0, **overrides):
    settings = dict(budget=budget, population=8, tournament=3, steps=30, rungs=[0.2, 0.5, 1.0],
                    hurdle_share=0.2, confirm=False, **overrides)   # rungs alone
    return surrogate_driver(store, settings, executor, records, checkpoints, start_id)[0]


def test_driver_with_hurdles_keeps_exact_budgets_and_records_stopped_candidates():
    store = MemoryStore()
    driver = _driver(store, budget=80)
    driver.run()
    records = store.records
    assert sorted(r["id"] for r in records) == list(range(80))
    stopped = [r for r in records if r["status"] == "stopped"]
    ok = [r for r in records if r["status"] == "ok"]
    assert stopped and ok
    for r in ok:
        assert r["steps_trained"] == 30 and len(json.loads(r["rung_scores"])) == 2
    for r in stopped:
        rungs = json.loads(r["rung_scores"])
        assert r["steps_trained"] == rungs[-1]["steps"] in (6, 15)
        assert all(r[f"acc_{a}"] == rungs[-1][f"acc_{a}"] for a in ("resnet", "mobilenetv2", "efficientnet"))
        k, n = (int(w) for w in r["reason"].split()[2:5:2])
        assert k > 0.2 * n
    parents = {r["parent_id"] for r in records if r["parent_id"] is not None}
    assert not parents & {r["id"] for r in stopped}, "a stopped candidate became a parent"


def test_resume_between_rungs_loses_nothing_and_trains_nothing_twice(tmp_path):
    info = {"config": {}, "archs": ["resnet", "mobilenetv2", "efficientnet"]}
    spec = evaluator_spec(build_config(overrides=dict(evaluator="surrogate")))
    log = []
    store = RunStore.create(tmp_path / "run", info, flush_every=3)
    with pytest.raises(KeyboardInterrupt):
        _driver(store, budget=40, executor=QueuedExecutor(spec, log=log, stop_after=16)).run()
    store.close()
    store = RunStore.open(tmp_path / "run", flush_every=3)
    records, checkpoints = store.records(), store.checkpoints()
    waiting = {int(r["id"]) for r, _ in checkpoints}
    assert waiting, "no candidate was between rungs at the interrupt"
    assert not waiting & {r["id"] for r in records}
    _driver(store, budget=40, executor=QueuedExecutor(spec, log=log), records=records,
            checkpoints=checkpoints, start_id=store.next_id).run()
    store.close()
    final = RunStore.open(tmp_path / "run").records()
    ids = [r["id"] for r in final]
    assert len(final) == 40 and len(set(ids)) == 40 and waiting <= set(ids)
    assert len(log) == len(set(log)), "a rung was trained twice"
    for r in final:   # every rung of a recorded candidate was trained, once
        if r["status"] in ("ok", "stopped"):
            for rung in json.loads(r["rung_scores"]):
                assert (r["id"], rung["steps"], None) in log
    assert not list((tmp_path / "run" / "pending").glob("*"))
