"""`evonorm export`: from a run directory or a formula, to a file that runs on its own."""
import subprocess
import sys
from datetime import datetime, timezone

import pytest

from primitives import parse
from primitives.library import REFERENCE_LAYERS
from search.cli import main
from search.store import RunStore


@pytest.fixture
def run_dir(tmp_path):
    path = tmp_path / "run"
    info = {"config": {"dataset": "synthetic", "archs": ["resnet"]}, "seed": 0, "archs": ["resnet"],
            "objectives": [{"column": "acc_resnet", "goal": "max"}], "started_at": "2026-01-01T00:00:00+00:00"}
    with RunStore.create(path, info) as store:
        for i, name in enumerate(["evonorm-s0", "bn-relu"]):
            g = parse(REFERENCE_LAYERS[name])
            store.append({"id": i, "formula": str(g), "graph": g.to_json(), "graph_hash": g.hash, "status": "ok",
                          "acc_resnet": 0.5 + i / 10, "params_per_channel": g.params_per_channel,
                          "uses_batch_stats": g.uses_batch_stats, "poly_degree": g.poly_degree,
                          "seconds": 1.0, "worker": "w0", "created_at": datetime.now(timezone.utc)})
    return path


def test_export_from_a_run_writes_a_runnable_file_with_a_header(run_dir, tmp_path):
    out = tmp_path / "layer.py"
    assert main(["export", str(run_dir), "0", "-o", str(out), "--class-name", "Found"]) == 0
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
def test_bad_input_is_one_line_and_exit_2(argv, run_dir, tmp_path, capsys):
    argv = [a.format(run=run_dir, missing=tmp_path / "nope") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("evonorm: error:")
    assert not (tmp_path / "nope").exists()


def test_plot_marks_the_baselines_the_run_trained_itself(run_dir):
    from search.commands.plot import _recorded_baselines
    from search.rundir import load_run
    run = load_run(run_dir)
    assert _recorded_baselines(run.candidates, run.acc_columns) == {
        "evonorm-s0": {"acc_resnet": 0.5}, "bn-relu": {"acc_resnet": 0.6}}
