"""`evonorm export`: from a run directory or a formula, to a file that runs on its own."""
import subprocess
import sys

import pytest

from primitives import parse
from primitives.library import REFERENCE_LAYERS
from search.cli import main


def test_export_from_a_run_writes_a_runnable_file_with_a_header(real_run, tmp_path):
    out = tmp_path / "layer.py"
    assert main(["export", str(real_run), "0", "-o", str(out), "--class-name", "Found"]) == 0
    text = out.read_text()
    assert "candidate 0 of run run" in text and "resnet 0.5000" in text
    assert str(parse(REFERENCE_LAYERS["evonorm-s0"])) in text
    script = (f"import importlib.util, torch\nspec = importlib.util.spec_from_file_location('m', {str(out)!r})\n"
              "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
              "layer = m.Found(16); y = layer(torch.randn(2, 16, 4, 4)); y.sum().backward(); print(tuple(y.shape))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(2, 16, 4, 4)"


def test_export_a_formula_to_stdout(capsys):
    assert main(["export", "relu(x - layer_mean(x))"]) == 0
    assert "class EvoLayer(nn.Module):" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["export", "x.__class__"],
    ["export", "{run}", "99"],
    ["export", "{missing}", "0"],
    ["export", "{run}", "0", "--class-name", "not valid"],
    ["export", "{run}", "0", "-o", "{missing}/layer.py"],
])
def test_bad_input_is_one_line_and_exit_2(argv, real_run, tmp_path, capsys):
    argv = [a.format(run=real_run, missing=tmp_path / "nope") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("evonorm: error:")
    assert not (tmp_path / "nope").exists()


def test_plot_marks_the_baselines_the_run_trained_itself(real_run):
    from search.analysis.plots import _recorded_baselines
    from search.store.reader import load_run
    run = load_run(real_run)
    assert _recorded_baselines(run.candidates, run.acc_columns) == {
        "evonorm-s0": {"acc_resnet": 0.5}, "bn-relu": {"acc_resnet": 0.6}}
    # each mode marks its own baselines: polynomial mode's are BN-ReLU, the square and bn-poly
    assert _recorded_baselines(run.candidates, run.acc_columns, "polynomial") == {"bn-relu": {"acc_resnet": 0.6}}
    assert run.mode == "batch"
