"""Random layer graphs: the search's first population and the tests' fuzz input.

A graph is grown bottom-up from `x` and a few terminals (learnable vectors,
literals, now and then a learnable scalar); each new node takes
its inputs from what exists, favouring recent nodes so graphs get deep as
well as wide. Keyword values come from their registry menus (`Keyword.menu`).
"""
from __future__ import annotations

import random
from typing import Callable, Iterable

from .errors import GraphError
from .graph import GraphBuilder, Graph
from .ops import LEARNABLE_VECTORS, OPS

CONSTANTS = (0.5, 1.0, 2.0, -1.0, 0.1, 3.0)
INNER_OPS = tuple(name for name, op in OPS.items() if op.kind != "leaf")


def random_keywords(op: str, rng: random.Random) -> dict:
    return {key: rng.choice(kw.menu) for key, kw in OPS[op].keywords.items()}


# How often a terminal is a learnable vector, a learnable scalar (rarely: one number per layer,
# DyT's alpha) or a literal (the rest). A scalar takes a literal's draws, so a random layer
# either has the same terminals it had before scalars existed or a scalar in place of a literal.
P_VECTOR = 0.7
P_SCALAR = 0.05


def random_terminal(rng: random.Random, vectors: Iterable[str] = LEARNABLE_VECTORS) -> tuple[str, dict]:
    """A learnable vector most of the time, a literal otherwise, now and then a learnable
    scalar starting at such a literal."""
    draw = rng.random()
    if draw < P_VECTOR:
        return "param", {"name": rng.choice(tuple(vectors))}
    op = "scalar" if draw < P_VECTOR + P_SCALAR else "const"
    return op, {"value": rng.choice(CONSTANTS)}


def random_graph(rng: random.Random, ops: Iterable[str] = INNER_OPS, min_ops: int = 2,
                 max_ops: int = 10, accept: Callable[[Graph], bool] | None = None,
                 tries: int = 1000) -> Graph:
    """A valid random graph with `min_ops`..`max_ops` operations drawn from `ops`
    (retried until `accept(graph)` holds)."""
    ops = tuple(ops)
    for _ in range(tries):
        builder = GraphBuilder()
        pool = [builder.add("x")]
        for _ in range(rng.randint(1, 3)):
            op, attrs = random_terminal(rng)
            pool.append(builder.add(op, **attrs))
        try:
            for _ in range(rng.randint(min_ops, max_ops)):
                op = rng.choice(ops)
                inputs = [_pick(pool, rng) for _ in range(OPS[op].arity)]
                pool.append(builder.add(op, inputs, **random_keywords(op, rng)))
            graph = builder.build(pool[-1])
        except GraphError:
            continue
        if accept is None or accept(graph):
            return graph
    raise GraphError(f"no acceptable random graph in {tries} tries")


def _pick(pool: list[int], rng: random.Random) -> int:
    """Favour recent nodes: the newest is the likeliest input."""
    weights = [i + 1 for i in range(len(pool))]
    return rng.choices(pool, weights=weights)[0]
