"""`evonorm show DIR ID`: one candidate: formula, status, scores, timings and its lineage.
`evonorm show DIR`: the run's accounting (judged per worker-hour, trainings saved), see
`search.analysis.accounting`, and the retrain's report when DIR/retrain.parquet exists;
`--trials` adds every layer's lr trials, read back from DIR/retrain-studies.journal."""
from __future__ import annotations

import json

from primitives.util import is_missing, one_line
from search.errors import UsageError


def add_arguments(parser):
    parser.add_argument("run_dir", metavar="DIR", help="a run directory")
    parser.add_argument("id", metavar="ID", type=int, nargs="?", default=None,
                        help="candidate id (without it: where the run's worker time went)")
    parser.add_argument("--graph", metavar="FILE", default=None,
                        help="also draw the layer's computation graph into FILE (.png, .pdf or .svg)")
    parser.add_argument("--retrain", metavar="FILE", default=None,
                        help="without ID: the retrain table to report (default DIR/retrain.parquet; "
                             "one written with `retrain -o FILE`)")
    parser.add_argument("--trials", action="store_true",
                        help="without ID: also each retrained layer's lr trials (rate, validation accuracies, "
                             "the range it was drawn from), from the Optuna studies kept beside the retrain "
                             "table (DIR/retrain-studies.journal; optuna-dashboard opens it too)")


def _present(v) -> bool:
    return not is_missing(v)


def _scores(rec: dict, accs) -> str:
    parts = [f"{a[4:]} {float(rec[a]):.4f}" for a in accs if _present(rec.get(a))]
    return ", ".join(parts) if parts else "not trained"


def _seconds(v) -> str:
    v = float(v)
    return f"{v * 1000:.1f} ms" if v < 1 else f"{v:.2f} s"


def describe(run, cid: int) -> list[str]:
    rec = run.candidate(cid)
    if rec is None:
        raise UsageError(f"no candidate {cid} in {run.dir} "
                         f"({len(run.candidates)} recorded, ids {_id_range(run)})")
    accs = run.acc_columns
    front_ids = set(run.front()["id"].tolist())
    lines = [f"candidate {cid}" + ("  (on the Pareto front)" if cid in front_ids else ""),
             f"  formula        {rec.get('formula') or '-'}",
             f"  status         {rec['status']}" + (f": {rec['reason']}" if _present(rec.get("reason")) else "")]
    if _present(rec.get("equivalent_to")):
        other = run.candidate(int(rec["equivalent_to"]))
        lines.append(f"  equivalent to  {int(rec['equivalent_to'])}"
                     + (f"  {other.get('formula')}" if other else "  (not recorded)"))
    if _present(rec.get("parent_id")):
        mutation = rec.get("mutation") if _present(rec.get("mutation")) else "?"
        lines.append(f"  parent         {int(rec['parent_id'])} (by {mutation})")
    else:
        lines.append("  parent         none (initial population"
                     + (f", {rec['mutation']})" if _present(rec.get("mutation")) else ")"))
    trained = [a for a in accs if _present(rec.get(a))]
    lines.append("  scores" + ("" if trained else "         not trained"))
    for a in trained:
        lines.append(f"    {a:<20s} {float(rec[a]):.4f}")
    lines.append(f"  params/channel {rec['params_per_channel'] if _present(rec.get('params_per_channel')) else '-'}")
    if _present(rec.get("uses_batch_stats")):
        lines.append(f"  batch stats    {'yes' if rec['uses_batch_stats'] else 'no'}")
    lines.append(f"  poly degree    {rec['poly_degree'] if _present(rec.get('poly_degree')) else 'not a polynomial'}")
    if _present(rec.get("inference_degree")):
        lines.append(f"  inference deg  {int(rec['inference_degree'])}")
        lines.append(f"  he depth       {_he_depth(rec)}")
    if _present(rec.get("graph_hash")):
        lines.append(f"  graph hash     {rec['graph_hash']}")
    timing = _seconds(rec["seconds"]) if _present(rec.get("seconds")) else "-"
    lines.append(f"  time           {timing}" + (f" on {rec['worker']}" if _present(rec.get("worker")) else ""))
    stages = {}
    if _present(rec.get("stage_seconds")):
        try:
            stages = json.loads(rec["stage_seconds"]) or {}
        except (ValueError, TypeError):
            stages = {}
    for name, secs in stages.items():
        try:
            lines.append(f"    {name:<20s} {_seconds(secs)}")
        except (TypeError, ValueError):
            lines.append(f"    {name:<20s} {secs}")
    if _present(rec.get("created_at")):
        lines.append(f"  recorded at    {rec['created_at']}")
    lines.append("")
    lines.extend(lineage(run, rec, accs))
    return lines


def lineage(run, rec: dict, accs) -> list[str]:
    """The chain of parents back to the initial population, child first."""
    chain = [rec]
    seen = {int(rec["id"])}
    missing = None
    while _present(chain[-1].get("parent_id")):
        pid = int(chain[-1]["parent_id"])
        if pid in seen:
            missing = f"cycle at {pid}"
            break
        parent = run.candidate(pid)
        if parent is None:
            missing = f"parent {pid} not recorded"
            break
        seen.add(pid)
        chain.append(parent)
    lines = [f"lineage ({len(chain) - 1} generation{'s' if len(chain) != 2 else ''} back to the initial population)"
             if missing is None else f"lineage ({missing})"]
    for depth, r in enumerate(chain):
        mutation = r.get("mutation") if _present(r.get("mutation")) else (
            "initial" if not _present(r.get("parent_id")) else "?")
        lines.append(f"  #{int(r['id']):<6d} {mutation:<12s} {_scores(r, accs)}")
        lines.append(f"  {'':7s} {'':12s} {r.get('formula') or '-'}")
    return lines


def _id_range(run) -> str:
    ids = run.candidates["id"]
    return "none" if ids.empty else f"{int(ids.min())}..{int(ids.max())}"


def run(args) -> int:
    from search.analysis.drawing import draw_graph, image_output
    from search.store import load_run

    if args.id is None:
        return _accounting(args)
    if args.retrain is not None or args.trials:
        raise UsageError(f"{'--retrain' if args.retrain is not None else '--trials'} reports a retrain: leave out ID")
    image = image_output(args.graph)[0] if args.graph is not None else None
    run = load_run(args.run_dir)
    lines = describe(run, args.id)
    if image is not None:
        draw_graph(_graph_of(run, args.id), image)
        lines.append(f"\nwrote {image}")
    print("\n".join(lines))
    return 0


def _accounting(args) -> int:
    from search.analysis.accounting import account
    from search.store import load_run

    if args.graph is not None:
        raise UsageError("--graph draws one candidate's graph: give its ID")
    run = load_run(args.run_dir)
    print("\n".join([f"run {run.dir}", *account(run.candidates).lines()]))
    rows = run.retrain_rows(args.retrain)
    if rows is None and args.retrain is not None:
        raise UsageError(f"--retrain {args.retrain}: no such file")
    if rows is not None:
        from search.analysis.report import report

        print(f"\nretrain ({args.retrain or run.retrain_path})\n" + report(rows, run.mode))
    if args.trials:
        from search.analysis.report import trials_table
        from search.analysis.retrain import studies_path

        studies = studies_path(args.retrain or run.retrain_path)
        if not studies.is_file():
            raise UsageError(f"--trials: no lr studies at {studies} (no retrain finished there, or one from "
                             "before the studies were kept)")
        print(f"\nlr trials ({studies})\n" + trials_table(studies))
    return 0


def _graph_of(run, cid: int):
    """The candidate's graph, from its canonical JSON, else from its formula."""
    from primitives import Graph, parse

    rec = run.candidate(cid)
    try:
        return Graph.from_json(rec["graph"])
    except (ValueError, TypeError, KeyError):   # GraphError is a ValueError
        pass
    try:
        return parse(rec.get("formula") or "")
    except ValueError as err:                   # FormulaError, GraphError
        raise UsageError(f"{run.dir}: candidate {cid} has no graph to draw: {one_line(err, kind=False)}") from None


def _he_depth(rec) -> str:
    """The CKKS multiplicative depth (docs/he.md): recorded, or the graph's for a record from
    before the column."""
    depth = rec.get("he_depth")
    if not _present(depth):
        from primitives import Graph

        try:
            depth = Graph.from_json(rec["graph"]).he_depth
        except Exception:
            return "-"
    return "none (mixes elements: not a per-channel polynomial)" if depth is None else str(int(depth))
