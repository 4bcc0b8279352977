"""`evonorm to-optuna DIR --storage FILE`: a run as an Optuna study (journal file storage),
so `optuna-dashboard FILE` and `optuna.visualization` show the search. The trials are
`search.analysis.studies`'."""
from __future__ import annotations


def add_arguments(parser):
    parser.add_argument("run_dir", metavar="DIR", help="a run directory")
    parser.add_argument("--storage", metavar="FILE", required=True,
                        help="journal file to write (created, or added to if it holds other studies)")
    parser.add_argument("--study-name", default=None, help="study name (default: the run directory's name)")


def run(args) -> int:
    from search.analysis.studies import check_storage, write_study
    from search.store import load_run

    storage = check_storage(args.storage)      # before the run is read
    run = load_run(args.run_dir)
    study = write_study(run, storage, args.study_name)
    directions = [d.name.lower() for d in study.directions]
    print(f"wrote study {study.study_name!r} with {len(study.trials)} trials "
          f"({', '.join(f'{c} {d}' for (c, _), d in zip(run.objectives, directions))}) to {storage}")
    return 0
