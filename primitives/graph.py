"""The layer graph: a DAG of registry ops from the input `x` to one output.

A `Graph` is immutable and always valid and canonical: equal subexpressions
are merged, constant subexpressions are folded, nodes are numbered in a
canonical post-order (commutative operands ordered by their structural key),
so the canonical JSON and the hash do not depend on how the graph was built.
Build one with `GraphBuilder`, `Graph.from_nodes`, `Graph.from_json` or
`primitives.parse`.
"""
from __future__ import annotations

import hashlib
import json
import math
from functools import cached_property
from typing import NamedTuple

import networkx as nx
import torch

from .errors import GraphError
from .ops import LEARNABLE_VECTORS, MOMENT_SHAPE, OPS, Op
from .printer import node_label, to_formula

MAX_NODES = 100        # distinct operations in one layer
MAX_TREE_SIZE = 2000   # nodes of the expression written out as a tree (bounds the printed formula)
MAX_DEPTH = 60         # longest path from x to the output


class Node(NamedTuple):
    """One operation: registry name, input node ids (positional), attributes."""

    op: str
    inputs: tuple = ()
    attrs: dict = {}

    @property
    def spec(self) -> Op:
        return OPS[self.op]


def _canonical_attrs(op: Op, attrs: dict) -> dict:
    """Validate attributes and fill defaults, so equal layers have equal attributes."""
    attrs = dict(attrs)
    if op.name == "const":
        return {"value": _literal(op, attrs.get("value"))}
    if op.name == "param":
        if attrs.get("name") not in LEARNABLE_VECTORS:
            raise GraphError(f"param name must be one of {', '.join(LEARNABLE_VECTORS)}, got {attrs.get('name')!r}")
        return {"name": attrs["name"]}
    out = {}
    if op.literal:  # a leaf written as a call on a number: `scalar(0.5)`
        out[op.literal] = _literal(op, attrs.pop(op.literal, None))
    unknown = set(attrs) - set(op.keywords)
    if unknown:
        raise GraphError(f"{op.name} takes no attribute {sorted(unknown)[0]!r}")
    for key, kw in op.keywords.items():
        value = attrs.get(key, kw.default)
        problem = kw.check(value)
        if problem:
            raise GraphError(f"{op.name}: {key} {problem}, got {value!r}")
        if not (kw.optional and value == kw.default):
            out[key] = kw.type(value)
    return out


def _literal(op: Op, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise GraphError(f"{op.name} needs a finite numeric value, got {value!r}")
    return float(value) + 0.0  # + 0.0 turns -0.0 into 0.0


class GraphBuilder:
    """Adds nodes one at a time, merging equal subexpressions and folding constants."""

    def __init__(self):
        self.nodes: list[Node] = []
        self._index: dict = {}

    def add(self, op: str, inputs=(), **attrs) -> int:
        spec = OPS.get(op) if isinstance(op, str) else None
        if spec is None:
            raise GraphError(f"unknown op {op!r}")
        inputs = tuple(inputs)
        if len(inputs) != spec.arity:
            raise GraphError(f"{op} takes {spec.arity} input(s), got {len(inputs)}")
        for i in inputs:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self.nodes):
                raise GraphError(f"{op} refers to a missing node {i!r}")
        attrs = _canonical_attrs(spec, attrs)
        if spec.fold is not None and inputs and all(self.nodes[i].op == "const" for i in inputs):
            return self.add("const", value=self._fold(spec, inputs, attrs))
        key = (op, tuple(sorted(inputs)) if spec.commutative else inputs, tuple(sorted(attrs.items())))
        if key not in self._index:
            self._index[key] = len(self.nodes)
            self.nodes.append(Node(op, inputs, attrs))
        return self._index[key]

    def _fold(self, spec: Op, inputs, attrs) -> float:
        args = [torch.tensor(self.nodes[i].attrs["value"], dtype=torch.float64) for i in inputs]
        value = float(spec.fold(*args, **attrs))
        if not math.isfinite(value):
            raise GraphError(f"constant subexpression {spec.name} is not finite")
        return value

    def build(self, output: int) -> "Graph":
        return Graph(self.nodes, output)


class Graph:
    """A validated, canonical layer graph (see module docstring)."""

    def __init__(self, nodes, output: int):
        nodes = [Node(*n) for n in nodes]
        self._nodes, self._output = _canonicalize(nodes, output)
        self._check()

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_nodes(cls, nodes, output: int) -> "Graph":
        """Rebuild from (op, inputs, attrs) triples in topological order, re-merging and
        re-folding; nodes that do not reach the output are dropped. Mutation uses this."""
        builder = GraphBuilder()
        new_id = {}
        for i, node in enumerate(nodes):
            node = Node(*node)
            if any(not isinstance(j, int) or not 0 <= j < i for j in node.inputs):
                raise GraphError(f"node {i} refers to an input that does not come before it")
            new_id[i] = builder.add(node.op, [new_id[j] for j in node.inputs], **node.attrs)
        return builder.build(new_id[output])

    @classmethod
    def from_json(cls, text: str) -> "Graph":
        """Load a graph from JSON: {"nodes": [{"op", "inputs", ...attrs}], "output": i}.
        Node order is free; the result is strict: no cycles, no dangling edges,
        every node on a path to the output."""
        try:
            data = json.loads(text) if isinstance(text, (str, bytes)) else text
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise GraphError(f"graph JSON does not parse: {err}") from None
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            raise GraphError('graph JSON must be an object with a "nodes" list and an "output" index')
        raw, output = data["nodes"], data.get("output")
        if isinstance(output, bool) or not isinstance(output, int) or not 0 <= output < len(raw):
            raise GraphError(f"graph output {output!r} is not a node index")
        nodes = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict) or not isinstance(item.get("op"), str):
                raise GraphError(f"node {i} must be an object with an \"op\" name")
            if item["op"] not in OPS:
                raise GraphError(f"node {i}: unknown op {item['op']!r}")
            inputs = item.get("inputs", [])
            if not isinstance(inputs, list):
                raise GraphError(f"node {i}: inputs must be a list")
            for j in inputs:
                if isinstance(j, bool) or not isinstance(j, int) or not 0 <= j < len(raw):
                    raise GraphError(f"node {i}: dangling edge to {j!r}")
            attrs = {k: v for k, v in item.items() if k not in ("op", "inputs")}
            nodes.append(Node(item["op"], tuple(inputs), attrs))
        dag = _to_networkx(nodes)
        if not nx.is_directed_acyclic_graph(dag):
            raise GraphError(f"graph has a cycle through nodes {sorted(nx.find_cycle(dag)[0])}")
        unused = set(range(len(nodes))) - nx.ancestors(dag, output) - {output}
        if unused:
            raise GraphError(f"nodes {sorted(unused)} do not reach the output")
        order = list(nx.topological_sort(dag))
        position = {old: new for new, old in enumerate(order)}
        relabelled = [Node(nodes[old].op, tuple(position[j] for j in nodes[old].inputs),
                           nodes[old].attrs) for old in order]
        return cls.from_nodes(relabelled, position[output])

    # -- views ----------------------------------------------------------------------------
    @property
    def nodes(self) -> tuple[Node, ...]:
        """Nodes in canonical topological order; inputs refer to positions here."""
        return self._nodes

    @property
    def output(self) -> int:
        return self._output

    def __len__(self) -> int:
        return len(self._nodes)

    def to_networkx(self) -> nx.DiGraph:
        """The graph as a fresh networkx `DiGraph`, for one's own analyses and drawings.

        Node `i` is `nodes[i]`, with attributes `op` (the registry name) and `label` (x, a
        vector's name, a number, an operator's symbol, or a function with its keywords
        that differ from the defaults); an edge `j -> i` for each input `j` of node `i`,
        with attribute `slots`, the input positions it feeds (`x * x`: (0, 1)). The graph
        attribute `output` is the output node. Node numbers are a topological order."""
        dag = _to_networkx(self._nodes)
        for i, node in enumerate(self._nodes):
            dag.nodes[i]["label"] = node_label(node)
        dag.graph["output"] = self._output
        return dag

    def to_json(self) -> str:
        """Canonical JSON: registry op names, input positions and literal values only."""
        nodes = [{"op": n.op, **({"inputs": list(n.inputs)} if n.inputs else {}), **n.attrs}
                 for n in self._nodes]
        return json.dumps({"nodes": nodes, "output": self._output}, sort_keys=True,
                          separators=(",", ":"))

    @cached_property
    def hash(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

    def __eq__(self, other) -> bool:
        return isinstance(other, Graph) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.hash)

    def __str__(self) -> str:
        return to_formula(self)

    def __repr__(self) -> str:
        return f"Graph({str(self)!r})"

    # -- properties the search and the store report -----------------------------------------------
    @cached_property
    def uses_batch_stats(self) -> bool:
        return any(n.spec.reads_batch(n.attrs) for n in self._nodes)

    @cached_property
    def params_per_channel(self) -> int:
        return sum(n.spec.learnable(n.attrs) for n in self._nodes if n.spec.learnable)

    @cached_property
    def poly_degree(self) -> int | None:
        """Degree in x when the layer is a polynomial in x, else None. A subexpression
        that does not depend on x counts as a constant (degree 0)."""
        return self._degrees(inference=False)[self._output]

    @cached_property
    def inference_degree(self) -> int | None:
        """`poly_degree` of the eval-mode layer, where every batch moment is its running
        estimate (a constant): what an encrypted-inference deployment evaluates, so
        BatchNorm followed by `poly(e, order=3)` has inference degree 3."""
        return self._degrees(inference=True)[self._output]

    @cached_property
    def pointwise_at_inference(self) -> bool:
        """True when the eval-mode output is, per channel, a polynomial of the input
        element alone: a polynomial whose only moments of x are batch moments (an
        instance, group, layer or channel moment mixes elements). Such a layer is a
        per-channel coefficient table (`primitives.coefficients`). A moment that only feeds
        batch moments (`batch_mean(channel_var(e))`) is inside a constant at inference, a
        running estimate, so it mixes nothing there."""
        live = self._live_at_inference
        return self.inference_degree is not None and not any(
            n.spec.kind == "moment" and not n.spec.uses_batch_stats and self.depends_on_x[i] and live[i]
            for i, n in enumerate(self._nodes))

    @cached_property
    def _live_at_inference(self) -> tuple[bool, ...]:
        """Per node, whether the eval-mode layer computes it: the output does, and the inputs
        of what it computes, except a batch moment's (it reads its running estimate)."""
        live = [False] * len(self._nodes)
        live[self._output] = True
        for i in range(len(self._nodes) - 1, -1, -1):
            n = self._nodes[i]
            if live[i] and not (n.spec.kind == "moment" and n.spec.uses_batch_stats):
                for j in n.inputs:
                    live[j] = True
        return tuple(live)

    @cached_property
    def he_depth(self) -> int | None:
        """Multiplicative depth of the eval-mode layer under CKKS, or None when it is not a
        per-channel polynomial at inference (`pointwise_at_inference`: e.g. a ReLU, a
        division by data, or an instance, group, layer or channel moment, which would need
        slot rotations). The evaluation scheme: the layer's per-channel coefficient table
        (`primitives.coefficients`, degree d = `inference_degree`, real plaintext
        coefficients in the power basis), where every multiplication, by a ciphertext or by
        a plaintext coefficient, costs one rescaling level; the powers come from a product
        tree with each coefficient multiplied in as one more factor, so a term c_k x^k is a
        product of k + 1 factors, ceil(log2(k + 1)) levels deep: `he_depth_for_degree(d)`.
        It is what TenSEAL 0.3.18's `CKKSVector.polyval` consumes, measured: a context with L
        intermediate primes evaluates every degree up to 2^L - 1 and fails at 2^L
        ("scale out of bounds"); docs/he.md."""
        return he_depth_for_degree(self.inference_degree) if self.pointwise_at_inference else None

    @cached_property
    def mixes_positions(self) -> bool:
        """True when an output element depends on other positions (the spatial axes: an
        image's pixels, a sequence's tokens) of the input: a batch, instance, group or layer
        moment of anything that depends on x, or a unit that batch-normalises. Only `channel`
        moments and point-wise ops keep each position to itself, which a causal sequence
        model needs: a layer that mixes positions would let a token see its future."""
        return any(self.depends_on_x[n.inputs[0]] and (n.spec.reads_batch(n.attrs) or
                                                        (n.spec.kind == "moment" and n.spec.axis != "channel"))
                   for n in self._nodes if n.inputs)

    def _degrees(self, inference: bool) -> list:
        degrees = []
        for i, n in enumerate(self._nodes):
            if not self.depends_on_x[i]:
                degrees.append(0)
            else:
                degrees.append(n.spec.degree_at([degrees[j] for j in n.inputs], n.attrs, inference))
        return degrees

    @cached_property
    def depends_on_x(self) -> tuple[bool, ...]:
        out = []
        for n in self._nodes:
            out.append(n.op == "x" or any(out[j] for j in n.inputs))
        return tuple(out)

    @cached_property
    def shapes(self) -> tuple[frozenset, ...]:
        """Per node, the axes (N, C, S) its value varies over; drives broadcasting in codegen."""
        out = []
        for n in self._nodes:
            if n.spec.kind == "leaf":
                out.append(n.spec.leaf_shape)
            elif n.spec.kind == "moment":
                out.append(MOMENT_SHAPE[n.spec.axis])
            else:
                shape = frozenset().union(*(out[j] for j in n.inputs))
                per_channel = n.spec.kind == "unit" and not n.attrs.get("shared")  # its coefficients vary over C
                out.append(shape | frozenset("C") if per_channel else shape)
        return tuple(out)

    @cached_property
    def subtree_sizes(self) -> tuple[int, ...]:
        """Per node, the size of its subexpression written out as a tree."""
        sizes = []
        for n in self._nodes:
            sizes.append(1 + sum(sizes[j] for j in n.inputs))
        return tuple(sizes)

    @property
    def tree_size(self) -> int:
        return self.subtree_sizes[self._output]

    @cached_property
    def depth(self) -> int:
        depths = []
        for n in self._nodes:
            depths.append(1 + max((depths[j] for j in n.inputs), default=-1))
        return depths[self._output]

    # -- validation ------------------------------------------------------------------------------
    def _check(self):
        if len(self._nodes) > MAX_NODES:
            raise GraphError(f"graph has {len(self._nodes)} nodes, more than {MAX_NODES}")
        if sum(n.op == "x" for n in self._nodes) != 1 or not self.depends_on_x[self._output]:
            raise GraphError("the output does not depend on x")
        if self.tree_size > MAX_TREE_SIZE:
            raise GraphError(f"the written-out formula has {self.tree_size} terms, more than {MAX_TREE_SIZE}")
        if self.depth > MAX_DEPTH:
            raise GraphError(f"graph is {self.depth} operations deep, more than {MAX_DEPTH}")


def he_depth_for_degree(degree: int) -> int:
    """Multiplicative depth of a degree-`degree` polynomial with real plaintext coefficients
    in CKKS (`Graph.he_depth`'s scheme): ceil(log2(degree + 1)), the depth of a balanced
    product of degree + 1 factors (degree copies of x and the coefficient). 1 for a linear
    layer, 2 for degrees 2-3, 3 for 4-7; 0 for a constant (degree 0: nothing to multiply)."""
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 0:
        raise ValueError(f"degree must be a non-negative integer, got {degree!r}")
    return degree.bit_length()


def _to_networkx(nodes) -> nx.DiGraph:
    dag = nx.DiGraph()
    dag.add_nodes_from((i, {"op": n.op}) for i, n in enumerate(nodes))
    for i, n in enumerate(nodes):
        for slot, j in enumerate(n.inputs):
            if dag.has_edge(j, i):
                dag.edges[j, i]["slots"] += (slot,)
            else:
                dag.add_edge(j, i, slots=(slot,))
    return dag


def _canonicalize(nodes: list[Node], output: int):
    """Renumber the nodes that reach `output` in canonical post-order.

    A node's structural key hashes its op, attributes and its inputs' keys
    (sorted for commutative ops); post-order visits inputs in key order, so the
    numbering is a function of the expression alone."""
    if not isinstance(output, int) or not 0 <= output < len(nodes):
        raise GraphError(f"graph output {output!r} is not a node")
    keys: dict[int, str] = {}

    def key(i, depth=0):
        if i not in keys:
            if depth > MAX_NODES:
                raise GraphError("graph is too deep or has a cycle")
            n = nodes[i]
            child = [key(j, depth + 1) for j in n.inputs]
            if n.spec.commutative:
                child.sort()
            text = json.dumps([n.op, sorted(n.attrs.items()), child])
            keys[i] = hashlib.sha256(text.encode()).hexdigest()
        return keys[i]

    def ordered_inputs(i):
        n = nodes[i]
        return sorted(n.inputs, key=key) if n.spec.commutative else list(n.inputs)

    key(output)
    new_id: dict[str, int] = {}
    order: list[Node] = []
    stack = [(output, False)]
    while stack:
        i, expanded = stack.pop()
        if keys[i] in new_id:
            continue
        if expanded:
            n = nodes[i]
            inputs = tuple(new_id[keys[j]] for j in ordered_inputs(i))
            new_id[keys[i]] = len(order)
            order.append(Node(n.op, inputs, n.attrs))
        else:
            stack.append((i, True))
            stack.extend((j, False) for j in reversed(ordered_inputs(i)))
    return tuple(order), new_id[keys[output]]
