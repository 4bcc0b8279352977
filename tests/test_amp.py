"""Mixed precision: every generated layer runs under bfloat16 autocast (train and eval,
eager and compiled), keeps its statistics in float32 and answers in the input's dtype."""
import random

import pytest
import torch

from primitives import compile_layer, export_layer, parse
from primitives.library import REFERENCE_LAYERS
from primitives.random_graph import random_graph
from evaluators.proxies import build_proxy
from primitives.codegen import layer_class

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def _perturbed(formula, channels=8, seed=0):
    layer = compile_layer(parse(formula), channels)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.rand_like(p) * 0.3)
    return layer


def _input(channels=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(16, channels, 6, 6, generator=g) * 3 + 2).bfloat16()


@pytest.mark.parametrize("name", sorted(REFERENCE_LAYERS))
def test_reference_layer_under_bf16_autocast_trains_and_evaluates(name):
    layer = _perturbed(REFERENCE_LAYERS[name])
    x = _input().requires_grad_()
    for training in (True, False):
        layer.train(training)
        with torch.autocast(**BF16):
            out = layer(x)
        assert out.dtype == torch.bfloat16 and out.shape == x.shape
        assert torch.isfinite(out.float()).all()
        if training:
            out.float().sum().backward()
            assert x.grad is not None and torch.isfinite(x.grad.float()).all()
    for key, value in layer.state_dict().items():
        assert value.dtype == torch.float32, key  # parameters and running estimates stay float32


@pytest.mark.parametrize("name", sorted(REFERENCE_LAYERS))
def test_bf16_output_is_the_float32_output_rounded(name):
    """The layer computes in float32 under autocast (statistics above all) and rounds only
    its answer: bit for bit the float32 layer's output on the same input, in bfloat16."""
    x = _input()
    a, b = _perturbed(REFERENCE_LAYERS[name]), _perturbed(REFERENCE_LAYERS[name])
    for training in (True, False):
        a.train(training), b.train(training)
        with torch.autocast(**BF16):
            low = a(x)
        full = b(x.float())
        assert torch.equal(low, full.to(torch.bfloat16))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


def test_float32_and_float64_stay_in_their_dtype():
    layer = _perturbed(REFERENCE_LAYERS["evonorm-b0"])
    x = torch.randn(4, 8, 5, 5)
    assert layer(x).dtype == torch.float32
    assert layer.double()(x.double()).dtype == torch.float64


def test_random_graphs_under_bf16_autocast_raise_no_dtype_errors():
    rng = random.Random(11)
    x = _input()
    for _ in range(150):
        graph = random_graph(rng, max_ops=10)
        layer = compile_layer(graph, 8)
        for training in (True, False):
            layer.train(training)
            with torch.autocast(**BF16):
                out = layer(x)  # a bad layer may give NaN (that is data), never an exception
            assert out.dtype == torch.bfloat16, str(graph)
        assert all(b.dtype == torch.float32 for b in layer.buffers()), str(graph)


def test_the_issue_reproduction_runs_on_every_proxy():
    for arch in ("resnet", "mobilenetv2", "efficientnet"):
        torch.manual_seed(0)
        model = build_proxy(arch, layer_class(parse(REFERENCE_LAYERS["evonorm-b0"])),
                            in_channels=1, num_classes=10, image_size=28)
        with torch.autocast(**BF16):
            out = model(torch.randn(32, 1, 28, 28))
        out.float().sum().backward()
        model.eval()
        with torch.autocast(**BF16):
            assert torch.isfinite(model(torch.randn(32, 1, 28, 28)).float()).all()


def _load(source, class_name="L"):
    namespace = {}
    exec(compile(source, "<test-amp>", "exec"), namespace)
    return namespace[class_name]


@pytest.mark.parametrize("name", ["evonorm-b0", "bn-relu", "evonorm-s0"])
def test_exported_layer_compiles_fullgraph_under_autocast(name):
    cls = _load(export_layer(parse(REFERENCE_LAYERS[name]), class_name="L"))
    torch.manual_seed(0)
    eager, source = cls(8), cls(8)
    source.load_state_dict(eager.state_dict())
    compiled = torch.compile(source, fullgraph=True, backend="aot_eager")
    x = _input()
    for training in (True, True, False):
        eager.train(training), compiled.train(training)
        with torch.autocast(**BF16):
            got, want = compiled(x), eager(x)
        assert got.dtype == want.dtype == torch.bfloat16
        torch.testing.assert_close(got, want)
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(source.state_dict()[key], value)


def test_exported_layer_exports_with_bf16_input():
    cls = _load(export_layer(parse(REFERENCE_LAYERS["evonorm-b0"]), class_name="L"))
    layer = cls(8).eval()
    x = _input()
    program = torch.export.export(layer, (x,))
    out = program.module()(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, layer(x))
