"""Proxy architectures: shapes for 16/28/32 inputs, the layer at every norm-act position (the
CNN proxies here; the Transformer proxies in test_transformer_proxies.py)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from evaluators.proxies import PROXIES, ProxyError, build_proxy, norm_positions

CNN_NAMES = tuple(n for n, p in PROXIES.items() if p.family == "cnn")


class Marker(nn.Module):
    """Stands in for a candidate layer: BN + ReLU, and remembers its channel count."""

    def __init__(self, channels):
        super().__init__()
        self.channels = channels
        self.bn = nn.BatchNorm2d(channels)
        self.seen = None

    def forward(self, x):
        assert x.shape[1] == self.channels
        self.seen = tuple(x.shape)
        return torch.relu(self.bn(x))


class Counter:
    def __init__(self):
        self.calls = []

    def __call__(self, channels):
        self.calls.append(channels)
        return Marker(channels)


@pytest.mark.parametrize("name", CNN_NAMES)
@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 32), (1, 16), (3, 16)])
def test_builds_and_runs(name, in_channels, size):
    factory = Counter()
    model = build_proxy(name, factory, in_channels, 10, size)
    out = model(torch.randn(4, in_channels, size, size))
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    markers = [m for m in model.modules() if isinstance(m, Marker)]
    # the factory is called at every norm-act position and every layer it made is used
    assert len(factory.calls) == len(markers) == norm_positions(name)
    assert all(m.seen is not None for m in markers)
    assert [m.channels for m in markers] == factory.calls
    # nothing else normalises: the only BatchNorms are inside the markers
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(bns) == len(markers)
    assert not any(isinstance(m, (nn.ReLU, nn.ReLU6, nn.GroupNorm, nn.LayerNorm)) for m in model.modules())


@pytest.mark.parametrize("name", CNN_NAMES)
def test_width_and_depth(name):
    small = build_proxy(name, Counter(), 1, 10, 28, width=8, depth=1)
    deep = Counter()
    big = build_proxy(name, deep, 1, 10, 28, width=24, depth=2)
    n_small = sum(p.numel() for p in small.parameters())
    n_big = sum(p.numel() for p in big.parameters())
    assert n_big > 3 * n_small
    assert len(deep.calls) == norm_positions(name, depth=2) > norm_positions(name, depth=1)
    assert big(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_designs_have_their_signature_parts():
    res = build_proxy("resnet", Counter(), 3, 10, 32)
    mob = build_proxy("mobilenetv2", Counter(), 3, 10, 32)
    eff = build_proxy("efficientnet", Counter(), 3, 10, 32)

    def depthwise(m):
        return [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.groups > 1 and c.groups == c.in_channels]
    assert not depthwise(res) and depthwise(mob) and depthwise(eff)
    assert any(type(m).__name__ == "SqueezeExcite" for m in eff.modules())
    assert not any(type(m).__name__ == "SqueezeExcite" for m in mob.modules())
    assert any(c.kernel_size == (5, 5) for c in depthwise(eff))
    assert any(type(m).__name__ == "PreActBlock" and m.shortcut is None for m in res.modules())


def test_unknown_and_bad_settings():
    with pytest.raises(ProxyError, match="unknown proxy architecture 'vgg'") as err:
        build_proxy("vgg", Counter(), 1, 10, 28)
    assert isinstance(err.value, ValueError) and "resnet" in str(err.value)
    with pytest.raises(ProxyError, match="width"):
        build_proxy("resnet", Counter(), 1, 10, 28, width=0)
    with pytest.raises(ProxyError, match="depth"):
        build_proxy("mobilenetv2", Counter(), 1, 10, 28, depth=-1)


def test_with_generated_layers():
    import primitives
    from primitives.library import REFERENCE_LAYERS
    for formula in (REFERENCE_LAYERS["evonorm-b0"], REFERENCE_LAYERS["evonorm-s0"]):
        graph = primitives.parse(formula)
        for name in CNN_NAMES:
            model = build_proxy(name, lambda c: primitives.compile_layer(graph, c), 1, 10, 28)
            assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)
