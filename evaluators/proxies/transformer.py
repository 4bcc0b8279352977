"""The Transformer proxies: a small ViT on image patches and a small causal character-level LM.

Tokens are held as (N, L, D). A candidate layer sees them as every layer here sees its input,
channels on axis 1: it is called on ``x.transpose(1, 2)``, laid out (N, D, L), the sequence as
the one spatial axis, and its answer is transposed back. So `channel_*` moments are LayerNorm's
per-token statistics, `batch_*` moments BatchNorm over tokens, and `layer_*`/`instance_*`/`group_*`
moments mix the tokens of a sequence (which a causal model must refuse: `Graph.mixes_positions`).

Blocks are the standard ones (Vaswani et al. 2017; Dosovitskiy et al. 2021; Radford et al.
2019): multi-head self-attention (`torch.nn.functional.scaled_dot_product_attention`, causal
for the LM) and a two-layer GELU MLP, each behind a residual connection. Placement:

- pre-norm (``vit``, ``charlm``): ``x + attn(layer(x))``, ``x + mlp(layer(x))``, and a final
  layer before the head, as in GPT-2 and ViT. Positions: ``2 * depth + 1``.
- post-norm (``postvit``): ``layer(x + attn(x))``, ``layer(x + mlp(x))``, as the original
  Transformer placed it: the layer carries the whole residual stream, and there is no identity
  path around it. Positions: ``2 * depth``.

`width` is the model dimension D (heads of 16 dimensions each), `depth` the number of blocks.
Weights start as in GPT-2 and timm's ViT: normal(0, 0.02) for linear maps and embeddings,
zero biases.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

LayerFactory = Callable[[int], nn.Module]

HEAD_DIM = 16


def apply_layer(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A candidate layer on (N, L, D) tokens: it sees (N, D, L), channels on axis 1."""
    return layer(x.transpose(1, 2)).transpose(1, 2)


def rotary(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021) of (N, heads, L, d) queries or keys."""
    length, d = x.shape[-2], x.shape[-1]
    freqs = base ** (-torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    angles = torch.arange(length, device=x.device, dtype=torch.float32)[:, None] * freqs
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, dim: int, causal: bool, rope: bool = False):
        super().__init__()
        self.heads = max(1, dim // HEAD_DIM)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.causal, self.rope = causal, rope

    def forward(self, x):
        n, length, dim = x.shape
        q, k, v = self.qkv(x).view(n, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        if self.rope:
            q, k = rotary(q), rotary(k)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class MLP(nn.Module):
    def __init__(self, dim: int, ratio: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, ratio * dim)
        self.fc2 = nn.Linear(ratio * dim, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, layer: LayerFactory, causal: bool, mlp_ratio: int, post_norm: bool,
                 rope: bool = False):
        super().__init__()
        self.norm1 = layer(dim)
        self.attn = Attention(dim, causal, rope)
        self.norm2 = layer(dim)
        self.mlp = MLP(dim, mlp_ratio)
        self.post_norm = post_norm

    def forward(self, x):
        if self.post_norm:
            x = apply_layer(self.norm1, x + self.attn(x))
            return apply_layer(self.norm2, x + self.mlp(x))
        x = x + self.attn(apply_layer(self.norm1, x))
        return x + self.mlp(apply_layer(self.norm2, x))


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


class Encoder(nn.Module):
    """`depth` blocks, pre- or post-norm; pre-norm ends in a final layer."""

    def __init__(self, dim, depth, layer, causal, mlp_ratio, post_norm, rope=False):
        super().__init__()
        self.blocks = nn.Sequential(*(Block(dim, layer, causal, mlp_ratio, post_norm, rope) for _ in range(depth)))
        self.norm = None if post_norm else layer(dim)

    def forward(self, x):
        x = self.blocks(x)
        return x if self.norm is None else apply_layer(self.norm, x)


class ViTProxy(nn.Module):
    """The image cut into a `grid` x `grid` of non-overlapping patches (7x7 pixels on 28x28
    Fashion-MNIST, 8x8 on CIFAR-10, 4x4 on the 16x16 synthetic set: 16 tokens) -> linear
    embedding + learned positions -> encoder -> mean over tokens -> linear classifier."""

    def __init__(self, layer, in_channels, num_classes, size, width=64, depth=4, grid=4, mlp_ratio=2,
                 post_norm=False):
        super().__init__()
        patch = max(1, size // grid)
        self.embed = nn.Conv2d(in_channels, width, patch, patch)
        tokens = (size // patch) ** 2
        self.pos = nn.Parameter(torch.zeros(1, tokens, width))
        self.encoder = Encoder(width, depth, layer, False, mlp_ratio, post_norm)
        self.head = nn.Linear(width, num_classes)
        _init(self)
        nn.init.normal_(self.pos, std=0.02)
        # unit-variance tokens from standardised pixels (LeCun), whatever layer follows
        nn.init.normal_(self.embed.weight, std=(in_channels * patch * patch) ** -0.5)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.encoder(x).mean(1))


class CharLMProxy(nn.Module):
    """A causal character-level language model (GPT-style, with rotary positions as in
    LLaMA): token embeddings -> causal encoder -> linear head. Takes (N, T) token ids and
    returns logits (N, V, T), the layout `F.cross_entropy` and `argmax(1)` expect for
    sequence targets (N, T). Rotary positions give attention the relative offsets at once;
    with learned absolute positions LayerNorm reached 28.6% instead of 43.0% at the default
    budget (docs/transformer-proxies.md)."""

    def __init__(self, layer, vocab, num_classes, size, width=64, depth=3, mlp_ratio=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.encoder = Encoder(width, depth, layer, True, mlp_ratio, False, rope=True)
        self.head = nn.Linear(width, num_classes)
        _init(self)
        nn.init.normal_(self.embed.weight, std=1.0)   # unit-variance tokens, whatever layer follows

    def forward(self, x):
        return self.head(self.encoder(self.embed(x))).transpose(1, 2)
