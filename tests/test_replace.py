"""replace_norm_act: a user's model gets the discovered layer at every BN(+activation)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from primitives import compile_layer, export_layer, parse
from primitives.library import REFERENCE_LAYERS
from primitives.replace import replace_norm_act

S0 = REFERENCE_LAYERS["evonorm-s0"]


class Block(nn.Module):
    """A torchvision-style basic block: functional ReLU, shared activation module."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)) \
            if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.short(x))


class ResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layers = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 32, 1))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.layers(self.stem(x))
        return self.head(x.mean((2, 3)))


def count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


def train_steps(model, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 1, 12, 12, generator=gen), torch.randint(0, 10, (16,), generator=gen)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("layer", [S0, parse(S0), "class", "factory"])
def test_every_batchnorm_is_replaced_and_the_model_trains(layer, tmp_path):
    if layer == "class":
        namespace = {}
        exec(export_layer(parse(S0), class_name="EvoS0"), namespace)
        layer = namespace["EvoS0"]
    elif layer == "factory":
        layer = lambda channels: compile_layer(S0, channels)  # noqa: E731
    torch.manual_seed(0)
    model = ResNet()
    assert count(model, nn.BatchNorm2d) == 8
    swapped = replace_norm_act(model, layer)
    assert count(swapped, nn.BatchNorm2d) == 0
    new_layers = [m for m in swapped.modules() if getattr(m, "formula", None) == str(parse(S0))]
    assert len(new_layers) == 8
    losses = train_steps(swapped, steps=5)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]


def activation_calls(graph_module):
    modules = dict(graph_module.named_modules())
    return sum((n.op == "call_module" and isinstance(modules[n.target], nn.ReLU))
               or (n.op == "call_function" and n.target is F.relu) for n in graph_module.graph.nodes)


def test_activation_after_bn_is_removed_but_others_stay():
    from torch import fx
    assert activation_calls(fx.symbolic_trace(ResNet())) == 7  # stem + (F.relu + self.relu) * 3
    swapped = replace_norm_act(ResNet(), S0)
    assert activation_calls(swapped) == 3  # the ReLUs after each residual addition remain
    assert not any(isinstance(m, nn.ReLU) for name, m in swapped.named_modules() if name.startswith("stem"))


class PairsOnly(nn.Module):
    """Every BN is followed by an activation: a module one, a functional one, a method."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(self.body(x))))
        return self.bn2(self.conv2(x)).relu().mean((1, 2, 3))


def test_bn_relu_formula_reproduces_the_original_model():
    """Swapping BN+ReLU pairs for the BN-ReLU formula changes nothing, in train and eval mode."""
    torch.manual_seed(0)
    model = PairsOnly()
    swapped = replace_norm_act(model, REFERENCE_LAYERS["bn-relu"])
    assert count(swapped, nn.BatchNorm2d) == 0 and count(swapped, nn.ReLU) == 0
    x = torch.randn(4, 1, 6, 6)
    for training in (True, True, False):
        model.train(training)
        swapped.train(training)
        torch.testing.assert_close(swapped(x), model(x), rtol=1e-5, atol=1e-5)


class Untraceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU())
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        x = self.body(x)
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace this
            x = x * 2
        return self.bn(x).mean((1, 2, 3))


def test_untraceable_models_fall_back_to_module_structure():
    model = Untraceable()
    with pytest.warns(UserWarning, match="could not trace"):
        swapped = replace_norm_act(model, S0)
    assert swapped is model
    assert count(swapped, nn.BatchNorm2d) == 0
    assert isinstance(swapped.body[2], nn.Identity)
    swapped(torch.randn(2, 1, 6, 6)).sum().backward()


def test_an_instance_is_refused():
    with pytest.raises(TypeError, match="class or a factory"):
        replace_norm_act(ResNet(), compile_layer(S0, 16))
