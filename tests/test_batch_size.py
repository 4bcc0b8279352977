"""--batch-size: the learning rate scales linearly from 0.1 at 128 unless given, and the step
count follows the batch so that a candidate costs about what a default one does."""
from __future__ import annotations

import pytest

from evaluators.evaluate import EvalConfig, recommended_steps, scaled_lr
from search.config import build_config


def _resnet(config):
    """What a CNN proxy trains with under `config` (unset batch size and lr: its recipe)."""
    return config.train_config(arch="resnet")


def test_lr_scales_linearly_with_the_batch_unless_given():
    assert EvalConfig().lr is None and EvalConfig().batch_size is None   # each proxy's recipe
    assert _resnet(EvalConfig()).lr == 0.1 and _resnet(EvalConfig()).batch_size == 128
    assert _resnet(EvalConfig(batch_size=8)).lr == pytest.approx(0.00625) == scaled_lr(8)
    assert _resnet(EvalConfig(batch_size=8)).lr == scaled_lr(8)           # bit for bit
    assert _resnet(EvalConfig(batch_size=8, lr=0.05)).lr == 0.05
    with pytest.raises(ValueError):
        EvalConfig(batch_size=0)


def test_recommended_steps_cost_what_the_default_does():
    assert recommended_steps(128) == 300
    steps = [recommended_steps(b) for b in (8, 16, 32, 64, 128, 256)]
    assert steps == sorted(steps, reverse=True) and steps[0] == 2300
    for b in (8, 16, 32):   # the cost model: a step is worth (B + 10) images
        assert recommended_steps(b) * (b + 10) == pytest.approx(300 * 138, rel=0.01)


def test_search_config_derives_steps_quality_and_lr_from_the_batch():
    d = build_config(overrides={"batch_size": 8}).eval_config_dict()
    config = EvalConfig.from_dict(d)
    assert (config.batch_size, config.steps, config.quality_steps) == (8, 2300, 460)
    assert _resnet(config).lr == pytest.approx(0.00625)
    given = EvalConfig.from_dict(build_config(overrides={"batch_size": 8, "steps": 100, "lr": 0.02})
                                 .eval_config_dict())
    assert (given.steps, given.lr) == (100, 0.02)
    default = EvalConfig.from_dict(build_config().eval_config_dict())
    assert (default.steps, _resnet(default).batch_size, _resnet(default).lr) == (300, 128, 0.1)


def test_eval_command_trains_at_the_batch_size(capsys):
    from search.cli import main
    assert main(["eval", "x * gamma + beta", "--dataset", "synthetic", "--batch-size", "8", "--steps", "3",
                 "--arch", "resnet", "--no-baselines"]) == 0
    out = capsys.readouterr().out
    assert "3 steps of batch 8" in out and "lr 0.00625" in out
    assert main(["eval", "x", "--batch-size", "0"]) == 2
