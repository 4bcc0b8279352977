"""The code generator against an independent float64 interpreter of the graph.

The generated module (fused kernels), its written-out twin (`fuse=False`) and the exported
file are each run next to a naive interpreter that walks `graph.nodes` and computes every op
from its definition in the formula language (README.md): moments reduced directly over their axes, std and
rms with their eps, group counts lowered to a divisor of C, poly and rational units from
their formulas, batch moments keeping their own running estimates. Both sides see the same
parameter values at every step (the module's SGD steps are applied to both), so any
difference is a difference in what the generator wrote: wrong wiring, a moment over the
wrong axes, a running estimate updated or read wrongly, a unit's coefficients misread.
"""
from __future__ import annotations

import math
import random

import pytest
import torch

from primitives import parse
from primitives.codegen import export_layer, generate_source, layer_class
from primitives.ops import OPS, normalised_powers
from primitives.random_graph import random_graph

N_RANDOM = 300
STEPS = 3
LR = 0.05

# Initial values of the learnable vectors, as the formula language defines them (README.md).
VECTOR_START = {"gamma": 1.0, "beta": 0.0, "v0": 0.0, **{f"v{i}": 1.0 for i in range(1, 10)}}

# Formulas that hold every moment kind and every fused standardisation, so coverage does not
# rest on chance; the random graphs add the rest.
FIXED = [
    "relu((x - batch_mean(x)) / batch_std(x) * gamma + beta)",
    "(x - batch_mean(x)) / batch_std(x, eps=0.01) * v1 + batch_var(x) * v2",
    "x / batch_rms(x, eps=0.001) * gamma + beta",
    "(x * v1 - batch_mean(x * v1)) / batch_rms(x * v1) + batch_var(x * v1)",
    "(x - group_mean(x, groups=4)) / group_std(x, groups=4) * gamma + beta",
    "x / group_rms(x, groups=32) + group_var(x, groups=8) * v1",
    "tanh((x * v1 - layer_mean(x * v1)) / layer_std(x * v1))",
    "x / layer_rms(x) + layer_var(x) * v2",
    "(x - instance_mean(x)) / instance_std(x, eps=0.1) * sigmoid(x)",
    "x / instance_rms(x) - instance_var(x) * v3",
    "(x - channel_mean(x)) / channel_std(x) + channel_var(x) * v1 + x / channel_rms(x)",
    "(x - channel_mean(x)) / channel_std(x, eps=0.01) * gamma + beta",
    "sigmoid((x * v1 - channel_mean(x * v1)) / channel_std(x * v1) * v2) + (x - channel_mean(x)) / channel_std(x)",
    "x / max(batch_std(x, eps=0.001), v1 * x + instance_std(x, eps=0.001)) * gamma + beta",
    "poly((x - batch_mean(x)) / batch_std(x), order=3) * gamma + beta",
    "rational(x - batch_mean(x), p=3, q=2) * gamma + beta",
    "poly(x, order=2) + rational(x * v1, p=2, q=3)",
    "poly((x - batch_mean(x)) / batch_std(x), norm=1) * gamma + poly(instance_mean(x), order=2, norm=1)",
    "batch_mean(gamma * x) + batch_var(v1) * x + layer_mean(beta) * x",
    "tanh(scalar(0.5) * x) * gamma + erf(scalar(0.5, id=1) * x + scalar(-1)) + batch_mean(scalar(2) * x)",
    "max(x, scalar(0.1)) / (1 + abs(scalar(0.5))) + poly(scalar(0.5) + x, order=2)",
]


# -- the interpreter ------------------------------------------------------------------------------

def _spatial(x):
    return tuple(range(2, x.dim()))


def _largest_divisor(c, cap):
    return max(d for d in range(1, min(c, cap) + 1) if c % d == 0)


def _reduce(e, axis, groups, fn):
    """fn(tensor, dims) over the moment's axes, kept broadcastable against x."""
    sp = _spatial(e)
    if axis == "batch":
        return fn(e, (0,) + sp)
    if axis == "instance":
        return fn(e, sp)
    if axis == "layer":
        return fn(e, (1,) + sp)
    if axis == "channel":
        return fn(e, (1,))
    n, c = e.shape[:2]
    g = _largest_divisor(c, groups)
    split = e.reshape((n, g, c // g) + e.shape[2:])
    out = fn(split, tuple(range(2, split.dim())))       # (N, g, 1, 1...)
    return out.expand((n, g, c // g) + out.shape[3:]).reshape((n, c) + out.shape[3:])


def _mean(t, dims):
    return t.sum(dim=dims, keepdim=True) / math.prod(t.shape[d] for d in dims)


def _biased_var(t, dims):
    return _mean((t - _mean(t, dims)) ** 2, dims)


class Interpreter:
    """Runs a graph node by node in float64; keeps running estimates for batch moments."""

    def __init__(self, graph, momentum):
        self.graph, self.momentum = graph, momentum
        self.running = {}  # node -> {"mean", "var", "sq"}: BatchNorm's starting values

    def __call__(self, x, params, training):
        values = []
        units = 0
        for i, node in enumerate(self.graph.nodes):
            ins = [values[j] for j in node.inputs]
            kind = node.spec.kind
            if kind == "moment":
                values.append(self._moment(i, node, ins[0].expand_as(x), training))
            elif kind == "unit":
                values.append(self._unit(i, node, ins[0], params[units], x, training))
                units += 1
            elif node.op == "param":
                values.append(params[node.attrs["name"]].view((1, -1) + (1,) * (x.dim() - 2)))
            elif node.op == "scalar":   # one number for the layer, as it is
                values.append(params[("scalar", node.attrs["value"], node.attrs.get("id", 0))])
            else:
                values.append(_ELEMENTWISE[node.op](x, node.attrs, *ins))
        return values[self.graph.output]

    def _moment(self, i, node, e, training):
        axis, stat = node.spec.axis, node.spec.stat
        groups, eps = node.attrs.get("groups"), node.attrs.get("eps")
        if axis == "batch":
            run = self.running.setdefault(i, {"mean": torch.zeros(e.shape[1], dtype=e.dtype),
                                              "var": torch.ones(e.shape[1], dtype=e.dtype),
                                              "sq": torch.ones(e.shape[1], dtype=e.dtype)})
            shape = (1, -1) + (1,) * (e.dim() - 2)
            if training:
                mean, var = _reduce(e, axis, groups, _mean), _reduce(e, axis, groups, _biased_var)
                sq = _reduce(e * e, axis, groups, _mean)
                n = e.numel() // e.shape[1]
                m = self.momentum
                run["mean"] = (1 - m) * run["mean"] + m * mean.detach().flatten()
                run["var"] = (1 - m) * run["var"] + m * var.detach().flatten() * n / (n - 1)
                run["sq"] = (1 - m) * run["sq"] + m * sq.detach().flatten()
            else:
                mean, var, sq = (run[k].view(shape) for k in ("mean", "var", "sq"))
        else:
            mean, var = _reduce(e, axis, groups, _mean), _reduce(e, axis, groups, _biased_var)
            sq = _reduce(e * e, axis, groups, _mean)
        return {"mean": mean, "var": var, "std": torch.sqrt(var + (eps or 0)),
                "rms": torch.sqrt(sq + (eps or 0))}[stat]

    def _unit(self, i, node, e, coefficients, x, training):
        """poly: a0 + a1 e + ... ; with norm=1, a0 + a1 e + sum_k a_k N(e^k), N a batch
        standardisation (BatchNorm without affine, eps 1e-5) of the power broadcast to x's
        shape; rational: P(e) / (1 + sum_k |b_k| |e|^k), per channel."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        a = coefficients["num"]
        if node.op == "poly" and normalised_powers(node.attrs):
            powers = [1.0, e] + [self._standardised((i, k), (e ** k).expand_as(x), training)
                                 for k in range(2, a.shape[0])]
            return sum(a[k].view(shape) * powers[k] for k in range(a.shape[0]))
        out = sum(a[k].view(shape) * e ** k for k in range(a.shape[0]))
        if node.op == "poly":
            return out
        b = coefficients["den"]
        return out / (1 + sum(b[k - 1].abs().view(shape) * e.abs() ** k for k in range(1, b.shape[0] + 1)))

    def _standardised(self, key, s, training):
        # each under its own key, so that one call updates each running estimate once
        mean = self._moment(key + ("mean",), _BATCH_MEAN, s, training)
        return (s - mean) / self._moment(key + ("std",), _BATCH_STD, s, training)


_ELEMENTWISE = {
    "x": lambda x, a: x,
    "const": lambda x, a: torch.tensor(a["value"], dtype=x.dtype),
    "add": lambda x, a, p, q: p + q,
    "sub": lambda x, a, p, q: p - q,
    "mul": lambda x, a, p, q: p * q,
    "div": lambda x, a, p, q: p / q,
    "neg": lambda x, a, p: -p,
    "pow": lambda x, a, p: p ** a["k"],
    "abs": lambda x, a, p: p.abs(),
    "exp": lambda x, a, p: torch.exp(p),
    "log": lambda x, a, p: torch.log(p),
    "sqrt": lambda x, a, p: torch.sqrt(p),
    "sigmoid": lambda x, a, p: torch.sigmoid(p),
    "tanh": lambda x, a, p: torch.tanh(p),
    "relu": lambda x, a, p: torch.relu(p),
    "erf": lambda x, a, p: torch.erf(p),
    "sin": lambda x, a, p: torch.sin(p),
    "cos": lambda x, a, p: torch.cos(p),
    "max": lambda x, a, p, q: torch.maximum(p, q),
    "min": lambda x, a, p, q: torch.minimum(p, q),
}


_BATCH_MEAN = parse("batch_mean(x)").nodes[-1]
_BATCH_STD = parse("batch_std(x)").nodes[-1]


# -- the module side ---------------------------------------------------------------------------------

def _unit_coefficients(module, graph):
    """Per unit node, in graph order, its coefficient rows read from the module:
    `poly{k}` holds a0..a_order, `rational{k}_num` a0..a_p, `rational{k}_den` b1..b_q."""
    params = dict(module.named_parameters())
    out = []
    for node in graph.nodes:
        if node.op == "poly":
            out.append({"num": params[f"poly{len(out)}"]})
        elif node.op == "rational":
            k = len(out)
            out.append({"num": params[f"rational{k}_num"], "den": params[f"rational{k}_den"]})
    return out


def _scalar_names(graph):
    """("scalar", value, id) per learnable scalar -> its parameter `scalar{k}`, k its place
    among the scalars in the graph's node order (README.md)."""
    keys = [("scalar", n.attrs["value"], n.attrs.get("id", 0)) for n in graph.nodes if n.op == "scalar"]
    return {key: f"scalar{k}" for k, key in enumerate(keys)}


def _design_start(graph, channels):
    """The parameters the formula language prescribes at construction: named vectors at their start
    values, learnable scalars at theirs (0-dim), poly and rational units at the identity (a1 = 1,
    every other coefficient 0), per channel or, shared, one column."""
    vectors = {n.attrs["name"]: torch.full((channels,), VECTOR_START[n.attrs["name"]], dtype=torch.float64)
               for n in graph.nodes if n.op == "param"}
    # a scalar starts at its value in float32, the module's dtype at construction (0.1 rounded)
    vectors.update({key: torch.tensor(key[1]).double() for key in _scalar_names(graph)})
    units = []
    for n in graph.nodes:
        if n.spec.kind == "unit":
            count = n.attrs["order"] + 1 if n.op == "poly" else n.attrs["p"] + 1
            columns = 1 if n.attrs.get("shared") else channels   # shared: one column for every channel
            num = torch.zeros(count, columns, dtype=torch.float64)
            num[1] = 1.0
            if n.op == "poly" and normalised_powers(n.attrs):
                num[2] = float(torch.tensor(0.4))   # poly(e, norm=1) starts as e + 0.4 N(e^2), in float32
            unit = {"num": num}
            if n.op == "rational":
                unit["den"] = torch.zeros(n.attrs["q"], columns, dtype=torch.float64)
            units.append(unit)
    return vectors, units


def _interpreter_params(module, graph):
    named = dict(module.named_parameters())
    vectors = {n.attrs["name"]: named[n.attrs["name"]] for n in graph.nodes if n.op == "param"}
    scalars = {key: named[name] for key, name in _scalar_names(graph).items()}
    return {**vectors, **scalars, **dict(enumerate(_unit_coefficients(module, graph)))}


def _exec_class(source, name):
    namespace = {}
    exec(compile(source, f"<differential {name}>", "exec"), namespace)
    return namespace[name]


def _modules(graph, channels, momentum):
    """The compiled module, the written-out twin and the exported class, same start state."""
    kwargs = {} if momentum is None else {"momentum": momentum}
    classes = [layer_class(graph), _exec_class(generate_source(graph, "Plain", fuse=False), "Plain"),
               _exec_class(export_layer(graph, class_name="Exported"), "Exported")]
    return [cls(channels, **kwargs).double() for cls in classes]


def _close(actual, expected, what):
    """Equal within float64 rounding relative to the size of the values, with NaN and
    infinities exactly where the interpreter has them (allclose treats inf == inf as close)."""
    actual, expected = torch.broadcast_tensors(actual.detach(), expected.detach())
    scale = float(expected.nan_to_num(0.0, 0.0, 0.0).abs().max().clamp_min(1.0))
    if not torch.allclose(actual, expected, rtol=0.0, atol=1e-9 * scale, equal_nan=True):
        err = (actual - expected).abs().nan_to_num(float("inf")).max()
        raise AssertionError(f"{what()}: max error {err:.3g} at scale {scale:.3g}, non-finite "
                             f"{int((~actual.isfinite()).sum())} vs {int((~expected.isfinite()).sum())}")


# -- the test ----------------------------------------------------------------------------------------

def _graphs():
    rng = random.Random(16)
    graphs = [parse(f) for f in FIXED]
    graphs += [random_graph(rng, max_ops=10) for _ in range(N_RANDOM)]
    return graphs


def _shape(index, channels):
    """Spatial layouts vary: 2-D images, 1-D sequences, one spatial position."""
    return [(4, channels, 3, 3), (3, channels, 5), (5, channels, 1, 1)][index % 3]


def _perturbed_modules(graph, index, channels, gen):
    """The three modules, checked to start where the formula language says, then moved off that start
    by the same noise so that no coefficient hides behind a zero or a one."""
    momentum = None if index % 2 else [0.3, 0.05][index % 4 // 2]
    modules = _modules(graph, channels, momentum)
    vectors, units = _design_start(graph, channels)
    for module in modules:
        params = _interpreter_params(module, graph)
        for name, value in vectors.items():
            assert torch.equal(params[name].detach(), value), (str(graph), name)
        for k, unit in enumerate(units):
            for part, value in unit.items():
                assert torch.equal(params[k][part].detach(), value), (str(graph), k, part)
    with torch.no_grad():
        names = [name for name, _ in modules[0].named_parameters()]
        noise = {name: torch.randn(p.shape, generator=gen, dtype=torch.float64) * 0.2
                 for name, p in modules[0].named_parameters()}
        for module in modules:
            assert [name for name, _ in module.named_parameters()] == names
            for name, p in module.named_parameters():
                p.add_(noise[name])
    return modules, Interpreter(graph, 0.1 if momentum is None else momentum)


def _run_one(graph, index) -> bool:
    """STEPS training steps (forward, gradients, one SGD step) then one eval-mode forward;
    True when the interpreter's output was finite at every step."""
    channels = 6  # groups 4 -> 3, 8 -> 6, 16 and 32 -> 6: the lowering is exercised
    gen = torch.Generator().manual_seed(index)
    modules, reference = _perturbed_modules(graph, index, channels, gen)
    shape = _shape(index, channels)
    finite = True
    for step in range(STEPS + 1):
        training = step < STEPS
        what = lambda: f"{graph} step {step} {'train' if training else 'eval'}"
        x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 1.5 + 0.5).requires_grad_(training)
        with torch.set_grad_enabled(training):
            expected = reference(x, _interpreter_params(modules[0], graph), training)
            outs = [module.train(training)(x) for module in modules]
        for out, name in zip(outs, ("compiled", "written out", "exported")):
            _close(out, expected, lambda: f"{what()} [{name}]")
        finite = finite and bool(torch.isfinite(expected).all())
        if training and finite:
            _compare_gradients_and_step(modules, x, expected, outs, gen, what)
    return finite


def _compare_gradients_and_step(modules, x, expected, outs, gen, what):
    """Each module's gradients (parameters and input) must match the interpreter's; then all
    take the same SGD step (the interpreter's gradient), so their parameters stay equal."""
    weights = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    inputs = [x] + list(modules[0].parameters())
    reference = torch.autograd.grad((expected * weights).mean(), inputs, allow_unused=True)
    reference = [torch.zeros_like(p) if g is None else g for p, g in zip(inputs, reference)]
    for module, out in zip(modules, outs):
        named = [("x", x)] + list(module.named_parameters())
        grads = torch.autograd.grad((out * weights).mean(), [p for _, p in named], allow_unused=True)
        for (name, p), g, r in zip(named, grads, reference):
            _close(torch.zeros_like(p) if g is None else g, r, lambda: f"{what()} gradient of {name}")
    with torch.no_grad():
        for module in modules:
            for p, r in zip(module.parameters(), reference[1:]):
                p.sub_(LR * r)


GRAPHS = _graphs()


def test_the_graphs_cover_every_op_and_moment():
    used = {node.op for g in GRAPHS for node in g.nodes}
    assert used == set(OPS), set(OPS) - used
    fused = sum("F.batch_norm" in generate_source(g) or "F.group_norm" in generate_source(g) for g in GRAPHS)
    assert fused >= 5  # the fused kernels are among what is compared
    assert sum("F.layer_norm" in generate_source(g) for g in GRAPHS) >= 2


@pytest.mark.parametrize("chunk", range(4))
def test_generated_modules_match_the_interpreter(chunk):
    indices = range(chunk, len(GRAPHS), 4)
    finite = [index for index in indices if _run_one(GRAPHS[index], index)]
    # most comparisons are between numbers, not between NaNs
    assert len(finite) >= 0.8 * len(indices), (len(finite), len(indices))
    # and every moment kind was read back from running estimates in eval mode
    used = {node.op for index in finite for node in GRAPHS[index].nodes}
    assert {f"batch_{stat}" for stat in ("mean", "var", "std", "rms")} <= used
