"""`evonorm export DIR ID -o layer.py` (or `evonorm export FORMULA -o layer.py`).

Writes the standalone module from the layer language's one code generator,
with a header that says where the layer came from and how it scored.
"""
from __future__ import annotations

import sys

from search.cli import UsageError
from search.files import check_writable_file, write_atomic


def add_arguments(parser):
    parser.add_argument("source", help="a run directory, or a formula")
    parser.add_argument("id", nargs="?", type=int, help="candidate id in the run directory")
    parser.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    parser.add_argument("--class-name", default="EvoLayer", help="name of the exported class")


def run(args) -> int:
    from primitives import FormulaError, Graph, GraphError, export_layer, parse

    if not args.class_name.isidentifier():
        raise UsageError(f"--class-name {args.class_name!r} is not a Python identifier")
    if args.output != "-":
        check_writable_file(args.output)
    if args.id is None:
        try:
            graph = parse(args.source)
        except FormulaError as err:
            raise UsageError(f"bad formula: {err} (to export from a run, give DIR ID)") from None
        header = f"evonorm layer\n\nformula: {graph}\nhash: {graph.hash}\n"
    else:
        graph, header = _from_run(args.source, args.id, Graph, GraphError)
    source = export_layer(graph, class_name=args.class_name, header=header)
    if args.output == "-":
        sys.stdout.write(source)
    else:
        write_atomic(args.output, source)
        print(f"wrote {args.output}: class {args.class_name} ({graph})", file=sys.stderr)
    return 0


def _from_run(run_dir, cid, Graph, GraphError):
    from search.rundir import RunDirError, load_run

    try:
        run = load_run(run_dir)
    except RunDirError as err:
        raise UsageError(str(err)) from None
    record = run.candidate(cid)
    if record is None:
        raise UsageError(f"{run_dir}: no candidate with id {cid}")
    try:
        graph = Graph.from_json(record["graph"])
    except (GraphError, TypeError) as err:
        raise UsageError(f"{run_dir}: candidate {cid} has no usable graph: {err}") from None
    scores = ", ".join(f"{col[4:]} {record[col]:.4f}" for col in run.acc_columns if record.get(col) is not None)
    header = (f"evonorm layer: candidate {cid} of run {run.name}\n\n"
              f"formula: {graph}\nhash: {graph.hash}\nstatus: {record['status']}\n"
              f"validation accuracy: {scores or 'not trained'}\n"
              f"dataset: {run.info.get('config', {}).get('dataset', 'unknown')}\n")
    return graph, header

