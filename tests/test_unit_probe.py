"""benchmarks/unit_probe.py's training variants (docs/units.md):
the measurements behind the units' recipe come from them, so they must do what they say."""
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F

import evaluators.trainer as T
from primitives import compile_layer, parse

_SPEC = importlib.util.spec_from_file_location(
    "unit_probe", Path(__file__).resolve().parent.parent / "benchmarks" / "unit_probe.py")
probe = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(probe)


def _rational_net(channels=4):
    per_channel = "rational((x - batch_mean(x)) / batch_std(x)) * gamma + beta"
    return torch.nn.Sequential(torch.nn.Conv2d(2, channels, 1), compile_layer(parse(per_channel), channels))


def test_shared_units_keep_one_coefficient_set_per_position():
    torch.manual_seed(0)
    net = _rational_net()
    probe.share_unit_coefficients(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(8, 2, 3, 3)).pow(3).mean().backward()
        opt.step()
    units = {n: p for n, p in net.named_parameters() if "rational" in n}
    assert set(units) == {"1.rational0_num", "1.rational0_den"}
    for p in units.values():
        assert torch.equal(p, p[:, :1].expand_as(p))                     # every channel alike ...
    assert not torch.equal(units["1.rational0_num"][:, 0], torch.tensor([0.0, 1, 0, 0, 0, 0]))  # ... and trained
    gamma = dict(net.named_parameters())["1.gamma"]
    assert not torch.equal(gamma, gamma[:1].expand_as(gamma))            # other vectors stay per channel


def test_boundary_penalty_adds_the_outputs_excess_in_training_only(monkeypatch):
    monkeypatch.setattr(T, "F", T.F)                                     # restored after the test
    torch.manual_seed(0)
    net = _rational_net()
    probe.boundary_penalty(net, 0.5, 2.0)
    seen = []
    net[1].register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    x, y = torch.randn(8, 2, 3, 3) * 3, torch.randint(0, 4, (8,))
    logits = net(x).mean(dim=(2, 3))
    out, = seen
    assert (out.abs() > 0.5).any()
    expected = F.cross_entropy(logits, y) + 2.0 * (out.abs() - 0.5).relu().square().mean()
    assert torch.allclose(T.F.cross_entropy(logits, y), expected)
    assert torch.allclose(T.F.cross_entropy(logits, y), F.cross_entropy(logits, y))  # one penalty per forward
    net.eval()
    net(x)
    assert torch.allclose(T.F.cross_entropy(logits, y), F.cross_entropy(logits, y))  # eval adds nothing


def test_poly_bound_clamps_curvature_coefficients_after_every_step():
    torch.manual_seed(0)
    layer = compile_layer(parse("poly((x - batch_mean(x)) / batch_std(x), order=3) * gamma + beta"), 3)
    handle = probe.bound_poly_coefficients(layer, 0.01)
    try:
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad()
            x = torch.randn(8, 3, 4, 4)
            (layer(x) * torch.randn_like(x)).sum().backward()
            opt.step()
    finally:
        handle.remove()
    a = layer.poly0.detach()
    assert a[2:].abs().max() <= 0.01 and a[2:].abs().max() > 0      # clamped, not frozen
    assert (a[:2] - torch.tensor([[0.0], [1.0]])).abs().max() > 0.01  # e**0 and e**1 free


def test_relu_blend_hands_a_position_over_from_bn_relu_to_the_layer():
    torch.manual_seed(0)
    from primitives.library import REFERENCE_LAYERS
    square = compile_layer(parse("((x - batch_mean(x)) / batch_std(x)) ** 2"), 3)
    relu = compile_layer(parse(REFERENCE_LAYERS["bn-relu"]), 3)
    blend = probe.ReluBlend(square, relu)
    x = torch.randn(8, 3, 4, 4)
    assert torch.allclose(blend(x), relu(x))                             # starts as BN-ReLU
    handle = probe.relu_blend(blend, 4)
    try:
        opt = torch.optim.SGD(blend.parameters(), lr=0.0)
        lams = []
        for _ in range(6):
            opt.step()
            lams.append(blend.lam)
    finally:
        handle.remove()
    assert lams == [0.75, 0.5, 0.25, 0.0, 0.0, 0.0]                      # linear, then held at 0
    assert torch.allclose(blend(x), square(x))                           # only the layer is left
