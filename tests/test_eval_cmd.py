"""`evonorm eval`: exit codes, one-line errors, the table."""
from __future__ import annotations

import pytest

from search.cli import main

FAST = ["--dataset", "synthetic", "--steps", "2", "--arch", "resnet"]


@pytest.mark.parametrize("argv,message", [
    (["x +"], "bad formula"),
    (["v1"], "bad formula"),
    (["relu(x)", "--arch", "vgg"], "unknown arch 'vgg'"),
    (["relu(x)", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["relu(x)", "--steps", "0"], "--steps"),
    (["relu(x)", "--steps", "many"], "invalid int value"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert main(["eval", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and message in err


def test_missing_data_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EVONORM_CACHE", str(tmp_path / "cache"))
    import evaluators.datasets.images as images
    monkeypatch.setattr(images, "SYSTEM_FASHION_MNIST", tmp_path / "nowhere")

    def no_network(*args, **kwargs):
        raise images.DatasetError("fashion-mnist files not found and download failed (offline)")
    for name in ("_download_fashion_mnist", "_fetch"):
        monkeypatch.setattr(images, name, no_network)
    code = main(["eval", "relu(x)", "--dataset", "cifar10", "--data-root", str(tmp_path / "empty")])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1 and "cifar" in err.lower()


def test_eval_prints_a_table_and_a_progress_bar(capsys):
    assert main(["eval", "x * sigmoid(x) / instance_std(x) * gamma + beta", *FAST, "--no-baselines"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert "synthetic" in lines[0] and "2 steps" in lines[0]
    assert lines[1].split() == ["layer", "resnet", "seconds", "verdict"]
    row = next(line for line in lines if line.startswith("candidate "))
    assert "%" in row and row.split()[-1] in ("ok", "low_quality")
    assert "x * sigmoid(x) / instance_std(x) * gamma + beta" in out
    assert "eval" in err and "step" in err  # the progress bar went to stderr


@pytest.mark.slow
def test_eval_prints_the_layer_next_to_the_baselines(capsys):
    assert main(["eval", "x * sigmoid(x) / instance_std(x) * gamma + beta", *FAST]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert "synthetic" in lines[0] and "2 steps" in lines[0]
    assert "resnet" in lines[1] and "seconds" in lines[1] and "verdict" in lines[1]
    for name in ("candidate", "bn-relu", "gn-relu", "evonorm-b0", "evonorm-s0"):
        row = next(line for line in lines if line.startswith(name + " "))
        assert "%" in row
    assert "x * sigmoid(x) / instance_std(x) * gamma + beta" in out
    assert "eval" in err  # the progress bar went to stderr


def test_eval_shows_the_rejection_verdict_without_baselines(capsys):
    assert main(["eval", "x * 0 + beta", *FAST, "--no-baselines"]) == 0
    out, _ = capsys.readouterr()
    row = next(line for line in out.splitlines() if line.startswith("candidate "))
    assert row.rstrip().endswith("invalid") and "-" in row
    assert "constant in x" in out
    assert "bn-relu" not in out
