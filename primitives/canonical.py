"""Canonical names for learnable vectors.

Vectors with the same initial value (`gamma`, `v1`..`v9` start at 1; `beta`,
`v0` at 0) are interchangeable: `relu(BN * v7 + beta)` trains exactly like
`relu(BN * gamma + beta)`, since nothing but the initial value tells two
vectors apart. `canonical(graph)` renames them so that every such renaming of
a layer gives one graph, which the duplicate protocol keys on.

The renaming must not depend on the names it replaces, yet commutative
operands are ordered by structural hashes that include the names. So the order
in which canonical names are handed out comes from a name-blind invariant:
each vector's *colour* is the structural key of the graph with that vector
marked and every other vector replaced by its initial value. Vectors of one
initial value are named in colour order; vectors whose colours tie are tried in
every order and the renaming with the smallest graph hash wins. The result is a
function of the layer up to renaming (the set of renamings tried is the same
for every renamed copy), i.e. a fixed point: `canonical(canonical(g)) ==
canonical(g)`. Beyond `MAX_TIE_ORDERS` tied orders (no layer of the search
comes near) one fixed order is used; the equivalence fingerprint, which
depends on initial values only, still catches such copies.
"""
from __future__ import annotations

import hashlib
import itertools
import math
from functools import lru_cache

from .graph import Graph, Node
from .ops import LEARNABLE_VECTORS, VECTOR_INIT

# The names handed out per initial value, in order: (gamma, v1, ..., v9) and (beta, v0).
NAMES_BY_INIT = {init: tuple(n for n in LEARNABLE_VECTORS if VECTOR_INIT[n] == init)
                 for init in sorted(set(VECTOR_INIT.values()))}
MAX_TIE_ORDERS = 720


def rename(graph: Graph, mapping: dict[str, str]) -> Graph:
    """The graph with its vectors renamed by `mapping` (names not in it are kept)."""
    nodes = [Node(n.op, n.inputs, {"name": mapping.get(n.attrs["name"], n.attrs["name"])})
             if n.op == "param" else n for n in graph.nodes]
    return Graph.from_nodes(nodes, graph.output)


def vector_names(graph: Graph) -> list[str]:
    return sorted({n.attrs["name"] for n in graph.nodes if n.op == "param"})


def _structural_key(graph: Graph, label) -> str:
    """The key of the output as in Graph canonicalisation, with param names read
    through `label` (name -> text)."""
    keys = []
    for n in graph.nodes:
        attrs = ("param", label(n.attrs["name"])) if n.op == "param" else sorted(n.attrs.items())
        child = [keys[j] for j in n.inputs]
        if n.spec.commutative:
            child.sort()
        keys.append(hashlib.blake2b(repr((n.op, attrs, child)).encode(), digest_size=16).hexdigest())
    return keys[graph.output]


def _colour(graph: Graph, name: str) -> str:
    return _structural_key(graph, lambda other: "*" if other == name else repr(VECTOR_INIT[other]))


def _tie_groups(graph: Graph) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
    """(names, canonical names for them) pairs: per initial value, the used names in colour
    order, split where the colour changes; the names within one pair tie."""
    groups = []
    used = vector_names(graph)
    for init, canonical_names in NAMES_BY_INIT.items():
        names = [n for n in used if VECTOR_INIT[n] == init]
        if len(names) > 1:
            colours = {n: _colour(graph, n) for n in names}
            names.sort(key=lambda n: (colours[n], n))
            ties = [tuple(g) for _, g in itertools.groupby(names, key=colours.get)]
        else:
            ties = [tuple(names)] if names else []
        start = 0
        for tie in ties:
            groups.append((tie, canonical_names[start:start + len(tie)]))
            start += len(tie)
    return groups


@lru_cache(maxsize=8192)
def canonical(graph: Graph) -> Graph:
    """The graph with its vectors renamed canonically (see module docstring)."""
    groups = _tie_groups(graph)
    orders = math.prod(math.factorial(len(tie)) for tie, _ in groups)
    choices = [itertools.permutations(tie) if orders <= MAX_TIE_ORDERS else [tie] for tie, _ in groups]
    best = None
    for picked in itertools.product(*choices):
        mapping = {old: new for order, (_, names) in zip(picked, groups) for old, new in zip(order, names)}
        identity = all(old == new for old, new in mapping.items())
        candidate = graph if identity else rename(graph, mapping)
        if best is None or candidate.hash < best.hash:
            best = candidate
    return best


def canonical_hash(graph: Graph) -> str:
    """The hash of `canonical(graph)`: equal for layers that differ only in which vectors
    of the same initial value they use."""
    return canonical(graph).hash
