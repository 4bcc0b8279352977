"""`evonorm export DIR ID -o layer.py` (or `evonorm export FORMULA -o layer.py`).

Writes the standalone module from the layer language's one code generator,
with a header that says where the layer came from and how it scored. With
`--coefficients out.csv` it writes instead, for a layer that is per channel a
polynomial of x at inference, the C x (d + 1) coefficient table of a trained
layer (`--state-dict`), for encrypted inference (primitives.coefficients).
"""
from __future__ import annotations

import sys

from primitives.util import one_line
from search.errors import UsageError
from search.store.files import check_writable_file, write_atomic


def add_arguments(parser):
    parser.add_argument("source", help="a run directory, or a formula")
    parser.add_argument("id", nargs="?", type=int, help="candidate id in the run directory")
    parser.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    parser.add_argument("--class-name", default="EvoLayer", help="name of the exported class")
    parser.add_argument("--coefficients", metavar="CSV",
                        help="instead of the module, write the layer's per-channel polynomial "
                             "coefficients at inference (channel,c0..cd) to this file ('-': stdout)")
    parser.add_argument("--state-dict", metavar="FILE",
                        help="with --coefficients: a torch file with the trained layer's state_dict "
                             "(default: the initial parameters)")
    parser.add_argument("--prefix", default="",
                        help="with --state-dict: the layer's key prefix in a whole network's "
                             "state_dict, e.g. blocks.0.norm1.")
    parser.add_argument("--channels", type=int, default=None,
                        help="with --coefficients and no --state-dict: the channel count (default 1)")


def run(args) -> int:
    from primitives import FormulaError, Graph, GraphError, export_layer, parse

    if not args.class_name.isidentifier():
        raise UsageError(f"--class-name {args.class_name!r} is not a Python identifier")
    for output in (args.output, args.coefficients):
        if output not in (None, "-"):
            check_writable_file(output)
    if args.id is None:
        try:
            graph = parse(args.source)
        except FormulaError as err:
            raise UsageError(f"bad formula: {err} (to export from a run, give DIR ID)") from None
        header = f"evonorm layer\n\nformula: {graph}\nhash: {graph.hash}\n"
    else:
        graph, header = _from_run(args.source, args.id, Graph, GraphError)
    if args.coefficients is not None:
        return _export_coefficients(graph, args)
    source = export_layer(graph, class_name=args.class_name, header=header)
    if args.output == "-":
        sys.stdout.write(source)
    else:
        write_atomic(args.output, source)
        print(f"wrote {args.output}: class {args.class_name} ({graph})", file=sys.stderr)
    return 0


def _export_coefficients(graph, args) -> int:
    """The C x (d + 1) table of a layer that is a per-channel polynomial at inference."""
    import torch

    from primitives.coefficients import NotPolynomialError, coefficient_table, table_csv

    if not graph.pointwise_at_inference:
        degree = graph.inference_degree
        raise UsageError(f"{graph}: not a per-channel polynomial of x at inference "
                         f"({'inference degree ' + str(degree) + ', but it mixes elements' if degree is not None else 'inference degree: not a polynomial'}); no coefficients to export")
    state = None
    if args.state_dict is not None:
        try:
            loaded = torch.load(args.state_dict, map_location="cpu", weights_only=True)
        except Exception as err:
            raise UsageError(f"{args.state_dict}: not a readable torch state_dict ({err})") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"{args.state_dict}: holds no state_dict")
        state = {k[len(args.prefix):]: v for k, v in loaded.items() if k.startswith(args.prefix)}
        if not state:
            raise UsageError(f"{args.state_dict}: no keys start with prefix {args.prefix!r}")
    elif args.channels is not None and args.channels < 1:
        raise UsageError("--channels must be positive")
    try:
        table = coefficient_table(graph, state, None if state else (args.channels or 1))
    except (NotPolynomialError, ValueError, RuntimeError) as err:
        raise UsageError(f"cannot export coefficients: {one_line(err, kind=False)}") from None
    text = table_csv(table)
    if args.coefficients == "-":
        sys.stdout.write(text)
    else:
        write_atomic(args.coefficients, text)
        print(f"wrote {args.coefficients}: {table.shape[0]} channels x {table.shape[1]} coefficients "
              f"(degree {table.shape[1] - 1}) of {graph}", file=sys.stderr)
    return 0


def _from_run(run_dir, cid, Graph, GraphError):
    from search.store import load_run

    run = load_run(run_dir)
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

