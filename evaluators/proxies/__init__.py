"""Proxy architectures, one registry entry each: the networks a candidate layer is trained in.

Every proxy calls the candidate's `layer_factory(channels)` at every place where its full-size
design has a normalization(-activation) layer. `build_proxy(name, ...)` builds one;
`norm_positions(name)` says how many places that is. The convolutional proxies live in
`cnn.py`, the Transformer proxies in `transformer.py`.

An entry also says the proxy's family (`cnn` or `transformer`), the data it trains on
(`images`: the run's --dataset; `text`: Python's pydoc topics, evaluators/datasets/text.py),
whether it is causal (then a layer that mixes positions is refused: `Graph.mixes_positions`),
and its training recipe (`Recipe`: optimiser, learning rate, batch size, ...), which a run's
--steps/--batch-size/--lr override for every proxy alike (`Recipe.train_settings`).

The held-out proxies test transfer in `retrain`: each family has one, differing from the
searched ones where it matters most for a normalisation layer. `plainnet` is a CNN with no
residual connections, so every layer carries the whole signal. `postvit` is a ViT with the
layer after each residual sum (post-norm, as the original Transformer placed it) instead of
before the branch: there too the layer carries the whole residual stream, and a layer that
only works beside an identity path (the pre-norm proxies give it one: `vit` and `charlm`
train even with no normalisation at all) shows it. A post-norm Transformer is also the
placement where DyT's authors report that tanh stands in for LayerNorm least easily.

Adding a proxy is one `Proxy` entry in `PROXIES` (and its module): the names, the search's
default set, the held-out set and the `acc_<name>` columns follow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from torch import nn

from evaluators.proxies import cnn, transformer
from primitives.errors import EvonormError

LayerFactory = Callable[[int], nn.Module]


class ProxyError(EvonormError, ValueError):
    """Unknown proxy name or bad proxy settings."""


@dataclass(frozen=True)
class Recipe:
    """How a proxy is trained: the trainer's (evaluators.trainer.TrainConfig) optimiser
    settings. The step count is the run's, one for every proxy (the hurdles' rungs are
    fractions of it)."""

    optimizer: str = "sgd"               # "sgd" | "adamw"
    lr: float = 0.1
    batch_size: int = 128
    weight_decay: float = 5e-4           # on matrices only (evaluators.trainer.param_groups)
    momentum: float = 0.9                # sgd
    nesterov: bool = True                # sgd
    betas: tuple[float, float] = (0.9, 0.999)   # adamw
    warmup_fraction: float = 0.15
    label_smoothing: float = 0.0
    grad_clip: float | None = 1.0
    # how the learning rate follows a batch size other than the recipe's: "linear" (SGD,
    # Goyal et al. 2017) or "sqrt" (Adam's square-root rule, Malladi et al. 2022)
    lr_scaling: str = "linear"

    def lr_at_batch(self, batch_size: int) -> float:
        if self.lr_scaling == "sqrt":
            return self.lr * math.sqrt(batch_size / self.batch_size)
        return self.lr * batch_size / self.batch_size     # evaluate.scaled_lr's arithmetic, bit for bit

    def train_settings(self, batch_size: int | None = None, lr: float | None = None) -> dict:
        """TrainConfig fields of this recipe; a run's `batch_size` and `lr` (None: not
        given) override it, and a batch size given without an lr scales the recipe's lr
        (`lr_scaling`). At the recipe's own batch size the lr is the recipe's, exactly."""
        batch = self.batch_size if batch_size is None else batch_size
        if lr is None:
            lr = self.lr if batch == self.batch_size else self.lr_at_batch(batch)
        settings = dict(optimizer=self.optimizer, lr=lr, batch_size=batch, weight_decay=self.weight_decay,
                        warmup_fraction=self.warmup_fraction, label_smoothing=self.label_smoothing,
                        grad_clip=self.grad_clip)
        if self.optimizer == "sgd":
            settings.update(momentum=self.momentum, nesterov=self.nesterov)
        else:
            settings.update(betas=tuple(self.betas))
        return settings

    def describe(self) -> str:
        extra = (f"momentum {self.momentum:g}{' nesterov' if self.nesterov else ''}" if self.optimizer == "sgd"
                 else f"betas {self.betas[0]:g}/{self.betas[1]:g}")
        parts = [f"{self.optimizer} lr {self.lr:g} at batch {self.batch_size}", extra,
                 f"wd {self.weight_decay:g}", f"warm-up {self.warmup_fraction:g}"]
        if self.label_smoothing:
            parts.append(f"label smoothing {self.label_smoothing:g}")
        parts.append("no clipping" if self.grad_clip is None else f"clip {self.grad_clip:g}")
        return ", ".join(parts)


# The convolutional proxies' recipe: the trainer's defaults (SGD + Nesterov, 0.1 at 128, ...)
CNN_RECIPE = Recipe()
# The Transformer proxies' recipes: AdamW, warm-up then cosine, as Transformers are trained. The
# rates and warm-ups are measured in docs/transformer-proxies.md: at 1e-2 the ViT's five
# reference layers tied at 300 steps while longer training saw no normalisation collapse; at
# 2e-2 it collapses within the budget too. A 30% warm-up lets DyT and Derf leave the unigram
# plateau within charlm's 300 steps (17% -> 39%, as a long run's slow warm-up does). A post-norm
# Transformer needs the gentler rate: at 2e-2 postvit with LayerNorm stays at chance.
VIT_RECIPE = Recipe(optimizer="adamw", lr=2e-2, batch_size=128, weight_decay=0.05, betas=(0.9, 0.99),
                    warmup_fraction=0.3, lr_scaling="sqrt")
POSTVIT_RECIPE = Recipe(optimizer="adamw", lr=1e-2, batch_size=128, weight_decay=0.05, betas=(0.9, 0.99),
                        warmup_fraction=0.1, lr_scaling="sqrt")
CHARLM_RECIPE = Recipe(optimizer="adamw", lr=1e-2, batch_size=32, weight_decay=0.05, betas=(0.9, 0.99),
                       warmup_fraction=0.3, lr_scaling="sqrt")

FAMILIES = ("cnn", "transformer")
DATA = ("images", "text")


@dataclass(frozen=True)
class Proxy:
    """One proxy: how to build it around a layer factory, its default size, how many layer
    positions it has at a given depth, whether it is held out of searches by default (a
    held-out proxy tests transfer in `retrain`), its family, the data it trains on, whether
    it is causal, and its training recipe."""

    name: str
    build: Callable            # (layer_factory, in_channels, num_classes, *, width, depth, size) -> Module
    width: int
    depth: int
    positions: Callable[[int], int]    # depth -> number of layer positions
    held_out: bool = False
    family: str = "cnn"                # "cnn" | "transformer"
    data: str = "images"               # "images" (the run's --dataset) | "text" (datasets/text.py)
    causal: bool = False               # a layer that mixes positions would see the future: refused
    recipe: Recipe = field(default=CNN_RECIPE)


def _mobile_positions(stages):
    def count(depth: int) -> int:
        positions = 2  # stem and head
        for expand, _, n, _, _ in stages:
            positions += (depth if n is None else n) * (3 if expand != 1 else 2)
        return positions
    return count


def _cnn(build):
    """A CNN builder called the registry's way (`size` decides the stem's stride: like the
    full-size designs the stem downsamples; the 16x16 synthetic images stay whole)."""
    def make(layer, in_channels, num_classes, *, width, depth, size):
        return build(layer, in_channels, num_classes, width=width, depth=depth,
                     stem_stride=2 if size >= 24 else 1)
    return make


def _pre_norm(depth: int) -> int:
    return 2 * depth + 1


def _post_norm(depth: int) -> int:
    return 2 * depth


PROXIES = {p.name: p for p in (
    Proxy("resnet", _cnn(cnn.ResNetProxy), 16, 1, lambda d: 6 * d + 1),
    Proxy("mobilenetv2", _cnn(partial(cnn.MobileProxy, stages=cnn.MOBILENETV2_STAGES)),
          16, 1, _mobile_positions(cnn.MOBILENETV2_STAGES)),
    Proxy("efficientnet", _cnn(partial(cnn.MobileProxy, stages=cnn.EFFICIENTNET_STAGES, se_ratio=0.25)),
          16, 1, _mobile_positions(cnn.EFFICIENTNET_STAGES)),
    # VGG-style, no shortcuts: every layer carries the whole signal
    Proxy("plainnet", _cnn(cnn.PlainProxy), 16, 2, lambda d: 3 * d + 1, held_out=True),
    # pre-norm ViT on the run's images (16 patches): a layer before attention, before the MLP
    # and before the head
    Proxy("vit", transformer.ViTProxy, 64, 4, _pre_norm, family="transformer", recipe=VIT_RECIPE),
    # causal character-level GPT on Python's help texts, scored by next-character accuracy
    Proxy("charlm", transformer.CharLMProxy, 64, 3, _pre_norm, family="transformer", data="text",
          causal=True, recipe=CHARLM_RECIPE),
    # post-norm ViT (the layer after each residual sum): held out, see the module docstring
    Proxy("postvit", partial(transformer.ViTProxy, post_norm=True), 64, 4, _post_norm, held_out=True,
          family="transformer", recipe=POSTVIT_RECIPE),
)}
PROXY_NAMES = tuple(PROXIES)
# the proxies a search uses by default (the CNNs); the transformer proxies are chosen with
# --archs; the held-out ones test transfer (`retrain`)
SEARCH_PROXIES = tuple(n for n, p in PROXIES.items() if not p.held_out and p.family == "cnn")
TRANSFORMER_PROXIES = tuple(n for n, p in PROXIES.items() if not p.held_out and p.family == "transformer")
HELD_OUT = tuple(n for n, p in PROXIES.items() if p.held_out)
DEFAULTS = {name: (p.width, p.depth) for name, p in PROXIES.items()}  # name -> (width, depth)


# The reference layers of a Transformer position, by their names in primitives.library's
# REFERENCE_LAYERS; until the library holds them, the ones today's language writes stand in
# (DyT and Derf need learnable scalars, which it lacks).
def transformer_references() -> dict:
    """name -> formula of the layers a Transformer proxy's candidates are compared with:
    LayerNorm, RMSNorm, DyT, Derf and no normalization (primitives.library)."""
    from primitives.library import REFERENCE_LAYERS, TRANSFORMER_LAYERS
    return {name: REFERENCE_LAYERS[name] for name in TRANSFORMER_LAYERS}


def families_of(archs) -> set[str]:
    """The proxy families ("cnn", "transformer") of `archs`; CNN alone when none is named (a
    run or a table that predates the Transformer proxies)."""
    return {PROXIES[a].family for a in archs if a in PROXIES} or {"cnn"}


def references_for(archs, mode: str = "batch") -> dict:
    """name -> formula of the layers a candidate trained on `archs` is compared with: the
    mode's CNN baselines (primitives.library.baselines) for CNN proxies, the Transformer
    references for Transformer ones, both for a mixture (CNN ones alone without archs)."""
    from primitives.library import REFERENCE_LAYERS, baselines
    families = families_of(archs)
    references = {}
    if "cnn" in families:
        references.update((name, REFERENCE_LAYERS[name]) for name in baselines(mode))
    if "transformer" in families:
        references.update(transformer_references())
    return references


def held_out_for(archs) -> tuple[str, ...]:
    """The held-out proxies of the families `archs` belong to (plainnet for CNN proxies,
    postvit for Transformer ones), those not among `archs` already."""
    families = {get_proxy(a).family for a in archs}
    return tuple(n for n in HELD_OUT if PROXIES[n].family in families and n not in archs)


def data_of(name: str) -> str:
    """The data proxy `name` trains on: "images" (the run's dataset) or "text"."""
    return get_proxy(name).data


def causal_archs(archs) -> tuple[str, ...]:
    return tuple(a for a in archs if get_proxy(a).causal)


def get_proxy(name: str) -> Proxy:
    if name not in PROXIES:
        raise ProxyError(f"unknown proxy architecture {name!r} (expected one of: {', '.join(PROXY_NAMES)})")
    return PROXIES[name]


def build_proxy(name: str, layer_factory: LayerFactory, in_channels: int, num_classes: int,
                image_size: int, width: int | None = None, depth: int | None = None) -> nn.Module:
    """A proxy network for (in_channels, image_size, image_size) inputs; for a text proxy,
    `in_channels` is the vocabulary and `image_size` the context length (a dataset's
    `in_channels`, `num_classes` and `image_size` say them all, see `build_for`).
    `layer_factory(channels)` supplies every normalization-activation layer."""
    proxy = get_proxy(name)
    width = proxy.width if width is None else width
    depth = proxy.depth if depth is None else depth
    for key, value in (("width", width), ("depth", depth), ("in_channels", in_channels),
                       ("num_classes", num_classes), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ProxyError(f"{name}: {key} must be a positive integer, got {value!r}")
    if image_size < 8 and proxy.data == "images":
        raise ProxyError(f"{name}: image_size {image_size} is too small (at least 8)")
    if proxy.family == "transformer" and width % transformer.HEAD_DIM:
        raise ProxyError(f"{name}: width must be a multiple of {transformer.HEAD_DIM} (the head size), got {width}")
    return proxy.build(layer_factory, in_channels, num_classes, width=width, depth=depth, size=image_size)


def build_for(name: str, layer_factory: LayerFactory, dataset, width: int | None = None,
              depth: int | None = None) -> nn.Module:
    """`build_proxy` for `dataset`, which must be the kind of data the proxy trains on."""
    proxy = get_proxy(name)
    kind = "text" if hasattr(dataset, "vocab") else "images"
    if kind != proxy.data:
        raise ProxyError(f"{name} trains on {proxy.data}, not on {kind} ({getattr(dataset, 'name', dataset)})")
    return build_proxy(name, layer_factory, dataset.in_channels, dataset.num_classes, dataset.image_size,
                       width=width, depth=depth)


def norm_positions(name: str, depth: int | None = None) -> int:
    """How many times `build_proxy(name, ...)` calls the layer factory."""
    proxy = get_proxy(name)
    return proxy.positions(proxy.depth if depth is None else depth)
