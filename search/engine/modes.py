"""Search modes: which primitives a search may use and which layers it accepts.

- `batch`: every primitive.
- `sample`: no batch moments, so the layer works at any batch size (EvoNorm's S-series).
- `polynomial`: only ops that keep a polynomial in x at inference (+ - * neg,
  integer powers, `poly` units, means and variances, and batch standard
  deviations and RMS, which are constants in the eval-mode layer, so `/` by
  them too), and the
  layer's inference degree (`Graph.inference_degree`: its degree in x with every
  batch moment a constant) must be at most `max_degree` (layers fit for
  homomorphic encryption; BatchNorm followed by a cubic `poly` has degree 3).
  With `max_depth` (or `per_channel`, which the depth objective sets) it also asks
  for a per-channel polynomial at inference (`Graph.he_depth` is not None: no
  instance, group, layer or channel moment, which would need slot rotations
  under encryption, so they leave the menu) whose CKKS multiplicative depth is at
  most `max_depth` (docs/he.md).

Every mode asks that the output keeps the input's shape (varies over batch,
channel and space). A mode owns the op menu that mutation and the random generator draw from, and
`accept(graph)`, the final word on whether a graph may be proposed.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from primitives import Graph
from primitives.ops import FULL, OPS
from primitives.random_graph import random_graph

MODES = ("batch", "sample", "polynomial")
DEFAULT_MAX_DEGREE = 4
MAX_OPS = 24            # inner operations in a searched layer (keeps layers cheap to train)

_INNER = tuple(name for name, op in OPS.items() if op.kind != "leaf")
_POLY_OPS = tuple(name for name in _INNER if OPS[name].polynomial)   # the registry says which


@dataclass(frozen=True)
class Mode:
    name: str
    ops: tuple[str, ...]                 # inner ops mutation and random graphs may use
    max_degree: int | None = None        # polynomial mode only
    max_ops: int = MAX_OPS
    max_depth: int | None = None         # polynomial mode only: he_depth at most this
    per_channel: bool = False            # polynomial mode only: he_depth must exist (set by max_depth)

    def why_not(self, graph: Graph) -> str | None:
        """Why `graph` is outside this mode, or None when it is allowed."""
        if graph.shapes[graph.output] != FULL:
            return "does not keep the input shape (the output must vary over N, C and space)"
        inner = sum(1 for n in graph.nodes if n.spec.kind != "leaf")
        if inner > self.max_ops:
            return f"{inner} operations, more than {self.max_ops}"
        if self.name == "sample" and graph.uses_batch_stats:
            return "uses batch statistics (not allowed in sample mode)"
        if self.name == "polynomial":
            if graph.inference_degree is None:
                return "is not a polynomial in x at inference (polynomial mode)"
            if graph.inference_degree == 0:  # x only through batch moments: a constant at inference
                return "is constant in x at inference (polynomial mode)"
            if graph.inference_degree > self.max_degree:
                return f"has inference degree {graph.inference_degree}, above --max-degree {self.max_degree}"
            if (self.per_channel or self.max_depth is not None) and graph.he_depth is None:
                return ("mixes elements through an instance, group, layer or channel moment at inference: "
                        "not a per-channel polynomial, no multiplicative depth (--max-depth, --depth-objective)")
            if self.max_depth is not None and graph.he_depth > self.max_depth:
                return (f"has multiplicative depth {graph.he_depth} (inference degree {graph.inference_degree}), "
                        f"above --max-depth {self.max_depth}")
        return None

    def accept(self, graph: Graph) -> bool:
        return self.why_not(graph) is None

    def random_graph(self, rng: random.Random) -> Graph:
        """A random layer of this mode: the first population's raw material."""
        return random_graph(rng, ops=self.ops, min_ops=2, max_ops=min(8, self.max_ops),
                            accept=self.accept, tries=5000)


def get_mode(name: str, max_degree: int = DEFAULT_MAX_DEGREE, max_ops: int = MAX_OPS,
             max_depth: int | None = None, per_channel: bool = False) -> Mode:
    """The mode `name`; `max_depth` and `per_channel` (polynomial mode only) bound the CKKS
    multiplicative depth and ask for per-channel layers (`Graph.he_depth` not None)."""
    if name != "polynomial" and (max_depth is not None or per_channel):
        raise ValueError("a depth bound or the depth objective needs polynomial mode")
    if name == "batch":
        return Mode("batch", _INNER, max_ops=max_ops)
    if name == "sample":
        return Mode("sample", tuple(n for n in _INNER if not OPS[n].uses_batch_stats), max_ops=max_ops)
    if name == "polynomial":
        if max_degree < 1:
            raise ValueError(f"max degree must be at least 1, got {max_degree}")
        if max_depth is not None and max_depth < 1:
            raise ValueError(f"max depth must be at least 1, got {max_depth}")
        per_channel = per_channel or max_depth is not None
        ops = tuple(n for n in _POLY_OPS if not _mixes_elements(n)) if per_channel else _POLY_OPS
        return Mode("polynomial", ops, max_degree=max_degree, max_ops=max_ops, max_depth=max_depth,
                    per_channel=per_channel)
    raise ValueError(f"unknown mode {name!r} (choose from {', '.join(MODES)})")


def _mixes_elements(name: str) -> bool:
    """An instance, group, layer or channel moment: a sum over elements at inference."""
    op = OPS[name]
    return op.kind == "moment" and not op.uses_batch_stats
