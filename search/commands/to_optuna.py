"""`evonorm to-optuna DIR --storage FILE`: a run as an Optuna study (journal file storage).

One completed trial per accepted (`ok`) candidate with every objective present,
and one pruned trial per candidate `stopped` at a progressive hurdle (Optuna's own
word for it; its rung scores and `steps_trained` in the user attributes);
values are the run's objectives (proxy accuracies maximised, a cost minimised),
`params` = {"id": candidate id}, user attributes carry the formula, graph hash,
parent, mutation and the layer's properties, so `optuna-dashboard FILE` and
`optuna.visualization` show the search.
"""
from __future__ import annotations

from pathlib import Path

from primitives.util import is_missing, one_line
from search.errors import UsageError
from search.store.files import check_writable_file


def add_arguments(parser):
    parser.add_argument("run_dir", metavar="DIR", help="a run directory")
    parser.add_argument("--storage", metavar="FILE", required=True,
                        help="journal file to write (created, or added to if it holds other studies)")
    parser.add_argument("--study-name", default=None, help="study name (default: the run directory's name)")


def _value(v):
    if is_missing(v):
        return None
    return v.item() if hasattr(v, "item") else v


def trials_for(run):
    """(directions, [FrozenTrial]) for the accepted candidates of `run`, in id order."""
    import optuna
    from optuna.distributions import IntDistribution

    objectives = run.objectives
    directions = ["maximize" if g == "max" else "minimize" for _, g in objectives]
    df = run.candidates
    cols = [c for c, _ in objectives]
    ok = df[(df["status"] == "ok") & df[cols].notna().all(axis=1) | (df["status"] == "stopped")]
    max_id = int(df["id"].max()) if len(df) else 0
    dist = {"id": IntDistribution(0, max(max_id, 1))}
    attrs = ["formula", "graph_hash", "parent_id", "mutation", "params_per_channel", "uses_batch_stats",
             "poly_degree", "seconds", "worker", "steps_trained", *run.acc_columns]
    trials = []
    for rec in ok.to_dict(orient="records"):
        user_attrs = {"id": int(rec["id"])}
        for a in attrs:
            v = _value(rec.get(a))
            if v is not None:
                user_attrs[a] = v
        done = rec["status"] == "ok"
        trials.append(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE if done else optuna.trial.TrialState.PRUNED,
            values=[float(rec[c]) for c in cols] if done else None, params={"id": int(rec["id"])},
            distributions=dist, user_attrs=user_attrs))
    return directions, trials


def _check_journal(path: Path) -> None:
    """Refuse (before writing anything) a file that is not an Optuna journal."""
    import json

    if not path.exists() or path.stat().st_size == 0:
        return
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                op = json.loads(line)
                if not isinstance(op, dict) or "op_code" not in op:
                    raise ValueError(f"line {lineno} is not a journal operation")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise UsageError(f"{path}: not an Optuna journal file: {one_line(err, kind=False)}") from None


def run(args) -> int:
    from search.commands.front import load

    storage_path = Path(args.storage)
    if storage_path.exists() and not storage_path.is_file():
        raise UsageError(f"{storage_path}: not a file")
    check_writable_file(storage_path)
    _check_journal(storage_path)
    run = load(args.run_dir)
    study_name = args.study_name or run.name
    if not study_name:
        raise UsageError("--study-name must not be empty")

    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions, trials = trials_for(run)
    created = not storage_path.exists()
    try:
        storage = JournalStorage(JournalFileBackend(str(storage_path)))
        if study_name in optuna.study.get_all_study_names(storage=storage):
            raise UsageError(f"{storage_path}: already holds a study named {study_name!r} "
                             "(pick another --study-name or file)")
        study = optuna.create_study(storage=storage, study_name=study_name, directions=directions)
    except UsageError:
        raise
    except Exception as err:  # a storage file that is not an Optuna journal
        if created and storage_path.exists():
            storage_path.unlink()
        raise UsageError(f"{storage_path}: not a usable Optuna journal: {one_line(err, kind=False)}") from None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([c for c, _ in run.objectives])
    study.set_user_attr("run_dir", str(run.dir.resolve()))
    study.set_user_attr("objectives", [{"column": c, "goal": g} for c, g in run.objectives])
    study.add_trials(trials)
    print(f"wrote study {study_name!r} with {len(trials)} trials "
          f"({', '.join(f'{c} {d}' for (c, _), d in zip(run.objectives, directions))}) to {storage_path}")
    return 0
