"""The search driver and `evonorm search`: budget, columns, front, modes, bad input."""
import json
import os
from collections import Counter

import pytest

from primitives import Graph
from search.config import ConfigError, build_config
from search.engine.driver import Driver
from helpers import QueuedExecutor
from search.workers.executor import LocalExecutor, evaluator_spec, make_screen
from search.engine.modes import get_mode
from evaluators.record import STATUSES
from search.store.writer import MemoryStore

RECORD_COLUMNS = ["id", "parent_id", "formula", "graph", "graph_hash", "status", "reason", "equivalent_to",
                  "params_per_channel", "uses_batch_stats", "poly_degree", "steps_trained", "seconds", "worker",
                  "created_at"]


def run_driver(budget=120, executor=None, records=None, start_id=0, **overrides):
    config = build_config(overrides=dict(evaluator="surrogate", executor="local", budget=budget,
                                         population=12, tournament=4, **overrides))
    spec = evaluator_spec(config)
    store = MemoryStore()
    driver = Driver(config, get_mode(config.mode, config.max_degree), store, make_screen(spec),
                    executor or LocalExecutor(spec), start_id=start_id, done=len(records or []), progress=None)
    if records:
        driver.restore(records)
    driver.run()
    return store.records, driver


def test_budget_gives_exactly_n_records_with_unique_ids():
    records, driver = run_driver(budget=150)
    assert len(records) == 150
    assert sorted(r["id"] for r in records) == list(range(150))
    for r in records:
        assert set(RECORD_COLUMNS) <= set(r)
        assert r["status"] in STATUSES
    statuses = Counter(r["status"] for r in records)
    assert statuses["ok"] > 20
    children = [r for r in records if r["parent_id"] is not None]
    assert children and all(r["parent_id"] < r["id"] for r in children)
    assert all(r["mutation"] not in ("random", "seed") for r in children)


def test_duplicates_copy_scores_even_when_original_in_flight():
    config = build_config(overrides=dict(evaluator="surrogate"))
    executor = QueuedExecutor(evaluator_spec(config), capacity=4, shuffle_seed=0)
    records, _ = run_driver(budget=200, executor=executor)
    assert len(records) == 200 and len({r["id"] for r in records}) == 200
    by_id = {r["id"]: r for r in records}
    copies = [r for r in records if r["status"] in ("duplicate", "equivalent")]
    assert copies
    for r in copies:
        original = by_id[r["equivalent_to"]]
        assert r["acc_resnet"] == original["acc_resnet"]


@pytest.mark.parametrize("executor_capacity", [1, 3])
def test_sample_mode_never_proposes_a_batch_moment(executor_capacity):
    config = build_config(overrides=dict(evaluator="surrogate"))
    executor = QueuedExecutor(evaluator_spec(config), capacity=executor_capacity, shuffle_seed=0)
    records, _ = run_driver(budget=150, executor=executor, mode="sample")
    for r in records:
        graph = Graph.from_json(r["graph"])
        assert not graph.uses_batch_stats and not r["uses_batch_stats"]
        assert not any(n.op.startswith("batch_") for n in graph.nodes)


def test_polynomial_mode_only_polynomials_within_the_limit():
    records, _ = run_driver(budget=150, mode="polynomial", max_degree=3,
                            seed_formulas=["x * x * gamma + beta"])
    assert records[0]["formula"] == "x * x * gamma + beta" and records[0]["mutation"] == "seed"
    for r in records:  # the bound is on the eval-mode layer (batch moments are constants there)
        assert r["inference_degree"] is not None and 1 <= r["inference_degree"] <= 3
        assert Graph.from_json(r["graph"]).inference_degree == r["inference_degree"]
    assert any(r["poly_degree"] is None for r in records)  # e.g. a division by batch_std(x)


def test_restore_continues_exactly_like_a_fresh_run():
    """Stop at 60 records, rebuild from the records, continue to 140: the same records as
    one uninterrupted run (local executor, deterministic surrogate)."""
    full, full_driver = run_driver(budget=140)
    first, _ = run_driver(budget=60)
    rest, driver = run_driver(budget=140, records=first, start_id=60)
    assert len(first) + len(rest) == 140
    keys = ("id", "parent_id", "graph_hash", "status", "equivalent_to", "acc_resnet", "mutation")
    assert [[r[k] for k in keys] for r in first + rest] == [[r[k] for k in keys] for r in full]
    # and it ends in the same state: the same population, members in the same order
    assert len(driver.population) == 12
    state = lambda d: [(m.id, m.graph.hash, m.scores) for m in d.population]
    assert state(driver) == state(full_driver)


def test_population_is_the_last_p_ok_records():
    records, _ = run_driver(budget=80)
    _, driver = run_driver(budget=80, records=records, start_id=80)
    ok = [r["id"] for r in records if r["status"] == "ok"]
    assert [m.id for m in driver.population] == ok[-12:]


def test_config_validation():
    with pytest.raises(ConfigError, match="mode"):
        build_config(overrides={"mode": "nope"})
    with pytest.raises(ConfigError, match="budget"):
        build_config({"budget": "ten"})
    with pytest.raises(ConfigError, match="unknown config key"):
        build_config({"bogus": 1})
    with pytest.raises(ConfigError, match="arch"):
        build_config({"archs": ["vgg"]})
    with pytest.raises(ConfigError, match="tournament"):
        build_config({"population": 4, "tournament": 8})
    config = build_config({"budget": 10, "max-degree": 2}, {"budget": 20, "seed": None})
    assert config.budget == 20 and config.max_degree == 2
    assert build_config(overrides=config.to_dict()) == config


# -- the command line ----------------------------------------------------------------------------------

def _cli(argv, capsys):
    from search.cli import main
    rc = main(argv)
    return rc, capsys.readouterr()


SURROGATE = ["--evaluator", "surrogate", "--executor", "local", "--population", "8", "--tournament", "3",
             "--quiet"]


def test_cli_run_writes_every_design_column_and_the_front(tmp_path, capsys):
    from search.pareto import pareto_mask_bruteforce
    from search.store.reader import load_run
    out = tmp_path / "run"
    rc, cap = _cli(["search", *SURROGATE, "--budget", "60", "--out", str(out), "--flush-every", "7"], capsys)
    assert rc == 0, cap.err
    assert cap.out.strip() == str(out)
    run = load_run(out)
    df = run.candidates
    assert len(df) == 60 and df["id"].is_unique and sorted(df["id"]) == list(range(60))
    for col in RECORD_COLUMNS + ["acc_resnet", "acc_mobilenetv2", "acc_efficientnet", "mutation"]:
        assert col in df.columns
    info = json.loads((out / "run.json").read_text())
    assert info["seed"] == 0 and info["config"]["budget"] == 60 and "torch" in info["versions"]
    assert info["archs"] == ["resnet", "mobilenetv2", "efficientnet"] and info["started_at"]
    # front.parquet == a brute-force Pareto front of the ok records
    import pandas as pd
    front = pd.read_parquet(out / "front.parquet")
    ok = df[df["status"] == "ok"]
    cols = ["acc_resnet", "acc_mobilenetv2", "acc_efficientnet"]
    mask = pareto_mask_bruteforce(ok[cols].astype(float).to_numpy(), ["max"] * 3)
    assert sorted(front["id"]) == sorted(ok["id"][mask])
    assert len(front) >= 1


def test_cli_cost_objective_in_front(tmp_path, capsys):
    out = tmp_path / "run"
    rc, cap = _cli(["search", *SURROGATE, "--budget", "40", "--out", str(out), "--cost"], capsys)
    assert rc == 0, cap.err
    info = json.loads((out / "run.json").read_text())
    assert {"column": "params_per_channel", "goal": "min"} in info["objectives"]


@pytest.mark.parametrize("argv, message", [
    (["--mode", "nope"], "unknown mode"),
    (["--budget", "0"], "budget"),
    (["--archs", "vgg"], "unknown arch"),
    (["--dataset", "mnist"], "unknown dataset"),
    (["--population", "4", "--tournament", "8"], "tournament"),
    (["--mode", "sample", "--seed-formula", "relu((x - batch_mean(x)) / batch_std(x))"], "batch statistics"),
    (["--seed-formula", "x +"], "bad seed formula"),
    (["--budget", "ten"], "invalid int"),
])
def test_cli_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    rc, cap = _cli(["search", "--evaluator", "surrogate", "--out", str(out), *argv], capsys)
    assert rc == 2
    assert message in cap.err and cap.err.count("\n") == 1
    assert not out.exists()


def test_cli_bad_config_file(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tmp_path / "c.toml"
    cfg.write_text('budget = "many"\n')
    rc, cap = _cli(["search", "--config", str(cfg), "--out", str(out)], capsys)
    assert rc == 2 and "budget must be an integer" in cap.err and not out.exists()
    cfg.write_text('budget = 5\nmode = "sample"\nevaluator = "surrogate"\nexecutor = "local"\n'
                   'population = 4\ntournament = 2\n')
    rc, cap = _cli(["search", "--config", str(cfg), "--out", str(out), "--budget", "12", "--quiet"], capsys)
    assert rc == 0, cap.err
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["budget"] == 12 and info["config"]["mode"] == "sample"


def test_cli_refuses_non_empty_out_and_missing_resume_dir(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    rc, cap = _cli(["search", *SURROGATE, "--out", str(out)], capsys)
    assert rc == 2 and "not empty" in cap.err and cap.err.count("\n") == 1
    assert os.listdir(out) == ["keep.txt"]
    rc, cap = _cli(["resume", str(tmp_path / "missing")], capsys)
    assert rc == 2 and "does not exist" in cap.err and not (tmp_path / "missing").exists()
    rc, cap = _cli(["resume", str(out)], capsys)
    assert rc == 2 and cap.err.count("\n") == 1


def test_cli_real_training_on_the_synthetic_set(tmp_path, capsys):
    """The real screen and evaluator (synthetic data, a few steps), local executor."""
    from search.store.reader import load_run
    out = tmp_path / "run"
    rc, cap = _cli(["search", "--dataset", "synthetic", "--steps", "12", "--executor", "local", "--budget", "10",
                    "--population", "4", "--tournament", "2", "--out", str(out), "--quiet",
                    "--seed-formula", "x * sigmoid(v1 * x) / group_std(x) * gamma + beta"], capsys)
    assert rc == 0, cap.err
    df = load_run(out).candidates
    assert len(df) == 10 and df["id"].is_unique
    for col in RECORD_COLUMNS:
        assert col in df.columns
    trained = df[df["worker"] != "driver"]
    ok = trained[trained["status"] == "ok"]
    assert len(ok) >= 1 and ok["acc_resnet"].notna().all() and (ok["steps_trained"] == 12).all()
    # the quality gate runs on the worker, inside the first training: such rows stop early, unscored
    gated = trained[trained["status"] != "ok"]
    assert gated["acc_resnet"].isna().all() and (gated["steps_trained"] < 12).all()
    info = json.loads((out / "run.json").read_text())
    assert info["eval_config"]["dataset"] == "synthetic" and info["eval_config"]["steps"] == 12


def test_evolution_starts_after_p_proposals_even_when_few_of_them_trained():
    """The first population is the first P proposals (seeds, then random layers). Random
    layers are mostly rejected, so waiting for P of them to train never got to a mutation
    (a default run: an hour, 160 random proposals). Here the screen rejects everything but
    the seeds, so the population stays at the seeds; from id P on every proposal is a
    mutation of one of them."""
    from search.workers.executor import make_screen as real_screen

    def seeds_only(spec):
        screen = real_screen(spec)
        check = screen.check

        def only_seeds(graph, cid):
            verdict = check(graph, cid)
            if cid >= 3 and verdict.get("status") is None:
                verdict = {**verdict, "status": "unstable", "reason": "rejected by the test"}
            return verdict
        screen.check = only_seeds
        return screen

    seeds = ["relu((x - batch_mean(x)) / batch_std(x) * gamma + beta)",
             "x * sigmoid(x * v1) / group_std(x) * gamma + beta", "x / max(batch_std(x), instance_std(x) + x * v1) * gamma + beta"]
    config = build_config(overrides=dict(evaluator="surrogate", executor="local", budget=40, population=12,
                                         tournament=4, library_seeds=False, seed_formulas=seeds))
    spec = evaluator_spec(config)
    store = MemoryStore()
    Driver(config, get_mode(config.mode, config.max_degree), store, seeds_only(spec), LocalExecutor(spec),
           progress=None).run()
    by_id = {r["id"]: r for r in store.records}
    assert [by_id[i]["mutation"] for i in range(3)] == ["seed"] * 3 and by_id[0]["status"] == "ok"
    assert all(by_id[i]["mutation"] == "random" for i in range(3, 12))
    later = [by_id[i] for i in range(12, 40)]
    assert all(r["parent_id"] in (0, 1, 2) and r["mutation"] not in ("random", "seed") for r in later)


@pytest.mark.parametrize("argv", [["--archs", "vit,charlm"], ["--archs", "vit", "charlm"], ["--archs", "vit,", "charlm"]])
def test_archs_are_given_by_spaces_or_commas(argv):
    import argparse

    from search.config import add_flags
    parser = argparse.ArgumentParser()
    add_flags(parser)
    assert build_config(overrides=vars(parser.parse_args(argv))).archs == ("vit", "charlm")
