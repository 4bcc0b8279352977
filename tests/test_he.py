"""Layers under homomorphic encryption (docs/he.md): the multiplicative depth and its claim
checked against TenSEAL, the layer under real CKKS, the evonorm-he document read back
without evonorm, `evonorm export --he`, and polynomial mode's depth bound and objective."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from primitives import compile_layer, parse
from primitives.graph import he_depth_for_degree
from primitives.library import REFERENCE_LAYERS
from search.cli import main

BN = "(x - batch_mean(x)) / batch_std(x)"
UNIT = f"poly({BN}, norm=1) * gamma + v7"          # poly-d3-unit #37
DOCS = Path(__file__).resolve().parents[1] / "docs" / "he.md"


def _tenseal():
    import tenseal   # the he extra: .ci/setup installs it (and fails when it cannot)
    return tenseal


def _trained_state(layer, seed=0, scale=2.0):
    """Random parameters and running estimates (variances positive): a 'trained' layer."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in layer.state_dict().items():
        v = torch.randn(value.shape, generator=gen, dtype=torch.float64) * 0.3
        state[name] = v.abs() + 0.5 if "var" in name or "sq" in name else v + (
            1.0 if name in ("gamma", "v1", "v7") else 0.0)
    return {k: v.to(layer.state_dict()[k].dtype) for k, v in state.items()}


def _net(formula, seed=0):
    """conv -> layer -> conv -> layer, its running estimates moved by a few training batches."""
    torch.manual_seed(seed)
    g = parse(formula)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3), compile_layer(g, 4), torch.nn.Conv2d(4, 6, 3),
                              compile_layer(g, 6), torch.nn.Flatten(), torch.nn.LazyLinear(3))
    net.train()
    with torch.no_grad():
        for _ in range(10):
            net(torch.randn(16, 2, 8, 8))
        for name in ("1", "3"):
            layer = net.get_submodule(name)
            layer.load_state_dict({**layer.state_dict(), **{k: v for k, v in _trained_state(layer, seed).items()
                                                             if not k.startswith("running")}})
    return g, net.eval()


# -- the depth ---------------------------------------------------------------------------------------

def test_depth_is_ceil_log2_of_degree_plus_one():
    assert [he_depth_for_degree(d) for d in range(0, 10)] == [0, 1, 2, 2, 3, 3, 3, 3, 4, 4]
    assert [math.ceil(math.log2(d + 1)) for d in range(1, 10)] == [he_depth_for_degree(d) for d in range(1, 10)]
    with pytest.raises(ValueError):
        he_depth_for_degree(-1)


@pytest.mark.parametrize("formula,depth", [
    (REFERENCE_LAYERS["bn-poly"], 2),
    (REFERENCE_LAYERS["bn-square"], 2),
    (UNIT, 2),
    (f"poly({BN}, order=4)", 3),
    (f"{BN} * gamma + beta", 1),
    (REFERENCE_LAYERS["bn-relu"], None),                 # not a polynomial at inference
    ("x - instance_mean(x)", None),                      # a polynomial that mixes elements
    (f"({BN} + 0.4 * gamma * (({BN}) ** 2 - batch_mean(channel_var(({BN}) ** 2)))) * gamma", 2),  # in a constant
])
def test_graph_he_depth(formula, depth):
    assert parse(formula).he_depth == depth


def test_the_record_has_an_he_depth_column_and_check_prints_it(capsys):
    from evaluators.record import describe
    from search.store.reader import candidate_schema

    assert describe(parse(UNIT))["he_depth"] == 2
    assert describe(parse(REFERENCE_LAYERS["bn-relu"]))["he_depth"] is None
    field = candidate_schema(["resnet"]).field("he_depth")
    assert str(field.type) == "int64" and field.nullable
    assert main(["check", UNIT, "--channels", "4"]) == 0
    assert "he depth         2 (CKKS levels" in capsys.readouterr().out
    assert main(["check", "x - instance_mean(x)", "--channels", "4"]) == 0
    assert "he depth         none: mixes elements" in capsys.readouterr().out


def test_old_records_read_the_depth_as_null(tmp_path):
    """A part file from before the column reads it as null; `evonorm front` shows the graph's."""
    import pyarrow.parquet as pq

    from search.analysis.front import front_frame
    from search.store import load_run
    from search.store.writer import RunStore

    g = parse(UNIT)
    store = RunStore.create(tmp_path / "old", {"archs": ["resnet"], "config": {"mode": "polynomial"}})
    store.append({"id": 0, "status": "ok", "formula": str(g), "graph": g.to_json(), "graph_hash": g.hash,
                  "acc_resnet": 0.8})
    store.close()
    part = next((tmp_path / "old" / "candidates").glob("part-*.parquet"))
    table = pq.read_table(part)
    pq.write_table(table.drop(["he_depth"]), part)              # as written before the column
    run = load_run(tmp_path / "old")
    assert run.candidates["he_depth"].isna().all()
    frame = front_frame(run)
    assert frame["he_depth"].tolist() == [2] and frame["inference_degree"].isna().all()


# -- the depth claim, under TenSEAL ---------------------------------------------------------------------

@pytest.mark.parametrize("degree", [1, 2, 3, 4])
def test_exactly_the_depth_evaluates_one_level_fewer_does_not(degree):
    _tenseal()
    from primitives.he import fits_depth

    coefficients = [0.3 + 0.1 * k for k in range(degree + 1)]
    depth = he_depth_for_degree(degree)
    assert fits_depth(coefficients, depth)
    assert not fits_depth(coefficients, depth - 1)


def test_ckks_parameters_hold_the_depth_at_128_bit_security():
    from primitives.he import ckks_parameters

    assert ckks_parameters(2)["coeff_mod_bit_sizes"] == [60, 40, 40, 60]
    assert ckks_parameters(2)["poly_modulus_degree"] == 8192            # 200 bits <= 218
    assert ckks_parameters(3)["poly_modulus_degree"] == 16384           # 240 bits > 218
    assert ckks_parameters(1)["max_abs_value"] == 2.0 ** 19


# -- a layer under real CKKS -------------------------------------------------------------------------

@pytest.mark.parametrize("formula", [REFERENCE_LAYERS["bn-poly"], UNIT])
def test_a_trained_layer_under_ckks_matches_plaintext(formula):
    _tenseal()
    from primitives.coefficients import coefficient_table
    from primitives.he import CKKS

    g = parse(formula)
    layer = compile_layer(g, 3).double()
    state = _trained_state(layer)
    layer.load_state_dict(state)
    layer.eval()
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64) * 2
    with torch.no_grad():
        expected = layer(x).numpy()
    ckks = CKKS(g.he_depth)
    assert ckks.params["poly_modulus_degree"] == 8192
    y, seconds = ckks.evaluate(x.numpy(), coefficient_table(g, state))
    assert seconds["ciphertexts"] == 3 and seconds["evaluate"] > 0
    assert np.abs(y - expected).max() < 1e-3 and np.abs(expected).max() > 0.5


# -- the document --------------------------------------------------------------------------------------

def _horner(coefficients, x):
    """The document's reading, written here without evonorm."""
    c = np.asarray(coefficients)
    y = np.zeros_like(x) + c[:, -1][None, :, None, None]
    for k in range(c.shape[1] - 2, -1, -1):
        y = y * x + c[:, k][None, :, None, None]
    return y


def test_the_document_round_trips_through_plain_json():
    from primitives.he import FORMAT, VERSION, dumps, he_export, layer_positions

    g, net = _net(UNIT)
    batches = [torch.randn(20, 2, 8, 8) for _ in range(3)]
    document = he_export(net, g, batches, source={"dataset": "noise"})
    loaded = json.loads(dumps(document))                            # the file, read by anyone
    assert loaded["format"] == FORMAT == "evonorm-he" and loaded["version"] == VERSION == 1
    assert loaded["depth"] == 2 and loaded["degree"] == 3 and loaded["ckks"]["coeff_mod_bit_sizes"] == [60, 40, 40, 60]
    assert [p["name"] for p in loaded["positions"]] == [n for n, _ in layer_positions(net, g)] == ["1", "3"]
    # every position's polynomial, evaluated with numpy, is the module's eval-mode output
    inputs, outputs = {}, {}

    def keep(name):
        def hook(module, args, out):
            inputs[name], outputs[name] = args[0], out
        return hook
    hooks = [net.get_submodule(name).register_forward_hook(keep(name)) for name in ("1", "3")]
    x = torch.randn(5, 2, 8, 8)
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    for position in loaded["positions"]:
        got = _horner(position["coefficients"], inputs[position["name"]].double().numpy())
        want = outputs[position["name"]].double().numpy()
        assert np.abs(got - want).max() < 1e-5 * max(1.0, np.abs(want).max())
    # the ranges are those of the inputs the batches produce
    seen = []
    hook = net.get_submodule("3").register_forward_hook(lambda m, a, o: seen.append(a[0].double()) and None)
    with torch.no_grad():
        for b in batches:
            net(b)
    hook.remove()
    values = torch.cat(seen).transpose(0, 1).reshape(6, -1).numpy()
    measured = loaded["positions"][1]["range"]
    assert np.allclose(measured["min"], values.min(1)) and np.allclose(measured["max"], values.max(1))
    assert np.allclose(measured["abs_quantile"], np.quantile(np.abs(values), 0.999, axis=1, method="inverted_cdf"))
    assert measured["values_per_channel"] == values.shape[1] and measured["nonfinite"] == 0
    lo, hi = loaded["positions"][1]["interval"]
    assert lo < values.min() and hi > values.max()
    assert loaded["warnings"] == []


def test_an_interval_the_inputs_leave_is_a_warning():
    from primitives.he import he_export

    g, net = _net(REFERENCE_LAYERS["bn-poly"])
    document = he_export(net, g, [torch.randn(20, 2, 8, 8)], interval=(-0.5, 0.5))
    assert document["positions"][0]["interval"] == [-0.5, 0.5]
    assert any("exceed the interval [-0.5, 0.5]" in w for w in document["warnings"])


def test_layers_that_are_not_per_channel_polynomials_are_not_exported():
    from primitives.coefficients import NotPolynomialError
    from primitives.he import he_export

    for formula, why in ((REFERENCE_LAYERS["bn-relu"], "not a polynomial"),
                         ("x * gamma - instance_mean(x)", "mixes elements")):
        layer = compile_layer(parse(formula), 2)
        with pytest.raises(NotPolynomialError, match=why):
            he_export(layer, parse(formula))


def test_docs_name_every_key_of_the_document():
    from primitives.he import he_export

    g, net = _net(UNIT)
    document = he_export(net, g, [torch.randn(8, 2, 8, 8)], source={"dataset": "d", "split": "val", "images": 8,
                                                                   "arch": "a", "state_dict": "f"})
    keys = set(document) | set(document["ckks"]) | set(document["positions"][0]) | \
        set(document["positions"][0]["range"]) | set(document["source"])
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", DOCS.read_text(), flags=re.M))
    assert keys <= documented, sorted(keys - documented)


def test_the_docs_tenseal_snippet_loads_a_document_without_evonorm(tmp_path, monkeypatch):
    _tenseal()
    from primitives.he import dumps, he_export

    g, net = _net(UNIT)
    (tmp_path / "layer.json").write_text(dumps(he_export(net, g, [torch.randn(16, 2, 8, 8)])))
    text = DOCS.read_text().split("### Loading it with TenSEAL", 1)[1]
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    assert not re.search(r"(import|from) (primitives|evaluators|search)", snippet)
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, str(DOCS), "exec"), {})


# -- evonorm export --he ------------------------------------------------------------------------------

def test_export_he_of_one_layer_and_of_a_whole_network(tmp_path, capsys):
    from evaluators.datasets import load_dataset
    from evaluators.proxies import build_proxy

    assert main(["export", UNIT, "--he", str(tmp_path / "one.json"), "--channels", "3"]) == 0
    one = json.loads((tmp_path / "one.json").read_text())
    assert len(one["positions"]) == 1 and one["positions"][0]["range"] is None
    assert "no measured ranges" in capsys.readouterr().err
    # a whole proxy network (untrained, its running estimates moved), on the synthetic dataset
    g = parse(UNIT)
    data = load_dataset("synthetic")
    torch.manual_seed(0)
    net = build_proxy("plainnet", lambda c: compile_layer(g, c), data.in_channels, data.num_classes, data.image_size)
    with torch.no_grad():
        net(data.normalise(data.train_x[:64]))
    torch.save(net.state_dict(), tmp_path / "net.pt")
    assert main(["export", UNIT, "--he", str(tmp_path / "net.json"), "--state-dict", str(tmp_path / "net.pt"),
                 "--arch", "plainnet", "--dataset", "synthetic", "--images", "40"]) == 0
    doc = json.loads((tmp_path / "net.json").read_text())
    assert len(doc["positions"]) == 7 and doc["source"]["images"] == 40 and doc["source"]["arch"] == "plainnet"
    assert all(p["range"]["values_per_channel"] == 40 * math.prod(p["shape"][1:]) for p in doc["positions"])
    assert "depth 2" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["relu(x)", "--he", "OUT"], "not a polynomial"),
    (["x * gamma - channel_mean(x)", "--he", "OUT"], "mixes elements"),
    ([UNIT, "--he", "OUT", "--arch", "plainnet"], "--arch needs --state-dict"),
    ([UNIT, "--he", "OUT", "--images", "5"], "--images needs --arch"),
    ([UNIT, "--arch", "plainnet"], "--arch is for --he"),
    ([UNIT, "--he", "OUT", "--coefficients", "c.csv"], "not both"),
])
def test_export_he_bad_input_one_line_exit_2_nothing_written(tmp_path, capsys, argv, message):
    out = tmp_path / "out.json"
    assert main(["export", *[str(out) if a == "OUT" else a for a in argv]]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


# -- polynomial mode: --max-depth, --depth-objective -------------------------------------------------

def test_max_depth_rejects_deeper_layers_and_mixing_ones():
    from search.engine.modes import get_mode

    mode = get_mode("polynomial", max_degree=7, max_depth=2)
    assert mode.accept(parse(UNIT)) and mode.accept(parse(REFERENCE_LAYERS["bn-poly"]))
    assert "multiplicative depth 3 (inference degree 4), above --max-depth 2" in mode.why_not(
        parse(f"poly({BN}, order=4)"))
    assert "mixes elements" in mode.why_not(parse("x * gamma - instance_mean(x)"))
    assert not any(op.endswith(("_mean", "_var")) and not op.startswith("batch") for op in mode.ops)
    assert get_mode("polynomial", max_degree=7).accept(parse(f"poly({BN}, order=4)"))


def test_depth_settings_need_polynomial_mode():
    from search.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="polynomial"):
        build_config(overrides={"max_depth": 2})
    with pytest.raises(ConfigError, match="polynomial"):
        build_config(overrides={"depth_objective": True, "mode": "sample"})
    config = build_config(overrides={"mode": "polynomial", "depth_objective": True})
    assert config.objectives[-1] == "he_depth" and config.goals[-1] == "min"


def test_a_search_bounds_the_depth_and_minimises_it(tmp_path, capsys):
    from search.store import load_run

    out = tmp_path / "run"
    rc = main(["search", "--evaluator", "surrogate", "--executor", "local", "--population", "8", "--tournament",
               "3", "--quiet", "--mode", "polynomial", "--max-degree", "7", "--max-depth", "2",
               "--depth-objective", "--budget", "40", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    info = json.loads((out / "run.json").read_text())
    assert info["objectives"][-1] == {"column": "he_depth", "goal": "min"}
    assert info["config"]["max_depth"] == 2 and info["config"]["depth_objective"] is True
    run = load_run(out)
    depths = run.candidates["he_depth"]
    assert depths.notna().all() and set(depths) <= {1, 2}
    assert "he_depth" in run.front().columns
    capsys.readouterr()
    assert main(["front", str(out), "--format", "csv"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split(",")
    assert header[-2:] == ["inference_degree", "he_depth"]
    assert main(["plot", str(out), "-o", str(tmp_path / "p.png")]) == 0


def test_search_rejects_depth_flags_outside_polynomial_mode(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--evaluator", "surrogate", "--out", str(out), "--max-depth", "2"]) == 2
    assert "polynomial" in capsys.readouterr().err and not out.exists()


# -- the proof on a network ----------------------------------------------------------------------------

def test_prove_runs_every_position_under_ckks():
    _tenseal()
    from evaluators.he import format_report, prove
    from primitives.he import he_export

    g, net = _net(UNIT)
    document = he_export(net, g, [torch.randn(30, 2, 8, 8)])
    x = torch.randn(4, 2, 8, 8)
    report = prove(net, g, document, x, torch.tensor([0, 1, 2, 0]))
    assert [r["name"] for r in report["positions"]] == ["1", "3"]
    assert max(r["max_abs_error"] for r in report["positions"]) < 1e-3
    assert report["depth_check"] == {"levels": 2, "evaluates": True, "one_fewer_evaluates": False}
    assert report["predictions"]["agreement"] == 1.0
    text = format_report(report)
    assert "coeff_mod_bit_sizes [60, 40, 40, 60]" in text and "100.0% agree" in text


@pytest.mark.slow
def test_the_proof_on_real_activations(tmp_path):
    """plainnet trained briefly on Fashion-MNIST with #37's unit: its seven positions under CKKS
    on 30 test images (the README's numbers come from the full run, docs/he.md)."""
    _tenseal()
    import importlib.util

    spec = importlib.util.spec_from_file_location("he_proof", Path(__file__).resolve().parents[1]
                                                  / "benchmarks" / "he_proof.py")
    proof = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(proof)
    report_path = tmp_path / "report.json"
    assert proof.main([UNIT, "--steps", "60", "--images", "30", "--range-images", "1000",
                       "--export", str(tmp_path / "layer.json"), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert len(report["positions"]) == 7
    assert max(r["max_abs_error"] for r in report["positions"]) < 1e-3
    assert report["depth_check"]["evaluates"] and report["depth_check"]["one_fewer_evaluates"] is False
    assert report["predictions"]["agreement"] >= 0.95
    assert json.loads((tmp_path / "layer.json").read_text())["source"]["images"] == 1000
