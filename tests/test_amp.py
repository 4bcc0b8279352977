"""Mixed precision: every generated layer runs under bfloat16 autocast (train and eval,
eager and compiled), keeps its statistics in float32 and answers in the input's dtype."""
import math
import random

import pytest
import torch
from torch import nn

from evaluators import trainer
from evaluators.datasets import load_dataset
from evaluators.proxies import build_proxy
from evaluators.trainer import TrainConfig, train_and_score
from helpers import default_training
from primitives import compile_layer, export_layer, parse
from primitives.codegen import layer_class
from primitives.library import REFERENCE_LAYERS, TRANSFORMER_LAYERS
from primitives.random_graph import random_graph

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


# -- the trainer's GPU branches, run on CPU ------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", seed=0)


class Spy(nn.Module):
    """A generated EvoNorm-B0 that notes the dtype it sees, per mode, and can turn to NaN
    after `nan_after` training calls."""

    def __init__(self, c, seen, nan_after=None):
        super().__init__()
        self.layer = compile_layer(parse(REFERENCE_LAYERS["evonorm-b0"]), c)
        self.seen, self.nan_after, self.calls = seen, nan_after, 0

    def forward(self, x):
        self.seen.add((self.training, x.dtype))
        self.calls += self.training
        y = self.layer(x)
        return y * float("nan") if self.nan_after is not None and self.calls > self.nan_after else y


def _tiny(dataset, factory):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(dataset.in_channels, 8, 3, padding=1), factory(8), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, dataset.num_classes))


TINY = dict(steps=12, batch_size=32, lr=0.05, threads=1, compile=False)


def test_amp_setting_picks_the_autocast_dtype(monkeypatch):
    assert TrainConfig().amp_dtype("cpu") is None and TrainConfig(amp=True).amp_dtype("cpu") is None
    assert TrainConfig(amp="bf16").amp_dtype("cpu") == torch.bfloat16
    assert TrainConfig(amp="fp16").amp_dtype("cpu") == torch.float16
    assert TrainConfig(amp=False).amp_dtype("cuda") is None and TrainConfig(amp="off").amp_dtype("cuda") is None
    for supported, dtype in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: supported)
        assert TrainConfig().amp_dtype("cuda") == dtype
    assert TrainConfig().check_interval("cuda") == trainer.CUDA_CHECK_EVERY > 1
    assert TrainConfig().check_interval("cpu") == 1 and TrainConfig(check_every=7).check_interval("cpu") == 7
    for bad in (dict(amp="int8"), dict(check_every=0), dict(check_every=True), dict(check_every="often")):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)


@pytest.mark.parametrize("amp, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("off", torch.float32)])
def test_training_runs_under_the_asked_precision_on_cpu(synthetic, amp, dtype, monkeypatch):
    seen, scaled = set(), []
    real_step = torch.amp.GradScaler.step
    monkeypatch.setattr(torch.amp.GradScaler, "step", lambda self, *a, **k: scaled.append(1) or real_step(self, *a, **k))
    result = train_and_score(_tiny(synthetic, lambda c: Spy(c, seen)), synthetic, TrainConfig(**TINY, amp=amp), "cpu")
    assert result.ok, result.reason
    assert seen == {(True, dtype), (False, dtype)}          # training and evaluation both autocast
    assert len(scaled) == (TINY["steps"] if amp == "fp16" else 0)  # the loss scaler only for float16


@pytest.mark.parametrize("check_every", [1, 5, 100])
def test_periodic_non_finite_check_reports_the_first_bad_step(synthetic, check_every):
    made, seen = [], set()

    def factory(c):
        made.append(Spy(c, seen, nan_after=7))
        return made[-1]
    config = TrainConfig(**{**TINY, "steps": 30}, amp="bf16", check_every=check_every)
    result = train_and_score(_tiny(synthetic, factory), synthetic, config, "cpu")
    assert result.reason == "non-finite loss at step 7"
    assert result.steps_done == 8 and len(result.losses) == 8 and not math.isfinite(result.losses[-1])
    # the run only notices at its next check: step 10 every 5, the end of the run every 100
    assert made[0].calls == {1: 8, 5: 10, 100: 30}[check_every]


def test_nan_in_the_last_steps_is_caught_when_the_run_ends_between_checks(synthetic):
    made = []
    config = TrainConfig(**{**TINY, "steps": 13}, check_every=5)
    result = train_and_score(_tiny(synthetic, lambda c: made.append(Spy(c, set(), nan_after=11)) or made[-1]),
                             synthetic, config, "cpu")
    assert result.reason == "non-finite loss at step 11" and result.steps_done == 12


def test_compiled_training_under_autocast(synthetic, monkeypatch):
    """The trainer's compile branch under bf16 (the CUDA default); aot_eager keeps the fast
    suite fast, the slow test below runs inductor."""
    monkeypatch.setattr(trainer, "_compile", lambda m: torch.compile(m, dynamic=False, backend="aot_eager"))
    seen = set()
    config = TrainConfig(**{**TINY, "compile": True}, amp="bf16", check_every=4)
    result = train_and_score(_tiny(synthetic, lambda c: Spy(c, seen)), synthetic, config, "cpu")
    assert result.ok and result.compiled and result.note is None, (result.reason, result.note)
    assert (True, torch.bfloat16) in seen and len(result.losses) == TINY["steps"]


@pytest.mark.slow
def test_inductor_compiled_bf16_training_matches_eager(synthetic):
    seen = set()
    runs = [train_and_score(_tiny(synthetic, lambda c: Spy(c, seen)), synthetic,
                            TrainConfig(**{**TINY, "compile": compiled}, amp="bf16"), "cpu")
            for compiled in (True, False)]
    assert runs[0].compiled and runs[0].note is None and runs[1].ok
    assert runs[0].losses[0] == pytest.approx(runs[1].losses[0], rel=1e-2)


# -- slow: every reference layer, bf16 against float32, default budget, Fashion-MNIST -------------

# bn-square trains in neither precision (float32 17.7%, bf16 14.4% on resnet, one thread): two
# trainings near chance differ by noise, which says nothing about mixed precision
# (tests/test_trainer.py holds its failure to train)
_NOT_TRAINING = ("bn-square",)
# the Transformer-position layers (primitives.library.TRANSFORMER_LAYERS) are not trained on the
# resnet proxy here: without an activation there they leave it nearly linear (the identity makes
# it linear), which says nothing about mixed precision; the fast tests above hold them bit for bit
_NOT_TRAINING += TRANSFORMER_LAYERS


@pytest.mark.slow
@pytest.mark.xdist_group("resnet")   # beside the 80% test's float32 trainings (helpers.py)
@pytest.mark.parametrize("name", [n for n in sorted(REFERENCE_LAYERS) if n not in _NOT_TRAINING])
def test_bf16_training_is_within_1_5_points_of_float32(name):
    results = {amp: default_training("resnet", name, amp) for amp in ("off", "bf16")}
    for amp, result in results.items():
        assert result.ok, (amp, result.reason)
    loss = results["off"].accuracy - results["bf16"].accuracy
    print(f"{name}: float32 {results['off'].accuracy:.4f} bf16 {results['bf16'].accuracy:.4f}")
    # one-sided: mixed precision must not cost accuracy; one seed's trajectory may also land
    # higher (EvoNorm-S0 on resnet: float32 82.4%, bf16 86.2%, seed noise at this budget)
    assert loss <= 0.015, (name, results["off"].accuracy, results["bf16"].accuracy)
