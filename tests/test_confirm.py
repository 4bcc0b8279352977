"""Confirmed fronts: a candidate that would enter the Pareto front is trained on a second seed
and recorded with the mean; each seed's scores are kept; resume loses nothing and trains
nothing twice; the evaluators honour a task's seed."""
from __future__ import annotations

import json

import pytest

from evaluators.datasets import load_dataset
from evaluators.evaluate import EvalConfig, Evaluator
from primitives import parse
from primitives.library import REFERENCE_LAYERS
from search.config import build_config
from helpers import QueuedExecutor, surrogate_driver
from search.workers.executor import evaluator_spec
from search.pareto import pareto_mask
from search.store.writer import MemoryStore, RunStore
from search.workers.surrogate import SurrogateEvaluator

ARCHS = ("resnet", "mobilenetv2", "efficientnet")
KEYS = tuple(f"acc_{a}" for a in ARCHS)


def test_surrogate_honours_a_seed_deterministically():
    graph = parse(REFERENCE_LAYERS["evonorm-s0"]).to_json()
    surrogate = SurrogateEvaluator(ARCHS)
    base = surrogate.train(graph)
    again = surrogate.train({"graph": graph, "seed": 0})
    one, one_again = (surrogate.train({"graph": graph, "seed": 1}) for _ in range(2))
    two = surrogate.train({"graph": graph, "seed": 2})
    assert [base[k] for k in KEYS] == [again[k] for k in KEYS]
    assert [one[k] for k in KEYS] == [one_again[k] for k in KEYS]
    assert [one[k] for k in KEYS] != [base[k] for k in KEYS] != [two[k] for k in KEYS]
    assert all(abs(one[k] - base[k]) <= 0.02 for k in KEYS)


def _driver(store, executor, budget=60, records=(), checkpoints=(), start_id=0, **overrides):
    settings = dict(budget=budget, population=8, tournament=3, steps=30, **overrides)
    return surrogate_driver(store, settings, executor, records, checkpoints, start_id)


def _spec(**overrides):
    return evaluator_spec(build_config(overrides=dict(evaluator="surrogate", **overrides)))


@pytest.mark.parametrize("hurdles", [True, False])
def test_front_entrants_are_confirmed_on_a_second_seed(hurdles):
    """Every candidate that would have entered the front when it finished is trained again
    on seed + 1; its scores are the mean of the two seeds', each kept in seed_scores;
    the confirmation's time shows under stage_seconds["confirm"]; nobody else is."""
    store, log = MemoryStore(), []
    driver, spec = _driver(store, QueuedExecutor(_spec(), log=log), seed=3, hurdles=hurdles)
    driver.run()
    records = store.records            # in the order written: the front evolves in this order
    assert len(records) == 60
    confirmed = [r for r in records if r.get("seed_scores")]
    assert confirmed, "nothing was confirmed"
    surrogate = SurrogateEvaluator(ARCHS)
    front = []
    for r in records:
        if r["equivalent_to"] is not None:     # a copy takes its original's scores
            continue
        stages = json.loads(r["stage_seconds"])
        if not r.get("seed_scores"):
            assert "confirm" not in stages and [(c, s) for c, _, s in log if c == r["id"] and s] == []
            if r["status"] == "ok":   # it did not enter the front
                point = tuple(r[k] for k in KEYS)
                assert not pareto_mask(front + [point], ["max"] * 3)[-1]
                front = [p for p, keep in zip(front + [point], pareto_mask(front + [point], ["max"] * 3)) if keep]
            continue
        seeds = json.loads(r["seed_scores"])
        assert [s["seed"] for s in seeds] == [3, 4]
        full = surrogate.train(r["graph"])
        second = surrogate.train({"graph": r["graph"], "seed": 4})
        for k in KEYS:
            assert seeds[0][k] == pytest.approx(full[k]) and seeds[1][k] == pytest.approx(second[k])
            assert r[k] == pytest.approx((seeds[0][k] + seeds[1][k]) / 2)
        assert stages["confirm"] > 0
        assert [(c, st, s) for c, st, s in log if c == r["id"] and s] == [(r["id"], 30, 4)]
        if r["status"] == "ok":
            point = tuple(r[k] for k in KEYS)
            front = [p for p, keep in zip(front + [point], pareto_mask(front + [point], ["max"] * 3)) if keep]


def test_no_confirm_trains_every_candidate_once():
    store, log = MemoryStore(), []
    driver, _ = _driver(store, QueuedExecutor(_spec(), log=log), confirm=False)
    driver.run()
    assert not any(r.get("seed_scores") for r in store.records)
    assert not any(seed for _, _, seed in log)


def test_resume_while_confirming_loses_nothing_and_trains_nothing_twice(tmp_path):
    info = {"config": {}, "archs": list(ARCHS)}
    log = []
    store = RunStore.create(tmp_path / "run", info, flush_every=3)
    with pytest.raises(KeyboardInterrupt):
        # stop right after the first candidate finished its first seed: it waits to be confirmed
        driver, _ = _driver(store, QueuedExecutor(_spec(), log=log, stop_after=1), budget=30, hurdles=False)
        driver.run()
    store.close()
    store = RunStore.open(tmp_path / "run", flush_every=3)
    records, checkpoints = store.records(), store.checkpoints()
    assert [r.get("confirm") for r, _ in checkpoints] == [True]
    waiting = int(checkpoints[0][0]["id"])
    driver, _ = _driver(store, QueuedExecutor(_spec(), log=log), budget=30, hurdles=False, records=records,
                        checkpoints=checkpoints, start_id=store.next_id)
    driver.run()
    store.close()
    final = RunStore.open(tmp_path / "run").records()
    assert len(final) == 30 and len({r["id"] for r in final}) == 30
    assert len(log) == len(set(log)), "a training was repeated"
    mine = next(r for r in final if r["id"] == waiting)
    assert [s["seed"] for s in json.loads(mine["seed_scores"])] == [0, 1]
    assert [seed for cid, _, seed in log if cid == waiting] == [None, 1]
    assert not list((tmp_path / "run" / "pending").glob("*"))


def test_the_evaluator_trains_a_task_on_its_seed():
    """A real (tiny) evaluation: a task's seed changes the trained scores, and training on
    that seed is the same as an evaluator configured with it."""
    tiny = dict(dataset="synthetic", archs=("resnet",), steps=8, quality_steps=2, batch_size=16,
                quality_threshold=0.0)
    dataset = load_dataset("synthetic")
    graph = parse(REFERENCE_LAYERS["bn-relu"]).to_json()
    run_seed = Evaluator(EvalConfig(**tiny), dataset=dataset)
    seeded = run_seed.train({"graph": graph, "seed": 1})
    direct = Evaluator(EvalConfig(**tiny, seed=1), dataset=dataset).train(graph)
    assert seeded["status"] == direct["status"] == "ok"
    assert seeded["acc_resnet"] == direct["acc_resnet"]
    assert run_seed.train_arch(parse(REFERENCE_LAYERS["bn-relu"]), "resnet", seed=1).losses != \
        run_seed.train_arch(parse(REFERENCE_LAYERS["bn-relu"]), "resnet").losses
