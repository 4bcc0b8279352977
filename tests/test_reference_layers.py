"""Compiled reference layers against independent hand-written torch code (float64).

Each reference below is written directly in torch from the papers' math, not
through the layer language. Train mode runs several steps (so running
statistics matter), then eval mode; outputs and gradients must agree to 1e-8.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from primitives import compile_layer, parse
from primitives.library import REFERENCE_LAYERS

C = 64
EPS = 1e-5
MOMENTUM = 0.1
SPATIAL = (0, 2, 3)
TOL = 1e-8


def per_channel(v):
    return v.view(1, -1, 1, 1)


def batch_moments(x, state, training, need_mean=True):
    """BatchNorm's statistics: batch mean/biased var in training, running estimates otherwise."""
    if training:
        mean = x.mean(SPATIAL, keepdim=True)
        var = ((x - mean) ** 2).mean(SPATIAL, keepdim=True)
        n = x.numel() / x.shape[1]
        state["mean"] = (1 - MOMENTUM) * state["mean"] + MOMENTUM * mean.detach().flatten()
        state["var"] = (1 - MOMENTUM) * state["var"] + MOMENTUM * var.detach().flatten() * n / (n - 1)
        return mean, var
    return per_channel(state["mean"]), per_channel(state["var"])


def group_std(x, groups, eps=EPS):
    n, c, h, w = x.shape
    g = x.reshape(n, groups, c // groups * h * w)
    std = torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + eps)
    return std.repeat_interleave(c // groups, dim=1).reshape(n, c, 1, 1)


def group_rms(x, groups, eps=EPS):
    n, c, h, w = x.shape
    g = x.reshape(n, groups, -1)
    rms = torch.sqrt((g * g).mean(-1, keepdim=True) + eps)
    return rms.repeat_interleave(c // groups, dim=1).reshape(n, c, 1, 1)


def instance_std(x, eps=EPS):
    return torch.sqrt(x.var((2, 3), unbiased=False, keepdim=True) + eps)


def instance_rms(x, eps=EPS):
    return torch.sqrt((x * x).mean((2, 3), keepdim=True) + eps)


def bn(x, p, state, training):
    mean, var = batch_moments(x, state, training)
    return (x - mean) / torch.sqrt(var + EPS)


def ref_gn_relu(x, p, state, training):
    n, c, h, w = x.shape
    g = x.reshape(n, 32, -1)
    y = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + EPS)
    return F.relu(y.reshape(n, c, h, w) * per_channel(p["gamma"]) + per_channel(p["beta"]))


def ref_ln_gelu(x, p, state, training):
    mean = x.mean((1, 2, 3), keepdim=True)
    var = x.var((1, 2, 3), unbiased=False, keepdim=True)
    y = (x - mean) / torch.sqrt(var + EPS) * per_channel(p["gamma"]) + per_channel(p["beta"])
    return F.gelu(y)


def ref_b0(x, p, state, training):
    _, var = batch_moments(x, state, training)
    denominator = torch.maximum(torch.sqrt(var + EPS), per_channel(p["v1"]) * x + instance_std(x))
    return x / denominator * per_channel(p["gamma"]) + per_channel(p["beta"])


def ref_b1(x, p, state, training):
    _, var = batch_moments(x, state, training)
    denominator = torch.maximum(torch.sqrt(var + EPS), (x + 1) * instance_rms(x))
    return x / denominator * per_channel(p["gamma"]) + per_channel(p["beta"])


def ref_s0(x, p, state, training):
    return x * torch.sigmoid(per_channel(p["v1"]) * x) / group_std(x, 32) * per_channel(p["gamma"]) \
        + per_channel(p["beta"])


def ref_s1(x, p, state, training):
    return x * torch.sigmoid(x) / group_std(x, 32) * per_channel(p["gamma"]) + per_channel(p["beta"])


def ref_s2(x, p, state, training):
    return x * torch.sigmoid(x) / group_rms(x, 32) * per_channel(p["gamma"]) + per_channel(p["beta"])


def ref_bn_swish(x, p, state, training):
    y = bn(x, p, state, training) * per_channel(p["gamma"]) + per_channel(p["beta"])
    return y * torch.sigmoid(per_channel(p["v1"]) * y)


def ref_polynorm(x, p, state, training):
    def rms_norm(t):
        return t / torch.sqrt((t * t).mean(1, keepdim=True) + EPS)
    return (per_channel(p["v1"]) * rms_norm(x) + per_channel(p["v2"]) * rms_norm(x ** 2)
            + per_channel(p["v3"]) * rms_norm(x ** 3) + per_channel(p["beta"]))


def ref_bn_poly(x, p, state, training):
    y = bn(x, p, state, training)
    square_state = state.setdefault("square", {"mean": torch.zeros_like(state["mean"]),
                                               "var": torch.ones_like(state["var"])})
    square = bn(y ** 2, p, square_state, training)      # the square, batch-normalised on its own
    return (y + 0.4 * per_channel(p["v1"]) * square) * per_channel(p["gamma"]) + per_channel(p["beta"])


def ref_bn_rational(x, p, state, training):
    y = bn(x, p, state, training)
    a, b = p["rational0_num"], p["rational0_den"]
    numerator = sum(per_channel(a[k]) * y ** k for k in range(a.shape[0]))
    denominator = 1 + sum(per_channel(b[k - 1]).abs() * y.abs() ** k for k in range(1, b.shape[0] + 1))
    return numerator / denominator * per_channel(p["gamma"]) + per_channel(p["beta"])


def ref_bn_square(x, p, state, training):
    return (bn(x, p, state, training) * per_channel(p["gamma"]) + per_channel(p["beta"])) ** 2


def ref_layernorm(x, p, state, training):
    # each position's channels: a token's LayerNorm when the layer sees tokens as (N, D, L)
    mean = x.mean(1, keepdim=True)
    var = ((x - mean) ** 2).mean(1, keepdim=True)
    return (x - mean) / torch.sqrt(var + EPS) * per_channel(p["gamma"]) + per_channel(p["beta"])


def ref_rmsnorm(x, p, state, training):
    return x / torch.sqrt((x * x).mean(1, keepdim=True) + EPS) * per_channel(p["gamma"])


def ref_dyt(x, p, state, training):
    return torch.tanh(p["scalar0"] * x) * per_channel(p["gamma"]) + per_channel(p["beta"])


def ref_derf(x, p, state, training):
    return torch.erf(p["scalar0"] * x + p["scalar1"]) * per_channel(p["gamma"]) + per_channel(p["beta"])


def ref_identity(x, p, state, training):
    return x


def test_every_library_layer_has_a_hand_written_reference():
    assert set(REFERENCE_LAYERS) == set(REFERENCES) | {"bn-relu"}  # bn-relu: against BatchNorm2d below


REFERENCES = {
    "gn-relu": ref_gn_relu, "ln-gelu": ref_ln_gelu, "evonorm-b0": ref_b0, "evonorm-b1": ref_b1,
    "evonorm-s0": ref_s0, "evonorm-s1": ref_s1, "evonorm-s2": ref_s2, "bn-swish": ref_bn_swish,
    "polynorm": ref_polynorm, "bn-poly": ref_bn_poly, "bn-rational": ref_bn_rational,
    "bn-square": ref_bn_square, "layernorm": ref_layernorm, "rmsnorm": ref_rmsnorm, "dyt": ref_dyt,
    "derf": ref_derf, "identity": ref_identity,
}


def randomised(layer, seed):
    """Give every parameter random values (the same ones the reference gets)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) + 0.5)
    return {name: p.detach().clone().requires_grad_() for name, p in layer.named_parameters()}


def inputs(steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(8, C, 6, 6, generator=gen, dtype=torch.float64) * (1 + i) + i for i in range(steps)]


def compare(layer, reference, params, state):
    """Train 3 steps then eval 2, comparing outputs and all gradients."""
    for step, x in enumerate(inputs(5)):
        training = step < 3
        layer.train(training)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya = layer(xa)
        yb = reference(xb, params, state, training)
        assert (ya - yb).abs().max().item() < TOL
        weight = torch.randn_like(ya)
        (ya * weight).sum().backward()
        (yb * weight).sum().backward()
        assert (xa.grad - xb.grad).abs().max().item() < TOL
        for name, p in layer.named_parameters():
            assert (p.grad - params[name].grad).abs().max().item() < TOL, name
            p.grad = None
            params[name].grad = None


@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_reference_layer_matches_hand_written_torch(name):
    layer = compile_layer(parse(REFERENCE_LAYERS[name]), C).double()
    params = randomised(layer, seed=len(name))
    state = {"mean": torch.zeros(C, dtype=torch.float64), "var": torch.ones(C, dtype=torch.float64)}
    compare(layer, REFERENCES[name], params, state)


def test_bn_relu_matches_batchnorm2d_itself():
    layer = compile_layer(parse(REFERENCE_LAYERS["bn-relu"]), C).double()
    bn2d = nn.BatchNorm2d(C, eps=EPS, momentum=MOMENTUM).double()
    params = randomised(layer, seed=3)
    with torch.no_grad():
        bn2d.weight.copy_(params["gamma"])
        bn2d.bias.copy_(params["beta"])
    for step, x in enumerate(inputs(5)):
        training = step < 3
        layer.train(training)
        bn2d.train(training)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = layer(xa), F.relu(bn2d(xb))
        assert (ya - yb).abs().max().item() < TOL
        ya.pow(2).sum().backward()
        yb.pow(2).sum().backward()
        assert (xa.grad - xb.grad).abs().max().item() < TOL
        assert (layer.gamma.grad - bn2d.weight.grad).abs().max().item() < TOL
        assert (layer.beta.grad - bn2d.bias.grad).abs().max().item() < TOL
        for p in (*layer.parameters(), *bn2d.parameters()):
            p.grad = None
    assert (layer.running_mean0 - bn2d.running_mean).abs().max().item() < TOL
    assert (layer.running_var0 - bn2d.running_var).abs().max().item() < TOL


def test_gn_relu_matches_groupnorm_itself():
    layer = compile_layer(parse(REFERENCE_LAYERS["gn-relu"]), C).double()
    gn = nn.GroupNorm(32, C, eps=EPS).double()
    params = randomised(layer, seed=4)
    with torch.no_grad():
        gn.weight.copy_(params["gamma"])
        gn.bias.copy_(params["beta"])
    x = inputs(1)[0]
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = layer(xa), F.relu(gn(xb))
    assert (ya - yb).abs().max().item() < TOL
    ya.pow(2).sum().backward()
    yb.pow(2).sum().backward()
    assert (xa.grad - xb.grad).abs().max().item() < TOL
    assert (layer.gamma.grad - gn.weight.grad).abs().max().item() < TOL


def test_group_count_is_lowered_to_a_divisor_of_the_channels():
    layer = compile_layer(parse("x / group_std(x, groups=32)"), 24).double()
    x = inputs(1)[0][:, :24]
    expected = x / group_std(x, 24)  # 24 is the largest divisor of 24 not above 32
    assert (layer(x) - expected).abs().max().item() < TOL
    layer = compile_layer(parse("x / group_std(x, groups=5)"), 24).double()
    assert (layer(x) - x / group_std(x, 4)).abs().max().item() < TOL


def test_poly_and_rational_start_as_the_identity():
    x = inputs(1)[0]
    for formula in ("poly(x)", "poly(x, order=6)", "rational(x)", "rational(x, p=2, q=3)"):
        layer = compile_layer(parse(formula), C).double()
        assert (layer(x) - x).abs().max().item() < TOL


def test_learnable_vectors_are_named_parameters_with_their_initial_values():
    layer = compile_layer(parse("x * gamma + beta + v0 * x + v1 * x + v9"), 5)
    values = {name: p.detach() for name, p in layer.named_parameters()}
    assert set(values) == {"gamma", "beta", "v0", "v1", "v9"}
    assert all(v.shape == (5,) for v in values.values())
    assert values["gamma"].eq(1).all() and values["beta"].eq(0).all() and values["v0"].eq(0).all()
    assert values["v1"].eq(1).all() and values["v9"].eq(1).all()


GRADCHECK_FORMULAS = [
    "(x - batch_mean(x)) / batch_std(x, eps=1e-3) * gamma + beta",
    "batch_var(x) * x + batch_rms(x) * v1",
    "x / instance_std(x) + instance_mean(x) * instance_var(x) - instance_rms(x, eps=1e-2)",
    "x / group_std(x, groups=4) + group_mean(x, groups=2) * group_var(x, groups=4) + group_rms(x, groups=8)",
    "(x - layer_mean(x)) / layer_std(x) + layer_var(x) * layer_rms(x) * x",
    "(x - channel_mean(x)) / channel_std(x) + channel_var(x) * channel_rms(x) * x",
    "abs(x) + exp(-x ** 2) + log(1 + x ** 2) + sqrt(2 + sin(x)) + cos(x)",
    "sigmoid(v1 * x) * tanh(x) + erf(x * gamma) - relu(x + 0.3)",
    "max(x, v1 * x) + min(x, 0.5) + max(0.1, x) - x / (1 + abs(v2))",
    "-(x ** 3) / (2 + x ** 4) + (x + beta) ** 2",
    "poly(x, order=4) + poly(tanh(x), order=2) * gamma",
    "rational(x) + rational(sigmoid(x), p=3, q=2)",
    "tanh(scalar(0.5) * x) * gamma + erf(scalar(-0.5, id=2) * x + scalar(0))",
]


@pytest.mark.parametrize("formula", GRADCHECK_FORMULAS)
def test_gradcheck(formula):
    layer = compile_layer(parse(formula), 8).double()
    params = randomised(layer, seed=len(formula))
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(4, 8, 3, 3, generator=gen, dtype=torch.float64) + 0.2).requires_grad_()
    names = list(params)
    layer.train()

    def fn(x, *values):
        out = torch.func.functional_call(layer, dict(zip(names, values)), (x,))
        return out

    assert torch.autograd.gradcheck(fn, (x, *params.values()), eps=1e-6, atol=1e-5)


def test_gradcheck_formulas_cover_every_op():
    from primitives.ops import OPS
    used = {node.op for f in GRADCHECK_FORMULAS for node in parse(f).nodes}
    assert used == set(OPS), set(OPS) - used


# -- fused standardisations: torch's batch_norm / group_norm kernels against the written-out moments

def _module_from_source(source, name="EvoLayer"):
    namespace = {}
    exec(compile(source, "<test>", "exec"), namespace)
    return namespace[name]


@pytest.mark.parametrize("formula,kernel", [
    ("relu((x - batch_mean(x)) / batch_std(x, eps=0.001) * gamma + beta)", "F.batch_norm"),
    ("(x - group_mean(x, groups=4)) / group_std(x, groups=4) * v1 + beta", "F.group_norm"),
    ("tanh((x * v1 - layer_mean(x * v1)) / layer_std(x * v1))", "F.group_norm"),
    ("(x - instance_mean(x)) / instance_std(x, eps=0.1) * sigmoid(x)", "F.group_norm"),
    ("(x - channel_mean(x)) / channel_std(x) * gamma + beta", "F.layer_norm"),          # weight and bias join
    ("tanh((x * v1 - channel_mean(x * v1)) / channel_std(x * v1, eps=0.01) * v2)", "F.layer_norm"),
    ("(x - channel_mean(x)) / channel_std(x) * sigmoid(x)", "F.layer_norm"),
])
@pytest.mark.parametrize("shape", [(6, 8, 5, 5), (3, 8, 1, 1)])
def test_fused_standardisation_matches_written_out_moments(formula, kernel, shape):
    from primitives.codegen import generate_source
    graph = parse(formula)
    fused_src, plain_src = generate_source(graph), generate_source(graph, fuse=False)
    assert kernel in fused_src and "F." not in plain_src
    torch.manual_seed(0)
    fused = _module_from_source(fused_src)(8).double()
    plain = _module_from_source(plain_src)(8).double()
    with torch.no_grad():
        for p in fused.parameters():
            p.uniform_(0.5, 1.5)
    plain.load_state_dict(fused.state_dict())  # same parameter and buffer names
    for step in range(3):
        x = (torch.randn(shape, dtype=torch.float64) * 3 + 1).requires_grad_()
        outs = []
        for layer in (fused, plain):
            layer.zero_grad()
            y = layer(x)
            weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
            g, *grads = torch.autograd.grad((y * weights).sum(), [x, *layer.parameters()])
            outs.append((y.detach(), g, grads))
        assert torch.allclose(outs[0][0], outs[1][0], atol=1e-10), step
        assert torch.allclose(outs[0][1], outs[1][1], atol=1e-9), step
        assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(outs[0][2], outs[1][2])), step
    for (name, a), (_, b) in zip(fused.state_dict().items(), plain.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-12), name
    fused.eval(), plain.eval()
    x = torch.randn(shape, dtype=torch.float64)
    assert torch.allclose(fused(x), plain(x), atol=1e-10)


def test_standardisation_pieces_used_elsewhere_are_not_fused():
    from primitives.codegen import generate_source
    for formula in ["(x - batch_mean(x)) / batch_std(x) + batch_var(x)",   # the variance is used again
                    "(x - batch_mean(x)) / batch_std(x) * batch_mean(x)",  # so is the mean
                    "(x - batch_mean(x)) / layer_std(x)",                  # two axes
                    "(x - channel_mean(x)) / channel_std(x) + channel_var(x)"]:
        assert "F." not in generate_source(parse(formula)), formula


def test_a_channel_standardisation_takes_its_affine_vectors_into_layer_norm():
    from primitives.codegen import generate_source
    calls = {formula: [line for line in generate_source(parse(formula)).splitlines() if "F.layer_norm" in line]
             for formula in ["(x - channel_mean(x)) / channel_std(x) * gamma + beta",
                             "(x - channel_mean(x)) / channel_std(x) * v3",
                             "(x - channel_mean(x)) / channel_std(x) * gamma + 2",
                             "(x - channel_mean(x)) / channel_std(x) * gamma + beta * gamma"]}
    lines = [line for found in calls.values() for line in found]
    assert len(lines) == 4
    assert "self.gamma, self.beta" in lines[0] and "self.v3, None" in lines[1]
    assert "self.gamma, None" in lines[2] and "+ 2" in lines[2] and "self.gamma, None" in lines[3]
    source = generate_source(parse(REFERENCE_LAYERS["layernorm"]))
    assert "gamma = self.gamma.view" not in source      # no view left for the vectors the call takes
