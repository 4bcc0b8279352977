"""The driver on the real parts: the parquet `RunStore` and the real `Screen` (validity,
duplicate, equivalence, stability), with the surrogate evaluator standing in for training so
that a run of dozens of candidates takes seconds. The stand-ins (`MemoryStore`,
`SurrogateScreen`) are covered in test_search.py; here the records go to disk and come back,
and restore is checked through that round trip."""
from __future__ import annotations

import math

import pytest

from evaluators.record import STATUSES
from evaluators.screen import Screen
from search.session import run_info
from search.config import build_config
from search.engine.driver import Driver
from search.workers.executor import LocalExecutor, evaluator_spec
from search.engine.modes import get_mode
from search.store.reader import load_run
from search.store.writer import RunStore

ACCS = ("acc_resnet", "acc_mobilenetv2", "acc_efficientnet")
KEYS = ("parent_id", "mutation", "graph_hash", "status", "equivalent_to", "steps_trained") + ACCS


def _config(budget, **overrides):
    return build_config(overrides=dict(evaluator="surrogate", executor="local", dataset="synthetic",
                                       budget=budget, population=8, tournament=3, flush_every=5,
                                       **overrides))


class InterruptingExecutor(LocalExecutor):
    """Ctrl-C while the `n`-th candidate that cleared the first hurdle trains its last rung:
    the interruption that leaves a checkpoint behind."""

    def __init__(self, spec, n):
        super().__init__(spec)
        self.n = n

    def wait(self, timeout=None):
        if self._queue and isinstance(self._queue[0][1], dict) and self._queue[0][1]["state"] is not None:
            self.n -= 1
            if self.n == 0:
                raise KeyboardInterrupt
        return super().wait(timeout)


def _drive(run_dir, budget, interrupt_at=None, **overrides):
    """Run (or continue, when `run_dir` holds a run) a search to `budget` records with the
    real store and screen, as `evonorm search` / `evonorm resume` assemble them; with
    `interrupt_at`, stop as Ctrl-C does (the store flushed and closed)."""
    config = _config(budget, **overrides)
    if (run_dir / "run.json").exists():
        store = RunStore.open(run_dir, flush_every=config.flush_every)
        records, checkpoints = store.records(), store.checkpoints()
    else:
        store = RunStore.create(run_dir, run_info(config), flush_every=config.flush_every)
        records, checkpoints = [], []
    screen = Screen(config.eval_config())
    spec = evaluator_spec(config)
    executor = LocalExecutor(spec) if interrupt_at is None else InterruptingExecutor(spec, interrupt_at)
    driver = Driver(config, get_mode(config.mode, config.max_degree), store, screen, executor,
                    start_id=store.next_id, done=len(records), progress=None)
    if records or checkpoints:
        driver.restore(records, checkpoints)
    try:
        driver.run()
    except KeyboardInterrupt:
        assert interrupt_at is not None
    finally:
        store.close()
    return driver


def _rows(run_dir):
    """id -> the fields that must match, read back from the parquet files."""
    frame = load_run(run_dir).candidates
    out = {}
    for row in frame.to_dict("records"):
        out[int(row["id"])] = tuple(_plain(row.get(k)) for k in KEYS)
    return out


def _plain(v):
    """parquet gives NaN/NA for nulls and numpy scalars for numbers: compare as Python."""
    if v is None:
        return None
    try:
        if v != v or (isinstance(v, float) and math.isnan(v)):
            return None
    except (TypeError, ValueError):
        return None
    return v.item() if hasattr(v, "item") else v


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("full") / "run"
    _drive(run_dir, 60)
    return run_dir


def test_a_run_on_disk_has_every_record_once_with_consistent_copies(uninterrupted):
    frame = load_run(uninterrupted).candidates.set_index("id").sort_index()
    assert list(frame.index) == list(range(60))
    assert set(frame["status"]) <= set(STATUSES)
    by_id = frame.to_dict("index")
    full, first_rung = _config(60).rung_steps(300)[-1], _config(60).rung_steps(300)[0]
    for cid, r in by_id.items():
        if r["status"] in ("ok", "stopped"):   # scores of the full budget, or of the rung it reached
            assert all(_plain(r[a]) is not None for a in ACCS), cid
            assert r["steps_trained"] == (full if r["status"] == "ok" else first_rung), cid
        if r["status"] in ("duplicate", "equivalent"):
            original = by_id[int(r["equivalent_to"])]
            assert int(r["equivalent_to"]) < cid and original["status"] not in ("duplicate", "equivalent")
            assert [_plain(r[a]) for a in ACCS] == [_plain(original[a]) for a in ACCS], cid
        if r["status"] in ("invalid", "unstable"):   # rejected by the screen in the driver
            assert r["worker"] == "driver" and all(_plain(r[a]) is None for a in ACCS), cid
        if _plain(r["parent_id"]) is not None:
            assert int(r["parent_id"]) < cid and by_id[int(r["parent_id"])]["status"] == "ok"
    # the real screen did some rejecting, the hurdle some stopping, the evaluator some training
    assert (frame["status"] == "ok").sum() >= 10
    assert frame["status"].isin(["duplicate", "equivalent", "unstable", "invalid"]).sum() >= 1
    assert (frame["status"] == "stopped").sum() >= 1


def test_copies_carry_the_steps_behind_the_scores_they_copy(uninterrupted):
    """steps_trained is the training behind the acc_<arch> scores (README.md, "The run directory")."""
    frame = load_run(uninterrupted).candidates.set_index("id")
    copies = frame[frame["status"].isin(["duplicate", "equivalent"])]
    assert len(copies) >= 1
    for cid, r in copies.iterrows():
        assert _plain(r["steps_trained"]) == _plain(frame.loc[int(r["equivalent_to"]), "steps_trained"]), cid


def test_restore_through_parquet_proposes_what_an_uninterrupted_run_would(uninterrupted, tmp_path, stop_at=17):
    """Stop a run at `stop_at` records (store closed: parts on disk), reopen the directory,
    restore a new driver with a new screen from `store.records()` and continue: every id gets
    the record the uninterrupted run gave it."""
    run_dir = tmp_path / "run"
    _drive(run_dir, stop_at)
    assert len(load_run(run_dir).candidates) == stop_at
    _drive(run_dir, 60)
    resumed, full = _rows(run_dir), _rows(uninterrupted)
    assert sorted(resumed) == list(range(60))
    for cid in range(60):
        assert resumed[cid] == full[cid], (cid, dict(zip(KEYS, resumed[cid])), dict(zip(KEYS, full[cid])))


def test_restore_after_an_interruption_between_rungs_continues_the_checkpointed_candidate(
        uninterrupted, tmp_path):
    """Interrupted while a candidate that cleared the first hurdle trains on: its checkpoint
    is on disk, the resumed driver finishes it (not a new candidate in its place) and the
    run ends as the uninterrupted one did."""
    run_dir = tmp_path / "run"
    driver = _drive(run_dir, 60, interrupt_at=6)
    (pending,) = driver.pending                      # the candidate being trained when stopped
    store = RunStore.open(run_dir)
    assert [int(r["id"]) for r, _ in store.checkpoints()] == [pending]
    assert pending not in store.ids and store.next_id == pending   # nothing after it recorded
    store.close()
    _drive(run_dir, 60)
    resumed, full = _rows(run_dir), _rows(uninterrupted)
    assert sorted(resumed) == list(range(60))
    for cid in range(60):
        assert resumed[cid] == full[cid], (cid, dict(zip(KEYS, resumed[cid])), dict(zip(KEYS, full[cid])))
    assert not (run_dir / "pending").exists() or not list((run_dir / "pending").iterdir())


def test_restore_rebuilds_population_and_screen_memory_from_disk(uninterrupted):
    """The population is the last P `ok` records, and the restored screen calls an already
    recorded layer a duplicate of its recorded id."""
    store = RunStore.open(uninterrupted)
    records = store.records()
    store.close()
    config = _config(60)
    screen = Screen(config.eval_config())
    driver = Driver(config, get_mode("batch"), None, screen, None, start_id=60, done=60, progress=None)
    driver.restore(records)
    ok = [r["id"] for r in records if r["status"] == "ok"]
    assert [m.id for m in driver.population] == ok[-config.population:]
    first_ok = next(r for r in records if r["status"] == "ok")
    verdict = screen.check(first_ok["graph"], 60)
    assert verdict["status"] == "duplicate" and verdict["equivalent_to"] == first_ok["id"]
