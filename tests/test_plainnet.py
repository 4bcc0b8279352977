"""The held-out proxy `plainnet`: VGG-style, no shortcut; selectable, never searched by default."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from evaluators.proxies import HELD_OUT, PROXY_NAMES, SEARCH_PROXIES, build_proxy
from search.config import ConfigError, SearchConfig, build_config


class Zero(nn.Module):
    """A layer that outputs zeros: with no shortcut, nothing reaches the classifier."""

    def forward(self, x):
        return torch.zeros_like(x)


@pytest.mark.parametrize("silenced", range(7))
def test_plainnet_has_no_path_around_its_layers(silenced):
    """Zeroing any one layer silences a plain network (its output is the classifier's bias
    alone): no shortcut carries the signal past it."""
    calls = []

    def factory(channels):
        calls.append(channels)
        return Zero() if len(calls) - 1 == silenced else nn.Identity()
    plain = build_proxy("plainnet", factory, 1, 10, 28)
    assert len(calls) == 7
    out = plain(torch.randn(3, 1, 28, 28))
    assert torch.allclose(out, plain.fc.bias.expand_as(out))
    assert any(isinstance(m, nn.MaxPool2d) for m in plain.modules())


def test_plainnet_is_held_out_but_selectable():
    assert "plainnet" in HELD_OUT and "plainnet" in PROXY_NAMES and "plainnet" not in SEARCH_PROXIES
    assert "plainnet" not in SearchConfig().archs
    assert build_config(overrides={"archs": ["resnet", "plainnet"]}).archs == ("resnet", "plainnet")
    with pytest.raises(ConfigError, match="unknown arch 'vgg'"):
        build_config(overrides={"archs": ["vgg"]})


def test_eval_command_trains_plainnet_only_when_asked(monkeypatch, capsys):
    from search.cli import main
    argv = ["eval", "x * gamma + beta", "--dataset", "synthetic", "--steps", "2", "--no-baselines"]
    assert main(argv + ["--arch", "plainnet"]) == 0
    out = capsys.readouterr().out
    assert "plainnet" in out
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "plainnet" not in out and "resnet" in out
