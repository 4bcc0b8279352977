"""The reading side of a run directory (README, "The run directory").

    run = load_run("results/demo")
    run.info            # run.json as a dict
    run.candidates      # every record, a pandas DataFrame in id order
    run.objectives      # [(column, goal)], e.g. [("acc_resnet", "max"), ...]
    run.front()         # the Pareto front recomputed from the candidates

Part files are read one by one with pyarrow; hidden files (a writer's temporary
`.part-*.tmp`) are ignored. Anything unreadable is a `RunDirError` naming the file.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from evaluators.record import STATUSES  # noqa: F401  (one list of statuses)
from evaluators.record import acc_columns
from evaluators.record import schema as candidate_schema  # the record's schema, named for this module
from primitives.util import one_line

from search.errors import RunDirError
PART_RE = re.compile(r"^part-(\d+)\.parquet$")
CANDIDATES = "candidates"
RUN_JSON = "run.json"
FRONT = "front.parquet"


def part_files(cand_dir: Path) -> list[tuple[int, Path]]:
    """Visible part files (seq, path) in sequence order; hidden and other files are skipped."""
    out = []
    try:
        names = os.listdir(cand_dir)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise RunDirError(f"{cand_dir}: cannot list: {err.strerror or err}") from None
    for name in names:
        m = PART_RE.match(name)
        if m:
            out.append((int(m.group(1)), cand_dir / name))
    out.sort()
    return out


def read_run_json(run_dir) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunDirError(f"{run_dir}: no such run directory")
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: not a directory")
    path = run_dir / RUN_JSON
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunDirError(f"{path}: missing (not a run directory?)") from None
    except (OSError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path}: cannot read: {_one_line(err)}") from None
    try:
        info = json.loads(text)
    except json.JSONDecodeError as err:
        raise RunDirError(f"{path}: not valid JSON: {err.msg} at line {err.lineno}") from None
    if not isinstance(info, dict):
        raise RunDirError(f"{path}: expected a JSON object")
    try:
        archs_of(info)
        objectives_of(info)
    except ValueError as err:
        raise RunDirError(f"{path}: {err}") from None
    return info


def archs_of(info: dict) -> list[str]:
    archs = info.get("archs")
    if archs is None:
        archs = (info.get("config") or {}).get("archs") if isinstance(info.get("config"), dict) else None
    if archs is None:
        raise ValueError('no "archs" list')
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) and a for a in archs):
        raise ValueError('"archs" must be a non-empty list of names')
    return list(archs)


def objectives_of(info: dict) -> list[tuple[str, str]]:
    """[(column, goal)]; default: every proxy accuracy, maximised."""
    from search.pareto import normalize_objectives

    objs = info.get("objectives")
    if objs is None:
        return [(f"acc_{a}", "max") for a in archs_of(info)]
    if not isinstance(objs, list):
        raise ValueError('"objectives" must be a list')
    return normalize_objectives(objs)


def read_parts(run_dir, archs):
    """All visible part files as one pyarrow Table in the run's schema, sorted by id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = candidate_schema(archs)
    paths = [path for _, path in part_files(Path(run_dir) / CANDIDATES)]

    def read(path):
        try:
            with open(path, "rb") as f:
                table = pq.ParquetFile(f).read(use_threads=False)
        except Exception as err:  # pyarrow raises ArrowInvalid, OSError, ...
            raise RunDirError(f"{path}: unreadable part file: {_one_line(err)}") from None
        try:
            return _conform(table, schema)
        except (ValueError, TypeError, pa.ArrowException) as err:
            raise RunDirError(f"{path}: unexpected columns: {_one_line(err)}") from None

    if len(paths) > 8:  # many small parts: per-file overhead dominates, read a few at a time
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1))) as pool:
            tables = list(pool.map(read, paths))
    else:
        tables = [read(path) for path in paths]
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables)
    if table.num_rows > 1:
        table = table.sort_by("id")
    return table


def _conform(table, schema):
    """Cast a part to the run schema; columns it lacks become nulls, extra columns are kept."""
    import pyarrow as pa

    missing = [f.name for f in schema if f.name not in table.column_names]
    if "id" in missing or "status" in missing:
        raise ValueError(f"no {'id' if 'id' in missing else 'status'} column")
    cols, fields = [], []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            if col.type != f.type:
                col = col.cast(f.type)
        else:
            col = pa.nulls(table.num_rows, f.type)
        cols.append(col)
        fields.append(pa.field(f.name, f.type))
    for name in table.column_names:
        if name not in schema.names:
            cols.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(cols, schema=pa.schema(fields))


def to_pandas(table):
    """pandas with nullable integer and boolean columns (ids stay integers next to nulls)."""
    import pandas as pd
    import pyarrow as pa

    mapping = {pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}
    return table.to_pandas(types_mapper=mapping.get)


@dataclass
class Run:
    dir: Path
    info: dict
    table: object                      # pyarrow.Table of every record, id order
    _frame: object = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.dir.resolve().name

    @property
    def archs(self) -> list[str]:
        return archs_of(self.info)

    @property
    def acc_columns(self) -> list[str]:
        return acc_columns(self.archs)

    @property
    def objectives(self) -> list[tuple[str, str]]:
        return objectives_of(self.info)

    @property
    def mode(self) -> str:
        """The search mode the run was made in (batch, sample or polynomial)."""
        return (self.info.get("config") or {}).get("mode", "batch")

    @property
    def retrain_path(self) -> Path:
        """Where `evonorm retrain` writes its table unless told otherwise."""
        return self.dir / "retrain.parquet"

    def retrain_rows(self, path: str | Path | None = None) -> list[dict] | None:
        """The rows of the run's finished retrain (or of the table at `path`, one written with
        `retrain -o`), or None before one finished."""
        path = Path(path) if path is not None else self.retrain_path
        if not path.exists():
            return None
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()

    @property
    def candidates(self):
        """Every record as a pandas DataFrame, id order, index reset."""
        if self._frame is None:
            self._frame = to_pandas(self.table).reset_index(drop=True)
        return self._frame

    def records(self) -> list[dict]:
        """Every record as a dict (None for nulls), id order."""
        return self.table.to_pylist()

    def front(self):
        """The Pareto front of the `ok` records over the run's objectives (DataFrame, id order)."""
        from search.pareto import front_table

        return front_table(self.candidates, self.objectives)

    def candidate(self, cid: int) -> dict | None:
        df = self.candidates
        rows = df.index[df["id"] == cid]
        if len(rows) == 0:
            return None
        return _row_dict(df.loc[rows[0]])


def _row_dict(row) -> dict:
    import pandas as pd

    out = {}
    for k, v in row.items():
        out[k] = None if (v is None or (not isinstance(v, str) and pd.isna(v))) else v
    return out


def load_run(run_dir) -> Run:
    """run.json and every candidate record; raises RunDirError for anything missing or corrupt."""
    run_dir = Path(run_dir)
    info = read_run_json(run_dir)
    table = read_parts(run_dir, archs_of(info))
    return Run(run_dir, info, table)


def _one_line(err) -> str:
    return one_line(err, kind=False)
