"""Exported layers: standalone files that match the compiled module everywhere."""
import subprocess
import sys
import textwrap

import pytest
import torch

from primitives import compile_layer, export_layer, parse
from primitives.library import REFERENCE_LAYERS

# learnable scalars (0-dim parameters) beside vectors and a batch moment
REFERENCES = {"scalars": "erf(scalar(0.5) * x + scalar(0)) * gamma + scalar(2) * batch_mean(x) + beta"}

FRESH_CHECK = textwrap.dedent("""
    import importlib.util, sys, torch
    path, class_name, state_path, data_path = sys.argv[1:5]
    assert "primitives" not in sys.modules
    spec = importlib.util.spec_from_file_location("exported", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not any(name.split(".")[0] in ("primitives", "evaluators", "search") for name in sys.modules)
    data = torch.load(data_path)
    layer = getattr(module, class_name)(data["channels"])
    layer.load_state_dict(torch.load(state_path))
    layer.train()
    train_out = layer(data["x"])
    layer.eval()
    eval_out = layer(data["x"])
    assert torch.equal(train_out, data["train"]), (train_out - data["train"]).abs().max()
    assert torch.equal(eval_out, data["eval"]), (eval_out - data["eval"]).abs().max()
    print("ok")
""")


@pytest.mark.parametrize("name", ["bn-relu", "evonorm-b0", "evonorm-s0", "bn-rational", "scalars"])
def test_export_loads_in_a_fresh_interpreter_with_the_compiled_state(name, tmp_path):
    graph = parse(REFERENCES.get(name) or REFERENCE_LAYERS[name])
    channels = 16
    layer = compile_layer(graph, channels)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.rand_like(p) * 0.5)
    x = torch.randn(4, channels, 5, 5)
    for _ in range(3):  # move the running statistics away from their initial values
        layer.train()(torch.randn(4, channels, 5, 5) * 2 + 1)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    train_out = layer.train()(x).detach()
    eval_out = layer.eval()(x).detach()
    torch.save(state, tmp_path / "state.pt")
    torch.save({"channels": channels, "x": x, "train": train_out, "eval": eval_out}, tmp_path / "data.pt")
    source = export_layer(graph, class_name="Exported", header="exported for a test")
    (tmp_path / "layer.py").write_text(source)
    (tmp_path / "check.py").write_text(FRESH_CHECK)
    result = subprocess.run([sys.executable, str(tmp_path / "check.py"), str(tmp_path / "layer.py"), "Exported",
                             str(tmp_path / "state.pt"), str(tmp_path / "data.pt")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_export_imports_only_torch_and_names_the_formula():
    source = export_layer(parse(REFERENCE_LAYERS["evonorm-s0"]), class_name="EvoS0", header="from run demo")
    imports = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert imports == ["import torch", "from torch import nn"]
    assert "class EvoS0(nn.Module):" in source
    assert "from run demo" in source
    assert str(parse(REFERENCE_LAYERS["evonorm-s0"])) in source


def test_export_rejects_a_bad_class_name():
    with pytest.raises(ValueError):
        export_layer(parse("relu(x)"), class_name="not a name")


def _load(source, class_name):
    namespace = {}
    exec(compile(source, "<test-export>", "exec"), namespace)
    return namespace[class_name]


@pytest.mark.parametrize("name", ["evonorm-b0", "evonorm-s0", "scalars"])
def test_export_works_with_torch_compile_fullgraph(name):
    graph = parse(REFERENCES.get(name) or REFERENCE_LAYERS[name])
    cls = _load(export_layer(graph, class_name="L"), "L")
    torch.manual_seed(0)
    eager, compiled_src = cls(8), cls(8)
    compiled_src.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_src, fullgraph=True, backend="aot_eager")
    x = torch.randn(4, 8, 6, 6)
    for training in (True, True, False):
        eager.train(training)
        compiled.train(training)
        torch.testing.assert_close(compiled(x), eager(x))
    for key, value in eager.state_dict().items():  # running statistics were updated inside the graph
        torch.testing.assert_close(compiled_src.state_dict()[key], value)


@pytest.mark.parametrize("name", ["bn-relu", "evonorm-s0", "bn-poly", "scalars"])
def test_export_works_with_torch_export(name):
    graph = parse(REFERENCES.get(name) or REFERENCE_LAYERS[name])
    cls = _load(export_layer(graph, class_name="L"), "L")
    layer = cls(8).eval()
    x = torch.randn(2, 8, 5, 5)
    program = torch.export.export(layer, (x,))
    torch.testing.assert_close(program.module()(x), layer(x))
    layer.train()
    program = torch.export.export(layer, (x,))
    fresh = cls(8).train()
    torch.testing.assert_close(program.module()(x), fresh(x))


def test_compiled_class_is_cached_and_pickles_in_process():
    import pickle
    graph = parse(REFERENCE_LAYERS["evonorm-s0"])
    a, b = compile_layer(graph, 8), compile_layer(str(graph), 8)
    assert type(a) is type(b)
    clone = pickle.loads(pickle.dumps(a))
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(clone(x), a(x))


@pytest.mark.slow
def test_export_works_with_the_default_inductor_backend():
    graph = parse(REFERENCE_LAYERS["evonorm-b0"])
    cls = _load(export_layer(graph, class_name="L"), "L")
    torch.manual_seed(0)
    eager, source = cls(8), cls(8)
    source.load_state_dict(eager.state_dict())
    compiled = torch.compile(source, fullgraph=True)
    x = torch.randn(4, 8, 6, 6)
    for training in (True, False):
        eager.train(training)
        compiled.train(training)
        torch.testing.assert_close(compiled(x), eager(x))
