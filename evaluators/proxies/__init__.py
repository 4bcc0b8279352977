"""Proxy architectures, one registry entry each: the networks a candidate layer is trained in.

Every proxy calls the candidate's `layer_factory(channels)` at every place where its full-size
design has a normalization(-activation) layer. `build_proxy(name, ...)` builds one;
`norm_positions(name)` says how many places that is. The convolutional proxies live in
`cnn.py`.

Adding a proxy is one `Proxy` entry in `PROXIES` (and its module): the names, the search's
default set, the held-out set and the `acc_<name>` columns follow.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

from torch import nn

from evaluators.proxies import cnn
from primitives.errors import EvonormError

LayerFactory = Callable[[int], nn.Module]


class ProxyError(EvonormError, ValueError):
    """Unknown proxy name or bad proxy settings."""


@dataclass(frozen=True)
class Proxy:
    """One proxy: how to build it around a layer factory, its default size, how many layer
    positions it has at a given depth, and whether it is held out of searches by default (a
    held-out proxy tests transfer in `retrain`)."""

    name: str
    build: Callable            # (layer_factory, in_channels, num_classes, *, width, depth, stem_stride) -> Module
    width: int
    depth: int
    positions: Callable[[int], int]    # depth -> number of layer positions
    held_out: bool = False


def _mobile_positions(stages):
    def count(depth: int) -> int:
        positions = 2  # stem and head
        for expand, _, n, _, _ in stages:
            positions += (depth if n is None else n) * (3 if expand != 1 else 2)
        return positions
    return count


PROXIES = {p.name: p for p in (
    Proxy("resnet", cnn.ResNetProxy, 16, 1, lambda d: 6 * d + 1),
    Proxy("mobilenetv2", partial(cnn.MobileProxy, stages=cnn.MOBILENETV2_STAGES),
          16, 1, _mobile_positions(cnn.MOBILENETV2_STAGES)),
    Proxy("efficientnet", partial(cnn.MobileProxy, stages=cnn.EFFICIENTNET_STAGES, se_ratio=0.25),
          16, 1, _mobile_positions(cnn.EFFICIENTNET_STAGES)),
    # VGG-style, no shortcuts: every layer carries the whole signal
    Proxy("plainnet", cnn.PlainProxy, 16, 2, lambda d: 3 * d + 1, held_out=True),
)}
PROXY_NAMES = tuple(PROXIES)
# the proxies a search uses by default; the rest are held out, to test transfer (`retrain`)
SEARCH_PROXIES = tuple(n for n, p in PROXIES.items() if not p.held_out)
HELD_OUT = tuple(n for n, p in PROXIES.items() if p.held_out)
DEFAULTS = {name: (p.width, p.depth) for name, p in PROXIES.items()}  # name -> (width, depth)


def get_proxy(name: str) -> Proxy:
    if name not in PROXIES:
        raise ProxyError(f"unknown proxy architecture {name!r} (expected one of: {', '.join(PROXY_NAMES)})")
    return PROXIES[name]


def build_proxy(name: str, layer_factory: LayerFactory, in_channels: int, num_classes: int,
                image_size: int, width: int | None = None, depth: int | None = None) -> nn.Module:
    """A proxy network for (in_channels, image_size, image_size) inputs.
    `layer_factory(channels)` supplies every normalization-activation layer."""
    proxy = get_proxy(name)
    width = proxy.width if width is None else width
    depth = proxy.depth if depth is None else depth
    for key, value in (("width", width), ("depth", depth), ("in_channels", in_channels),
                       ("num_classes", num_classes), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ProxyError(f"{name}: {key} must be a positive integer, got {value!r}")
    if image_size < 8:
        raise ProxyError(f"{name}: image_size {image_size} is too small (at least 8)")
    # like the full-size designs, the stem downsamples (the 16x16 synthetic images stay whole)
    stem_stride = 2 if image_size >= 24 else 1
    return proxy.build(layer_factory, in_channels, num_classes, width=width, depth=depth, stem_stride=stem_stride)


def norm_positions(name: str, depth: int | None = None) -> int:
    """How many times `build_proxy(name, ...)` calls the layer factory."""
    proxy = get_proxy(name)
    return proxy.positions(proxy.depth if depth is None else depth)
