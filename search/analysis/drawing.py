"""Drawing a layer's computation graph (`evonorm show DIR ID --graph FILE`), and the check of
an image output that the plots share.

    from primitives import parse
    from search.analysis.drawing import draw_graph
    draw_graph(parse("x * sigmoid(v1 * x) / group_std(x) * gamma + beta"), "s0.png")
"""
from __future__ import annotations

import os
from pathlib import Path

from search.errors import ConfigError
from search.store.files import check_writable_file, write_atomic

IMAGE_FORMATS = ("png", "pdf", "svg")


def image_output(path) -> tuple[Path, str]:
    """(path, format) of an image to write, checked before any work: it ends in .png, .pdf
    or .svg (a ConfigError) and can be written there (an UnwritableError)."""
    output = Path(path)
    if output.suffix.lower() not in (".png", ".pdf", ".svg"):
        raise ConfigError(f"{output}: the output must end in .png, .pdf or .svg")
    check_writable_file(output)
    return output, output.suffix[1:].lower()


# node colour by op kind: the input, learnable vectors and numbers, moments, units, the rest
_KIND_COLORS = {"x": "#f4a261", "leaf": "#e9ecef", "moment": "#8ecae6", "unit": "#b5e48c", "op": "#ffffff"}


def graph_layers(dag, output: int) -> dict[int, int]:
    """Node -> column of a left-to-right drawing. x is column 0 and the output the last
    (the longest path from x); every other node sits one column left of its leftmost
    consumer, so a value is drawn next to where it is used."""
    import networkx as nx

    last = nx.dag_longest_path_length(dag.subgraph(nx.ancestors(dag, output) | {output}))
    layer = {output: last}
    for i in reversed(list(nx.topological_sort(dag))):
        if i != output:
            layer[i] = 0 if dag.nodes[i]["op"] == "x" else min(layer[k] for k in dag.successors(i)) - 1
    return layer


def graph_positions(dag, layer: dict[int, int]) -> dict[int, tuple[float, float]]:
    """(column, row) per node; within a column nodes are ordered by the mean row of their
    inputs (the barycentre heuristic), which keeps most edges from crossing."""
    rows: dict[int, float] = {}
    pos = {}
    for column in range(min(layer.values()), max(layer.values()) + 1):
        members = [n for n in dag if layer[n] == column]
        def key(n):
            above = [rows[j] for j in dag.predecessors(n) if j in rows]
            return (sum(above) / len(above) if above else -1.0, n)
        members.sort(key=key)
        for rank, n in enumerate(members):
            rows[n] = rank - (len(members) - 1) / 2
            pos[n] = (float(column), -rows[n])
    return pos


def draw_graph(graph, output, fmt: str | None = None, dpi: int = 120) -> None:
    """The layer's computation graph (`Graph.to_networkx()`) in columns from x to the output
    (outlined in red), each node a box labelled by op, the inputs of `-` and `/` numbered, into
    `output`: an image path (checked by `image_output`, written atomically) or a binary file
    (then `fmt`, png, pdf or svg, says the format)."""
    if isinstance(output, (str, os.PathLike)):
        path, suffix = image_output(output)
        write_atomic(path, lambda f: draw_graph(graph, f, fmt=fmt or suffix, dpi=dpi))
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx

    from primitives import OPS

    dag = graph.to_networkx()
    layer = graph_layers(dag, graph.output)
    pos = graph_positions(dag, layer)
    columns = max(layer.values()) - min(layer.values()) + 1
    tallest = max(list(layer.values()).count(c) for c in set(layer.values()))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * columns + 1), max(3.0, 1.0 * tallest + 1.5)))
    kinds = [op if op == "x" else OPS[op].kind for _, op in dag.nodes(data="op")]
    for long in (False, True):  # an edge that skips columns bends more, round the boxes between
        edges = [(j, i) for j, i in dag.edges if (layer[i] - layer[j] > 1) == long]
        bend = f"arc3,rad={0.25 if long else 0.06}"
        nx.draw_networkx_edges(dag, pos, edgelist=edges, ax=ax, arrows=True, arrowsize=12,
                               edge_color="#555555", node_size=1300, connectionstyle=bend)
        ordered = {(j, i): " ".join(str(s + 1) for s in dag.edges[j, i]["slots"]) for j, i in edges
                   if OPS[dag.nodes[i]["op"]].arity == 2 and not OPS[dag.nodes[i]["op"]].commutative}
        nx.draw_networkx_edge_labels(dag, pos, edge_labels=ordered, ax=ax, font_size=7, label_pos=0.25,
                                     connectionstyle=bend)
    for n, kind in zip(dag, kinds):  # each node a box around its label, coloured by kind
        out = n == graph.output
        nx.draw_networkx_labels(dag, pos, labels={n: dag.nodes[n]["label"]}, ax=ax, font_size=8,
                                bbox=dict(boxstyle="round,pad=0.5", fc=_KIND_COLORS.get(kind, _KIND_COLORS["op"]),
                                          ec="#d62728" if out else "#333333", lw=2.2 if out else 0.9))
    ax.set_title(_wrapped(str(graph)), fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(output, dpi=dpi, format=fmt)
    plt.close(fig)


def _wrapped(text: str, width: int = 90) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text
