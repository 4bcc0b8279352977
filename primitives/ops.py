"""The op registry: every primitive of the layer language, one entry each.

An entry says how the op is written (infix symbol or function name), how it
runs (a torch expression template for the code generator, a float64 function
for constant folding), how it combines polynomial degrees, whether it reads
batch statistics and how many learnable values per channel it owns. The
parser, printer, graph, code generator and mutation all read this table, so
adding an op is one entry here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

LEARNABLE_VECTORS = ("gamma", "beta") + tuple(f"v{i}" for i in range(10))
VECTOR_INIT = {"gamma": 1.0, "beta": 0.0, "v0": 0.0, **{f"v{i}": 1.0 for i in range(1, 10)}}
AXES = ("batch", "instance", "group", "layer", "channel")
STATS = ("mean", "var", "std", "rms")
DEFAULT_EPS = 1e-5
DEFAULT_GROUPS = 32

# Shape classes: which of N (batch), C (channel), S (spatial) a value varies over.
FULL = frozenset("NCS")
MOMENT_SHAPE = {
    "batch": frozenset("C"),
    "instance": frozenset("NC"),
    "group": frozenset("NC"),
    "layer": frozenset("N"),
    "channel": frozenset("NS"),
}


@dataclass(frozen=True)
class Keyword:
    """A keyword argument: its type, default and allowed closed range. An `optional` one
    (added after graphs were first hashed) is left out of a node's attributes at its
    default, so the canonical form, and hash, of every graph that does not use it stand."""

    type: type
    default: float | int
    low: float | int
    high: float | int
    optional: bool = False
    menu: tuple = ()        # the values random layers and keyword mutations draw from

    def check(self, value) -> str | None:
        """Return why `value` is not allowed, or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number"
        if self.type is int and (isinstance(value, float) and not value.is_integer()):
            return "must be an integer"
        if not math.isfinite(value) or not (self.low <= value <= self.high):
            return f"must lie in [{self.low:g}, {self.high:g}]"
        return None


EPS = Keyword(float, DEFAULT_EPS, 1e-12, 1.0, menu=(1e-5, 1e-3, 1e-2))
GROUPS = Keyword(int, DEFAULT_GROUPS, 1, 4096, menu=(1, 4, 8, 16, 32))
POW_K = Keyword(int, 2, 2, 9, menu=(2, 3))
ORDER = Keyword(int, 3, 1, 9, menu=(2, 3, 4))
RATIONAL_P = Keyword(int, 5, 1, 9, menu=(2, 3, 4, 5))
RATIONAL_Q = Keyword(int, 4, 1, 9, menu=(1, 2, 3, 4))
# shared=1: one coefficient set for all of a layer's channels instead of one per channel
# (KAT's group-shared rationals, with one group): docs/units.md
SHARED = Keyword(int, 0, 0, 1, optional=True, menu=(0, 1))
# norm=1: a poly unit's powers e**k, k >= 2, each batch-normalised (constants at inference):
# docs/units.md
NORM = Keyword(int, 0, 0, 1, optional=True, menu=(0, 1))
# id=k tells apart learnable scalars that start at the same value: `scalar(0.5)` written twice
# is one parameter (equal subexpressions are one node), `scalar(0.5, id=1)` is a second one
SCALAR_ID = Keyword(int, 0, 0, 9, optional=True, menu=tuple(range(10)))


def normalised_powers(attrs) -> bool:
    """True for a `poly(e, norm=1)` with a power to normalise (order 2 or more)."""
    return bool(attrs.get("norm")) and attrs["order"] >= 2


def _poly_degree(degrees, attrs):
    # normalised powers divide by a batch std: not a polynomial in training
    return None if degrees[0] is None or normalised_powers(attrs) else degrees[0] * attrs["order"]


def _poly_inference_degree(degrees, attrs):
    return None if degrees[0] is None else degrees[0] * attrs["order"]


@dataclass(frozen=True)
class Op:
    """One primitive. `kind` is leaf, infix, prefix, call, moment or unit. A leaf with a
    `literal` is written as a call whose one positional argument is a numeric literal, kept
    in that attribute (`scalar(0.5)`: attribute `value`)."""

    name: str
    arity: int
    kind: str
    template: str = ""                      # torch expression for infix/prefix/call
    fold: Callable | None = None            # float64 tensor function, for constant folding
    degree: Callable | None = None          # (input degrees, attrs) -> degree or None
    symbol: str = ""                        # infix/prefix symbol
    precedence: int = 5                     # printing: higher binds tighter
    commutative: bool = False
    keywords: dict = field(default_factory=dict)
    axis: str = ""                          # moments
    stat: str = ""                          # moments
    learnable: Callable | None = None       # attrs -> learnable values per channel
    inference_degree: Callable | None = None  # `degree` in eval mode; None: the same as `degree`
    batch_stats: Callable | None = None     # attrs -> whether a node reads batch statistics (units)
    polynomial: bool = False                # allowed in polynomial mode: keeps a polynomial at inference
    # units: their coefficient parameters, named f"{name}{index}{suffix}" in the module (index: the
    # unit's place among the graph's units), and the TrainConfig field that scales their rate
    parameters: tuple[str, ...] = ()
    rate: str = ""
    literal: str = ""                       # leaves written as calls: the attribute of their literal
    leaf_shape: frozenset = frozenset()     # leaves: the axes (N, C, S) the value varies over

    @property
    def uses_batch_stats(self) -> bool:
        """The op always reads batch statistics (a batch moment)."""
        return self.axis == "batch"

    def reads_batch(self, attrs) -> bool:
        """This node reads batch statistics: a batch moment, or a unit that normalises over the batch."""
        return self.uses_batch_stats or bool(self.batch_stats and self.batch_stats(attrs))

    @property
    def is_call(self) -> bool:
        return self.kind in ("call", "moment", "unit") or bool(self.literal)

    def degree_at(self, degrees, attrs, inference: bool = False):
        """Degree in x of this op's output from its inputs' degrees (None: not a
        polynomial); `inference` counts it in the eval-mode layer."""
        rule = self.inference_degree if inference and self.inference_degree else self.degree
        return rule(degrees, attrs)


def _max_degree(degrees, attrs):
    return None if None in degrees else max(degrees)


def _sum_degree(degrees, attrs):
    return None if None in degrees else sum(degrees)


def _same_degree(degrees, attrs):
    return degrees[0]


def _div_degree(degrees, attrs):
    # Polynomial only when the divisor does not depend on the data (degree 0).
    return degrees[0] if degrees[1] == 0 else None


def _no_degree(degrees, attrs):
    return None


def _unary(name, template, fold):
    return Op(name, 1, "call", template=template, fold=fold, degree=_no_degree)


def _unit_learnable(*rows):
    """A unit's learnable values per channel: the rows of its coefficient parameters, or none
    when one shared column serves every channel."""
    return lambda a: 0 if a.get("shared") else sum(r(a) for r in rows)


def _moment_fold(stat):
    def fold(c, eps=DEFAULT_EPS, groups=None):
        # The moments of a constant: its mean is itself, it has no spread.
        return {
            "mean": c,
            "var": torch.zeros_like(c),
            "std": torch.sqrt(torch.zeros_like(c) + eps),
            "rms": torch.sqrt(c * c + eps),
        }[stat]

    return fold


def _moment_degree(stat):
    if stat == "mean":
        return _same_degree
    if stat == "var":
        return lambda d, a: None if d[0] is None else 2 * d[0]
    return _no_degree  # std and rms take a square root


def _constant_degree(degrees, attrs):
    # In eval mode a batch moment is its running estimate: a constant, whatever its input.
    return 0


def _moments():
    for axis in AXES:
        for stat in STATS:
            keywords = {}
            if stat in ("std", "rms"):
                keywords["eps"] = EPS
            if axis == "group":
                keywords["groups"] = GROUPS
            # means and variances are polynomials; any batch moment is a constant at inference
            yield Op(f"{axis}_{stat}", 1, "moment", fold=_moment_fold(stat),
                     degree=_moment_degree(stat), keywords=keywords, axis=axis, stat=stat,
                     inference_degree=_constant_degree if axis == "batch" else None,
                     polynomial=stat in ("mean", "var") or axis == "batch")


_ENTRIES = [
    Op("x", 0, "leaf", degree=lambda d, a: 1, leaf_shape=FULL),
    Op("const", 0, "leaf", degree=lambda d, a: 0),
    Op("param", 0, "leaf", degree=lambda d, a: 0, learnable=lambda a: 1, leaf_shape=frozenset("C")),
    # a learnable scalar: one number for the whole layer (a 0-dim parameter `scalar{k}`, k its
    # place among the graph's scalars), starting at `value`: a constant to the degree rules,
    # not per channel (learnable 0 per channel), never folded (it learns)
    Op("scalar", 0, "leaf", degree=lambda d, a: 0, keywords={"id": SCALAR_ID}, literal="value"),
    Op("add", 2, "infix", "{0} + {1}", torch.add, _max_degree, "+", 1, commutative=True, polynomial=True),
    Op("sub", 2, "infix", "{0} - {1}", torch.sub, _max_degree, "-", 1, polynomial=True),
    Op("mul", 2, "infix", "{0} * {1}", torch.mul, _sum_degree, "*", 2, commutative=True, polynomial=True),
    # a polynomial divides only by what is constant at inference (the mode checks the degree)
    Op("div", 2, "infix", "{0} / {1}", torch.div, _div_degree, "/", 2, polynomial=True),
    Op("neg", 1, "prefix", "-{0}", torch.neg, _same_degree, "-", 3, polynomial=True),
    Op("pow", 1, "infix", "{0} ** {k}", lambda a, k: a ** k,
       lambda d, a: None if d[0] is None else d[0] * a["k"], "**", 4, keywords={"k": POW_K}, polynomial=True),
    _unary("abs", "torch.abs({0})", torch.abs),
    _unary("exp", "torch.exp({0})", torch.exp),
    _unary("log", "torch.log({0})", torch.log),
    _unary("sqrt", "torch.sqrt({0})", torch.sqrt),
    _unary("sigmoid", "torch.sigmoid({0})", torch.sigmoid),
    _unary("tanh", "torch.tanh({0})", torch.tanh),
    _unary("relu", "torch.relu({0})", torch.relu),
    _unary("erf", "torch.erf({0})", torch.erf),
    _unary("sin", "torch.sin({0})", torch.sin),
    _unary("cos", "torch.cos({0})", torch.cos),
    Op("max", 2, "call", "torch.maximum({0}, {1})", torch.maximum, _no_degree, commutative=True),
    Op("min", 2, "call", "torch.minimum({0}, {1})", torch.minimum, _no_degree, commutative=True),
    *_moments(),
    # poly{i}: (order + 1, C), row k multiplies e**k
    Op("poly", 1, "unit", degree=_poly_degree, inference_degree=_poly_inference_degree,
       keywords={"order": ORDER, "shared": SHARED, "norm": NORM}, batch_stats=normalised_powers,
       learnable=_unit_learnable(lambda a: a["order"] + 1), polynomial=True,
       parameters=("",), rate="poly_lr"),
    # rational{i}_num: (p + 1, C), row k multiplies e**k; rational{i}_den: (q, C), row k |e|**(k + 1)
    Op("rational", 1, "unit", degree=_no_degree, keywords={"p": RATIONAL_P, "q": RATIONAL_Q, "shared": SHARED},
       learnable=_unit_learnable(lambda a: a["p"] + 1, lambda a: a["q"]),
       parameters=("_num", "_den"), rate="rational_lr"),
]

OPS: dict[str, Op] = {op.name: op for op in _ENTRIES}

# The names a formula may call, and the ops behind its infix syntax.
FUNCTIONS = {name: op for name, op in OPS.items() if op.is_call}
INFIX = {op.symbol: op for op in OPS.values() if op.kind == "infix"}


def get_op(name: str) -> Op:
    try:
        return OPS[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown op {name!r}") from None
