"""Mutation of layer graphs.

`mutate(parent, rng, mode)` returns `(child, description)`: the child is always
a valid graph inside the mode and differs from its parent (a different
canonical hash); a mutation that fails either test is redrawn. Six kinds, one
function each, picked from the `MUTATIONS` table:

- `op`:      a node's op becomes another op of the same arity (same kind preferred)
- `rewire`:  one input of a node now comes from another earlier node or a new terminal
- `insert`:  a new op node is put after a node, in front of its consumers
- `remove`:  a node is bypassed: its consumers read one of its inputs instead
- `keyword`: a keyword (eps, groups, order, p, q, k, shared, norm), a constant or a learnable
             scalar's initial value gets another value
- `vector`:  a learnable vector becomes another one, a constant or a learnable scalar; a
             constant becomes a vector or a learnable scalar starting at its value; a
             learnable scalar becomes the constant of its initial value (or a vector)

Editing works on small mutable node objects linked by reference, so no index
bookkeeping is needed; the result goes back through `Graph.from_nodes`, which
re-merges, re-folds and drops nodes that no longer reach the output.
"""
from __future__ import annotations

import random

from primitives import Graph, GraphError
from primitives.graph import Node
from primitives.ops import LEARNABLE_VECTORS, OPS, SCALAR_ID, VECTOR_INIT
from primitives.printer import node_label
from primitives.random_graph import CONSTANTS, random_keywords, random_terminal

from search.engine.modes import Mode, get_mode

class _N:
    __slots__ = ("op", "inputs", "attrs")

    def __init__(self, op, inputs=(), attrs=None):
        self.op, self.inputs, self.attrs = op, list(inputs), dict(attrs or {})

    def label(self) -> str:
        if self.op == "const":
            return f"{self.attrs['value']:g}"
        if self.op in ("param", "scalar"):
            return node_label(Node(self.op, (), self.attrs))
        kw = ", ".join(f"{k}={v:g}" for k, v in sorted(self.attrs.items()))
        return f"{self.op}({kw})" if kw else self.op


def _unpack(graph: Graph) -> tuple[list[_N], _N]:
    objs: list[_N] = []
    for n in graph.nodes:
        objs.append(_N(n.op, [objs[j] for j in n.inputs], n.attrs))
    return objs, objs[graph.output]


def _pack(output: _N) -> Graph:
    """Post-order from the output back into index form, then a canonical Graph."""
    index: dict[int, int] = {}
    nodes = []
    stack = [(output, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in index:
            continue
        if expanded:
            index[id(node)] = len(nodes)
            nodes.append((node.op, tuple(index[id(i)] for i in node.inputs), node.attrs))
        else:
            stack.append((node, True))
            stack.extend((i, False) for i in reversed(node.inputs) if id(i) not in index)
    return Graph.from_nodes(nodes, index[id(output)])


def _terminal(rng: random.Random) -> _N:
    op, attrs = random_terminal(rng)
    return _N(op, (), attrs)


def _consumers(objs: list[_N], target: _N) -> list[tuple[_N, int]]:
    return [(n, k) for n in objs for k, i in enumerate(n.inputs) if i is target]


def _inner(objs: list[_N]) -> list[_N]:
    return [n for n in objs if n.inputs]


def _mutate_op(objs, output, rng, mode):
    """A node's op becomes another op of the same arity (same kind preferred)."""
    inner = _inner(objs)
    if not inner:
        return None
    node = rng.choice(inner)
    same_arity = [o for o in mode.ops if OPS[o].arity == len(node.inputs) and o != node.op]
    same_kind = [o for o in same_arity if OPS[o].kind == OPS[node.op].kind]
    pool = same_kind if same_kind and rng.random() < 0.6 else same_arity
    if not pool:
        return None
    new = rng.choice(pool)
    old = node.label()
    node.op, node.attrs = new, random_keywords(new, rng)
    return output, f"op {old} -> {node.label()}"


def _mutate_rewire(objs, output, rng, mode):
    """One input of a node now comes from an earlier node or a new terminal. Earlier in
    topological order means no cycle can form (the child stays a DAG)."""
    inner = _inner(objs)
    if not inner:
        return None
    node = rng.choice(inner)
    slot = rng.randrange(len(node.inputs))
    before = objs[:objs.index(node)]  # topological order: none of these depends on node
    choices = [n for n in before if n is not node.inputs[slot]]
    if choices and rng.random() < 0.75:
        source = rng.choice(choices)
    else:
        source = _terminal(rng)
    old = node.inputs[slot].label()
    node.inputs[slot] = source
    return output, f"rewire {node.label()} input {slot}: {old} -> {source.label()}"


def _mutate_insert(objs, output, rng, mode):
    """A new op node is put after a node, in front of all or one of its consumers."""
    target = rng.choice(objs)
    op = rng.choice(mode.ops)
    inputs = [target]
    if OPS[op].arity == 2:
        upto = objs[:objs.index(target) + 1]
        other = rng.choice(upto) if rng.random() < 0.5 else _terminal(rng)
        inputs.insert(rng.randrange(2), other)
    new = _N(op, inputs, random_keywords(op, rng))
    users = _consumers(objs, target)
    if users and rng.random() < 0.5:
        users = [rng.choice(users)]
    for user, slot in users:
        user.inputs[slot] = new
    if target is output or not users:
        output = new if (target is output or rng.random() < 0.5) else output
    return output, f"insert {new.label()} after {target.label()}"


def _mutate_remove(objs, output, rng, mode):
    """A node is bypassed: its consumers read one of its inputs instead."""
    inner = _inner(objs)
    if not inner:
        return None
    node = rng.choice(inner)
    keep = rng.choice(node.inputs)
    for user, slot in _consumers(objs, node):
        user.inputs[slot] = keep
    if node is output:
        output = keep
    return output, f"remove {node.label()}"


def _mutate_keyword(objs, output, rng, mode):
    """A keyword (eps, groups, order, p, q, k, shared, norm), a constant or a learnable scalar's
    initial value gets another value."""
    tunable = [n for n in objs if n.op in ("const", "scalar") or (n.inputs and OPS[n.op].keywords)]
    if not tunable:
        return None
    node = rng.choice(tunable)
    old = node.label()
    if node.op in ("const", "scalar"):
        value = node.attrs["value"]
        node.attrs["value"] = rng.choice([c for c in CONSTANTS if c != value] + [value * rng.choice((0.5, 2.0, -1.0))])
    else:
        key = rng.choice(sorted(OPS[node.op].keywords))
        keyword = OPS[node.op].keywords[key]
        menu = [v for v in keyword.menu if v != node.attrs.get(key, keyword.default)]
        if not menu:
            return None
        node.attrs[key] = rng.choice(menu)
    return output, f"keyword {old} -> {node.label()}"


def _mutate_vector(objs, output, rng, mode):
    """A learnable vector becomes another one, a constant, or a learnable scalar starting at
    the vector's initial value; a constant becomes a vector or a learnable scalar starting at
    its value; a learnable scalar becomes the constant of its initial value (it stops
    learning) or a vector. A new scalar is a new parameter: it takes the lowest id no scalar
    of its value has, and the mutation does not apply when all ten are taken."""
    leaves = [n for n in objs if n.op in ("param", "const", "scalar")]
    if not leaves:
        return None
    node = rng.choice(leaves)
    old = node.label()
    draw = rng.random()
    if node.op == "param":
        if draw < 0.8:
            node.attrs = {"name": rng.choice([v for v in LEARNABLE_VECTORS if v != node.attrs["name"]])}
        elif draw < 0.9:
            node.op, node.attrs = "const", {"value": rng.choice(CONSTANTS)}
        elif not _become_scalar(node, VECTOR_INIT[node.attrs["name"]], objs):
            return None
    elif node.op == "const":
        if draw < 0.7:
            node.op, node.attrs = "param", {"name": rng.choice(LEARNABLE_VECTORS)}
        elif not _become_scalar(node, node.attrs["value"], objs):
            return None
    elif draw < 0.7:   # a scalar stops learning: the literal of its initial value
        node.op, node.attrs = "const", {"value": node.attrs["value"]}
    else:
        node.op, node.attrs = "param", {"name": rng.choice(LEARNABLE_VECTORS)}
    return output, f"vector {old} -> {node.label()}"


def _become_scalar(node: _N, value: float, objs) -> bool:
    """Turn `node` into a new learnable scalar starting at `value` (False: all ids taken)."""
    taken = {n.attrs.get("id", SCALAR_ID.default) for n in objs if n.op == "scalar" and n.attrs["value"] == value}
    free = [k for k in range(SCALAR_ID.low, SCALAR_ID.high + 1) if k not in taken]
    if not free:
        return False
    node.op, node.attrs = "scalar", {"value": value, "id": free[0]}
    return True


# kind -> (how it edits the graph, how often it is drawn); adding a mutation is one entry here.
# Each function edits the unpacked nodes in place and returns (new output, description),
# or None when it does not apply to this graph (the caller draws again).
MUTATIONS = {
    "op": (_mutate_op, 3),
    "rewire": (_mutate_rewire, 2),
    "insert": (_mutate_insert, 3),
    "remove": (_mutate_remove, 2),
    "keyword": (_mutate_keyword, 2),
    "vector": (_mutate_vector, 1),
}
KINDS = tuple(MUTATIONS)
WEIGHTS = tuple(weight for _, weight in MUTATIONS.values())


def _mutate_once(objs: list[_N], output: _N, kind: str, rng: random.Random, mode: Mode):
    """Apply one mutation in place; return (new output, description) or None if not applicable."""
    if kind not in MUTATIONS:
        raise ValueError(f"unknown mutation kind {kind!r}")
    return MUTATIONS[kind][0](objs, output, rng, mode)


def mutate(parent: Graph, rng: random.Random, mode: Mode | None = None,
           kinds=KINDS, tries: int = 200) -> tuple[Graph, str]:
    """A valid child of `parent`, inside `mode`, with a different hash; and what changed."""
    mode = mode or get_mode("batch")
    weights = [MUTATIONS[k][1] for k in kinds]
    for _ in range(tries):
        objs, output = _unpack(parent)
        kind = rng.choices(kinds, weights=weights)[0]
        done = _mutate_once(objs, output, kind, rng, mode)
        if done is None:
            continue
        new_output, text = done
        try:
            child = _pack(new_output)
        except (GraphError, RecursionError):
            continue
        if child.hash != parent.hash and mode.accept(child):
            return child, text
    raise GraphError(f"no valid mutation of {parent} in {tries} tries")
