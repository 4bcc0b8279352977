"""Mutation always yields a valid graph, inside the mode, different from its parent."""
import random

import pytest

from primitives import Graph, GraphError, parse
from primitives.library import REFERENCE_LAYERS
from search.engine.modes import get_mode
from search.engine.mutation import KINDS, mutate


@pytest.mark.parametrize("mode_name", ["batch", "sample", "polynomial"])
def test_children_valid_different_and_in_mode(mode_name):
    mode = get_mode(mode_name, max_degree=3)
    rng = random.Random(mode_name)
    kinds = set()
    for _ in range(300):
        parent = mode.random_graph(rng)
        child, text = mutate(parent, rng, mode)
        kinds.add(text.split()[0])
        assert child.hash != parent.hash
        assert Graph.from_json(child.to_json()) == child          # valid, canonical round trip
        assert parse(str(child)).hash == child.hash
        assert mode.accept(child), (str(child), mode.why_not(child))
        if mode_name == "sample":
            assert not child.uses_batch_stats
        if mode_name == "polynomial":
            assert child.inference_degree is not None and child.inference_degree <= 3   # what the mode bounds
    assert kinds == set(KINDS)


def test_mutation_chains_stay_valid():
    """Long lineages (mutating children of children) never break a graph."""
    mode = get_mode("batch")
    rng = random.Random(7)
    graph = parse(REFERENCE_LAYERS["evonorm-b0"])
    for _ in range(400):
        child, _ = mutate(graph, rng, mode)
        assert child.hash != graph.hash and mode.accept(child)
        graph = child


@pytest.mark.parametrize("name", sorted(REFERENCE_LAYERS))
def test_every_kind_applies_to_reference_layers(name):
    graph = parse(REFERENCE_LAYERS[name])
    rng = random.Random(name)
    for kind in KINDS:
        if name == "identity" and kind != "insert":   # the bare input: no op, keyword or vector to change
            with pytest.raises(GraphError):
                mutate(graph, rng, get_mode("batch"), kinds=(kind,))
            continue
        child, text = mutate(graph, rng, get_mode("batch"), kinds=(kind,))
        assert text.startswith(kind) and child.hash != graph.hash


def test_deterministic_given_rng():
    graph = parse(REFERENCE_LAYERS["evonorm-s0"])
    a = [mutate(graph, random.Random(i))[0].hash for i in range(20)]
    b = [mutate(graph, random.Random(i))[0].hash for i in range(20)]
    assert a == b


def test_modes_reject_what_they_exclude():
    assert not get_mode("sample").accept(parse(REFERENCE_LAYERS["bn-relu"]))
    assert get_mode("sample").accept(parse(REFERENCE_LAYERS["evonorm-s0"]))
    poly = get_mode("polynomial", max_degree=2)
    assert poly.accept(parse("x * x * gamma + beta"))
    assert not poly.accept(parse("x ** 3"))
    assert not poly.accept(parse("relu(x)"))
    with pytest.raises(ValueError):
        get_mode("nope")


def test_keyword_mutation_shares_a_unit_and_unshares_it():
    per_channel = parse("poly((x - batch_mean(x)) / batch_std(x), order=3) * gamma + beta")
    shared = parse(REFERENCE_LAYERS["bn-rational"])
    assert "shared=1" in str(shared)
    to_shared = {str(mutate(per_channel, random.Random(i), kinds=("keyword",))[0]) for i in range(60)}
    to_per_channel = {str(mutate(shared, random.Random(i), kinds=("keyword",))[0]) for i in range(60)}
    assert any("shared=1" in s for s in to_shared)
    assert any("shared" not in s for s in to_per_channel)
    # and a polynomial unit's powers are normalised, or no longer
    assert any("norm=1" in s for s in to_shared)
    normed = parse("poly((x - batch_mean(x)) / batch_std(x), norm=1) * gamma + beta")
    assert any("norm" not in str(mutate(normed, random.Random(i), kinds=("keyword",))[0]) for i in range(60))
