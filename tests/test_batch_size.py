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
    config = build_config(overrides={"batch_size": 8}).eval_config()
    assert (config.batch_size, config.steps, config.quality_steps) == (8, 2300, 460)
    assert _resnet(config).lr == pytest.approx(0.00625)
    given = build_config(overrides={"batch_size": 8, "steps": 100, "lr": 0.02}).eval_config()
    assert (given.steps, given.lr, given.quality_steps) == (100, 0.02, 60)   # protocol 5 as searches always judged
    default = build_config().eval_config()
    assert (default.steps, _resnet(default).batch_size, _resnet(default).lr) == (300, 128, 0.1)


def test_eval_command_trains_at_the_batch_size(capsys):
    from search.cli import main
    assert main(["eval", "x * gamma + beta", "--dataset", "synthetic", "--batch-size", "8", "--steps", "3",
                 "--arch", "resnet", "--no-baselines"]) == 0
    out = capsys.readouterr().out
    assert "3 steps of batch 8" in out and "lr 0.00625" in out
    assert main(["eval", "x", "--batch-size", "0"]) == 2


def test_training_budget_is_the_one_rule():
    from evaluators.evaluate import TRAINER_BUDGET, Budget, training_budget

    assert training_budget() == TRAINER_BUDGET == Budget(300, 128, 0.1)
    assert training_budget(8) == Budget(recommended_steps(8), 8, scaled_lr(8))
    assert training_budget(8, 100, 0.02) == Budget(100, 8, 0.02)          # given values are kept
    assert training_budget(scale=2).steps == 600 and training_budget(8, 50, scale=2).steps == 50
    # another default (a run's settings, later a proxy's recipe): its steps at its batch, its lr scaled
    ran = Budget(10, 32, 0.05)
    assert training_budget(default=ran) == ran
    assert training_budget(64, default=ran).lr == pytest.approx(0.1)
    assert training_budget(32, scale=2, default=ran).steps == 20
    # EvalConfig and the search's settings follow it
    assert EvalConfig(batch_size=16).steps == recommended_steps(16)
    assert build_config(overrides={"batch_size": 16}).full_steps() == recommended_steps(16)
    assert build_config(overrides={"batch_size": 16}).eval_config() == EvalConfig(
        batch_size=16, dataset="fashion-mnist", seed=0)


def _helps(command: str) -> dict:
    import argparse

    from search.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.dest: a for a in sub._actions}


def test_one_description_makes_the_training_flags_of_search_eval_and_retrain():
    from search.config import TRAINING

    search, eval_, retrain, resume = (_helps(c) for c in ("search", "eval", "retrain", "resume"))
    for name in ("steps", "batch_size", "lr"):
        assert search[name].help == eval_[name].help == TRAINING[name].help()
        assert search[name].type is eval_[name].type is TRAINING[name].kind
        assert search[name].option_strings == eval_[name].option_strings
    for name in ("steps", "batch_size"):     # retrain's defaults are the run's; the rest is the same text
        assert retrain[name].help.startswith(TRAINING[name].what + " (default: ")
        assert retrain[name].type is TRAINING[name].kind
    assert "lr" not in retrain and not {"steps", "batch_size", "lr"} & set(resume)
    assert eval_["device"].help == retrain["device"].help == TRAINING["device"].help()
    assert eval_["device"].default == retrain["device"].default == "auto"


@pytest.mark.parametrize("argv,message", [
    (["search", "--steps", "0"], "steps must be at least 1, got 0"),
    (["eval", "x", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["retrain", "{run}", "--steps", "0"], "--steps must be at least 1, got 0"),
    (["search", "--batch-size", "0"], "batch_size must be at least 1, got 0"),
    (["eval", "x", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["retrain", "{run}", "--batch-size", "-2"], "--batch-size must be at least 1, got -2"),
    (["search", "--lr", "0"], "lr must be positive, got 0.0"),
    (["eval", "x", "--lr", "-1"], "--lr must be positive, got -1.0"),
])
def test_the_training_flags_are_checked_alike(argv, message, tmp_path, capsys):
    from search.cli import main
    from search.store.writer import RunStore

    RunStore.create(tmp_path / "run", {"archs": ["resnet"]}).close()
    assert main([a.format(run=tmp_path / "run") for a in argv]) == 2
    assert capsys.readouterr().err == f"evonorm: error: {message}\n"
    assert not (tmp_path / "run" / "retrain.parquet.journal").exists()
