"""The convolutional proxies: small versions of real designs for 16x16, 28x28 and 32x32 images.

Each proxy takes `layer_factory(channels) -> nn.Module` and calls it at EVERY
place where the full-size design has a normalization-activation pair or a
normalization alone (there is no BatchNorm and no ReLU left around the
candidate; the only fixed activations are inside squeeze-excite gates):

- ``resnet``: pre-activation ResNet (He et al. 2016, "Identity mappings"), basic
  blocks ``layer -> conv3x3 -> layer -> conv3x3 (+ shortcut)``, three stages of
  widths w, 2w, 4w (strides 1, 2, 2), a final layer before pooling. Positions:
  ``6 * depth + 1``.
- ``mobilenetv2``: inverted residuals (Sandler et al. 2018): 1x1 expand ->
  layer -> depthwise 3x3 -> layer -> 1x1 project -> layer (the linear
  bottleneck's BN), residual when shapes match; a 1x1 head -> layer.
- ``efficientnet``: MBConv blocks (Tan & Le 2019) with squeeze-excite (SiLU and
  sigmoid gate, ratio 0.25), 3x3 and 5x5 depthwise kernels; expand -> layer ->
  depthwise -> layer -> SE -> project -> layer; a 1x1 head -> layer.
- ``plainnet`` (held out: never searched on by default, see `SEARCH_PROXIES`):
  VGG-style (Simonyan & Zisserman 2015), a plain stack of ``conv3x3 -> layer``
  pairs with no residual connections: a 3x3 stem, then three stages of widths
  w, 2w, 4w with `depth` pairs each and 2x2 max-pooling between them, global
  pooling and a linear classifier. Without shortcuts the signal passes through
  every layer, so normalisation matters most here; a layer that only works
  beside an identity path shows it. Positions: ``3 * depth + 1``.

`width` is the base channel count (the first stage's width; later stages scale
with it) and `depth` the number of blocks in each repeated stage. Defaults are
sized so that the default trainer budget fits all three proxies on Fashion-MNIST
in under a minute on a 2-core CPU with eager BN-ReLU (see benchmarks/train_speed.py).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

LayerFactory = Callable[[int], nn.Module]


def _conv(cin, cout, k=3, stride=1, groups=1):
    return nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)


def _scale(c: int, width: int) -> int:
    return max(4, int(round(c * width / 16 / 4)) * 4)


# ----------------------------------------------------------------------------- ResNet

class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride, layer: LayerFactory):
        super().__init__()
        self.norm1 = layer(cin)
        self.conv1 = _conv(cin, cout, 3, stride)
        self.norm2 = layer(cout)
        self.conv2 = _conv(cout, cout, 3, 1)
        self.shortcut = _conv(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = self.norm1(x)
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(self.norm2(out))
        return out + shortcut


class ResNetProxy(nn.Module):
    def __init__(self, layer, in_channels, num_classes, width=16, depth=1, stem_stride=2):
        super().__init__()
        widths = (width, 2 * width, 4 * width)
        self.stem = _conv(in_channels, width, 3, stem_stride)
        blocks, cin = [], width
        for i, w in enumerate(widths):
            for j in range(depth):
                blocks.append(PreActBlock(cin, w, 2 if (i > 0 and j == 0) else 1, layer))
                cin = w
        self.blocks = nn.Sequential(*blocks)
        self.norm = layer(cin)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.norm(self.blocks(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


# ----------------------------------------------------------------------------- MobileNetV2 / EfficientNet

class SqueezeExcite(nn.Module):
    def __init__(self, channels, reduced):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x):
        s = x.mean(dim=(2, 3), keepdim=True)
        s = self.expand(nn.functional.silu(self.reduce(s)))
        return x * torch.sigmoid(s)


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual; with `se_ratio` EfficientNet's MBConv."""

    def __init__(self, cin, cout, stride, expand, kernel, layer: LayerFactory, se_ratio=0.0):
        super().__init__()
        hidden = cin * expand
        parts = []
        if expand != 1:
            parts += [_conv(cin, hidden, 1), layer(hidden)]
        parts += [_conv(hidden, hidden, kernel, stride, groups=hidden), layer(hidden)]
        if se_ratio:
            parts.append(SqueezeExcite(hidden, max(1, int(cin * se_ratio))))
        parts += [_conv(hidden, cout, 1), layer(cout)]
        self.body = nn.Sequential(*parts)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.body(x)
        return x + out if self.residual else out


# (expand, channels at width 16, blocks (None: `depth`), stride, kernel)
MOBILENETV2_STAGES = ((1, 16, 1, 1, 3), (4, 24, None, 2, 3), (4, 32, None, 2, 3), (4, 48, None, 1, 3))
EFFICIENTNET_STAGES = ((1, 16, 1, 1, 3), (4, 24, None, 2, 3), (4, 40, None, 2, 5), (4, 48, None, 1, 3))


class MobileProxy(nn.Module):
    def __init__(self, layer, in_channels, num_classes, width=16, depth=1, stages=MOBILENETV2_STAGES,
                 se_ratio=0.0, head=128, stem_stride=2):
        super().__init__()
        stem = _scale(16, width)
        self.stem = nn.Sequential(_conv(in_channels, stem, 3, stem_stride), layer(stem))
        blocks, cin = [], stem
        for expand, c, n, stride, kernel in stages:
            cout = _scale(c, width)
            for j in range(depth if n is None else n):
                blocks.append(InvertedResidual(cin, cout, stride if j == 0 else 1, expand, kernel,
                                               layer, se_ratio))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        head = _scale(head, width)
        self.head = nn.Sequential(_conv(cin, head, 1), layer(head))
        self.fc = nn.Linear(head, num_classes)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))


# ----------------------------------------------------------------------------- PlainNet (VGG-style)

class PlainProxy(nn.Module):
    """conv3x3 -> layer, stacked: no shortcut around any layer."""

    def __init__(self, layer, in_channels, num_classes, width=16, depth=2, stem_stride=2):
        super().__init__()
        parts, cin = [_conv(in_channels, width, 3, stem_stride), layer(width)], width
        for i, w in enumerate((width, 2 * width, 4 * width)):
            if i:
                parts.append(nn.MaxPool2d(2))
            for _ in range(depth):
                parts += [_conv(cin, w, 3), layer(w)]
                cin = w
        self.features = nn.Sequential(*parts)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))
