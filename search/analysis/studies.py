"""A run as an Optuna study (`evonorm to-optuna`, and the live study a search keeps in
RUN/study.journal), for optuna-dashboard and `optuna.visualization`.

    from search.store import load_run
    from search.analysis.studies import write_study
    study = write_study(load_run("results/example"), "study.log")   # a journal file

One completed trial per accepted (`ok`) candidate with every objective present, and
one pruned trial per candidate `stopped` at a progressive hurdle (Optuna's own word for
it; its rung scores and `steps_trained` in the user attributes); values are the run's
objectives (proxy accuracies maximised, a cost minimised), `params` = {"id": candidate
id}, user attributes carry the formula, graph hash, parent, mutation and the layer's
properties; a trial starts `seconds` before its record's `created_at` and ends then.
`is_trial` says which records are trials and `trial_for` makes one record's trial: the
live study (`search.watch.study`) adds them as a run flushes its records.
"""
from __future__ import annotations

from pathlib import Path

from primitives.util import is_missing, one_line
from search.errors import ConfigError, UnwritableError
from search.store.files import check_writable_file

# the record's columns a trial carries as user attributes (and every acc_<arch>)
USER_ATTRS = ("formula", "graph_hash", "parent_id", "mutation", "params_per_channel", "uses_batch_stats",
              "poly_degree", "seconds", "worker", "steps_trained")


def _value(v):
    if is_missing(v):
        return None
    return v.item() if hasattr(v, "item") else v


def directions(objectives) -> list[str]:
    """Optuna's directions of the run's objectives [(column, goal)]."""
    return ["maximize" if g == "max" else "minimize" for _, g in objectives]


def is_trial(record: dict, objectives) -> bool:
    """Whether a record is a trial of the run's study: `ok` with every objective present
    (complete), or `stopped` at a hurdle (pruned)."""
    if record["status"] == "stopped":
        return True
    return record["status"] == "ok" and not any(is_missing(record.get(c)) for c, _ in objectives)


def id_bound(info: dict, max_id: int) -> int:
    """The upper end of the `id` parameter's distribution: the run's budget (ids count up
    to it) or the highest id, whichever is larger, so that a study kept as a run goes on
    has one distribution for every trial."""
    budget = (info.get("config") or {}).get("budget") or 0
    return max(int(budget) - 1, int(max_id), 1)


def trial_for(record: dict, objectives, acc_columns, max_id: int):
    """The FrozenTrial of one `ok` (complete) or `stopped` (pruned) record; `max_id` bounds
    the id parameter's distribution (`id_bound`)."""
    import datetime

    import optuna
    from optuna.distributions import IntDistribution

    cols = [c for c, _ in objectives]
    user_attrs = {"id": int(record["id"])}
    for a in (*USER_ATTRS, *acc_columns):
        v = _value(record.get(a))
        if v is not None:
            user_attrs[a] = v
    done = record["status"] == "ok"
    trial = optuna.trial.create_trial(
        state=optuna.trial.TrialState.COMPLETE if done else optuna.trial.TrialState.PRUNED,
        values=[float(record[c]) for c in cols] if done else None, params={"id": int(record["id"])},
        distributions={"id": IntDistribution(0, max(max_id, 1))}, user_attrs=user_attrs)
    end = _value(record.get("created_at"))
    if end is not None:                      # the trial's times are the candidate's own
        end = end.to_pydatetime() if hasattr(end, "to_pydatetime") else end
        seconds = _value(record.get("seconds")) or 0.0
        trial.datetime_complete = end
        trial.datetime_start = end - datetime.timedelta(seconds=float(seconds))
    return trial


def trials_for(run):
    """(directions, [FrozenTrial]) for the accepted and stopped candidates of `run`, in id order."""
    objectives = run.objectives
    records = run.records()
    bound = id_bound(run.info, max((r["id"] for r in records), default=0))
    trials = [trial_for(rec, objectives, run.acc_columns, bound) for rec in records if is_trial(rec, objectives)]
    return directions(objectives), trials


def check_storage(path) -> Path:
    """The journal file `path`, checked before any work: a file that can be written and, if
    it holds anything, an Optuna journal (an UnwritableError otherwise)."""
    import json

    path = Path(path)
    if path.exists() and not path.is_file():
        raise UnwritableError(f"{path}: not a file")
    check_writable_file(path)
    if not path.exists() or path.stat().st_size == 0:
        return path
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                op = json.loads(line)
                if not isinstance(op, dict) or "op_code" not in op:
                    raise ValueError(f"line {lineno} is not a journal operation")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UnwritableError(f"{path}: not an Optuna journal file: {one_line(err, kind=False)}") from None
    return path


def write_study(run, storage, study_name: str | None = None):
    """A new study named `study_name` (default: the run directory's name) in the journal file
    `storage` (created, or added to if it holds other studies), holding `run`'s trials.
    Returns the optuna Study. A name already taken is a ConfigError; a storage file that
    is not a journal an UnwritableError, and a file it created is removed again."""
    storage_path = check_storage(storage)
    study_name = study_name or run.name
    if not study_name:
        raise ConfigError("--study-name must not be empty")

    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions_, trials = trials_for(run)
    created = not storage_path.exists()
    try:
        journal = JournalStorage(JournalFileBackend(str(storage_path)))
        if study_name in optuna.study.get_all_study_names(storage=journal):
            raise ConfigError(f"{storage_path}: already holds a study named {study_name!r} "
                              "(pick another --study-name or file)")
        study = optuna.create_study(storage=journal, study_name=study_name, directions=directions_)
    except ConfigError:
        raise
    except Exception as err:  # a storage file that is not an Optuna journal
        if created and storage_path.exists():
            storage_path.unlink()
        raise UnwritableError(f"{storage_path}: not a usable Optuna journal: {one_line(err, kind=False)}") from None
    describe_study(study, run.objectives, run.dir)
    study.add_trials(trials)
    return study


def describe_study(study, objectives, run_dir) -> None:
    """A run's study, named: its metric names (the objective columns), the run directory and
    the objectives as study user attributes."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([c for c, _ in objectives])
    study.set_user_attr("run_dir", str(Path(run_dir).resolve()))
    study.set_user_attr("objectives", [{"column": c, "goal": g} for c, g in objectives])
