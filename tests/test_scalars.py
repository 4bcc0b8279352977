"""Learnable scalars: `scalar(0.5)` is one number per layer, a 0-dim parameter that starts at 0.5.

The language (parse, print, canonical JSON, properties), the generated module (parameter names
and values, state_dict, export), the screen (duplicates by id renaming, the fingerprint's
0-dim parameters), mutation and random layers, and the trainer's parameter groups.
"""
import random

import pytest
import torch

from evaluators.screen import Screen
from primitives import FormulaError, Graph, GraphError, compile_layer, export_layer, parse
from primitives.canonical import canonical, canonical_hash
from primitives.library import REFERENCE_LAYERS
from primitives.random_graph import random_graph
from search.engine.modes import get_mode
from search.engine.mutation import mutate

DYT = "tanh(scalar(0.5) * x) * gamma + beta"                    # weight * tanh(alpha * x) + bias
DERF = "erf(scalar(0.5) * x + scalar(0)) * gamma + beta"         # weight * erf(alpha * x + s) + bias


# -- the language ------------------------------------------------------------------------------

@pytest.mark.parametrize("formula", [
    DYT, DERF, "scalar(-0.5) * x", "scalar(0.5, id=1) * x + scalar(0.5) * x ** 2", "scalar(1e-3, id=9) * x",
    "max(x, scalar(0.1)) + poly(scalar(2) * x, order=2)", "x + layer_mean(scalar(3) * x)",
])
def test_print_parse_and_json_round_trips(formula):
    g = parse(formula)
    assert str(g) == formula
    assert parse(str(g)).hash == g.hash
    assert Graph.from_json(g.to_json()) == g


def test_dyt_and_derf_are_written_as_in_the_papers():
    assert str(parse(DYT)) == "tanh(scalar(0.5) * x) * gamma + beta"
    assert str(parse(DERF)) == "erf(scalar(0.5) * x + scalar(0)) * gamma + beta"
    assert parse("beta + gamma * tanh(x * scalar(0.5))") == parse(DYT)   # operand order is free
    assert parse("erf(x * scalar(0.5) + scalar(-0.0)) * gamma + beta") == parse(DERF)


def test_equal_scalars_are_one_node_and_ids_tell_them_apart():
    once = parse("scalar(0.5) * x + scalar(0.5) * x ** 2")
    twice = parse("scalar(0.5) * x + scalar(0.5, id=1) * x ** 2")
    assert sum(n.op == "scalar" for n in once.nodes) == 1
    assert sum(n.op == "scalar" for n in twice.nodes) == 2
    assert parse("scalar(0.5, id=0) * x") == parse("scalar(0.5) * x")
    assert parse("scalar(0.5) * x") != parse("scalar(0.25) * x")
    assert '"id"' not in parse("scalar(0.5) * x").to_json()      # id 0 is left out, like shared/norm
    assert '"id":1' in twice.to_json()
    assert [list(compile_layer(g, 3).state_dict()) for g in (once, twice)] == [["scalar0"], ["scalar0", "scalar1"]]


@pytest.mark.parametrize("formula,message", [
    ("scalar() * x", "scalar takes 1 argument"),
    ("scalar(0.5, 1) * x", "scalar takes 1 argument"),
    ("scalar(x)", "the value of scalar must be a real number literal"),
    ("scalar(gamma) * x", "the value of scalar must be a real number literal"),
    ("scalar(1e400) * x", "must be finite"),
    ("scalar(0.5, id=10) * x", "id must lie in"),
    ("scalar(0.5, id=0.5) * x", "id must be an integer"),
    ("scalar(0.5, eps=1) * x", "no keyword 'eps'"),
    ("scalar * x", "scalar is a function"),
])
def test_bad_scalars_are_formula_errors(formula, message):
    with pytest.raises(FormulaError, match=message):
        parse(formula)


@pytest.mark.parametrize("text,message", [
    ('{"nodes": [{"op": "x"}, {"op": "scalar"}, {"op": "mul", "inputs": [0, 1]}], "output": 2}', "finite numeric"),
    ('{"nodes": [{"op": "x"}, {"op": "scalar", "value": 1, "name": "a"}, {"op": "mul", "inputs": [0, 1]}], '
     '"output": 2}', "no attribute"),
    ('{"nodes": [{"op": "scalar", "value": 1}, {"op": "exp", "inputs": [0]}], "output": 1}', "does not depend on x"),
])
def test_bad_scalar_json_is_a_graph_error(text, message):
    with pytest.raises(GraphError, match=message):
        Graph.from_json(text)


def test_a_scalar_is_a_learnable_constant():
    dyt = parse(DYT)
    assert (dyt.params_per_channel, dyt.poly_degree, dyt.uses_batch_stats, dyt.mixes_positions) == (2, None, False, False)
    g = parse("scalar(0.5) * x ** 2 + scalar(-1) * x")
    assert (g.params_per_channel, g.poly_degree, g.inference_degree) == (0, 2, 2)   # not per channel; degree 0
    assert g.shapes[[n.op for n in g.nodes].index("scalar")] == frozenset()        # varies over nothing
    assert get_mode("polynomial", max_degree=2).accept(g)
    # never folded: it learns
    folded = parse("exp(scalar(0)) * x + scalar(0.5) * 2 * x")
    assert {n.op for n in folded.nodes} >= {"exp", "scalar"}
    assert "exp" not in {n.op for n in parse("exp(0) * x").nodes}


# -- older graphs --------------------------------------------------------------------------------

def test_scalars_leave_every_older_graph_as_it_was():
    # (formula, hash) computed before scalars existed (commit dfe2478)
    older = {
        "relu((x - batch_mean(x)) / batch_std(x) * gamma + beta)": "932d1a373723feee",
        "x / max(batch_std(x), instance_std(x) + x * v1) * gamma + beta": "0e5a01e7c87ed3e0",
        "x * sigmoid(x * v1) / group_std(x, groups=8) * gamma + beta": "96e7ccd8855c213b",
        "x * v1 / channel_rms(x) + x ** 2 * v2 / channel_rms(x ** 2) + x ** 3 * v3 / channel_rms(x ** 3) + beta":
            "04997c0351f0f3ac",
        "rational((x - batch_mean(x)) / batch_std(x), shared=1) * gamma + beta": "3184fe81b38fb742",
        "max(x, 0.5) - min(x * v0, -1) / 3": "fa40c38bc2783702",
        "poly(x, order=2, norm=1) + tanh(0.5 * x) * gamma": "82764925bbdacc14",
        "erf(x) + rational(layer_mean(x) - channel_rms(x, eps=1e-3), p=2, q=1, shared=1)": "1c5eb48506c09549",
    }
    for formula, digest in older.items():
        g = parse(formula)
        assert (str(g), g.hash) == (formula, digest)


# -- the generated module ----------------------------------------------------------------------

def test_scalars_are_0_dim_parameters_in_node_order_at_their_initial_values():
    g = parse("tanh(scalar(0.5) * x) * gamma + erf(scalar(-0.5, id=2) * x + scalar(0)) + scalar(0.5, id=1)")
    layer = compile_layer(g, 4)
    scalars = [n for n in g.nodes if n.op == "scalar"]
    params = dict(layer.named_parameters())
    for k, node in enumerate(scalars):
        p = params[f"scalar{k}"]
        assert p.shape == () and p.item() == pytest.approx(node.attrs["value"])
    assert len(scalars) == 4 and set(params) == {"gamma"} | {f"scalar{k}" for k in range(4)}


def test_dyt_computes_weight_tanh_alpha_x_plus_bias():
    layer = compile_layer(DYT, 6)
    with torch.no_grad():
        layer.scalar0.fill_(0.8)
        layer.gamma.uniform_(0.5, 1.5)
        layer.beta.uniform_(-0.5, 0.5)
    x = torch.randn(3, 6, 7)
    expected = torch.tanh(0.8 * x) * layer.gamma.view(1, -1, 1) + layer.beta.view(1, -1, 1)
    torch.testing.assert_close(layer(x), expected)


def test_state_dict_round_trips_between_compiled_and_exported_classes():
    namespace = {}
    exec(export_layer(parse(DERF), class_name="Derf"), namespace)
    compiled = compile_layer(DERF, 5)
    with torch.no_grad():
        compiled.scalar0.fill_(1.3)
        compiled.scalar1.fill_(-0.2)
    exported = namespace["Derf"](5)
    exported.load_state_dict(compiled.state_dict())
    x = torch.randn(2, 5, 4)
    assert torch.equal(exported(x), compiled(x))
    assert exported.state_dict()["scalar1"].shape == ()


# -- the screen ----------------------------------------------------------------------------------

def test_scalar_ids_are_renamed_canonically():
    assert canonical(parse("tanh(scalar(0.5, id=3) * x)")) == parse("tanh(scalar(0.5) * x)")
    a = parse("tanh(scalar(0.5, id=2) * x) + scalar(0.5, id=7) * x ** 2")
    b = parse("tanh(scalar(0.5, id=4) * x) + scalar(0.5) * x ** 2")
    c = parse("tanh(scalar(0.5) * x) + scalar(0.5, id=1) * x ** 2")
    assert canonical_hash(a) == canonical_hash(b) == canonical_hash(c)
    assert canonical(canonical(a)) == canonical(a)
    # tied scalars (the same place in the graph) too
    assert canonical_hash(parse("x * scalar(1, id=5) + x * scalar(1, id=2)")) == \
        canonical_hash(parse("x * scalar(1) + x * scalar(1, id=1)"))
    # different initial values, or a scalar against a vector, never stand for each other
    assert canonical_hash(parse("x * scalar(1)")) != canonical_hash(parse("x * scalar(0.5)"))
    assert canonical_hash(parse("x * scalar(1)")) != canonical_hash(parse("x * gamma"))
    assert canonical_hash(parse("x * scalar(1) * scalar(1, id=1)")) != canonical_hash(parse("x * scalar(1) * scalar(1)"))


def test_dyt_passes_the_screen_and_its_respellings_are_duplicates():
    screen = Screen()
    assert screen.check(DYT, 1)["status"] is None
    for k, spelling in enumerate(["tanh(scalar(0.5, id=3) * x) * gamma + beta",
                                  "v4 * tanh(x * scalar(0.5)) + v0"], start=2):
        record = screen.check(spelling, k)
        assert (record["status"], record["equivalent_to"]) == ("duplicate", 1), record
    record = screen.check("tanh(scalar(0.5) * x) * gamma + beta + layer_var(scalar(2) * v0)", 5)
    assert (record["status"], record["equivalent_to"]) == ("equivalent", 1), record
    # another starting alpha is another layer; so is a fixed alpha
    assert screen.check("tanh(scalar(1) * x) * gamma + beta", 6)["status"] is None
    assert screen.check("tanh(0.5 * x) * gamma + beta", 7)["status"] is None
    assert screen.check(DERF, 8)["status"] is None


# -- mutation, random layers, trainer -----------------------------------------------------------

def test_vector_mutation_introduces_and_removes_scalars():
    bn_swish = parse(REFERENCE_LAYERS["bn-swish"])
    introduced = {str(mutate(bn_swish, random.Random(i), kinds=("vector",))[0]) for i in range(120)}
    assert any("scalar(1)" in s for s in introduced)          # a vector becomes a scalar at its start
    literal = parse("tanh(0.5 * x) * gamma + beta")
    made = {mutate(literal, random.Random(i), kinds=("vector",))[0] for i in range(120)}
    assert parse(DYT) in made                                   # a literal becomes a learnable scalar
    removed = {mutate(parse(DYT), random.Random(i), kinds=("vector",))[0] for i in range(60)}
    assert literal in removed                                   # and back: the literal of its start
    values = {str(mutate(parse(DYT), random.Random(i), kinds=("keyword",))[0]) for i in range(60)}
    assert any(s.startswith("tanh(scalar(") and "scalar(0.5)" not in s for s in values)   # another start


def test_a_new_scalar_is_a_new_parameter():
    g = parse("tanh(scalar(1) * x) * v1 + beta")
    children = {mutate(g, random.Random(i), kinds=("vector",))[0] for i in range(200)}
    assert parse("tanh(scalar(1) * x) * scalar(1, id=1) + beta") in children


def test_random_layers_hold_scalars_now_and_then():
    rng = random.Random(0)
    graphs = [random_graph(rng, max_ops=8) for _ in range(300)]
    with_scalars = sum(any(n.op == "scalar" for n in g.nodes) for g in graphs)
    assert 0 < with_scalars < 0.15 * len(graphs)


def test_scalars_train_without_weight_decay_at_the_network_rate():
    from evaluators.trainer import TrainConfig, param_groups
    net = torch.nn.Sequential(torch.nn.Conv1d(3, 8, 1), compile_layer(DERF, 8))
    groups = param_groups(net, TrainConfig(weight_decay=5e-4))
    names = {id(p): n for n, p in net.named_parameters()}
    no_decay = [names[id(p)] for p in groups[1]["params"]]
    assert {"1.scalar0", "1.scalar1"} <= set(no_decay)
    assert (groups[1]["weight_decay"], groups[1]["lr_scale"]) == (0.0, 1.0)
