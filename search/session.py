"""A search run as a Python object: start one, resume one, stop one.

    from search.config import build_config
    from search.session import Session

    config = build_config(overrides={"evaluator": "surrogate", "executor": "local", "budget": 40})
    session = Session.start(config)              # checks everything, writes nothing yet
    session.run()                                # to the budget; returns the records written
    Session.resume(session.dir, budget=80).run() # later, or after a crash: carries on

`run` builds what a run needs (the screen, the executor: in-process or Ray workers,
the store: the run directory's single writer, the driver, the store's watchers: the
live Optuna study in RUN/study.journal and, with `mlflow`, the MLflow runs), drives the
search to the budget and releases them again, also on Ctrl-C or an error.
`session.watch(w)` adds a watcher of one's own: `w.flushed(rows)` is called with the
records of each part file once it is on disk (after the built-in watchers), and
`w.close(finished)` when the run ends, if it has one. `stop()` ends a run early
from another thread; Ctrl-C or `kill` (SIGTERM) end it from outside. What was
recorded is flushed either way, and `Session.resume` continues the run. `evonorm
search` and `evonorm resume` are these calls behind flags (`run_from_cli`). Bad input is a
`search.errors.EvonormError`, raised before anything is written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading

from search.config import RESUMABLE, SearchConfig, build_config
from search.errors import ClusterError, ConfigError, RunDirError
from search.engine.modes import Mode
from search.store.reader import CANDIDATES, RUN_JSON
from primitives.util import one_line


class Session:
    """One run: its settings, mode and directory; while `run` runs, its store,
    executor and driver. Make one with `Session.start` or `Session.resume`."""

    def __init__(self, config: SearchConfig, mode: Mode, *, create: bool):
        self.config, self.mode, self.create = config, mode, create
        self.dir = config.out
        self.driver = None
        self._store = self._executor = None
        self._stopped = False
        self._watchers: list = []           # the store's watchers while `run` runs
        self._extra: list = []              # added with watch()
        self._mlflow = None                 # the MLflow logger, connected before the store opens
        self._stream = sys.stderr
        self._trainer_change = False        # a resumed run goes on with another trainer (allowed)

    @classmethod
    def start(cls, config: SearchConfig) -> "Session":
        """A new run of `config` into `config.out` (default results/<timestamp>-<mode>-s<seed>),
        which must be new or empty. Every setting is checked now; nothing is written yet."""
        out = config.out or config.default_out()
        if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
            raise RunDirError(f"--out {out} exists and is not empty (use evonorm resume {out} to continue it)")
        config = dataclasses.replace(config, out=out)
        return cls(config, check_config(config), create=True)

    @classmethod
    def resume(cls, run_dir, *, allow_trainer_change: bool = False, **changes) -> "Session":
        """The run recorded in `run_dir`, to be continued. `changes` may say where it runs
        now and raise its budget (the settings in config.RESUMABLE; None keeps one). A run
        that trains (evaluator "train") recorded by another trainer than the running one
        (evaluators.trainer.TRAINER_VERSION; none recorded: before versioning) is a
        TrainerChangeError unless `allow_trainer_change`: then run.json records the change
        and the id from which it applies (search.provenance)."""
        unknown = sorted(set(changes) - set(RESUMABLE))
        if unknown:
            raise ConfigError(f"a resumed run cannot change {', '.join(unknown)}")
        run_dir = os.fspath(run_dir)
        recorded, info_path = _recorded_config(run_dir)
        changed = False
        if recorded.get("evaluator", "train") == "train":   # the surrogate trains nothing
            from search import provenance

            changed = provenance.check(provenance.run_trainer_version(_read_info(info_path)), info_path,
                                       allow_trainer_change, f"evonorm resume {run_dir}")
        budget = changes.get("budget")
        if budget is not None and budget < recorded.get("budget", 0):
            raise ConfigError(f"--budget {budget} is below the run's budget {recorded.get('budget')}")
        try:
            config = build_config(recorded, changes)
        except ConfigError as err:
            raise ConfigError(f"{info_path}: {err}") from None
        config.out = run_dir
        session = cls(config, check_config(config), create=False)
        session._trainer_change = changed
        return session

    def run(self, *, quiet: bool = False, stream=None) -> int:
        """Drive the run to its budget; returns the records written by this call (0: the run
        was complete already). Notes and, unless `quiet`, progress lines go to `stream`
        (default stderr). Ctrl-C or SIGTERM raise KeyboardInterrupt once what was recorded
        is flushed; `stop()` returns early the same way."""
        stream = sys.stderr if stream is None else stream
        self._stream = stream
        try:
            records, checkpoints = self._open()
            budget = self.config.budget
            if not self.create and len(records) >= budget:
                print(f"{self.dir}: complete ({len(records)} records, budget {budget})", file=stream)
                self._close_store()
                return 0
            self.driver = self._build(records, checkpoints, None if quiet else stream)
            print(f"{'resuming' if records else 'search'}: {self.dir} ({len(records)} of {budget} "
                  f"records, {self._executor.capacity} worker(s), {self.config.executor} executor)",
                  file=stream)
            written = self.driver.run()
            self._close_store()
            return written
        finally:
            self._release()

    def run_from_cli(self, quiet: bool = False) -> int:
        """`run` as `evonorm search` and `evonorm resume` do it: progress on stderr, the run
        directory on stdout when the run ends at its budget; on Ctrl-C or `kill` a word on
        how to continue. Returns the exit status (130 when interrupted)."""
        try:
            written = self.run(quiet=quiet, stream=sys.stderr)
        except KeyboardInterrupt:
            print(f"evonorm: interrupted; {self.dir} keeps what was recorded (evonorm resume {self.dir})",
                  file=sys.stderr)
            return 130
        if written:
            print(self.dir)
        return 0

    def watch(self, watcher) -> None:
        """Hand `watcher` the records of every part file this run writes, as it writes them:
        `watcher.flushed(rows)` (rows: the records as dicts), then `watcher.close(finished)`
        at the end when it has a `close`. Call it before `run`."""
        self._extra.append(watcher)

    def stop(self) -> None:
        """End a running `run` early (call it from another thread): the driver stops at its
        next turn, what was recorded is flushed, candidates still training are dropped and
        a resumed run proposes them again."""
        self._stopped = True
        if self.driver is not None:
            self.driver.stop()

    # -- the parts of a run --------------------------------------------------------------------------
    def _open(self) -> tuple[list, list]:
        """Before any worker starts and before a store opens (closing one writes the front),
        check that the directory takes files; read a resumed run's records and checkpoints."""
        from search.store.files import check_writable_dir
        from search.store.writer import RunStore

        if self.create:
            check_writable_dir(self.dir)
            self._mlflow = self._connect_mlflow()    # a store elsewhere is reached before anything is written
            return [], []
        for directory in (self.dir, os.path.join(self.dir, CANDIDATES)):
            check_writable_dir(directory)
        self._mlflow = self._connect_mlflow()
        self._store = RunStore.open(self.dir, **self._store_options())
        if self._trainer_change:
            self._record_trainer_change()
        records = self._store.records()
        self._watch(records)
        return records, self._store.checkpoints()

    def _record_trainer_change(self) -> None:
        """run.json gains the running trainer beside the recorded one: {"from_id": the first
        id it makes, "trainer": its fingerprint} appended to "trainer_changes"."""
        from search import provenance

        info = self._store.info
        if provenance.run_trainer_version(info) == provenance.running_version():
            return   # recorded already (a resume of a resume)
        change = {"from_id": self._store.next_id, "previous_version": provenance.run_trainer_version(info),
                  "trainer": provenance.fingerprint()}
        self._store.update_info({"trainer_changes": [*info.get("trainer_changes", []), change]})
        print(f"{self.dir}: records from id {change['from_id']} on are made by trainer "
              f"{provenance.running_version()} (before: {provenance.describe(change['previous_version'])}); "
              "run.json says so", file=self._stream)

    def _connect_mlflow(self):
        """The MLflow logger, connected unless its store is to be made in a new run directory."""
        if self.config.mlflow is None:
            return None
        from search.watch.mlflow_log import IN_RUN, MlflowLog

        log = MlflowLog(self.dir, self.config.mlflow, report=self._report)
        if not (self.create and self.config.mlflow == IN_RUN):
            try:
                log.connect()
            except Exception as err:  # noqa: BLE001 - any failure of the store is a bad --mlflow
                raise ConfigError(f"--mlflow {self.config.mlflow}: cannot log there: "
                                  f"{one_line(err, kind=False)}") from None
        return log

    def _watch(self, records: list) -> None:
        """The store's watchers, each first given the `records` it lacks (a resumed run)."""
        from search.watch.study import JOURNAL, LiveStudy

        info = self._store.info
        if self.config.live_study:
            try:
                self._watchers.append(LiveStudy.open(self.dir, info, records, report=self._report))
            except Exception as err:  # noqa: BLE001 - a journal spoilt by hand, or a full disk
                path = os.path.join(self.dir, JOURNAL)
                raise RunDirError(f"{path}: not a usable Optuna journal ({one_line(err, kind=False)}); "
                                  "remove it and resume: it is made again from the records") from None
        if self._mlflow is not None:
            log, self._mlflow = self._mlflow, None
            try:
                self._watchers.append(log.start(info, records))
            except Exception as err:  # noqa: BLE001 - any failure of the store is a bad --mlflow
                raise ConfigError(f"--mlflow {self.config.mlflow}: cannot log there: "
                                  f"{one_line(err, kind=False)}") from None
        self._watchers += self._extra
        self._store.watchers = list(self._watchers)

    def _report(self, line: str) -> None:
        print(line, file=self._stream)

    def _build(self, records: list, checkpoints: list, progress):
        """Screen, executor, store and driver, the driver restored from what was recorded."""
        from search.engine.driver import Driver
        from search.workers.executor import evaluator_spec, make_screen
        from search.store.writer import RunStore

        screen = make_screen(evaluator_spec(self.config))
        self._executor = make_executor(self.config)
        stop_on_sigterm()  # after the executor: ray.init installs a SIGTERM handler of its own
        if self.create:
            self._store = RunStore.create(self.dir, run_info(self.config), **self._store_options())
            self._watch([])
        driver = Driver(self.config, self.mode, self._store, screen, self._executor,
                        start_id=self._store.next_id, done=len(records), progress=progress)
        if records or checkpoints:
            driver.restore(records, checkpoints)
        if self._stopped:
            driver.stop()
        return driver

    def _close_store(self) -> None:
        """Flush the last records and write the front; a failure is the caller's error. Then
        the watchers end (the MLflow parent run FINISHED when the budget is reached)."""
        store, self._store = self._store, None
        store.close()
        self._close_watchers(len(store) >= self.config.budget)

    def _close_watchers(self, finished: bool) -> None:
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            if hasattr(watcher, "close"):
                watcher.close(finished)

    def _release(self) -> None:
        """Flush and close the store (reporting, not raising, a failure: an error or Ctrl-C
        is on its way already) and shut the executor's workers down."""
        store, executor, self._store, self._executor = self._store, self._executor, None, None
        try:
            if store is not None:
                try:
                    store.close()
                except Exception as err:  # noqa: BLE001 - report, keep the original error
                    print(f"evonorm: flushing {self.dir} failed: {err}", file=sys.stderr)
            try:
                self._close_watchers(False)
            except Exception as err:  # noqa: BLE001 - report, keep the original error
                print(f"evonorm: closing the watchers of {self.dir} failed: {err}", file=sys.stderr)
        finally:
            self._mlflow = None
            if executor is not None:
                executor.close()

    def _store_options(self) -> dict:
        return {"flush_every": self.config.flush_every, "flush_seconds": self.config.flush_seconds}


def check_config(config: SearchConfig) -> Mode:
    """Everything that can be told bad before a file is written: the mode, the seed
    formulas, the evaluation settings. Returns the Mode; raises ConfigError."""
    from primitives import FormulaError, parse

    from search.engine.modes import get_mode
    try:
        mode = get_mode(config.mode, config.max_degree, max_depth=config.max_depth,
                        per_channel=config.depth_objective)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    for formula in config.seed_formulas:
        try:
            graph = parse(formula)
        except FormulaError as err:
            raise ConfigError(f"bad seed formula {formula!r}: {err}") from None
        problem = mode.why_not(graph)
        if problem:
            raise ConfigError(f"seed formula {formula!r} {problem}")
    if config.evaluator == "train":
        config.eval_config()
    if config.mlflow is not None:
        from search.watch.mlflow_log import require_mlflow
        require_mlflow()
    return mode


def _recorded_config(run_dir: str) -> tuple[dict, str]:
    """run.json's settings and its path. Runs from before hurdles trained every candidate
    in full, and runs from before confirmation entered the front on one seed."""
    info_path = os.path.join(run_dir, RUN_JSON)
    if not os.path.isdir(run_dir):
        raise RunDirError(f"run directory {run_dir} does not exist")
    try:
        with open(info_path) as fh:
            recorded = json.load(fh)["config"]
    except FileNotFoundError:
        raise RunDirError(f"{run_dir} is not a run directory (no run.json)") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise RunDirError(f"{info_path} is unreadable: {err}") from None
    return {"hurdles": False, "confirm": False, **recorded}, info_path


def _read_info(info_path: str) -> dict:
    with open(info_path) as fh:
        info = json.load(fh)
    return info if isinstance(info, dict) else {}


def run_info(config: SearchConfig) -> dict:
    """run.json: the settings, the seed, the package versions, the trainer that makes the
    numbers (evaluators.trainer.trainer_fingerprint), the start time, the objectives and
    archs, the evaluators' settings and the command line."""
    from evaluators.trainer import trainer_fingerprint
    import platform
    from datetime import datetime, timezone
    from importlib import metadata
    versions = {"python": platform.python_version()}
    for dist in ("evonorm", "torch", "ray", "numpy", "pyarrow", "pandas"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    eval_config = config.eval_config().to_dict() if config.evaluator == "train" else None
    return {"config": config.to_dict(), "seed": config.seed, "versions": versions,
            "trainer": trainer_fingerprint(), "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "objectives": [{"column": c, "goal": g} for c, g in zip(config.objectives, config.goals)],
            "archs": list(config.archs), "eval_config": eval_config, "command": sys.argv[1:]}


def make_executor(config: SearchConfig):
    """The executor the settings ask for; a cluster that cannot be used is a ClusterError."""
    from search.workers.executor import LocalExecutor, evaluator_spec
    spec = evaluator_spec(config)
    if config.executor == "local":
        return LocalExecutor(spec)
    from search.workers.ray_executor import RayExecutor
    try:
        return RayExecutor(spec, workers=config.workers, gpus_per_worker=config.gpus_per_worker,
                           address=config.address, max_retries=config.max_retries)
    except ConnectionError as err:
        hint = ("" if os.environ.get("RAY_AUTH_MODE") else
                " (a cluster with token authentication needs RAY_AUTH_MODE=token and its token)")
        raise ClusterError(f"cannot connect to Ray at {config.address}: {err}{hint}") from None
    except ValueError as err:
        raise ClusterError(str(err)) from None


def stop_on_sigterm() -> None:
    """`kill PID` (SIGTERM) stops a run like Ctrl-C: records flushed, KeyboardInterrupt. This
    also covers runs started in the background, where SIGINT is ignored. Signal handlers
    belong to the main thread; a session run in another thread leaves them alone."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
