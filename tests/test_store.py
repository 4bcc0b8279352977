"""search.store.writer.RunStore (the writer) and search.store.reader.load_run (the reader)."""
from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import synthetic_records, write_run
from evaluators.record import STATUSES
from search.pareto import pareto_mask_bruteforce
from search.store.reader import RunDirError, load_run
from search.store.writer import RunStore

ARCHS = ("resnet", "mobilenetv2")

EXPECTED_SCHEMA = {
    "id": pa.int64(), "parent_id": pa.int64(), "formula": pa.string(), "graph": pa.string(),
    "graph_hash": pa.string(), "status": pa.string(), "reason": pa.string(),
    "equivalent_to": pa.int64(), "acc_resnet": pa.float64(), "acc_mobilenetv2": pa.float64(),
    "params_per_channel": pa.int64(), "uses_batch_stats": pa.bool_(), "poly_degree": pa.int64(),
    "inference_degree": pa.int64(), "he_depth": pa.int64(),
    "seconds": pa.float64(), "worker": pa.string(), "created_at": pa.timestamp("us", tz="UTC"),
    "mutation": pa.string(), "stage_seconds": pa.string(), "steps_trained": pa.int64(),
    "rung_scores": pa.string(), "seed_scores": pa.string(), "loss_curves": pa.string(), "cached": pa.bool_(),
}


def info(archs=ARCHS, cost=False):
    objs = [{"column": f"acc_{a}", "goal": "max"} for a in archs]
    if cost:
        objs.append({"column": "params_per_channel", "goal": "min"})
    return {"config": {"budget": 10}, "seed": 1, "versions": {}, "started_at": "2025-01-01T00:00:00Z",
            "archs": list(archs), "objectives": objs}


def brute_front_ids(records, objectives):
    ok = [r for r in records if r["status"] == "ok"
          and all(r.get(c) is not None for c, _ in objectives)]
    pts = np.array([[float(r[c]) for c, _ in objectives] for r in ok]).reshape(len(ok), len(objectives))
    mask = pareto_mask_bruteforce(pts, [g for _, g in objectives])
    return sorted(r["id"] for r, k in zip(ok, mask) if k)


def file_digests(run_dir):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (run_dir / "candidates").iterdir()}


def test_n_appends_give_n_records_with_schema(tmp_path):
    path = write_run(tmp_path / "run", n=53, flush_every=7)
    parts = sorted((path / "candidates").glob("part-*.parquet"))
    assert [p.name for p in parts] == [f"part-{i:06d}.parquet" for i in range(8)]  # 7*7 + 4
    for p in parts:
        schema = pq.read_schema(p)
        assert {f.name: f.type for f in schema} == EXPECTED_SCHEMA
        assert not schema.field("id").nullable
    run = load_run(path)
    df = run.candidates
    assert len(df) == 53
    assert df["id"].tolist() == list(range(53))
    assert df["id"].is_unique
    assert list(df.columns) == list(EXPECTED_SCHEMA)
    assert str(df["created_at"].dtype) == "datetime64[us, UTC]"
    assert df["parent_id"].isna().sum() >= 6
    assert set(df["status"]) <= set(STATUSES) and "stopped" in set(df["status"])
    # the written values come back
    originals = synthetic_records(53, ARCHS, 0)
    back = run.records()
    for orig, rec in zip(originals, back):
        assert rec["formula"] == orig["formula"]
        assert rec["parent_id"] == orig["parent_id"]
        assert rec["acc_resnet"] == orig.get("acc_resnet")
        assert json.loads(rec["stage_seconds"]) == orig["stage_seconds"]
        assert rec["created_at"] == orig["created_at"]
    assert not [p for p in (path / "candidates").iterdir() if p.name.startswith(".")]


def test_missing_optional_keys_become_nulls(tmp_path):
    with RunStore.create(tmp_path / "r", info()) as store:
        assert store.append({"status": "invalid", "reason": "bad"}) == 0
        assert store.append({"id": 5, "status": "ok", "acc_resnet": 0.5, "acc_mobilenetv2": float("nan")}) == 5
        assert store.next_id == 6
        assert store.append({"status": "failed"}) == 6
    rec = load_run(tmp_path / "r").records()
    assert [r["id"] for r in rec] == [0, 5, 6]
    assert rec[0]["parent_id"] is None and rec[0]["acc_resnet"] is None and rec[0]["formula"] is None
    assert rec[1]["acc_mobilenetv2"] is None          # NaN stored as null
    assert isinstance(rec[2]["created_at"], datetime) and rec[2]["created_at"].tzinfo is not None


def test_bad_records_are_refused_before_buffering(tmp_path):
    store = RunStore.create(tmp_path / "r", info())
    with pytest.raises(ValueError, match="status"):
        store.append({"status": "great"})
    with pytest.raises(ValueError, match="parent_id"):
        store.append({"status": "ok", "parent_id": 1.5})
    store.append({"id": 3, "status": "ok"})
    with pytest.raises(ValueError, match="already recorded"):
        store.append({"id": 3, "status": "ok"})
    with pytest.warns(UserWarning, match="not_a_column"):
        store.append({"status": "ok", "not_a_column": 1})
    store.close()
    assert len(load_run(tmp_path / "r").candidates) == 2


def test_create_refuses_non_empty_dir(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(RunDirError, match="not empty"):
        RunStore.create(tmp_path / "full", info())
    (tmp_path / "empty").mkdir()
    RunStore.create(tmp_path / "empty", info()).close()
    assert json.loads((tmp_path / "empty" / "run.json").read_text())["seed"] == 1
    with pytest.raises(RunDirError):
        RunStore.create(tmp_path / "bad", {"archs": []})
    assert issubclass(RunDirError, ValueError)


def test_flush_by_count_and_by_time(tmp_path):
    store = RunStore.create(tmp_path / "r", info(), flush_every=3, flush_seconds=3600)
    for i in range(2):
        store.append({"status": "ok"})
    assert not list((tmp_path / "r" / "candidates").glob("part-*"))
    assert len(store.records()) == 2           # buffered records are visible to records()
    store.append({"status": "ok"})
    assert len(list((tmp_path / "r" / "candidates").glob("part-*"))) == 1
    store.flush_seconds = 0.05
    store.append({"status": "ok"})
    time.sleep(0.06)
    assert store.flush_if_due()
    assert len(list((tmp_path / "r" / "candidates").glob("part-*"))) == 2
    store.append({"status": "invalid"})      # due already (time) -> flushed on append
    time.sleep(0.06)
    store.append({"status": "invalid"})
    assert len(list((tmp_path / "r" / "candidates").glob("part-*"))) >= 3
    store.close()
    store.close()                             # idempotent
    with pytest.raises(RuntimeError):
        store.append({"status": "ok"})


def test_part_files_are_never_rewritten_and_resume_continues(tmp_path):
    path = write_run(tmp_path / "run", n=30, flush_every=7)
    before = file_digests(path)
    store = RunStore.open(path, flush_every=4)
    assert store.next_id == 30 and len(store) == 30
    assert [r["id"] for r in store.records()] == list(range(30))
    objectives = [("acc_resnet", "max"), ("acc_mobilenetv2", "max")]
    assert [r["id"] for r in store.front()] == brute_front_ids(store.records(), objectives)
    with pytest.raises(ValueError):
        store.append({"id": 10, "status": "ok"})
    for rec in synthetic_records(50, ARCHS, seed=3)[30:]:
        store.append(rec)
    store.close()
    after = file_digests(path)
    assert {k: after[k] for k in before} == before      # old parts untouched
    assert len(after) > len(before)
    run = load_run(path)
    assert run.candidates["id"].tolist() == list(range(50))


@pytest.mark.parametrize("cost", [False, True])
def test_front_parquet_equals_bruteforce(tmp_path, cost):
    path = write_run(tmp_path / "run", n=150, flush_every=9, cost=cost, seed=4)
    run = load_run(path)
    records = run.records()
    expected = brute_front_ids(records, run.objectives)
    assert pq.read_table(path / "front.parquet").column("id").to_pylist() == expected
    assert run.front()["id"].tolist() == expected
    assert {f.name: f.type for f in pq.read_schema(path / "front.parquet")} == EXPECTED_SCHEMA
    assert [r["id"] for r in RunStore.open(path).front()] == expected


def test_front_parquet_written_after_every_flush(tmp_path):
    store = RunStore.create(tmp_path / "r", info(), flush_every=2)
    assert pq.read_table(tmp_path / "r" / "front.parquet").num_rows == 0
    store.append({"status": "ok", "acc_resnet": 0.5, "acc_mobilenetv2": 0.5})
    store.append({"status": "ok", "acc_resnet": 0.6, "acc_mobilenetv2": 0.4})
    assert sorted(pq.read_table(tmp_path / "r" / "front.parquet").column("id").to_pylist()) == [0, 1]
    store.append({"status": "ok", "acc_resnet": 0.7, "acc_mobilenetv2": 0.7})
    store.append({"status": "invalid", "acc_resnet": 0.9, "acc_mobilenetv2": 0.9})
    assert pq.read_table(tmp_path / "r" / "front.parquet").column("id").to_pylist() == [2]
    store.close()


def test_killed_writer_temp_file_is_ignored(tmp_path):
    path = write_run(tmp_path / "run", n=20, flush_every=7)
    # a writer killed mid-flush leaves its hidden temp part (half-written) behind
    (path / "candidates" / ".part-000003.1234.tmp").write_bytes(b"PAR1 half a row group")
    (path / ".front.1234.tmp").write_bytes(b"junk")
    assert len(load_run(path).candidates) == 20
    store = RunStore.open(path)
    assert store.next_id == 20
    store.append({"status": "ok"})
    store.close()
    assert len(load_run(path).candidates) == 21


def test_garbage_part_file_is_a_run_dir_error(tmp_path):
    path = write_run(tmp_path / "run", n=20, flush_every=7)
    (path / "candidates" / "part-000009.parquet").write_bytes(b"this is not parquet at all")
    with pytest.raises(RunDirError, match="part-000009.parquet") as err:
        load_run(path)
    assert "\n" not in str(err.value)
    with pytest.raises(RunDirError):
        RunStore.open(path)
    # a truncated real part file: also an error, naming it
    (path / "candidates" / "part-000009.parquet").unlink()
    good = path / "candidates" / "part-000000.parquet"
    data = good.read_bytes()
    good.write_bytes(data[: len(data) // 2])
    with pytest.raises(RunDirError, match="part-000000.parquet"):
        load_run(path)


def test_bad_run_directories(tmp_path):
    with pytest.raises(RunDirError, match="no such run directory"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="run.json"):
        load_run(tmp_path / "empty")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "run.json").write_text("{not json")
    with pytest.raises(RunDirError, match="run.json.*JSON"):
        load_run(tmp_path / "badjson")
    (tmp_path / "noarchs").mkdir()
    (tmp_path / "noarchs" / "run.json").write_text("{}")
    with pytest.raises(RunDirError, match="archs"):
        load_run(tmp_path / "noarchs")
    # a fresh run with no records yet loads as an empty table with every column
    RunStore.create(tmp_path / "fresh", info()).close()
    run = load_run(tmp_path / "fresh")
    assert run.candidates.empty and list(run.candidates.columns) == list(EXPECTED_SCHEMA)
    assert run.front().empty


def test_duckdb_and_polars_read_the_glob(tmp_path):
    import duckdb
    import polars as pl
    path = write_run(tmp_path / "run", n=40, flush_every=6)
    (path / "candidates" / ".part-000099.1.tmp").write_bytes(b"junk")  # hidden: globs skip it
    glob = str(path / "candidates" / "*.parquet")
    n_ok = sum(r["status"] == "ok" for r in synthetic_records(40, ARCHS, 0))
    rows = duckdb.sql(f"select id, formula, acc_resnet from '{glob}' where status = 'ok' order by id").fetchall()
    assert len(rows) == n_ok
    df = pl.read_parquet(glob)
    assert df.height == 40 and df["id"].sort().to_list() == list(range(40))
    assert df.schema["created_at"] == pl.Datetime("us", "UTC")
