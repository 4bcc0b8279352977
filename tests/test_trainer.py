"""The fixed-step trainer: learning, determinism, failures as reasons, not exceptions."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from evaluators.datasets import load_dataset
from evaluators.proxies import SEARCH_PROXIES, ProxyError
from evaluators.trainer import TrainConfig, TrainResult, build_and_train, should_compile, train_and_score
from helpers import bn_relu, default_training, reference_factories

FAST = dict(steps=60, batch_size=64, lr=0.05, compile=False, threads=1)


@pytest.fixture(scope="module")
def synthetic():
    return load_dataset("synthetic", seed=0)


def test_synthetic_is_learnable(synthetic):
    before = torch.get_num_threads()
    result = build_and_train("resnet", bn_relu, synthetic, TrainConfig(**FAST), "cpu", width=8)
    assert torch.get_num_threads() == before
    assert result.reason is None and result.ok
    assert result.accuracy > 0.6              # chance is 0.1
    assert result.steps_done == 60 and len(result.losses) == 60
    assert result.losses[-1] < result.losses[0]
    assert result.seconds > 0 and result.images_per_second > 0 and result.compile_seconds == 0
    test = build_and_train("resnet", bn_relu, synthetic, TrainConfig(**FAST), "cpu", split="test", width=8)
    assert test.accuracy > 0.6


def test_same_seed_same_accuracy(synthetic):
    config = TrainConfig(**{**FAST, "steps": 30})
    runs = [build_and_train("mobilenetv2", bn_relu, synthetic, config, "cpu", width=8) for _ in range(2)]
    assert runs[0].accuracy is not None
    assert runs[0].accuracy == runs[1].accuracy
    assert runs[0].losses == runs[1].losses
    other = build_and_train("mobilenetv2", bn_relu, synthetic, TrainConfig(**{**FAST, "steps": 30, "seed": 1}),
                            "cpu", width=8)
    assert other.losses != runs[0].losses


def test_same_seed_same_accuracy_generated_layer(synthetic):
    import primitives
    from primitives.library import REFERENCE_LAYERS
    graph = primitives.parse(REFERENCE_LAYERS["evonorm-s0"])
    config = TrainConfig(**{**FAST, "steps": 12})
    runs = [build_and_train("efficientnet", lambda c: primitives.compile_layer(graph, c), synthetic, config,
                            "cpu", width=8) for _ in range(2)]
    assert runs[0].reason is None
    assert runs[0].accuracy == runs[1].accuracy and runs[0].losses == runs[1].losses


class NaNAfter(nn.Module):
    """BN-ReLU until its `limit`-th training forward, then NaN."""

    def __init__(self, c, limit):
        super().__init__()
        self.bn, self.calls, self.limit = nn.BatchNorm2d(c), 0, limit

    def forward(self, x):
        if self.training:
            self.calls += 1
        y = torch.relu(self.bn(x))
        return y * float("nan") if self.calls > self.limit else y


def test_non_finite_loss_stops_with_reason(synthetic):
    made = []

    def factory(c):
        made.append(NaNAfter(c, limit=7))
        return made[-1]
    seen = []
    result = build_and_train("resnet", factory, synthetic, TrainConfig(**FAST), "cpu", width=8,
                             progress=lambda s, n: seen.append((s, n)))
    assert result.accuracy is None
    assert result.reason == "non-finite loss at step 7"
    assert result.steps_done == 8 and made[0].calls == 8      # stopped right there
    assert seen[-1] == (7, 60) and not math.isfinite(result.losses[-1])
    assert result.final_loss is not None and math.isfinite(result.final_loss)


def test_exploding_layer_gives_reason(synthetic):
    class Explode(nn.Module):
        def forward(self, x):
            return torch.exp(x * 50)
    result = build_and_train("resnet", lambda c: Explode(), synthetic, TrainConfig(**FAST), "cpu", width=8)
    assert result.accuracy is None and result.reason.startswith("non-finite loss at step")


def test_exceptions_become_reasons(synthetic):
    class Raises(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom in the layer")

    class WrongShape(nn.Module):
        def forward(self, x):
            return x.mean(dim=1, keepdim=True)

    def bad_factory(c):
        raise ValueError(f"cannot build {c}")

    for factory, expect in ((lambda c: Raises(), "RuntimeError: boom in the layer"),
                            (lambda c: WrongShape(), "RuntimeError"),
                            (bad_factory, "building resnet failed: ValueError: cannot build")):
        result = build_and_train("resnet", factory, synthetic, TrainConfig(**FAST), "cpu", width=8)
        assert isinstance(result, TrainResult)
        assert result.accuracy is None and expect in result.reason, result.reason
        assert "\n" not in result.reason
    with pytest.raises(ProxyError):
        build_and_train("alexnet", bn_relu, synthetic, TrainConfig(**FAST), "cpu")


def test_non_finite_eval_output_is_a_reason(synthetic):
    class EvalNaN(nn.Module):
        def forward(self, x):
            return x if self.training else x * float("nan")
    result = build_and_train("resnet", lambda c: EvalNaN(), synthetic, TrainConfig(**{**FAST, "steps": 3}), "cpu", width=8)
    assert result.accuracy is None and "non-finite output in evaluation" in result.reason


class _NaNRows(nn.Module):
    """Eval-mode logits that are NaN on the first `rows` rows of every batch: a polynomial
    chain's rare escaping inputs."""

    def __init__(self, rows):
        super().__init__()
        self.rows, self.head = rows, nn.Linear(1, 10)

    def forward(self, x):
        out = self.head(x.mean((1, 2, 3)).unsqueeze(1))
        if not self.training:
            out = out.clone()
            out[:self.rows] = float("nan")
        return out


def test_a_few_non_finite_eval_rows_count_wrong_and_many_fail(synthetic):
    from evaluators.trainer import NONFINITE_ROWS_TOLERATED, evaluate_accuracy
    n = len(synthetic.split("val")[1])
    batch = 100
    per_batch = int(NONFINITE_ROWS_TOLERATED * batch)                  # exactly the tolerated share
    model = _NaNRows(per_batch)
    accuracy, reason, bad = evaluate_accuracy(model, synthetic, "val", batch)
    assert reason is None and bad == per_batch * math.ceil(n / batch)
    model.eval()
    with torch.no_grad():
        predictions = torch.cat([model(x).argmax(1) for x, _ in synthetic.eval_batches("val", batch)])
    correct = sum(int(p == y) for i, (p, y) in enumerate(zip(predictions, synthetic.split("val")[1]))
                  if i % batch >= per_batch)                          # NaN rows never count as right
    assert accuracy == correct / n
    accuracy, reason, bad = evaluate_accuracy(_NaNRows(per_batch + 1), synthetic, "val", batch)
    assert accuracy is None and "non-finite output in evaluation on val" in reason


def test_training_notes_the_non_finite_rows_it_counted_wrong(synthetic):
    result = train_and_score(_NaNRows(1), synthetic, TrainConfig(**{**FAST, "steps": 2, "eval_batch_size": 1000}))
    n = len(synthetic.split("val")[1])
    assert result.ok and result.accuracy is not None
    assert result.note == f"{math.ceil(n / 1000)} val rows non-finite, counted wrong"


def test_config_validation_and_schedule():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="compile"):
        TrainConfig(compile="sometimes")
    with pytest.raises(ValueError, match="augment"):
        TrainConfig(augment="sometimes")
    with pytest.raises(ValueError, match="grad_clip"):
        TrainConfig(grad_clip=0)
    c = TrainConfig(steps=100, lr=0.2, warmup_fraction=0.1)
    assert c.lr_at(0) == pytest.approx(0.02) and c.lr_at(9) == pytest.approx(0.2)
    assert c.lr_at(10) == pytest.approx(0.2) and c.lr_at(99) < 0.001
    assert all(c.lr_at(i) >= c.lr_at(i + 1) for i in range(10, 99))


@pytest.mark.parametrize("clip", [None, 1.0, 1e-3])
def test_gradient_norm_clipping_bounds_the_update(clip):
    # plain SGD: the update is lr times the (clipped) gradient, so its norm shows the clipping
    from evaluators.trainer import _step_function
    torch.manual_seed(0)
    net = nn.Linear(20, 10)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    before = torch.cat([p.detach().flatten().clone() for p in net.parameters()])
    x, y = 100 * torch.randn(64, 20), torch.randint(0, 10, (64,))
    _step_function(opt, None, None, TrainConfig(grad_clip=clip), torch.device("cpu"))(net, x, y)
    moved = float((torch.cat([p.detach().flatten() for p in net.parameters()]) - before).norm())
    if clip is None:
        assert moved > 10                   # unclipped: the large input makes a large gradient
    else:
        assert clip * 0.99 < moved <= clip * 1.01


def test_compile_auto_rule():
    from evaluators.proxies import build_proxy

    class Custom(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)
    plain = build_proxy("resnet", bn_relu, 1, 10, 28)
    custom = build_proxy("resnet", lambda c: Custom(), 1, 10, 28)
    default = TrainConfig()
    assert not should_compile(plain, default, "cpu") and not should_compile(plain, default, "cuda")
    assert should_compile(custom, default, "cuda")
    assert should_compile(custom, TrainConfig(compile=True, steps=5), "cpu")
    assert not should_compile(custom, TrainConfig(compile=False), "cuda")
    assert not should_compile(custom, TrainConfig(steps=10), "cpu")       # too short to pay back
    assert not should_compile(custom, default, "cpu")                     # default budget: eager on CPU
    assert should_compile(custom, TrainConfig(steps=2000), "cpu")


def test_train_and_score_directly(synthetic):
    from evaluators.proxies import build_proxy
    torch.manual_seed(0)
    model = build_proxy("efficientnet", bn_relu, 1, 10, 16, width=8)
    result = train_and_score(model, synthetic, TrainConfig(**{**FAST, "steps": 10}), "cpu")
    assert result.ok and 0 <= result.accuracy <= 1 and result.steps_done == 10


# -- slow: the default budget on real Fashion-MNIST ----------------------------------------------

# Known shortfalls of the 80% goal (docs/units.md), one seed and
# one thread each, strict: the square baseline fails on every proxy (measured: resnet 17.7%,
# the mobile proxies at chance or more than 1% of rows non-finite), and a pass would mean the
# baseline changed.
POLY_UNIT = "poly((x - batch_mean(x)) / batch_std(x), norm=1) * gamma + beta"
_SHORTFALLS = {
    # the square baseline: a reference point for polynomial mode, not held to the goal
    # (docs/units.md, "The square baseline": escaping activations; a boundary penalty reached 79.7% on
    # resnet only)
    ("resnet", "bn-square"): "15%: the square does not learn at lr 0.1 or 0.01, clipped or not",
    ("mobilenetv2", "bn-square"): "chance, or more than 1% of rows non-finite in evaluation",
    ("efficientnet", "bn-square"): "chance, or more than 1% of rows non-finite in evaluation",
}


def _cases(layers):
    def marks(arch, layer):
        group = pytest.mark.xdist_group(arch)   # one process trains each proxy's layers (helpers.py)
        if (arch, layer) not in _SHORTFALLS:
            return [group]
        return [group, pytest.mark.xfail(strict=True, reason=_SHORTFALLS[arch, layer])]
    return [pytest.param(arch, layer, marks=marks(arch, layer)) for layer in layers for arch in SEARCH_PROXIES]


@pytest.mark.slow
@pytest.mark.parametrize("arch,layer", _cases(reference_factories("cnn")))
def test_default_budget_reaches_80_percent_on_fashion_mnist(arch, layer):
    # every CNN reference layer on every CNN search proxy: 45 trainings of 15-40 s each, one thread
    # (measured accuracies: docs/units.md)
    result = default_training(arch, layer)
    assert result.reason is None, result.reason
    assert result.steps_done == TrainConfig().steps
    assert result.accuracy >= 0.80, (arch, layer, result)


@pytest.mark.slow
@pytest.mark.parametrize("arch,layer", _cases(["bn-poly", "bn-rational", POLY_UNIT]))
def test_units_train_within_two_points_of_bn_relu(arch, layer):
    # POLY_UNIT: the `poly` unit itself, in its normalised basis, as a user or a mutation writes it
    unit, reference = default_training(arch, layer), default_training(arch, "bn-relu")
    assert unit.ok and reference.ok, (unit.reason, reference.reason)
    assert unit.accuracy >= reference.accuracy - 0.02, (arch, layer, unit.accuracy, reference.accuracy)


@pytest.mark.slow
def test_compiled_training_is_deterministic_and_close_to_eager():
    import primitives
    from primitives.library import REFERENCE_LAYERS
    ds = load_dataset("synthetic", seed=0)
    graph = primitives.parse(REFERENCE_LAYERS["evonorm-b0"])

    def factory(c):
        return primitives.compile_layer(graph, c)
    cfg = dict(steps=30, batch_size=64, lr=0.05, threads=1)
    compiled = [build_and_train("resnet", factory, ds, TrainConfig(**cfg, compile=True), "cpu", width=8)
                for _ in range(2)]
    eager = build_and_train("resnet", factory, ds, TrainConfig(**cfg, compile=False), "cpu", width=8)
    assert compiled[0].compiled and compiled[0].note is None
    assert compiled[0].accuracy == compiled[1].accuracy
    assert abs(compiled[0].accuracy - eager.accuracy) < 0.1
    assert compiled[0].losses[0] == pytest.approx(eager.losses[0], rel=1e-4)
