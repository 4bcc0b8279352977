"""The Transformer reference layers against torch's own modules and hand-written twins.

`layernorm` against `torch.nn.LayerNorm(D)`, `rmsnorm` against `torch.nn.RMSNorm(D, eps=1e-5)`,
`dyt` and `derf` against plain modules written from the papers (DyT: Zhu et al. 2025,
weight * tanh(alpha * x) + bias, alpha a scalar starting at 0.5; Derf: weight * erf(alpha * x + s)
+ bias, alpha 0.5 and s 0), `identity` against nothing at all. Each is checked on tokens laid out
(N, D, L), as a layer at a Transformer position sees them (the twin sees them moved to (N, L, D)),
and on (N, L, D) tokens through `ChannelsLast`, the wrapper `replace_norm` puts in a model:
values, input gradients, parameter gradients, and the parameters and outputs after AdamW steps
from the same initial values (float64, so that the comparison is of the math, to 1e-6).
"""
import pytest
import torch
from torch import nn

from primitives import compile_layer, parse
from primitives.library import (BASELINES, REFERENCE_LAYERS, TRANSFORMER_BASELINES, TRANSFORMER_LAYERS,
                                baselines)
from primitives.replace import ChannelsLast

N, D, L = 4, 24, 9
STEPS = 5


class DyT(nn.Module):
    """Dynamic Tanh over the last dimension, as in the paper."""

    def __init__(self, dim, alpha0=0.5):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(alpha0))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return self.weight * torch.tanh(self.alpha * x) + self.bias


class Derf(nn.Module):
    """erf in place of DyT's tanh, with a learnable shift s inside."""

    def __init__(self, dim, alpha0=0.5, s0=0.0):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(alpha0))
        self.s = nn.Parameter(torch.tensor(s0))
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return self.weight * torch.erf(self.alpha * x + self.s) + self.bias


class Identity(nn.Module):
    def forward(self, x):
        return x


# name -> (twin over the last dimension, {generated parameter: twin parameter})
TWINS = {
    "layernorm": (lambda: nn.LayerNorm(D), {"gamma": "weight", "beta": "bias"}),
    "rmsnorm": (lambda: nn.RMSNorm(D, eps=1e-5), {"gamma": "weight"}),
    "dyt": (lambda: DyT(D), {"gamma": "weight", "beta": "bias", "scalar0": "alpha"}),
    "derf": (lambda: Derf(D), {"gamma": "weight", "beta": "bias", "scalar0": "alpha", "scalar1": "s"}),
    "identity": (Identity, {}),
}


def test_every_transformer_layer_has_a_twin_and_the_baselines_are_named():
    assert set(TWINS) == set(TRANSFORMER_LAYERS) and set(TRANSFORMER_LAYERS) <= set(REFERENCE_LAYERS)
    assert TRANSFORMER_BASELINES == ("layernorm", "rmsnorm", "dyt", "derf")
    assert baselines("batch", family="transformer") == TRANSFORMER_BASELINES
    assert baselines("sample", family="transformer") == TRANSFORMER_BASELINES
    assert baselines("batch") == baselines("batch", family="cnn") == BASELINES
    with pytest.raises(ValueError, match="family"):
        baselines("batch", family="rnn")
    for name in TRANSFORMER_LAYERS:   # a causal language model may use every one of them
        g = parse(REFERENCE_LAYERS[name])
        assert not g.mixes_positions and not g.uses_batch_stats, name


def _pair(name, layout):
    """(generated layer in `layout`, twin in the same layout), float64, same start."""
    make_twin, _ = TWINS[name]
    layer, twin = compile_layer(REFERENCE_LAYERS[name], D).double(), make_twin().double()
    if layout == "NLD":
        return ChannelsLast(layer), twin, layer
    return layer, _TokensLast(twin), layer


class _TokensLast(nn.Module):
    """A twin over the last dimension fed (N, D, L) tokens: it sees them as (N, L, D)."""

    def __init__(self, twin):
        super().__init__()
        self.twin = twin

    def forward(self, x):
        return self.twin(x.movedim(1, -1)).movedim(-1, 1)


def _twin_params(name, twin):
    inner = twin.twin if isinstance(twin, _TokensLast) else twin
    return {ours: getattr(inner, theirs) for ours, theirs in TWINS[name][1].items()}


def _tokens(layout, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = (N, L, D) if layout == "NLD" else (N, D, L)
    # tokens of different scales and offsets, as a residual stream has
    scale = torch.exp(torch.randn(N, 1, 1, generator=gen, dtype=torch.float64))
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale * 1.5 + 0.3


@pytest.mark.parametrize("layout", ["NDL", "NLD"])
@pytest.mark.parametrize("name", sorted(TWINS))
def test_reference_layer_matches_its_twin_and_trains_alike(name, layout):
    ours, twin, layer = _pair(name, layout)
    params = dict(layer.named_parameters())
    theirs = _twin_params(name, twin)
    assert set(params) == set(theirs), (sorted(params), sorted(theirs))
    with torch.no_grad():   # a trained-looking start, the same on both sides
        gen = torch.Generator().manual_seed(len(name))
        for key, p in params.items():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
            theirs[key].copy_(p)
    opts = [torch.optim.AdamW(module.parameters(), lr=0.05, weight_decay=0.1)
            for module in (ours, twin) if params]   # the identity has nothing to learn
    for step in range(STEPS + 1):
        x = _tokens(layout, step)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), twin(xb)
        assert ya.shape == x.shape
        torch.testing.assert_close(ya, yb, rtol=1e-6, atol=1e-6)
        if step == STEPS:
            break
        weights = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + step), dtype=x.dtype)
        for y, module in zip((ya, yb), (ours, twin)):
            module.zero_grad()
            (y * weights).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-6, atol=1e-6)
        for key, p in params.items():
            torch.testing.assert_close(p.grad, theirs[key].grad, rtol=1e-6, atol=1e-6, msg=f"{key} gradient")
        for opt in opts:
            opt.step()
        for key, p in params.items():   # the states stay equal
            torch.testing.assert_close(p, theirs[key], rtol=1e-6, atol=1e-6, msg=f"{key} after step {step}")


def test_rmsnorm_against_torch_default_eps():
    """torch.nn.RMSNorm(D) with its default eps (None: float32's machine epsilon, 1.19e-7)
    against the reference's 1e-5: on tokens of unit mean square they differ by about
    (1e-5 - 1.19e-7) / 2 = 5e-6 relative; held to 1e-5 relative, in float32."""
    ours, torch_default = compile_layer(REFERENCE_LAYERS["rmsnorm"], D), nn.RMSNorm(D)
    x = torch.randn(N, L, D, generator=torch.Generator().manual_seed(0))
    x = x / x.square().mean(-1, keepdim=True).sqrt()           # unit mean square per token
    torch.testing.assert_close(ChannelsLast(ours)(x), torch_default(x), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(ChannelsLast(ours)(x), torch_default(x), rtol=1e-7, atol=0)   # not the same eps


def test_layernorm_over_tokens_is_not_groupnorm():
    """A token's statistics are over its channels only (the sequence axis is not pooled)."""
    x = _tokens("NDL", 0).float()
    ln = compile_layer(REFERENCE_LAYERS["layernorm"], D)
    torch.testing.assert_close(ln(x), nn.LayerNorm(D)(x.movedim(1, -1)).movedim(-1, 1), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ln(x), nn.GroupNorm(1, D)(x), atol=1e-3)


@pytest.mark.parametrize("name", ["dyt", "derf"])
def test_scalar_layers_export_and_compile_wrapped(name):
    layer = ChannelsLast(compile_layer(REFERENCE_LAYERS[name], D)).eval()
    x = torch.randn(N, L, D)
    program = torch.export.export(layer, (x,))
    torch.testing.assert_close(program.module()(x), layer(x))
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), layer(x))


@pytest.mark.parametrize("archs,families", [(("resnet", "plainnet"), {"cnn"}), (("vit", "charlm"), {"transformer"}),
                                             (("resnet", "vit"), {"cnn", "transformer"})])
def test_a_search_is_seeded_with_the_layers_of_its_proxies_families(archs, families):
    from types import SimpleNamespace

    from search.engine.driver import initial_seeds
    from search.engine.modes import get_mode
    config = SimpleNamespace(seed_formulas=(), library_seeds=True, archs=archs)
    seeds = {g.hash for g in initial_seeds(config, get_mode("batch"))}
    wanted = {parse(f).hash for name, f in REFERENCE_LAYERS.items()
              if ("transformer" if name in TRANSFORMER_LAYERS else "cnn") in families}
    assert seeds == wanted     # every reference fits batch mode
    assert (parse(REFERENCE_LAYERS["dyt"]).hash in seeds) == ("transformer" in families)
    assert (parse(REFERENCE_LAYERS["bn-relu"]).hash in seeds) == ("cnn" in families)
