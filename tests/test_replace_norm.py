"""replace_norm: a Transformer gets the layer at every LayerNorm / RMSNorm.

The timm tests import timm through `tests/timm_shim.py`: torchvision, which timm imports but a
ViT never uses, cannot be installed beside this CPU torch, so the shim makes it an empty module
of MagicMocks when it does not import (the shim's docstring says more).
"""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from primitives import compile_layer, export_layer, parse
from primitives.library import REFERENCE_LAYERS
from primitives.replace import ChannelsLast, replace_norm, replace_norm_act
from timm_shim import import_timm

LN, RMS, DYT = REFERENCE_LAYERS["layernorm"], REFERENCE_LAYERS["rmsnorm"], REFERENCE_LAYERS["dyt"]


class Block(nn.Module):
    """A pre-norm Transformer block over (N, L, D) tokens (attention left out: it does not matter here)."""

    def __init__(self, dim, norm):
        super().__init__()
        self.norm1, self.norm2 = norm(dim), norm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        x = x + self.fc1(self.norm1(x))
        return x + self.fc2(F.gelu(self.norm2(x)))


class Tiny(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.blocks = nn.Sequential(Block(dim, lambda d: nn.LayerNorm(d, eps=1e-6)),
                                    Block(dim, lambda d: nn.RMSNorm(d)))
        self.norm = nn.LayerNorm(dim)
        self.head_norm = self.norm                        # shared: one module at two places
        self.image_norm = nn.LayerNorm([4, 4])            # over two dimensions: not a token norm
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        return self.head(self.head_norm(self.blocks(x)).mean(1))


def _trained_looking(model, seed=0):
    """Norm weights and biases off their 1 and 0, as after training."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                for p in module.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * 0.2)
    return model


def test_every_token_norm_is_replaced_and_counted():
    model = Tiny()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = replace_norm(model, DYT)
    assert names == ["blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2", "norm"]
    assert any("image_norm" in str(w.message) for w in caught)            # left as it is, said so
    assert isinstance(model.image_norm, nn.LayerNorm)
    assert model.norm is model.head_norm and isinstance(model.norm, ChannelsLast)   # still shared
    assert sum(isinstance(m, (nn.LayerNorm, nn.RMSNorm)) for m in model.modules()) == 1
    assert model(torch.randn(2, 5, 16)).shape == (2, 3)


@pytest.mark.parametrize("layer", ["formula", "graph", "class", "factory"])
def test_the_norms_own_formulas_keep_a_trained_models_outputs(layer):
    """`layernorm` at a LayerNorm and `rmsnorm` at an RMSNorm take over its weight, bias and
    eps (1e-6 here, and RMSNorm's default, float32's machine epsilon)."""
    model = _trained_looking(Tiny())
    x = torch.randn(3, 7, 16)
    before = model(x)
    for kind, formula in ((nn.LayerNorm, LN), (nn.RMSNorm, RMS)):
        spec = {"formula": formula, "graph": parse(formula), "factory": lambda c, f=formula: compile_layer(f, c)}.get(layer)
        if spec is None:
            namespace = {}
            exec(export_layer(parse(formula), class_name="Exported"), namespace)
            spec = namespace["Exported"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert len(replace_norm(model, spec, kinds=(kind,))) == (3 if kind is nn.LayerNorm else 2)
    assert not any(type(m) in (nn.LayerNorm, nn.RMSNorm) for m in model.blocks.modules())
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)


def test_other_layers_start_fresh_and_channels_first_norms_are_not_wrapped():
    timm = import_timm()
    from timm.layers.norm import LayerNorm2d
    norm = LayerNorm2d(8)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), norm)
    x = torch.randn(2, 3, 5, 5)
    before = model(x)
    assert replace_norm(model, LN) == ["1"]
    assert not isinstance(model[1], ChannelsLast)          # it takes (N, C, H, W) as it is
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-6)
    ln = _trained_looking(nn.Sequential(nn.LayerNorm(8)))
    replace_norm(ln, DYT)
    assert torch.equal(ln[0].layer.gamma, torch.ones(8)) and ln[0].layer.scalar0.item() == 0.5
    assert timm.__version__


def test_replace_norm_act_still_replaces_batchnorm():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    swapped = replace_norm_act(model, REFERENCE_LAYERS["evonorm-s0"])
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in swapped.modules())


# -- timm's VisionTransformer ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def vit():
    timm = import_timm()
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=4,
                             num_classes=10).eval()


def _layernorms(model):
    return sum(isinstance(m, nn.LayerNorm) for m in model.modules())


def test_vit_with_layernorm_swapped_in_gives_the_same_outputs(vit):
    model = _trained_looking(copy.deepcopy(vit), seed=1)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(x)
    count = _layernorms(model)
    assert count == 25                                   # 12 blocks x 2 and the final norm
    names = replace_norm(model, LN)
    assert len(names) == count and _layernorms(model) == 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=1e-5)


def test_vit_with_dyt_trains_and_exports(vit):
    model = copy.deepcopy(vit)
    assert len(replace_norm(model, DYT)) == 25 and _layernorms(model) == 0
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(6):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    scalars = [p for n, p in model.named_parameters() if n.endswith("scalar0")]
    assert len(scalars) == 25 and any(p.item() != 0.5 for p in scalars)   # alpha learns
    model.eval()
    program = torch.export.export(model, (x[:2],))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x[:2]), model(x[:2]))
