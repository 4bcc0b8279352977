"""`RunStore`: the single writer of a run directory (README, "The run directory").

    store = RunStore.create("results/demo", {"config": {...}, "seed": 0, "archs": ["resnet"],
                                             "objectives": [{"column": "acc_resnet", "goal": "max"}],
                                             "versions": {...}, "started_at": "..."})
    with store:
        store.append({"id": store.next_id, "status": "ok", "formula": ..., "acc_resnet": 0.91, ...})

    store = RunStore.open("results/demo")      # resume: next_id, records(), front
    store.records()                            # every record so far as dicts, id order

Records are buffered and flushed every `flush_every` records or `flush_seconds`
seconds into a new part file `candidates/part-<seq:06d>.parquet`: written to a
hidden temporary name, fsynced, then renamed, so a crash never leaves a visible
half-written part and parquet files are never rewritten. After each flush
`front.parquet` (the Pareto front of the `ok` records) is rewritten the same way,
from a front kept in memory and updated incrementally. Then each of `store.watchers`
(`search.watch`: the live Optuna study, MLflow) is handed the rows just written,
`watcher.flushed(rows)`, so a watcher never shows a record the directory lacks.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

from evaluators import record as _record

from search.store.files import write_atomic as _write_atomic  # one atomic writer for every output
from search.pareto import pareto_mask
from search.store.reader import (CANDIDATES, FRONT, RUN_JSON, STATUSES, RunDirError, archs_of,
                     candidate_schema, objectives_of, part_files, read_parts, read_run_json,
                     to_pandas)

__all__ = ["RunStore", "RunDirError", "STATUSES", "candidate_schema"]

PENDING = "pending"   # checkpoints of candidates between the rungs of a progressive hurdle


class RunStore:
    """Appends candidate records to a run directory. One writer per directory."""

    def __init__(self, run_dir, info: dict, *, flush_every: int = 20, flush_seconds: float = 30.0,
                 _history=None):
        self.dir = Path(run_dir)
        self.info = info
        self.archs = archs_of(info)
        self.acc_columns = _record.acc_columns(self.archs)
        self.objectives = objectives_of(info)
        self.goals = [g for _, g in self.objectives]
        self.schema = candidate_schema(self.archs)
        self.columns = list(self.schema.names)
        self._typed = {t: _record.names(self.archs, t) for t in ("int64", "float64", "string", "bool", "json",
                                                                  "timestamp")}
        self._known = set(self.columns)
        self.flush_every = max(1, int(flush_every))
        self.flush_seconds = float(flush_seconds)
        self._buffer: list[dict] = []
        self._last_flush = time.monotonic()
        self._history = _history if _history is not None else self.schema.empty_table()
        self._written: list = []              # tables flushed by this writer (records() combines)
        self.ids: set[int] = set()
        self.next_id = 0
        self.count = 0
        self._seq = 0
        self._warned: set[str] = set()
        self._closed = False
        self.watchers: list = []              # each gets flushed(rows) once a part file is on disk
        self._recorded_checkpoints: set[int] = set()   # removed once their record is on disk
        # the front, kept in memory: rows and their objective points (minimisation not applied)
        self._front_rows: list[dict] = []
        self._front_points: list[tuple] = []
        if self._history.num_rows:
            ids = self._history.column("id").to_pylist()
            self.ids = set(ids)
            self.next_id = max(ids) + 1
            self.count = len(ids)
            self._init_front(self._history)
        seqs = [s for s, _ in part_files(self.dir / CANDIDATES)]
        self._seq = (max(seqs) + 1) if seqs else 0

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def create(cls, run_dir, run_info: dict, **kwargs) -> "RunStore":
        """A new run directory with run.json; refuses an existing non-empty directory."""
        run_dir = Path(run_dir)
        if run_dir.exists():
            if not run_dir.is_dir():
                raise RunDirError(f"{run_dir}: exists and is not a directory")
            if any(run_dir.iterdir()):
                raise RunDirError(f"{run_dir}: exists and is not empty (use `evonorm resume` to continue a run)")
        if not isinstance(run_info, dict):
            raise TypeError("run_info must be a dict")
        try:
            archs_of(run_info)
            objectives_of(run_info)
        except ValueError as err:
            raise RunDirError(f"run info: {err}") from None
        text = json.dumps(run_info, indent=2, sort_keys=True, default=str) + "\n"
        (run_dir / CANDIDATES).mkdir(parents=True, exist_ok=True)
        _write_atomic(run_dir / RUN_JSON, lambda f: f.write(text.encode("utf-8")))
        store = cls(run_dir, json.loads(text), **kwargs)
        store._write_front()
        return store

    @classmethod
    def open(cls, run_dir, **kwargs) -> "RunStore":
        """An existing run directory, to resume: reads run.json and every part file."""
        run_dir = Path(run_dir)
        info = read_run_json(run_dir)
        history = read_parts(run_dir, archs_of(info))
        (run_dir / CANDIDATES).mkdir(exist_ok=True)
        return cls(run_dir, info, _history=history, **kwargs)

    def update_info(self, changes: dict) -> None:
        """Set top-level keys of run.json (rewritten atomically) and of `info`."""
        info = {**self.info, **changes}
        text = json.dumps(info, indent=2, sort_keys=True, default=str) + "\n"
        _write_atomic(self.dir / RUN_JSON, lambda f: f.write(text.encode("utf-8")))
        self.info = json.loads(text)

    # -- writing -----------------------------------------------------------------------------------
    def append(self, record: dict) -> int:
        """Buffer one record (its id, or the next id when it has none); returns the id.

        Flushes when `flush_every` records are buffered or `flush_seconds` have passed."""
        if self._closed:
            raise RuntimeError("RunStore is closed")
        row = self._normalize(record)
        cid = row["id"]
        if cid in self.ids:
            raise ValueError(f"candidate id {cid} is already recorded")
        self.ids.add(cid)
        if cid >= self.next_id:
            self.next_id = cid + 1
        self._buffer.append(row)
        self.count += 1
        if len(self._buffer) >= self.flush_every or self._due():
            self.flush()
        return cid

    def _due(self) -> bool:
        return time.monotonic() - self._last_flush >= self.flush_seconds

    def flush_if_due(self) -> bool:
        """Flush if records have waited `flush_seconds`; for a driver loop with no appends."""
        if self._buffer and self._due():
            self.flush()
            return True
        return False

    def flush(self) -> None:
        """Write buffered records to a new part file, then rewrite front.parquet."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = self._buffer
        table = pa.Table.from_pylist(rows, schema=self.schema)
        path = self.dir / CANDIDATES / f"part-{self._seq:06d}.parquet"
        _write_atomic(path, lambda f: pq.write_table(table, f))  # on failure rows stay buffered
        self._buffer = []
        self._seq += 1
        self._written.append(table)
        for cid in [c for c in self._recorded_checkpoints if c in {r["id"] for r in rows}]:
            self._recorded_checkpoints.discard(cid)
            self._remove_checkpoint(cid)
        if self._update_front(rows):
            self._write_front()
        for watcher in self.watchers:
            watcher.flushed(rows)

    def close(self) -> None:
        """Flush what is buffered and write the front. Idempotent."""
        if self._closed:
            return
        self.flush()
        self._write_front()
        self._closed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- candidates between rungs -----------------------------------------------------------------
    def save_checkpoint(self, cid: int, record: dict, state: bytes) -> None:
        """Keep a candidate that cleared a hurdle (its record so far and its training state)
        so that a resumed run continues it instead of losing or retraining it."""
        folder = self.dir / PENDING
        folder.mkdir(exist_ok=True)
        text = json.dumps(record, sort_keys=True, default=str).encode("utf-8")
        _write_atomic(folder / f"{cid}.state", lambda f: f.write(state))
        _write_atomic(folder / f"{cid}.json", lambda f: f.write(text))   # written last: complete

    def drop_checkpoint(self, cid: int) -> None:
        """The candidate is recorded: its checkpoint goes once the record is in a part file."""
        if (self.dir / PENDING / f"{cid}.json").exists():
            self._recorded_checkpoints.add(cid)

    def checkpoints(self) -> list[tuple[dict, bytes]]:
        """(record, state) of every candidate left between rungs, id order; checkpoints of
        candidates already recorded (a crash between the two writes) are removed."""
        folder, out = self.dir / PENDING, []
        for path in sorted(folder.glob("*.json"), key=lambda p: int(p.stem)) if folder.is_dir() else []:
            cid = int(path.stem)
            if cid in self.ids:
                self._remove_checkpoint(cid)
                continue
            try:
                out.append((json.loads(path.read_text("utf-8")), (folder / f"{cid}.state").read_bytes()))
            except (OSError, ValueError) as err:
                raise RunDirError(f"{path}: unreadable checkpoint: {err}") from None
        return out

    def _remove_checkpoint(self, cid: int) -> None:
        for suffix in (".json", ".state"):
            try:
                os.unlink(self.dir / PENDING / f"{cid}{suffix}")
            except FileNotFoundError:
                pass

    # -- reading (resume) --------------------------------------------------------------------------
    def table(self):
        """Every record so far (flushed and buffered) as a pyarrow Table, id order."""
        import pyarrow as pa

        tables = [self._history, *self._written]
        if self._buffer:
            tables.append(pa.Table.from_pylist(self._buffer, schema=self.schema))
        table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
        return table.sort_by("id") if table.num_rows > 1 else table

    def records(self) -> list[dict]:
        """Every record so far as dicts (None for nulls), id order."""
        return self.table().to_pylist()

    def dataframe(self):
        """Every record so far as a pandas DataFrame (nullable ints), id order."""
        return to_pandas(self.table()).reset_index(drop=True)

    def front(self) -> list[dict]:
        """The current Pareto front of flushed `ok` records, id order."""
        return sorted(self._front_rows, key=lambda r: r["id"])

    def __len__(self) -> int:
        return self.count

    # -- internals ---------------------------------------------------------------------------------
    def _normalize(self, record: dict) -> dict:
        if not isinstance(record, dict):
            raise TypeError("a record is a dict")
        for key in record:
            if key not in self._known and key not in self._warned:
                self._warned.add(key)
                warnings.warn(f"RunStore: column {key!r} is not in the run schema; dropped", stacklevel=3)
        row = {c: record.get(c) for c in self.columns}
        if row["id"] is None:
            row["id"] = self.next_id
        for c in self._typed["int64"]:
            v = row[c]
            if v is not None:
                if isinstance(v, float) and math.isnan(v):
                    row[c] = None
                elif isinstance(v, bool) or int(v) != v:
                    raise ValueError(f"record {row['id']}: {c} must be an integer, got {v!r}")
                else:
                    row[c] = int(v)
        for c in self._typed["string"]:
            if row[c] is not None:
                row[c] = str(row[c])
        if row["status"] not in STATUSES:
            raise ValueError(f"record {row['id']}: status must be one of {', '.join(STATUSES)}, "
                             f"got {row['status']!r}")
        for c in self._typed["float64"]:
            v = row[c]
            if v is not None:
                v = float(v)
                row[c] = None if math.isnan(v) else v
        for c in self._typed["bool"]:
            if row[c] is not None:
                row[c] = bool(row[c])
        for c in self._typed["json"]:
            if row[c] is not None and not isinstance(row[c], str):
                row[c] = json.dumps(row[c], sort_keys=True, default=float)
        for c in self._typed["timestamp"]:
            row[c] = _timestamp(c, row[c], row["id"])
        return row

    def _point(self, row: dict):
        vals = []
        for col, _ in self.objectives:
            v = row.get(col)
            if v is None:
                return None
            v = float(v)
            if math.isnan(v):
                return None
            vals.append(v)
        return tuple(vals)

    def _update_front(self, rows) -> bool:
        """Merge new rows into the front; True when it changed."""
        new = [(r, p) for r in rows if r["status"] == "ok" for p in [self._point(r)] if p is not None]
        if not new:
            return False
        cand_rows = self._front_rows + [r for r, _ in new]
        cand_pts = self._front_points + [p for _, p in new]
        mask = pareto_mask(cand_pts, self.goals)
        self._front_rows = [r for r, k in zip(cand_rows, mask) if k]
        self._front_points = [p for p, k in zip(cand_pts, mask) if k]
        return True

    def _init_front(self, table) -> None:
        import pyarrow.compute as pc

        ok = table.filter(pc.equal(table.column("status"), "ok"))
        if ok.num_rows == 0:
            return
        import numpy as np

        cols = [c for c, _ in self.objectives]
        pts = np.column_stack([ok.column(c).to_numpy(zero_copy_only=False).astype(float)
                               if c in ok.column_names else np.full(ok.num_rows, np.nan) for c in cols])
        mask = pareto_mask(pts, self.goals)
        front = ok.filter(mask).select(self.columns)
        self._front_rows = front.to_pylist()
        self._front_points = [self._point(r) for r in self._front_rows]

    def _write_front(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(self.front(), schema=self.schema)
        _write_atomic(self.dir / FRONT, lambda f: pq.write_table(table, f))


def _timestamp(column: str, ts, cid) -> datetime:
    """A record's time (created_at): now when missing, an ISO text parsed, UTC when naive."""
    if ts is None:
        ts = datetime.now(timezone.utc)
    elif isinstance(ts, str):
        try:
            ts = datetime.fromisoformat(ts)
        except ValueError:
            raise ValueError(f"record {cid}: {column} is not an ISO time: {ts!r}") from None
    elif not isinstance(ts, datetime):  # datetime subclasses (pandas.Timestamp) pass above
        raise ValueError(f"record {cid}: {column} must be a datetime, got {type(ts).__name__}")
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts


class MemoryStore:
    """The face of RunStore that the driver writes through, kept in a list: for tests and
    benchmarks that measure the search, not parquet."""

    def __init__(self):
        self.records: list[dict] = []
        self.next_id = 0
        self.saved: dict[int, tuple[dict, bytes]] = {}

    def save_checkpoint(self, cid: int, record: dict, state: bytes) -> None:
        self.saved[cid] = (json.loads(json.dumps(record, default=str)), state)

    def drop_checkpoint(self, cid: int) -> None:
        self.saved.pop(cid, None)

    def checkpoints(self) -> list[tuple[dict, bytes]]:
        return [self.saved[c] for c in sorted(self.saved)]

    def append(self, record: dict) -> None:
        self.records.append(dict(record))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
