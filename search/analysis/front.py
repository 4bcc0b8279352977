"""The Pareto front of a run as a table a person reads (`evonorm front`).

    from search.store import load_run
    from search.analysis.front import front_frame, render
    df = front_frame(load_run("results/example"))   # a DataFrame, best mean accuracy first
    print(render(df, "markdown"))                    # or "table", "csv", "json"
"""
from __future__ import annotations

from primitives.util import is_missing

FORMATS = ("table", "csv", "json", "markdown")


def front_frame(run):
    """The front with the columns a user reads, sorted by mean proxy accuracy (desc), then id:
    every objective, and in a polynomial-mode run the inference degree and the CKKS
    multiplicative depth (`he_depth`; a run from before the column gets it from the graph)."""
    front = run.front()
    accs = run.acc_columns
    cols = ["id", "formula", *accs, "params_per_channel", "uses_batch_stats", "poly_degree"]
    extra = ["inference_degree", "he_depth"] if run.mode == "polynomial" else []
    cols += [c for c in dict.fromkeys(extra + [c for c, _ in run.objectives]) if c not in cols]
    out = front[cols].copy()
    if "he_depth" in cols:
        import pandas as pd

        out["he_depth"] = pd.array([_he_depth(d, g) for d, g in zip(out["he_depth"], front["graph"])],
                                   dtype="Int64")
    out["mean_acc"] = out[accs].astype("float64").mean(axis=1)
    out = out.sort_values(["mean_acc", "id"], ascending=[False, True], kind="stable").drop(columns="mean_acc")
    return out.reset_index(drop=True)


def _he_depth(recorded, graph_json):
    """The recorded depth, or the graph's where the record predates the column."""
    if not is_missing(recorded):
        return int(recorded)
    from primitives import Graph

    try:
        return Graph.from_json(graph_json).he_depth
    except Exception:       # a record without a usable graph shows "-"
        return None


def _cell(value, col) -> str:
    if is_missing(value):
        return "-"
    if col.startswith("acc_"):
        return f"{float(value):.4f}"
    if col == "uses_batch_stats":
        return "yes" if value else "no"
    return str(value)


def render(df, fmt: str) -> str:
    import json

    if fmt == "csv":
        return df.to_csv(index=False).rstrip("\n")
    if fmt == "json":
        rows = []
        for rec in df.to_dict(orient="records"):
            rows.append({k: _jsonable(v) for k, v in rec.items()})
        return json.dumps(rows, indent=2)
    headers = {"params_per_channel": "params/ch", "uses_batch_stats": "batch stats",
               "poly_degree": "poly deg", "inference_degree": "inf deg", "he_depth": "depth"}
    cols = list(df.columns)
    if fmt == "table":  # the long formula reads best last
        cols = [c for c in cols if c != "formula"] + ["formula"]
    names = [headers.get(c, c) for c in cols]
    rows = [[_cell(v, c) for c, v in zip(cols, row)] for row in df[cols].itertuples(index=False)]
    if fmt == "markdown":
        right = [c != "formula" for c in cols]
        lines = ["| " + " | ".join(names) + " |",
                 "|" + "|".join("---:" if r else ":---" for r in right) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") if c == "formula" else cell
                                    for c, cell in zip(cols, row)) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]

    def line(cells):
        return "  ".join(c.ljust(w) if col == "formula" else c.rjust(w)
                         for c, w, col in zip(cells, widths, cols)).rstrip()
    return "\n".join([line(names), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _jsonable(v):
    import math

    if is_missing(v):
        return None
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
