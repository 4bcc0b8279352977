"""The graph: canonical hashing under renumbering and operand order, JSON, properties."""
import json
import random

import pytest

from primitives import Graph, GraphError, Node, parse
from primitives.library import REFERENCE_LAYERS
from primitives.random_graph import random_graph

N_RANDOM = 500


@pytest.fixture(scope="module")
def graphs():
    rng = random.Random(1234)
    return [random_graph(rng, max_ops=14) for _ in range(N_RANDOM)]


def swapped(graph: Graph, rng: random.Random) -> Graph:
    """The same graph with the operands of commutative ops randomly swapped."""
    nodes = [Node(n.op, tuple(reversed(n.inputs)) if n.spec.commutative and rng.random() < 0.5 else n.inputs,
                  n.attrs) for n in graph.nodes]
    return Graph.from_nodes(nodes, graph.output)


def renumbered_json(graph: Graph, rng: random.Random) -> str:
    """The graph's JSON with its nodes listed in a random order."""
    data = json.loads(graph.to_json())
    order = list(range(len(data["nodes"])))
    rng.shuffle(order)
    position = {old: new for new, old in enumerate(order)}
    nodes = []
    for old in order:
        node = dict(data["nodes"][old])
        if "inputs" in node:
            node["inputs"] = [position[j] for j in node["inputs"]]
        nodes.append(node)
    return json.dumps({"nodes": nodes, "output": position[data["output"]]})


def test_random_graphs_are_varied(graphs):
    assert len({g.hash for g in graphs}) > 0.8 * N_RANDOM
    assert max(len(g) for g in graphs) >= 10


def test_print_parse_and_json_round_trips_keep_the_hash(graphs):
    for g in graphs:
        assert parse(str(g)).hash == g.hash, str(g)
        assert Graph.from_json(g.to_json()).hash == g.hash
        assert Graph.from_json(g.to_json()).to_json() == g.to_json()


def test_swapping_commutative_operands_and_renumbering_keep_the_hash(graphs):
    rng = random.Random(7)
    for g in graphs:
        assert swapped(g, rng).hash == g.hash
        assert Graph.from_json(renumbered_json(g, rng)).hash == g.hash


def test_structurally_different_graphs_get_different_hashes(graphs):
    by_hash = {}
    for g in graphs:
        assert by_hash.setdefault(g.hash, g.to_json()) == g.to_json()
    pairs = [("x - 1", "1 - x"), ("x / v1", "v1 / x"), ("x ** 2", "x ** 3"), ("x + v1", "x + v2"),
             ("batch_std(x)", "batch_std(x, eps=1e-3)"), ("group_std(x)", "group_std(x, groups=8)"),
             ("instance_mean(x)", "layer_mean(x)"), ("x - (x - 1)", "x - x - 1"), ("2 * x", "x + x")]
    for a, b in pairs:
        assert parse(a).hash != parse(b).hash, (a, b)


def test_hash_ignores_commutative_order_but_not_others():
    assert parse("x * gamma + beta").hash == parse("beta + gamma * x").hash
    assert parse("max(x, v1)").hash == parse("max(v1, x)").hash
    assert parse("x - beta").hash != parse("beta - x").hash


BAD_JSON = [
    ("not json", "does not parse"),
    ("[]", "must be an object"),
    ('{"nodes": [{"op": "x"}], "output": 3}', "not a node index"),
    ('{"nodes": [{"op": "x"}, {"op": "frobnicate", "inputs": [0]}], "output": 1}', "unknown op"),
    ('{"nodes": [{"op": "x"}, {"op": "add", "inputs": [0]}], "output": 1}', "takes 2 input"),
    ('{"nodes": [{"op": "x"}, {"op": "relu", "inputs": [7]}], "output": 1}', "dangling"),
    ('{"nodes": [{"op": "x"}, {"op": "add", "inputs": [0, 2]}, {"op": "relu", "inputs": [1]}], "output": 2}',
     "cycle"),
    ('{"nodes": [{"op": "param", "name": "gamma"}, {"op": "relu", "inputs": [0]}], "output": 1}',
     "does not depend on x"),
    ('{"nodes": [{"op": "x"}, {"op": "relu", "inputs": [0]}, {"op": "exp", "inputs": [0]}], "output": 1}',
     "do not reach the output"),
    ('{"nodes": [{"op": "x"}, {"op": "pow", "inputs": [0], "k": 12}], "output": 1}', "k must lie"),
    ('{"nodes": [{"op": "x"}, {"op": "param", "name": "alpha"}, {"op": "mul", "inputs": [0, 1]}], "output": 2}',
     "param name"),
    ('{"nodes": [{"op": "x"}, {"op": "const", "value": "NaN"}, {"op": "mul", "inputs": [0, 1]}], "output": 2}',
     "finite numeric"),
    ('{"nodes": [{"op": "x"}, {"op": "relu", "inputs": [0], "eps": 1}], "output": 1}', "no attribute"),
]


@pytest.mark.parametrize("text,message", BAD_JSON)
def test_malformed_json_graphs_raise_graph_error(text, message):
    with pytest.raises(GraphError, match=message):
        Graph.from_json(text)


def test_size_limits():
    deep = "x"
    for _ in range(70):
        deep = f"relu({deep})"
    with pytest.raises(ValueError, match="deep"):
        parse(deep)
    with pytest.raises(ValueError, match="longer than 10000 characters"):
        parse("x" + " + x" * 2500)


def _squared(levels):
    """x squared `levels` times, written out: 2**(levels + 1) - 1 terms over levels + 1 nodes."""
    text = "x"
    for _ in range(levels):
        text = f"({text})*({text})"
    return text


def test_the_2000_term_limit():
    """A formula within 10,000 characters and 100 nodes whose written-out tree is too big."""
    assert parse(_squared(9)).tree_size == 1023
    too_big = _squared(10)
    assert len(too_big) < 10_000
    with pytest.raises(ValueError, match="2047 terms, more than 2000"):
        parse(too_big)


def test_the_100_node_limit():
    """Distinct operations (x + 1 + 2 + ...: a constant and an add per term), far from the
    term, depth and length limits."""
    assert len(parse("x" + "".join(f" + {k}" for k in range(1, 50)))) == 99
    with pytest.raises(ValueError, match="101 nodes, more than 100"):
        parse("x" + "".join(f" + {k}" for k in range(1, 51)))


@pytest.mark.parametrize("formula,batch,params,degree", [
    ("relu((x - batch_mean(x)) / batch_std(x) * gamma + beta)", True, 2, None),
    ("x * sigmoid(v1 * x) / group_std(x) * gamma + beta", False, 3, None),
    ("x - batch_mean(x)", True, 0, 1),
    ("(x - instance_mean(x)) * gamma + beta", False, 2, 1),
    ("x ** 3 * v1 + x * v2 + beta", False, 3, 3),
    ("instance_var(x) * x", False, 0, 3),
    ("x / v1 + x / 2", False, 1, 1),
    ("x / x", False, 0, None),
    ("x * exp(v1)", False, 1, 1),
    ("poly(x, order=4)", False, 5, 4),
    ("poly(x ** 2, order=3)", False, 4, 6),
    ("rational(x)", False, 10, None),
    ("rational(x, p=2, q=1) + poly(x) * gamma", False, 4 + 4 + 1, None),
    ("relu(x)", False, 0, None),
    ("layer_std(x) * x", False, 0, None),
])
def test_reported_properties(formula, batch, params, degree):
    g = parse(formula)
    assert (g.uses_batch_stats, g.params_per_channel, g.poly_degree) == (batch, params, degree)


def test_reference_layer_properties():
    assert parse(REFERENCE_LAYERS["evonorm-b0"]).uses_batch_stats
    assert not parse(REFERENCE_LAYERS["evonorm-s0"]).uses_batch_stats
    bn_poly = parse(REFERENCE_LAYERS["bn-poly"])     # gamma, beta and the square's weight v1
    assert (bn_poly.params_per_channel, bn_poly.inference_degree, bn_poly.poly_degree) == (3, 2, None)


def test_from_nodes_rejects_forward_references():
    with pytest.raises(GraphError):
        Graph.from_nodes([("relu", (1,), {}), ("x", (), {})], 0)


def test_to_networkx_structure_of_evonorm_s0():
    import networkx as nx

    g = parse("x * sigmoid(v1 * x) / group_std(x, groups=8) * gamma + beta")
    dag = g.to_networkx()
    # x, v1, v1 * x, sigmoid, x * sigmoid, group_std, /, gamma, *, beta, +
    assert dag.number_of_nodes() == len(g) == 11
    assert dag.number_of_edges() == sum(len(n.inputs) for n in g.nodes) == 12
    assert nx.is_directed_acyclic_graph(dag)
    assert all(j < i for j, i in dag.edges)        # node numbers are a topological order
    assert list(nx.lexicographical_topological_sort(dag)) == list(range(len(g)))
    assert dag.graph["output"] == g.output
    assert [n for n in dag if dag.out_degree(n) == 0] == [g.output]
    assert nx.ancestors(dag, g.output) == set(range(len(g))) - {g.output}
    x = next(n for n, op in dag.nodes(data="op") if op == "x")
    assert dag.out_degree(x) == 3                  # v1 * x, x * sigmoid, group_std(x)
    for i, node in enumerate(g.nodes):
        assert dag.nodes[i]["op"] == node.op
        assert set(dag.predecessors(i)) == set(node.inputs)
        slots = {s: j for j in dag.predecessors(i) for s in dag.edges[j, i]["slots"]}
        assert slots == dict(enumerate(node.inputs))
    labels = sorted(label for _, label in dag.nodes(data="label"))
    assert labels == sorted(["x", "v1", "*", "sigmoid", "*", "group_std(groups=8)", "/", "gamma", "*",
                             "beta", "+"])


def test_to_networkx_keeps_both_slots_of_a_repeated_input():
    g = parse("x * x + x ** 3 + 2 * x")
    dag = g.to_networkx()
    square = next(i for i, n in enumerate(g.nodes) if n.op == "mul" and n.inputs[0] == n.inputs[1])
    x = g.nodes[square].inputs[0]
    assert dag.edges[x, square]["slots"] == (0, 1)
    assert dag.nodes[next(i for i, n in enumerate(g.nodes) if n.op == "pow")]["label"] == "** 3"
    assert "2" in {label for _, label in dag.nodes(data="label")}
    dag.add_edge(g.output, x)                      # a copy: the graph itself is untouched
    assert g.to_networkx().number_of_edges() == dag.number_of_edges() - 1


@pytest.mark.parametrize("formula, mixes", [
    ("x", False),
    ("(x - channel_mean(x)) / channel_std(x) * gamma + beta", False),      # LayerNorm over tokens
    ("tanh(x) * gamma + instance_mean(gamma) + batch_var(beta)", False),   # moments of no x
    ("poly(x, order=3)", False),
    ("relu((x - batch_mean(x)) / batch_std(x))", True),
    ("x - instance_mean(x)", True),
    ("x * sigmoid(x) / group_std(x)", True),
    ("x / layer_rms(tanh(x))", True),
    ("poly(x, norm=1)", True),                                            # batch-normalised powers
])
def test_mixes_positions(formula, mixes):
    assert parse(formula).mixes_positions is mixes


def test_every_recorded_graph_keeps_its_canonical_json_and_hash():
    """The runs committed in results/ were recorded by older versions of the language (before
    learnable scalars, shared and normalised units): each record's formula still parses to its
    recorded hash, and its recorded graph JSON is still the canonical JSON."""
    import pyarrow.parquet as pq
    from pathlib import Path
    seen = 0
    for path in sorted(Path(__file__).resolve().parent.parent.glob("results/*/candidates/*.parquet")):
        for row in pq.read_table(path, columns=["formula", "graph", "graph_hash"]).to_pylist():
            if row["formula"]:
                g = parse(row["formula"])
                assert (g.hash, g.to_json()) == (row["graph_hash"], row["graph"]), row["formula"]
                assert Graph.from_json(row["graph"]).hash == row["graph_hash"]
                seen += 1
    assert seen >= 900
