"""`--mlflow [URI]`: the run as an MLflow parent run, each candidate a child run.

    evonorm search --mlflow                          # sqlite:///RUN/mlflow.db, in the run directory
    evonorm search --mlflow http://mlflow.lab:5000   # a team's tracking server
    mlflow ui --backend-store-uri sqlite:///results/demo/mlflow.db

The parent run (named after the run directory, in the experiment "evonorm" or
$MLFLOW_EXPERIMENT_NAME) holds the configuration as params, and at every flush the
progress as metrics (`records`, `ok`, the best score of each objective, at step =
records). Each candidate record becomes a child run as its part file is written: tags
`evonorm.id`, `status`, `reason`, `worker`, `equivalent_to`; params `id`, `formula`,
`graph_hash`, `parent_id`, `mutation`; metrics `acc_<arch>` (at each hurdle's step,
then at `steps_trained`), `steps_trained`, `seconds`, `params_per_channel` and the
degrees. Its MLflow status is FINISHED, KILLED for `stopped`, FAILED for `failed`.

The parent run's id is kept in RUN/mlflow.json, so a resumed run logs into the same
parent; the candidates already logged there are read back and skipped (a child left
RUNNING by a crash in the middle of its logging is deleted and logged again).

MLflow is an optional extra (`pip install 'evonorm[mlflow]'`, the skinny client:
it writes a SQLite store through the SQLAlchemy that Optuna brings). MLflow 3 refuses
its old file store (./mlruns) by default, hence the SQLite file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from primitives.util import is_missing, write_atomic
from search.errors import ConfigError
from search.watch import Watcher

IN_RUN = "run"                     # the setting's value for "a store in the run directory"
DATABASE = "mlflow.db"
STATE = "mlflow.json"
EXPERIMENT = "evonorm"
INSTALL = "pip install 'evonorm[mlflow]' (or pip install mlflow-skinny)"
PARAM_LIMIT = 6000                 # MLflow's longest param value
TAG_LIMIT = 8000


def require_mlflow() -> None:
    """A ConfigError (one line: how to install it) unless MLflow can be imported."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise ConfigError(f"--mlflow needs MLflow, an optional extra: {INSTALL}") from None


def tracking_uri(setting: str, run_dir) -> str:
    """The tracking URI of the `mlflow` setting: `run` is a SQLite file in the run directory."""
    if setting == IN_RUN:
        return "sqlite:///" + str((Path(run_dir) / DATABASE).resolve())
    return setting


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _ms(ts) -> int:
    return int(ts.timestamp() * 1000)


STATUS = {"stopped": "KILLED", "failed": "FAILED"}   # every other status: FINISHED


class MlflowLog(Watcher):
    """The run in MLflow: a parent run, a child run per candidate record."""

    what = "mlflow"

    def __init__(self, run_dir, setting: str, *, report=None):
        super().__init__(report)
        self.dir = Path(run_dir)
        self.setting = setting
        self.uri = tracking_uri(setting, run_dir)
        self.info, self.objectives = {}, []
        self.client = self.experiment_id = self.run_id = None
        self.counts = {"records": 0, "ok": 0}
        self.best: dict[str, float] = {}
        self.counted: set[int] = set()

    @classmethod
    def open(cls, run_dir, info: dict, setting: str, records=(), *, report=None) -> "MlflowLog":
        """Connect, find or make the parent run, read back what it holds, then log the
        `records` it lacks. An unreachable store raises (before the search starts)."""
        log = cls(run_dir, setting, report=report)
        log.connect()
        return log.start(info, records)

    def start(self, info: dict, records=()) -> "MlflowLog":
        """After `connect`: the parent run of the run (its run.json `info`) found or made,
        then the `records` it lacks logged."""
        from search.store.reader import objectives_of

        self.info, self.objectives = info, objectives_of(info)
        self.connect()
        self._parent()
        self._read_back()
        self.flushed(list(records))
        return self

    # -- set-up ------------------------------------------------------------------------------------
    def connect(self) -> None:
        """The client and the experiment; a store that cannot be reached raises."""
        if self.client is not None:
            return
        import logging
        import warnings

        from mlflow.tracking import MlflowClient

        for name in ("mlflow.store.db.utils", "alembic"):     # "Creating initial MLflow database tables..."
            logging.getLogger(name).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)   # SQLAlchemy's, on the store's first use
            self.client = MlflowClient(tracking_uri=self.uri)
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
            experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = (self.dir.resolve() / "mlartifacts").as_uri() if self.setting == IN_RUN else None
            self.experiment_id = self.client.create_experiment(name, artifact_location=location)
        else:
            self.experiment_id = experiment.experiment_id

    def _parent(self) -> None:
        """The parent run recorded in RUN/mlflow.json for this store, or a new one."""
        from mlflow.entities import Param, RunStatus
        from mlflow.exceptions import MlflowException

        state_path = self.dir / STATE
        try:
            state = json.loads(state_path.read_text("utf-8"))
        except (OSError, ValueError):
            state = {}
        if state.get("tracking_uri") == self.setting and state.get("run_id"):
            try:
                run = self.client.get_run(state["run_id"])
                if run.info.lifecycle_stage == "active":
                    self.run_id = run.info.run_id
                    self.client.update_run(self.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
                    return
            except MlflowException:
                pass                                          # deleted: a new parent run
        config = self.info.get("config") or {}
        run = self.client.create_run(self.experiment_id, run_name=self.dir.resolve().name,
                                     tags={"evonorm.run_dir": str(self.dir.resolve()),
                                           "evonorm.mode": str(config.get("mode", "batch"))})
        self.run_id = run.info.run_id
        params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items() if v is not None}
        params["objectives"] = json.dumps([{"column": c, "goal": g} for c, g in self.objectives])
        items = [Param(k, _cut(v, PARAM_LIMIT)) for k, v in sorted(params.items())]
        for i in range(0, len(items), 100):                   # MLflow takes 100 params a call
            self.client.log_batch(self.run_id, params=items[i:i + 100])
        text = json.dumps({"tracking_uri": self.setting, "experiment_id": self.experiment_id,
                           "run_id": self.run_id}, indent=2) + "\n"
        write_atomic(state_path, lambda f: f.write(text.encode("utf-8")))

    def _read_back(self) -> None:
        """The candidates the parent run holds already; children a crash left RUNNING go."""
        from mlflow.entities import ViewType

        token = None
        while True:
            page = self.client.search_runs([self.experiment_id],
                                           filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'",
                                           run_view_type=ViewType.ACTIVE_ONLY, max_results=1000,
                                           page_token=token)
            for run in page:
                cid = run.data.tags.get("evonorm.id")
                if cid is None:
                    continue
                if run.info.status == "RUNNING":
                    self.client.delete_run(run.info.run_id)
                else:
                    self.done.add(int(cid))
            token = page.token
            if not token:
                return

    # -- logging -----------------------------------------------------------------------------------
    def flushed(self, rows) -> None:
        for r in rows:
            self._count(r)
        super().flushed(rows)

    def _count(self, r: dict) -> None:
        """The parent run's progress: records, ok ones, the best of each objective."""
        if r["id"] in self.counted:
            return
        self.counted.add(r["id"])
        self.counts["records"] += 1
        if r["status"] != "ok":
            return
        self.counts["ok"] += 1
        for col, goal in self.objectives:
            v = r.get(col)
            if is_missing(v):
                continue
            v = float(v)
            old = self.best.get(col)
            if old is None or (v > old if goal == "max" else v < old):
                self.best[col] = v

    def add(self, rows: list[dict]) -> None:
        import time

        from mlflow.entities import Metric

        if self.failing:               # a child a failed call left half-logged goes; one logged is kept
            self._read_back()
            rows = [r for r in rows if r["id"] not in self.done]
        for row in rows:
            self._log_candidate(row)
            self.done.add(row["id"])
        now = int(time.time() * 1000)
        step = self.counts["records"]
        metrics = [Metric(k, float(v), now, step) for k, v in self.counts.items()]
        metrics += [Metric(f"best_{c}", v, now, step) for c, v in self.best.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def _log_candidate(self, r: dict) -> None:
        import datetime

        from mlflow.entities import Metric, Param

        cid = int(r["id"])
        end = r.get("created_at") or datetime.datetime.now(datetime.timezone.utc)
        seconds = 0.0 if is_missing(r.get("seconds")) else float(r["seconds"])
        start = end - datetime.timedelta(seconds=seconds)
        tags = {"mlflow.parentRunId": self.run_id, "evonorm.id": str(cid), "status": r["status"]}
        for key in ("reason", "worker", "equivalent_to"):
            if not is_missing(r.get(key)):
                tags[key] = _cut(str(r[key]), TAG_LIMIT)
        run = self.client.create_run(self.experiment_id, start_time=_ms(start), tags=tags,
                                     run_name=f"candidate {cid}")
        params = [Param(key, _cut(str(r[key]), PARAM_LIMIT))
                  for key in ("id", "formula", "graph_hash", "parent_id", "mutation") if not is_missing(r.get(key))]
        t = _ms(end)
        metrics = []
        accs = [c for c in r if c.startswith("acc_")]
        rungs = r.get("rung_scores")
        for rung in json.loads(rungs) if isinstance(rungs, str) else (rungs or []):
            metrics += [Metric(c, float(rung[c]), t, int(rung["steps"])) for c in accs
                        if not is_missing(rung.get(c))]
        steps = 0 if is_missing(r.get("steps_trained")) else int(r["steps_trained"])
        metrics += [Metric(c, float(r[c]), t, steps) for c in accs if not is_missing(r.get(c))]
        metrics += [Metric(key, float(r[key]), t, 0)
                    for key in ("steps_trained", "seconds", "params_per_channel", "poly_degree", "inference_degree")
                    if not is_missing(r.get(key))]
        seen, unique = set(), []
        for m in metrics:                                     # a last rung at the full budget repeats
            if (m.key, m.step) not in seen:
                seen.add((m.key, m.step))
                unique.append(m)
        self.client.log_batch(run.info.run_id, metrics=unique, params=params)
        self.client.set_terminated(run.info.run_id, status=STATUS.get(r["status"], "FINISHED"), end_time=t)

    def close(self, finished: bool = True) -> None:
        super().close(finished)
        try:
            self.client.set_terminated(self.run_id, status="FINISHED" if finished else "KILLED")
        except Exception as err:  # noqa: BLE001 - the run directory is the record
            self.report(f"evonorm: mlflow: could not end the parent run: {err}")
