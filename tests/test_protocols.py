"""Rejection protocols 1-4: validity, duplicates, functional equivalence, stability."""
from __future__ import annotations

import random
import time

import pytest
import torch

from evaluators.protocols import (FingerprintIndex, Quality, Stability, Validity, fingerprint,
                                  seeded_parameters)
from evaluators.screen import Screen
from primitives import compile_layer, parse
from primitives.library import BASELINES, REFERENCE_LAYERS
from primitives.random_graph import random_graph

# -- protocol 1 ------------------------------------------------------------------------------------

DEGENERATE = [
    "x * 0 + beta",
    "x - x",
    "x / x",
    "v1 * x / x",
    "x * 0",
    "(x - x) * gamma + beta",
    "relu(x) * 0 + v1",
    "instance_var(exp(channel_mean(v6))) * x",   # a constant times x: zero
    "x / (x - 0.999 * x)",                       # 1000, up to rounding
]
BAD_SHAPE = ["batch_mean(x)", "layer_std(x)", "instance_mean(x) * gamma", "channel_rms(x + v8)",
             "group_mean(tanh(x))"]
NON_FINITE = ["log(x)", "sqrt(x)", "x / (x - x)", "log(x - x)", "1 / (x - x)", "x ** 2 / (x - x)"]


@pytest.mark.parametrize("formula", DEGENERATE + BAD_SHAPE)
def test_degenerate_layers_are_invalid(formula):
    record = Screen().check(formula, 0)
    assert record["status"] == "invalid", record
    assert record["reason"]
    assert record["graph_hash"] == parse(formula).hash


@pytest.mark.parametrize("formula", ["v1", "gamma * beta + 2", "", "x +", "__import__('os')", "x[0]"])
def test_unparsable_or_x_free_formulas_are_invalid(formula):
    record = Screen().check(formula, 0)
    assert record["status"] == "invalid"
    assert "does not parse" in record["reason"]
    assert record["graph_hash"] is None


def test_non_string_candidate_is_invalid_not_an_exception():
    assert Screen().check(12345, 0)["status"] == "invalid"
    assert Screen().check(None, 0)["status"] == "invalid"


@pytest.mark.parametrize("formula", NON_FINITE)
def test_non_finite_layers_are_unstable_with_a_reason(formula):
    record = Screen().check(formula, 0)
    assert record["status"] == "unstable", record
    assert "non-finite" in record["reason"]


@pytest.mark.parametrize("name", sorted(REFERENCE_LAYERS))
def test_reference_layers_pass_all_four(name):
    record = Screen().check(REFERENCE_LAYERS[name], 7)
    assert record["status"] is None, record
    assert record["reason"] is None and record["equivalent_to"] is None
    assert set(record["stage_seconds"]) == {"validity", "duplicate", "equivalence", "stability"}


def test_layer_that_is_constant_only_at_initialisation_is_valid():
    # v0 starts at 0, so the output is constant at init, but training moves v0.
    assert Validity().check(parse("x * v0 + beta")).status is None


def test_validity_counts_and_times_itself():
    v = Validity()
    v.check(parse("x * 0 + beta"))
    v.check(parse("relu(x)"))
    assert v.stats()["checked"] == 2 and v.stats()["rejected"] == 1 and v.stats()["seconds"] > 0


# -- protocol 2 ------------------------------------------------------------------------------------

def test_duplicates_point_at_the_first_candidate():
    screen = Screen()
    start = time.perf_counter()
    assert screen.check("x * sigmoid(v1 * x) / group_std(x) * gamma + beta", 3)["status"] is None
    again = screen.check("beta + gamma * (sigmoid(x * v1) * x / group_std(x))", 9)
    elapsed = time.perf_counter() - start
    assert again["status"] == "duplicate" and again["equivalent_to"] == 3
    stats = screen.stats["duplicate"]
    assert set(stats) == {"checked", "rejected", "seconds"}
    assert (stats["checked"], stats["rejected"]) == (2, 1)
    # its own time, a part of the time the two checks took (not the whole screen's)
    assert 0 < stats["seconds"] < elapsed
    assert stats["seconds"] < sum(s["seconds"] for s in screen.stats.values())


def test_graph_json_is_accepted_as_a_candidate():
    screen = Screen()
    g = parse("relu(x) * gamma")
    assert screen.check(g.to_json(), 1)["graph_hash"] == g.hash
    assert screen.check(g, 2)["status"] == "duplicate"


# -- protocol 3 ------------------------------------------------------------------------------------

EQUIVALENT_PAIRS = [
    ("x + x", "2 * x"),
    ("(x + v1) * gamma", "x * gamma + v1 * gamma"),
    ("x * x", "x ** 2"),
    ("x * x * x", "x ** 3"),
    ("x - 0.5 * x", "0.5 * x"),
    ("-(-x) * gamma", "x * gamma"),
    ("x / 2", "0.5 * x"),
    ("max(x, 0)", "relu(x)"),
    ("min(x, 0)", "-relu(-x)"),
    ("abs(x)", "max(x, -x)"),
    ("sqrt(x ** 2)", "abs(x)"),
    ("x * sigmoid(x)", "x / (1 + exp(-x))"),
    ("tanh(x)", "2 * sigmoid(2 * x) - 1"),
    ("sigmoid(x) * gamma", "(0.5 + 0.5 * tanh(0.5 * x)) * gamma"),
    ("(x - batch_mean(x)) / batch_std(x)", "(x - batch_mean(x)) / sqrt(batch_var(x) + 1e-5)"),
    ("x * batch_var(x)", "x * (batch_mean(x ** 2) - batch_mean(x) ** 2)"),
    ("x / instance_rms(x)", "x / sqrt(instance_mean(x ** 2) + 1e-5)"),
    ("x * gamma * v1", "x * (gamma * v1)"),
    ("x * gamma + x * beta", "x * (gamma + beta)"),
    ("exp(log(abs(x)) * 2)", "x ** 2"),
    ("x - layer_mean(x)", "x - group_mean(x, groups=1)"),
    ("x / instance_std(x)", "x * (1 / instance_std(x))"),
    ("relu(x) - relu(-x)", "x"),
    ("x * (sin(x) ** 2 + cos(x) ** 2)", "x"),
    ("(x - instance_mean(x)) ** 2", "x ** 2 - 2 * x * instance_mean(x) + instance_mean(x) ** 2"),
    ("x / max(batch_std(x), v1 * x + instance_std(x)) * gamma + beta",
     "x * gamma / max(instance_std(x) + x * v1, batch_std(x)) + beta"),
    ("(x * v1 + beta) * gamma", "x * (v1 * gamma) + beta * gamma"),
    ("relu(x * gamma)", "max(x * gamma, 0 * x) * (v1 / v1) - relu(-x) * 0"),
]


@pytest.mark.parametrize("a,b", EQUIVALENT_PAIRS)
def test_algebraically_equal_layers_are_equivalent(a, b):
    ga, gb = parse(a), parse(b)
    assert ga.hash != gb.hash, "the pair must differ structurally"
    screen = Screen()
    first = screen.check(ga, 1)
    assert first["status"] in (None, "unstable"), first  # some (x ** 2, ...) are unstable
    second = screen.check(gb, 2)
    assert second["status"] == "equivalent", (first, second)
    assert second["equivalent_to"] == 1


def test_at_least_twenty_equivalence_pairs():
    assert len(EQUIVALENT_PAIRS) >= 20


DIFFERENT_PAIRS = [
    ("x * gamma", "x"),
    ("x * v1", "x * v0"),           # renamed, but the initial values differ
    ("x * v1 * v1", "x * v1 * v2"),  # one vector twice trains unlike two vectors
    ("x * gamma", "x * abs(gamma)"),
    ("x / group_std(x, groups=8)", "x / group_std(x, groups=16)"),
    ("x / group_std(x, groups=32)", "x / instance_std(x)"),
    ("x / group_std(x, groups=4)", "x / layer_std(x)"),
    ("x / batch_std(x)", "x / batch_std(x, eps=1e-3)"),
    ("x / instance_std(x, eps=1e-5)", "x / instance_std(x, eps=1e-6)"),
    ("max(x, 3)", "max(x, 3.5)"),
    ("relu(x)", "relu(x) * 1.0001"),
    ("x / batch_std(x)", "x / instance_std(x)"),
    ("x - batch_mean(x)", "x - instance_mean(x)"),
    ("x / instance_std(x)", "x / instance_rms(x)"),
    ("x * sigmoid(x)", "x * sigmoid(1.0001 * x)"),
    ("poly(x, order=2)", "poly(x, order=3)"),
]


@pytest.mark.parametrize("a,b", DIFFERENT_PAIRS)
def test_different_layers_are_not_equivalent(a, b):
    index = FingerprintIndex()
    index.add(fingerprint(a), 1)
    assert index.find(fingerprint(b)) is None
    assert index.find(fingerprint(a)) == 1


def test_seeded_parameters_depend_on_the_name_only():
    a = seeded_parameters(compile_layer(parse("x * gamma + v3"), 10))
    b = seeded_parameters(compile_layer(parse("relu(v3 - x) * gamma"), 10))
    assert torch.equal(a.gamma, b.gamma) and torch.equal(a.v3, b.v3)
    assert not torch.equal(a.gamma, a.v3)
    assert (a.gamma.abs() >= 0.5).all() and (a.gamma < 0).any() and (a.gamma > 0).any()


def _independent_training(graph, seed, steps=5):
    """The layer's outputs along a training the fingerprint never sees: other inputs and
    channels, a quadratic loss towards a random target, SGD with momentum (clipped)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 24, 3, 3, generator=gen, dtype=torch.float64) * 1.7 + 0.2
    target = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    layer = compile_layer(graph, 24).to(torch.float64).train()
    params = list(layer.parameters())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9) if params else None
    outputs = []
    for _ in range(steps + 1):
        y = layer(x).expand_as(x)
        outputs.append(y.detach().clone())
        if opt is None:
            continue
        opt.zero_grad()
        loss = 0.5 * (torch.where(torch.isfinite(y), y - target, 0.0) ** 2).mean()  # finite values
        if loss.requires_grad:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
    return torch.stack(outputs)


def test_no_false_match_among_1000_random_distinct_graphs():
    from primitives.ops import FULL
    rng = random.Random(1234)
    graphs, seen = [], set()
    while len(graphs) < 1000:
        g = random_graph(rng)
        if g.hash in seen or g.shapes[g.output] != FULL:  # distinct, and shaped like a layer
            continue
        seen.add(g.hash)
        graphs.append(g)
    index = FingerprintIndex()
    matches, unusable = [], 0
    for i, g in enumerate(graphs):
        fp = fingerprint(g)
        unusable += not fp.usable
        j = index.find(fp)
        if j is None:
            index.add(fp, i)
        else:
            matches.append((j, i))
    # Random graphs can truly train alike (a subexpression that is zero, a moment of a vector
    # that starts constant, ...): every match must hold along a training, on inputs, with a
    # loss and an optimiser the fingerprint never saw.
    for j, i in matches:
        a, b = _independent_training(graphs[j], 5), _independent_training(graphs[i], 5)
        scale = max(a.nan_to_num(0.0, 0.0, 0.0).abs().max().item(), 1.0)
        same = torch.allclose(a, b, rtol=1e-6, atol=1e-9 * scale, equal_nan=True)
        assert same, f"false match: {graphs[j]}  ~  {graphs[i]}"
    assert len(index) + len(matches) + unusable == 1000
    assert len(matches) < 200 and unusable < 50


# -- protocol 4 ------------------------------------------------------------------------------------

@pytest.mark.parametrize("formula", ["x ** 3", "x ** 2 * gamma", "exp(exp(x))", "1 / x",
                                     "exp(x)", "rational(x)",
                                     "x / (v0 * x)", "x / (abs(x) - abs(x))"])
def test_explosive_layers_are_unstable(formula):
    record = Screen().check(formula, 0)
    assert record["status"] == "unstable", record
    assert record["reason"]


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_are_stable_with_margin(name):
    stability = Stability()
    base, worst, _ = stability.worst_case(parse(REFERENCE_LAYERS[name]))
    assert worst / base < stability.threshold / 10
    assert base < stability.reference * stability.threshold / 10


def test_stability_threshold_comes_from_the_config():
    from types import SimpleNamespace
    screen = Screen(SimpleNamespace(stability_threshold=2.0, seed=0))
    assert screen.check(REFERENCE_LAYERS["bn-relu"], 0)["status"] == "unstable"


# -- protocol 5 ------------------------------------------------------------------------------------

def test_quality_judges_accuracy_against_its_threshold():
    q = Quality(0.3)
    assert q.judge(0.5, 1.0).status is None
    low = q.judge(0.1, 2.0, "after 10 steps on resnet")
    assert low.status == "low_quality" and "0.1" in low.reason and "resnet" in low.reason
    assert q.stats() == {"checked": 2, "rejected": 1, "seconds": 3.0}


# -- the screen ----------------------------------------------------------------------------------------

def test_screen_rebuilds_its_memory_from_records():
    first = Screen()
    records = []
    for i, formula in enumerate(["relu(x) * gamma", "x * 0 + beta", "x + x", "relu(x) * gamma",
                                 "tanh(x) * v1"]):
        record = first.check(formula, i)
        records.append({"id": i, **record})
    resumed = Screen()
    for record in records:
        resumed.remember(record)
    assert resumed.check("gamma * relu(x)", 10)["equivalent_to"] == 0          # duplicate
    assert resumed.check("2 * x", 11)["equivalent_to"] == 2                   # equivalent
    assert resumed.check("x * 2 + 0 * x", 12)["equivalent_to"] == 2           # equivalent
    assert resumed.check("sigmoid(x) * v2", 13)["status"] is None             # new
    # remembering costs no protocol runs
    fresh = Screen()
    for record in records:
        fresh.remember(record)
    assert all(s["checked"] == 0 for s in fresh.stats.values())


@pytest.fixture
def one_thread():
    """One torch thread for the test, the previous count restored after it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_screen_never_raises_on_random_graphs(one_thread):
    # its speed (candidates per second against the 20/s target) is benchmarks/rejection.py's
    screen = Screen()
    rng = random.Random(7)
    graphs = [random_graph(rng) for _ in range(200)]
    statuses = [screen.check(g, i)["status"] for i, g in enumerate(graphs)]
    assert set(statuses) <= {None, "invalid", "duplicate", "equivalent", "unstable"}
    stats = screen.stats
    assert stats["validity"]["checked"] == 200
    assert sum(s["rejected"] for s in stats.values()) == sum(s is not None for s in statuses)
