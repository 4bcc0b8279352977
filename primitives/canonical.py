"""Canonical names for learnable vectors and scalars.

Vectors with the same initial value (`gamma`, `v1`..`v9` start at 1; `beta`,
`v0` at 0) are interchangeable: `relu(BN * v7 + beta)` trains exactly like
`relu(BN * gamma + beta)`, since nothing but the initial value tells two
vectors apart. So are learnable scalars of one initial value, told apart by
their `id` only: `tanh(scalar(0.5, id=3) * x)` is `tanh(scalar(0.5) * x)`.
`canonical(graph)` renames both (a scalar's new name is a new id) so that every
such renaming of a layer gives one graph, which the duplicate protocol keys on.
A vector and a scalar never stand for each other (one number per channel is
not one number per layer).

The renaming must not depend on the names it replaces, yet commutative
operands are ordered by structural hashes that include the names. So the order
in which canonical names are handed out comes from a name-blind invariant:
each vector's *colour* is the structural key of the graph with that vector
marked and every other vector replaced by its initial value. Vectors of one
initial value are named in colour order (scalars alike, ids counting up from 0);
vectors whose colours tie are tried in
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
from .ops import LEARNABLE_VECTORS, SCALAR_ID, VECTOR_INIT

# The names handed out per initial value, in order: (gamma, v1, ..., v9) and (beta, v0).
NAMES_BY_INIT = {init: tuple(n for n in LEARNABLE_VECTORS if VECTOR_INIT[n] == init)
                 for init in sorted(set(VECTOR_INIT.values()))}
SCALAR_IDS = tuple(range(SCALAR_ID.low, SCALAR_ID.high + 1))
MAX_TIE_ORDERS = 720

# A learnable leaf's name: a vector's name (str), or a scalar's (value, id) pair.


def _name(node: Node):
    if node.op == "param":
        return node.attrs["name"]
    if node.op == "scalar":
        return (node.attrs["value"], node.attrs.get("id", SCALAR_ID.default))
    return None


def _init(name):
    """What a learnable leaf's name says besides itself: a vector's initial value, or
    ("scalar", its initial value). Leaves alike in this are interchangeable."""
    return VECTOR_INIT[name] if isinstance(name, str) else ("scalar", name[0])


def _names_for(init) -> tuple:
    """The canonical names, in order, for the leaves of one `_init` class."""
    if isinstance(init, tuple):
        return tuple((init[1], k) for k in SCALAR_IDS)
    return NAMES_BY_INIT[init]


def _renamed(node: Node, mapping: dict) -> Node:
    name = _name(node)
    if name is None or name not in mapping:
        return node
    new = mapping[name]
    if node.op == "param":
        return Node("param", node.inputs, {"name": new})
    return Node("scalar", node.inputs, {"value": new[0], "id": new[1]})


def rename(graph: Graph, mapping: dict) -> Graph:
    """The graph with its vectors (and scalars: (value, id) -> (value, id)) renamed by
    `mapping` (names not in it are kept)."""
    return Graph.from_nodes([_renamed(n, mapping) for n in graph.nodes], graph.output)


def vector_names(graph: Graph) -> list[str]:
    return sorted({n.attrs["name"] for n in graph.nodes if n.op == "param"})


def learnable_names(graph: Graph) -> list:
    """The vectors' names, then the scalars' (value, id) pairs, each sorted."""
    scalars = sorted({_name(n) for n in graph.nodes if n.op == "scalar"})
    return vector_names(graph) + scalars


def _structural_key(graph: Graph, label) -> str:
    """The key of the output as in Graph canonicalisation, with learnable leaves' names
    read through `label` (name -> text)."""
    keys = []
    for n in graph.nodes:
        name = _name(n)
        attrs = (n.op, label(name)) if name is not None else sorted(n.attrs.items())
        child = [keys[j] for j in n.inputs]
        if n.spec.commutative:
            child.sort()
        keys.append(hashlib.blake2b(repr((n.op, attrs, child)).encode(), digest_size=16).hexdigest())
    return keys[graph.output]


def _colour(graph: Graph, name) -> str:
    return _structural_key(graph, lambda other: "*" if other == name else repr(_init(other)))


def _tie_groups(graph: Graph) -> list[tuple[tuple, tuple]]:
    """(names, canonical names for them) pairs: per initial value, the used names in colour
    order, split where the colour changes; the names within one pair tie."""
    groups = []
    used = learnable_names(graph)
    classes = list(NAMES_BY_INIT) + sorted({_init(n) for n in used if not isinstance(n, str)})
    for init in classes:
        canonical_names = _names_for(init)
        names = [n for n in used if _init(n) == init]
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
    """The graph with its vectors and scalars renamed canonically (see module docstring)."""
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
    (or scalar ids) of the same initial value they use."""
    return canonical(graph).hash
