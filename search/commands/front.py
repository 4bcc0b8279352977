"""`evonorm front DIR`: the Pareto front of a run as a table, best mean accuracy first
(`search.analysis.front`)."""
from __future__ import annotations

from search.analysis.front import FORMATS


def add_arguments(parser):
    parser.add_argument("run_dir", metavar="DIR", help="a run directory (results/<name>)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")


def run(args) -> int:
    import sys

    from search.analysis.front import front_frame, render
    from search.store import load_run

    run = load_run(args.run_dir)
    df = front_frame(run)
    if df.empty and args.format == "table":
        print(f"{run.dir}: no accepted candidates yet ({len(run.candidates)} recorded)", file=sys.stderr)
        return 0
    print(render(df, args.format))
    return 0
