"""The live study: RUN/study.journal, an Optuna journal file kept as a search runs.

    optuna-dashboard results/demo/study.journal      # the trials and the front, while it runs

The trials are `to-optuna`'s (`search.analysis.studies`): one per `ok` candidate with
its objectives (complete) and one per candidate `stopped` at a hurdle (pruned), added
when their part file is written. The study is named after the run directory when the
journal is made; a resumed run adds to the study in the journal, first the trials it
lacks (a crash between a part file and the journal), and never one twice: the
candidate id of every trial is read back from the journal.

    study = LiveStudy.open("results/demo", run_info, records)   # made, or read and caught up
    study.flushed(rows)                                           # after each part file
"""
from __future__ import annotations

import os
from pathlib import Path

from search.analysis import studies
from search.watch import Watcher

JOURNAL = "study.journal"


def journal_storage(path):
    """Optuna's JournalStorage over the journal file `path`."""
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(str(path)))


def mend_torn_tail(path: Path) -> None:
    """Cut a last line left without its newline by a crash in the middle of an append: the
    operation it began never happened (Optuna skips such a line when reading, but the
    next append would join it and spoil both); the trial it held is added again."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)
        f.flush()
        os.fsync(f.fileno())


class LiveStudy(Watcher):
    """The run's Optuna study in RUN/study.journal, kept up to date flush by flush."""

    what = "live study"

    def __init__(self, run_dir, info: dict, *, report=None):
        from search.store.reader import archs_of, objectives_of
        from evaluators.record import acc_columns

        super().__init__(report)
        self.path = Path(run_dir) / JOURNAL
        self.info = info
        self.objectives = objectives_of(info)
        self.acc_columns = acc_columns(archs_of(info))
        self.study = None

    @classmethod
    def open(cls, run_dir, info: dict, records=(), *, report=None) -> "LiveStudy":
        """The study of the run in `run_dir` (its run.json `info`): made in a new journal, or
        read from the one there; then the trials of `records` it lacks are added."""
        live = cls(run_dir, info, report=report)
        live._load(Path(run_dir))
        live.flushed(list(records))
        return live

    def _load(self, run_dir: Path) -> None:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        mend_torn_tail(self.path)
        storage = journal_storage(self.path)
        names = optuna.study.get_all_study_names(storage=storage)
        if names:                      # the study made when the run began, whatever the directory is called now
            self.study = optuna.load_study(study_name=names[0], storage=storage)
            self._read_back()
            return
        self.study = optuna.create_study(storage=storage, study_name=run_dir.resolve().name,
                                         directions=studies.directions(self.objectives))
        studies.describe_study(self.study, self.objectives, run_dir)

    def _read_back(self) -> None:
        """The candidate ids of the trials in the journal."""
        self.done |= {t.user_attrs["id"] for t in self.study.get_trials(deepcopy=False) if "id" in t.user_attrs}

    def add(self, rows: list[dict]) -> None:
        if self.failing:               # an append that failed half-way may have landed
            self._read_back()
            rows = [r for r in rows if r["id"] not in self.done]
        bound = studies.id_bound(self.info, max((r["id"] for r in rows), default=0))
        for row in rows:
            if studies.is_trial(row, self.objectives):
                self.study.add_trial(studies.trial_for(row, self.objectives, self.acc_columns, bound))
            self.done.add(row["id"])
