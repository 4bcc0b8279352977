"""`evonorm export DIR ID -o layer.py` (or `evonorm export FORMULA -o layer.py`).

Writes the standalone module from the layer language's one code generator,
with a header that says where the layer came from and how it scored. With
`--coefficients out.csv` it writes instead, for a layer that is per channel a
polynomial of x at inference, the C x (d + 1) coefficient table of a trained
layer (`--state-dict`), for encrypted inference (primitives.coefficients). With
`--he out.json` it writes the "evonorm-he" document (docs/he.md): per position and
channel the coefficients, the CKKS depth and the input ranges measured on the
validation split, when `--state-dict` is a whole trained network of proxy `--arch`
(primitives.he).
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
                        help="with --coefficients or --he and no --state-dict: the channel count (default 1)")
    he = parser.add_argument_group("for homomorphic encryption (docs/he.md)")
    he.add_argument("--he", metavar="JSON",
                    help="instead of the module, write the layer's evonorm-he document: per position and channel "
                         "the power-basis coefficients, the CKKS multiplicative depth and, with --arch, the input "
                         "ranges measured on the validation split ('-': stdout)")
    he.add_argument("--arch", default=None,
                    help="with --he: --state-dict is a whole trained network of this proxy (built with this layer "
                         "at its default size); every position is exported with its measured ranges")
    he.add_argument("--dataset", default="fashion-mnist",
                    help="with --arch: the dataset the network was trained on (default fashion-mnist)")
    he.add_argument("--data-root", default=None, help="with --arch: where the dataset files are")
    he.add_argument("--images", type=int, default=None,
                    help="with --arch: validation images to measure the ranges on (default: the whole split)")
    he.add_argument("--quantile", type=float, default=None,
                    help="with --arch: the high quantile of |x| measured per channel (default 0.999)")
    he.add_argument("--interval", type=float, nargs=2, metavar=("LO", "HI"),
                    help="with --arch: the input interval you will evaluate on (a Chebyshev fit's); a warning "
                         "for every position whose measured inputs leave it (default: each position's measured "
                         "range widened by 10%%)")


def run(args) -> int:
    from primitives import FormulaError, Graph, GraphError, export_layer, parse

    if not args.class_name.isidentifier():
        raise UsageError(f"--class-name {args.class_name!r} is not a Python identifier")
    if args.he is not None and args.coefficients is not None:
        raise UsageError("give --coefficients or --he, not both")
    _check_he_flags(args)
    for output in (args.output, args.coefficients, args.he):
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
    if args.he is not None:
        return _export_he(graph, args)
    source = export_layer(graph, class_name=args.class_name, header=header)
    if args.output == "-":
        sys.stdout.write(source)
    else:
        write_atomic(args.output, source)
        print(f"wrote {args.output}: class {args.class_name} ({graph})", file=sys.stderr)
    return 0


def _export_coefficients(graph, args) -> int:
    """The C x (d + 1) table of a layer that is a per-channel polynomial at inference."""
    from primitives.coefficients import NotPolynomialError, coefficient_table, table_csv

    if not graph.pointwise_at_inference:
        degree = graph.inference_degree
        raise UsageError(f"{graph}: not a per-channel polynomial of x at inference "
                         f"({'inference degree ' + str(degree) + ', but it mixes elements' if degree is not None else 'inference degree: not a polynomial'}); no coefficients to export")
    state = _layer_state(args)
    try:
        table = coefficient_table(graph, state, None if state else (args.channels or 1))
    except (NotPolynomialError, ValueError, RuntimeError) as err:
        raise UsageError(f"cannot export coefficients: {one_line(err, kind=False)}") from None
    _emit(args.coefficients, table_csv(table), f"{table.shape[0]} channels x {table.shape[1]} coefficients "
                                                f"(degree {table.shape[1] - 1}) of {graph}")
    return 0


def _emit(path: str, text: str, summary: str) -> None:
    """`text` to standard output (`-`) or written atomically to `path`, said in one line."""
    if path == "-":
        sys.stdout.write(text)
    else:
        write_atomic(path, text)
        print(f"wrote {path}: {summary}", file=sys.stderr)


def _load_state_dict(path) -> dict:
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise UsageError(f"{path}: not a readable torch state_dict ({one_line(err, kind=False)})") from None
    if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise UsageError(f"{path}: holds no state_dict")
    return loaded


def _layer_state(args) -> dict | None:
    """The layer's state_dict from --state-dict (--prefix cut off), or None for the initial one."""
    if args.state_dict is None:
        if args.channels is not None and args.channels < 1:
            raise UsageError("--channels must be positive")
        return None
    loaded = _load_state_dict(args.state_dict)
    state = {k[len(args.prefix):]: v for k, v in loaded.items() if k.startswith(args.prefix)}
    if not state:
        raise UsageError(f"{args.state_dict}: no keys start with prefix {args.prefix!r}")
    return state


def _check_he_flags(args) -> None:
    """The --he flags fit together (before anything is read or written)."""
    network = ("--arch", args.arch), ("--images", args.images), ("--quantile", args.quantile), \
        ("--interval", args.interval), ("--data-root", args.data_root)
    given = [flag for flag, value in network if value is not None]
    if args.he is None:
        if given:
            raise UsageError(f"{given[0]} is for --he")
        return
    if args.arch is None:
        if [flag for flag in given if flag != "--arch"]:
            raise UsageError(f"{[f for f in given if f != '--arch'][0]} needs --arch (ranges come from a whole network)")
        return
    if args.state_dict is None:
        raise UsageError("--arch needs --state-dict: the trained network's state_dict")
    if args.prefix:
        raise UsageError("--prefix is for a layer's state_dict; with --arch --state-dict is the whole network's")
    if args.images is not None and args.images < 1:
        raise UsageError("--images must be positive")
    if args.quantile is not None and not 0 < args.quantile < 1:
        raise UsageError("--quantile must lie in (0, 1)")
    if args.interval is not None and not args.interval[0] < args.interval[1]:
        raise UsageError("--interval LO HI needs LO < HI")


def _export_he(graph, args) -> int:
    """The evonorm-he document: of a whole trained network of proxy --arch (every position,
    ranges measured on the validation split), or of one layer (no ranges)."""
    from primitives import compile_layer
    from primitives.coefficients import NotPolynomialError
    from primitives.he import QUANTILE, HEError, dumps, he_export

    try:
        if args.arch is None:
            state = _layer_state(args)
            layer = compile_layer(graph, _channels(state) if state else (args.channels or 1))
            if state:
                layer.load_state_dict(state)
            document = he_export(layer, graph)
            document["positions"][0]["name"] = args.prefix.rstrip(".") or "layer"
            document["warnings"].append("no measured ranges: export a whole trained network (--state-dict "
                                        "with --arch) to measure what each position's inputs span")
        else:
            model, batches, source = _network(graph, args)
            quantile = args.quantile or QUANTILE
            document = he_export(model, graph, batches, quantile=quantile, interval=args.interval, source=source)
    except (NotPolynomialError, HEError, ValueError, RuntimeError, KeyError) as err:
        raise UsageError(f"cannot export for HE: {one_line(err, kind=False)}") from None
    text = dumps(document)
    for warning in document["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    _emit(args.he, text, f"{len(document['positions'])} position(s), degree {document['degree']}, "
                         f"depth {document['depth']} ({graph})")
    return 0


def _channels(state: dict) -> int:
    from primitives.coefficients import _channels_of

    try:
        return _channels_of(state)
    except ValueError as err:
        raise UsageError(f"{one_line(err, kind=False)}") from None


def _network(graph, args):
    """The proxy network --arch around the layer with --state-dict loaded, the validation
    inputs to measure on, and where they came from."""
    import torch

    from evaluators.datasets import DATASET_NAMES, DatasetError, load_dataset
    from evaluators.proxies import PROXY_NAMES, build_proxy
    from primitives import compile_layer

    if args.arch not in PROXY_NAMES:
        raise UsageError(f"unknown arch {args.arch!r} (expected one of: {', '.join(PROXY_NAMES)})")
    if args.dataset not in DATASET_NAMES:
        raise UsageError(f"unknown dataset {args.dataset!r} (expected one of: {', '.join(DATASET_NAMES)})")
    state = _load_state_dict(args.state_dict)
    try:
        dataset = load_dataset(args.dataset, "cpu", args.data_root)
    except DatasetError as err:
        raise UsageError(str(err)) from None
    model = build_proxy(args.arch, lambda c: compile_layer(graph, c), dataset.in_channels, dataset.num_classes,
                        dataset.image_size)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise UsageError(f"{args.state_dict} is not a {args.arch} network with this layer on {args.dataset}: "
                         f"{one_line(err, kind=False)[:300]}") from None
    val_x, _ = dataset.split("val")
    images = min(args.images or len(val_x), len(val_x))
    with torch.no_grad():
        batches = [dataset.normalise(val_x[i:min(i + 500, images)]) for i in range(0, images, 500)]
    source = {"dataset": args.dataset, "split": "val", "images": images, "arch": args.arch,
              "state_dict": str(args.state_dict)}
    return model, batches, source


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

