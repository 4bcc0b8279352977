"""The trainer's version guards its numbers: a tiny training's losses are held here per
TRAINER_VERSION, so a change to what the trainer computes fails until the version is bumped
(and a result made by one trainer is never taken for another's)."""
import pytest
import torch

from evaluators.datasets import load_dataset
from evaluators.trainer import TRAINER_VERSION, TrainConfig, build_and_train, proxy_config, trainer_fingerprint
from helpers import formula_factory

# version -> {proxy: final training loss} of _training(proxy); add a line when bumping
GOLDEN = {
    1: {"resnet": 2.195408511161804, "vit": 2.280998420715332},
}


def _training(arch):
    data = load_dataset("synthetic", seed=0)
    base = proxy_config(arch, steps=30, batch_size=16, seed=3)
    config = TrainConfig(**{**base.__dict__, "compile": False, "threads": 1, "amp": False})
    layer = formula_factory("(x - channel_mean(x)) / channel_std(x) * gamma + beta")
    return build_and_train(arch, layer, data, config, "cpu", width=16)


@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_the_trainer_version_changes_when_its_numbers_do(arch):
    result = _training(arch)
    assert result.reason is None and result.steps_done == 30
    golden = GOLDEN.get(TRAINER_VERSION, {}).get(arch)
    assert golden is not None, f"no golden loss for TRAINER_VERSION {TRAINER_VERSION}: add {result.final_loss!r}"
    assert result.final_loss == pytest.approx(golden, rel=1e-5), (
        f"the trainer's numbers moved ({arch}: {result.final_loss!r}, version {TRAINER_VERSION} holds {golden!r}): "
        "bump evaluators.trainer.TRAINER_VERSION and add the new losses to GOLDEN")


def test_the_fingerprint_holds_what_the_numbers_depend_on():
    f = trainer_fingerprint()
    assert f["version"] == TRAINER_VERSION and f["torch"] == torch.__version__
    assert f["settings"]["grad_clip"] == TrainConfig().grad_clip and f["recipes"]["vit"]["optimizer"] == "adamw"
    assert f["commit"] is None or len(f["commit"].split("-")[0]) == 40
