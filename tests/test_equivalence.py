"""Training-aware equivalence: canonical vector names, the trajectory fingerprint, the
replay of the example run's copies, and the screen's memory across a resume."""
from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from evaluators.protocols import Duplicate, FingerprintIndex, fingerprint
from evaluators.screen import Screen
from primitives import Graph, GraphBuilder, GraphError, Node, parse
from primitives.canonical import NAMES_BY_INIT, canonical, canonical_hash, rename, vector_names
from primitives.ops import LEARNABLE_VECTORS, OPS, VECTOR_INIT
from primitives.random_graph import random_graph

EXAMPLE = Path(__file__).resolve().parents[1] / "results" / "example" / "candidates"
BN = "(x - batch_mean(x)) / batch_std(x)"

# -- canonical renaming ------------------------------------------------------------------------------


@pytest.mark.parametrize("a,b", [
    (f"relu({BN} * v7 + beta)", f"relu({BN} * gamma + beta)"),
    ("x * v3 * v4", "x * v1 * v2"),
    ("x * v0 + v9", "x * beta + gamma"),
    ("x * v1 + x * v2 + sigmoid(v1)", "x * v5 + x * v3 + sigmoid(v5)"),
    ("x * sigmoid(x * v1) / group_std(x) * gamma + beta", "x * sigmoid(x * v1) / group_std(x) * v7 + beta"),
])
def test_renamed_vectors_of_one_initial_value_share_the_key(a, b):
    ga, gb = parse(a), parse(b)
    assert ga.hash != gb.hash
    assert canonical_hash(ga) == canonical_hash(gb)
    assert canonical(ga) == canonical(gb)


@pytest.mark.parametrize("a,b", [
    ("x * v1 * v1", "x * v1 * v2"),        # one vector used twice is not two vectors
    ("x * v0", "x * v1"),                  # the initial values differ
    ("x * gamma + beta", "x * beta + gamma"),
    ("x * v1 + x * v2 + sigmoid(v1)", "x * v1 + x * v2 + sigmoid(v3)"),
])
def test_different_layers_keep_different_keys(a, b):
    assert canonical_hash(parse(a)) != canonical_hash(parse(b))


def test_canonical_names_come_first_in_their_class_and_are_a_fixed_point():
    g = canonical(parse("x * v4 * v8 + v0"))
    assert set(vector_names(g)) == {"gamma", "v1", "beta"}
    assert canonical(g) == g
    assert str(parse(f"relu({BN} * v7 + beta)")) != str(canonical(parse(f"relu({BN} * v7 + beta)")))


MIXING_OPS = ("add", "mul", "sub", "max", "min", "div", "sigmoid", "tanh", "neg", "layer_mean",
              "batch_var", "instance_mean")


def _vector_heavy(rng: random.Random) -> Graph:
    """A random graph over x and 3-6 vector terminals; inputs are drawn from the nodes not
    used yet when there are any, so most vectors reach the output."""
    while True:
        builder = GraphBuilder()
        pool = [builder.add("x")] + [builder.add("param", name=rng.choice(LEARNABLE_VECTORS))
                                     for _ in range(rng.randint(3, 6))]
        unused = list(pool)
        try:
            for _ in range(rng.randint(4, 10)):
                op = rng.choice(MIXING_OPS)
                inputs = [unused.pop(rng.randrange(len(unused))) if unused and rng.random() < 0.8
                          else rng.choice(pool) for _ in range(OPS[op].arity)]
                pool.append(builder.add(op, inputs))
                unused.append(pool[-1])
            return builder.build(pool[-1])
        except GraphError:
            continue


def _with_twin(graph: Graph, rng: random.Random) -> Graph:
    """graph + graph with one vector renamed: the two names tie (same colour)."""
    used = vector_names(graph)
    if not used:
        return graph
    old = rng.choice(used)
    free = [n for n in NAMES_BY_INIT[VECTOR_INIT[old]] if n not in used]
    if not free:
        return graph
    twin = rename(graph, {old: rng.choice(free)})
    offset = len(graph.nodes)
    nodes = list(graph.nodes) + [Node(n.op, tuple(j + offset for j in n.inputs), n.attrs) for n in twin.nodes]
    nodes.append(Node(rng.choice(["add", "mul", "max"]), (graph.output, twin.output + offset), {}))
    return Graph.from_nodes(nodes, len(nodes) - 1)


def _scrambled(graph: Graph, rng: random.Random, vocabulary: int) -> Graph:
    """The graph with each vector node renamed to one of the first `vocabulary` names of its
    initial value (not one to one: vectors merge, so layers share and tie vectors)."""
    nodes = []
    for n in graph.nodes:
        if n.op == "param":
            names = NAMES_BY_INIT[VECTOR_INIT[n.attrs["name"]]]
            n = Node("param", (), {"name": rng.choice(names[:vocabulary])})
        nodes.append(n)
    return Graph.from_nodes(nodes, graph.output)


def _renamings(graph: Graph, onto=None):
    """Every renaming of the graph's vectors one to one onto `onto`'s names (default: its
    own) that keeps initial values."""
    used, target = vector_names(graph), vector_names(onto or graph)
    per_init = []
    for init in NAMES_BY_INIT:
        mine = [n for n in used if VECTOR_INIT[n] == init]
        theirs = [n for n in target if VECTOR_INIT[n] == init]
        if len(mine) != len(theirs):
            return
        per_init.append([dict(zip(mine, p)) for p in itertools.permutations(theirs)])
    for parts in itertools.product(*per_init):
        yield {k: v for part in parts for k, v in part.items()}


@pytest.fixture(scope="module")
def scrambled_graphs():
    rng = random.Random(99)
    graphs = [_scrambled(g, rng, 4) for g in [random_graph(rng, max_ops=12) for _ in range(100)]
              + [_vector_heavy(rng) for _ in range(200)]]
    return graphs + [_with_twin(g, rng) for g in graphs[100:200]]


def test_every_renaming_gives_the_same_key(scrambled_graphs):
    """Brute force: all permutations of a graph's own names, plus random one-to-one
    renamings onto the whole vocabulary of each initial value."""
    rng = random.Random(5)
    for g in scrambled_graphs:
        key = canonical_hash(g)
        for mapping in _renamings(g):
            assert canonical_hash(rename(g, mapping)) == key, (g, mapping)
        for _ in range(3):
            mapping = {}
            for init, names in NAMES_BY_INIT.items():
                mine = [n for n in vector_names(g) if VECTOR_INIT[n] == init]
                mapping.update(zip(mine, rng.sample(names, len(mine))))
            assert canonical_hash(rename(g, mapping)) == key, (g, mapping)


def test_equal_keys_exactly_when_a_renaming_maps_one_onto_the_other():
    """Brute force over pairs of variants of one graph (vectors merged and renamed at random):
    the keys agree if and only if some renaming that keeps initial values maps one onto the other."""
    rng = random.Random(7)
    pairs = same = 0
    for _ in range(100):
        base = _vector_heavy(rng)
        variants = list({v.hash: v for v in (_scrambled(base, rng, 4) for _ in range(6))}.values())
        for a, b in itertools.combinations(variants, 2):
            renamable = any(rename(a, m) == b for m in _renamings(a, onto=b))
            assert (canonical_hash(a) == canonical_hash(b)) == renamable, (a, b)
            pairs += 1
            same += renamable
    assert pairs > 200 and 0 < same < pairs


# -- the trajectory fingerprint ---------------------------------------------------------------------

TRAIN_ALIKE = [   # (first, later, status of the later one)
    (f"relu({BN} * v7 + beta)", f"relu({BN} * gamma + beta)", "duplicate"),
    ("x * v3 * v4", "x * v1 * v2", "duplicate"),
    (f"{BN} * gamma + layer_var(beta)", f"{BN} * gamma", "equivalent"),      # var of a constant: 0
    (f"{BN} * v5 + layer_var(gamma)", f"{BN} * gamma + layer_var(beta)", "equivalent"),
    ("x * gamma + beta * v0", "x * gamma", "equivalent"),        # both start at 0: no gradient
    ("x * gamma + v0 * (v1 - 1)", "x * gamma", "equivalent"),    # likewise
    (f"relu({BN} * gamma + beta) * (v1 / v1)", f"relu({BN} * gamma + beta)", "equivalent"),
    # learnable scalars: ids of one initial value are names too; 0-dim parameters train alike
    ("tanh(scalar(0.5, id=3) * x) * gamma + beta", "tanh(scalar(0.5) * x) * gamma + beta", "duplicate"),
    ("scalar(1, id=4) * x + scalar(1, id=2) * tanh(x)", "scalar(1) * x + scalar(1, id=1) * tanh(x)", "duplicate"),
    ("scalar(1) * x + scalar(0) * scalar(0, id=1)", "scalar(1) * x", "equivalent"),   # no gradient at 0
]

TRAIN_APART = [
    ("x * v1 * v1", "x * v1 * v2"),
    ("x * v0 + beta", "x * v1 + beta"),          # renamed across initial values
    ("x * gamma", "x"),                          # gamma trains
    ("x * gamma * gamma", "x * gamma"),
    ("x + beta * gamma", "x + beta"),            # gamma's gradient is zero until beta moves
    ("x * gamma + beta * gamma", "x * gamma + beta"),
    ("x + v0 * v1", "x + v0"),
    ("x * (gamma + v1) / 2", "x * gamma"),       # same function, half the step per vector
    ("x * layer_mean(gamma)", "x * gamma"),      # equal while gamma is constant, not after
    ("relu(x) + beta", "relu(x) + layer_var(beta)"),
    ("poly(x, order=2)", "poly(x, order=3)"),
    ("x * max(gamma, 0.5)", "x * gamma"),
    ("tanh(scalar(0.5) * x) * gamma + beta", "tanh(scalar(1) * x) * gamma + beta"),   # DyT's alpha0
    ("tanh(scalar(0.5) * x)", "tanh(0.5 * x)"),   # the scalar learns
    ("scalar(1) * x", "gamma * x"),               # one number for the layer, or one per channel
    ("scalar(1) * scalar(1, id=1) * x", "scalar(1) * scalar(1) * x"),
]


@pytest.mark.parametrize("a,b,status", TRAIN_ALIKE)
@pytest.mark.parametrize("order", ["as listed", "reversed"])
def test_layers_that_train_alike_are_caught_both_ways(a, b, status, order):
    first, later = (a, b) if order == "as listed" else (b, a)
    screen = Screen()
    assert screen.check(first, 1)["status"] is None
    record = screen.check(later, 2)
    assert record["status"] == status and record["equivalent_to"] == 1, record
    assert record["formula"] == str(parse(later)) and record["graph_hash"] == parse(later).hash


@pytest.mark.parametrize("a,b", TRAIN_APART)
def test_layers_that_train_apart_stay_apart_both_ways(a, b):
    ga, gb = parse(a), parse(b)
    assert Duplicate.key(ga) != Duplicate.key(gb)
    for first, later in ((ga, gb), (gb, ga)):
        index = FingerprintIndex()
        index.add(fingerprint(first), 1)
        assert index.find(fingerprint(later)) is None, (first, later)
        assert index.find(fingerprint(first)) == 1


def test_renamed_duplicates_say_so():
    screen = Screen()
    screen.check("x * sigmoid(x * v1) / group_std(x) * gamma + beta", 4)
    record = screen.check("x * sigmoid(x * v2) / group_std(x) * v6 + beta", 8)
    assert record["status"] == "duplicate" and "renamed" in record["reason"]
    assert "renamed" not in screen.check("beta + gamma * (x * sigmoid(v1 * x) / group_std(x))", 9)["reason"]


# -- replay of the committed example run ---------------------------------------------------------------

def test_example_run_copies_map_to_one_representative_and_nothing_else_merges():
    """results/example trained bit-identical copies (renamed vectors, layer_var(beta) dead
    terms): replayed through the screen in birth order, each group of `ok` rows with
    bit-identical scores maps to one representative, and no two rows with different
    scores share one."""
    import pandas as pd
    rows = pd.read_parquet(EXAMPLE).sort_values("id")
    ok = rows[rows.status == "ok"]
    accs = [c for c in rows.columns if c.startswith("acc_")]
    screen = Screen()
    representative = {}
    for row in ok.itertuples():
        record = screen.check(row.graph, row.id)
        merged = record["status"] in ("duplicate", "equivalent")
        representative[row.id] = record["equivalent_to"] if merged else row.id
    copies = [ids for ids in ok.groupby(accs)["id"].apply(list) if len(ids) > 1]
    assert copies, "the example run has copies to catch"
    for ids in copies:
        assert len({representative[i] for i in ids}) == 1, ids
    for rep, group in ok.groupby(ok["id"].map(representative)):
        assert len(group[accs].drop_duplicates()) == 1, list(group["id"])


# -- resume ----------------------------------------------------------------------------------------------

def test_resumed_screen_remembers_renamed_keys_and_trajectories():
    formulas = [f"{BN} * v5 + layer_var(beta)", "x * sigmoid(x * v1) / group_std(x) * gamma + beta",
                "x * 0 + beta", "x * sigmoid(x * v3) / group_std(x) * v2 + beta", "tanh(x) * v1",
                f"{BN} * v2", "log(x)"]
    first = Screen()
    records = [{"id": i, **first.check(f, i)} for i, f in enumerate(formulas)]
    assert records[3]["status"] == "duplicate" and records[3]["equivalent_to"] == 1
    resumed = Screen()
    for record in records:
        resumed.remember(record)
    assert all(s["checked"] == 0 for s in resumed.stats.values())
    assert records[5]["status"] == "equivalent" and records[6]["status"] == "unstable"
    probes = [f"{BN} * v8 + layer_var(gamma)", f"{BN} * gamma", "x * sigmoid(x * v4) / group_std(x) * v9 + beta",
              "tanh(x) * gamma", "tanh(x) * gamma * v1", f"{BN} * v2", "log(x)"]
    verdicts = []
    for i, probe in enumerate(probes):
        a, b = first.check(probe, 100 + i), resumed.check(probe, 100 + i)
        assert (a["status"], a["equivalent_to"]) == (b["status"], b["equivalent_to"]), probe
        verdicts.append((a["status"], a["equivalent_to"]))
    # a copy of a copy points at the original; a layer the validity protocol stopped is judged again
    assert verdicts == [("equivalent", 0), ("equivalent", 0), ("duplicate", 1), ("duplicate", 4), (None, None),
                        ("equivalent", 0), ("unstable", None)]
