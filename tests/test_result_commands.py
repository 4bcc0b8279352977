"""`evonorm front | show | plot | to-optuna` on small synthetic run directories."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from search.cli import main
from search.pareto import pareto_mask_bruteforce
from search.store.reader import load_run
from search.store.writer import RunStore


def brute_front_ids(path) -> list[int]:
    run = load_run(path)
    df = run.candidates
    cols = [c for c, _ in run.objectives]
    ok = df[(df["status"] == "ok")].dropna(subset=cols)
    mask = pareto_mask_bruteforce(ok[cols].astype(float).to_numpy(), [g for _, g in run.objectives])
    return sorted(ok["id"][mask].astype(int).tolist())


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cost_run(run_factory):
    return run_factory(n=80, archs=("resnet", "mobilenetv2", "efficientnet"), cost=True, seed=2)


@pytest.fixture(params=["missing_dir", "missing_json", "bad_json", "garbage_part"])
def broken_run(request, run_factory, tmp_path):
    kind = request.param
    if kind == "missing_dir":
        return tmp_path / "does-not-exist"
    path = run_factory(n=15)
    if kind == "missing_json":
        (path / "run.json").unlink()
    elif kind == "bad_json":
        (path / "run.json").write_text('{"archs": ["resnet"')
    else:
        (path / "candidates" / "part-000042.parquet").write_bytes(b"\x00garbage" * 20)
    return path


# -- front ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["small_run", "cost_run"])
def test_front_csv_equals_bruteforce_sorted_by_mean_accuracy(request, capsys, fixture):
    path = request.getfixturevalue(fixture)
    code, out, err = cli(capsys, "front", path, "--format", "csv")
    assert code == 0, err
    df = pd.read_csv(io.StringIO(out))
    assert sorted(df["id"].tolist()) == brute_front_ids(path)
    accs = [c for c in df.columns if c.startswith("acc_")]
    assert list(df.columns) == ["id", "formula", *accs, "params_per_channel", "uses_batch_stats", "poly_degree"]
    means = df[accs].mean(axis=1).to_numpy()
    assert (np.diff(means) <= 1e-12).all()


def test_front_formats(capsys, small_run):
    ids = brute_front_ids(small_run)
    code, out, _ = cli(capsys, "front", small_run, "--format", "json")
    assert code == 0
    rows = json.loads(out)
    assert sorted(r["id"] for r in rows) == ids
    assert all(isinstance(r["formula"], str) and isinstance(r["uses_batch_stats"], bool) for r in rows)
    code, out, _ = cli(capsys, "front", small_run, "--format", "markdown")
    lines = out.strip().splitlines()
    assert code == 0 and lines[0].startswith("| id | formula | acc_resnet") and len(lines) == 2 + len(ids)
    code, out, _ = cli(capsys, "front", small_run)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 2 + len(ids)
    assert "acc_resnet" in lines[0] and "formula" in lines[0]
    assert any("batch_std(x)" in line for line in lines[2:])
    code, _, err = cli(capsys, "front", small_run, "--format", "xml")
    assert code == 2 and err.count("\n") == 1


def test_front_of_a_run_without_records(capsys, tmp_path):
    RunStore.create(tmp_path / "fresh", {"archs": ["resnet"]}).close()
    code, out, err = cli(capsys, "front", tmp_path / "fresh")
    assert code == 0 and out == "" and "no accepted candidates" in err
    code, out, _ = cli(capsys, "front", tmp_path / "fresh", "--format", "json")
    assert code == 0 and json.loads(out) == []


# -- show ----------------------------------------------------------------------------------------


def test_show_candidate_and_lineage(capsys, small_run):
    run = load_run(small_run)
    df = run.candidates
    child = df[df["parent_id"].notna()].iloc[-1]
    code, out, err = cli(capsys, "show", small_run, int(child["id"]))
    assert code == 0, err
    assert child["formula"] in out and f"status         {child['status']}" in out
    assert "lineage" in out and "initial" in out
    # every ancestor back to a record with no parent is listed, with its mutation
    cid, chain = int(child["id"]), []
    while True:
        rec = run.candidate(cid)
        chain.append(rec)
        if rec["parent_id"] is None:
            break
        cid = int(rec["parent_id"])
    lineage = out[out.index("lineage"):]
    for rec in chain:
        assert f"#{rec['id']}" in lineage
        assert (rec["mutation"] or "initial") in lineage
    assert f"{len(chain) - 1} generation" in lineage
    ok = df[df["status"] == "ok"].iloc[0]
    code, out, _ = cli(capsys, "show", small_run, int(ok["id"]))
    assert code == 0 and f"{float(ok['acc_resnet']):.4f}" in out and "train" in out


def test_show_rejected_and_equivalent(capsys, small_run):
    df = load_run(small_run).candidates
    eq = df[df["equivalent_to"].notna()].iloc[0]
    code, out, _ = cli(capsys, "show", small_run, int(eq["id"]))
    assert code == 0 and f"equivalent to  {int(eq['equivalent_to'])}" in out and eq["reason"] in out


def test_show_unknown_id_is_exit_2(capsys, small_run):
    code, out, err = cli(capsys, "show", small_run, 10_000)
    assert code == 2 and out == "" and "no candidate 10000" in err and err.count("\n") == 1
    code, _, err = cli(capsys, "show", small_run, "seven")
    assert code == 2 and err.count("\n") == 1


def test_show_graph_draws_a_png(capsys, small_run, tmp_path):
    df = load_run(small_run).candidates
    ok = df[df["status"] == "ok"].iloc[0]
    image = tmp_path / "g.png"
    code, out, err = cli(capsys, "show", small_run, int(ok["id"]), "--graph", image)
    assert code == 0, err
    assert ok["formula"] in out and f"wrote {image}" in out
    data = image.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", small_run.name]   # no temporary left


@pytest.mark.parametrize("where", ["missing-dir/g.png", "a-file/g.png", "g.txt"])
def test_show_graph_bad_path_is_exit_2_and_writes_nothing(capsys, small_run, tmp_path, a_file, where):
    before = sorted(tmp_path.rglob("*"))
    code, out, err = cli(capsys, "show", small_run, 0, "--graph", tmp_path / where)
    assert code == 2 and out == "" and err.count("\n") == 1 and "g." in err
    assert sorted(tmp_path.rglob("*")) == before


def test_graph_layers_run_left_to_right():
    from primitives import parse
    from search.analysis.drawing import graph_layers, graph_positions

    g = parse("x / max(batch_std(x, eps=1e-3), v1 * x + instance_std(x, eps=1e-3)) * gamma + beta")
    dag = g.to_networkx()
    layer = graph_layers(dag, g.output)
    x = next(i for i, n in enumerate(g.nodes) if n.op == "x")
    assert layer[x] == 0 and layer[g.output] == max(layer.values()) == 6   # x / max(.. + ..) * gamma + beta
    assert all(layer[j] < layer[i] for j, i in dag.edges)
    pos = graph_positions(dag, layer)
    assert len(set(pos.values())) == len(g)            # no two nodes drawn on the same spot


# -- plot ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["small_run", "cost_run"])
def test_plot_writes_png(request, capsys, tmp_path, fixture):
    path = request.getfixturevalue(fixture)
    out_png = tmp_path / "front.png"
    code, out, err = cli(capsys, "plot", path, "-o", out_png)
    assert code == 0, err
    data = out_png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _retrain_rows(scores):
    """retrain.parquet rows from {layer: {arch: [test accuracy per seed]}} (plainnet held out)."""
    return [{"layer": layer, "source": "front", "formula": layer, "arch": arch, "held_out": arch == "plainnet",
             "seed": seed, "lr": 0.1, "test_acc": acc, "transfer_gap": None}
            for layer, per_arch in scores.items() for arch, accs in per_arch.items()
            for seed, acc in enumerate(accs, 1)]


def test_retrain_panel_draws_paired_differences_to_the_reference_per_layer_and_proxy():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from search.analysis.plots import _retrain_panel

    rows = _retrain_rows({"#3": {"resnet": [0.86, 0.87, 0.88], "plainnet": [0.80, 0.80, 0.83]},
                          "bn-relu": {"resnet": [0.88, 0.88, 0.88], "plainnet": [0.81, 0.82, 0.83]},
                          "gn-relu": {"resnet": [0.89, 0.89, 0.89], "plainnet": [0.82, 0.83, 0.84]},
                          "dead": {"resnet": [0.10, 0.10, 0.10], "plainnet": [0.10, float("nan"), 0.10]}})
    fig, ax = plt.subplots()
    _retrain_panel(ax, rows, ["bn-relu", "gn-relu"])
    bars = {c.get_label(): c for c in ax.containers}
    assert set(bars) == {"#3", "gn-relu (reference)", "dead"}    # bn-relu is the 0 line
    line = bars["#3"].lines[0]
    assert line.get_ydata() == pytest.approx([-1.0, -1.0])   # per seed -2, -1, 0 and -1, -2, 0 points
    assert [round(x) for x in line.get_xdata()] == [0, 1]   # beside the searched proxy's tick, then the held-out one
    assert bars["gn-relu (reference)"].lines[0].get_ydata() == pytest.approx([1.0, 1.0])
    assert bars["gn-relu (reference)"].lines[0].get_markerfacecolor() == "white"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["resnet", "plainnet\n(held out)"]
    assert "bn-relu" in ax.get_ylabel() and "bn-relu" in ax.get_title()
    lo, hi = ax.get_ylim()
    assert -25 < lo < -1 and hi > 1     # the dead layer 72-78 points down does not flatten the others...
    assert any("2 mean(s) below the axes" in t.get_text() for t in ax.texts)   # ...and is counted
    plt.close(fig)


def test_retrain_panel_names_a_reference_the_front_held_by_both_names():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from primitives import parse
    from primitives.library import REFERENCE_LAYERS
    from search.analysis.plots import _retrain_panel

    rows = _retrain_rows({"#0": {"resnet": [0.88, 0.88, 0.88]}, "#5": {"resnet": [0.89, 0.90, 0.91]}})
    for row in rows:
        if row["layer"] == "#0":     # the search's front held BN-ReLU itself: trained once, as #0
            row["formula"] = str(parse(REFERENCE_LAYERS["bn-relu"]))
    fig, ax = plt.subplots()
    _retrain_panel(ax, rows, ["bn-relu"])
    assert ax.get_title().startswith("Retrain vs bn-relu (#0)")
    assert {c.get_label() for c in ax.containers} == {"#5"}
    assert ax.containers[0].lines[0].get_ydata() == pytest.approx([2.0])
    plt.close(fig)


def test_plot_adds_the_retrain_panel_when_the_run_was_retrained(capsys, tmp_path, small_run, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from search.analysis import plots as plot

    drawn = []
    monkeypatch.setattr(plot, "_retrain_panel", lambda ax, rows, refs: drawn.append((len(rows), tuple(refs))))
    assert cli(capsys, "plot", small_run, "-o", tmp_path / "a.png")[0] == 0 and drawn == []
    pq.write_table(pa.Table.from_pylist(_retrain_rows({"#1": {"resnet": [0.8, 0.81]}})), small_run / "retrain.parquet")
    assert cli(capsys, "plot", small_run, "-o", tmp_path / "b.png")[0] == 0
    assert drawn == [(2, ("bn-relu",))]


def test_plot_single_proxy_and_empty_run(capsys, tmp_path, run_factory):
    one = run_factory(n=20, archs=("resnet",))
    assert cli(capsys, "plot", one, "-o", tmp_path / "one.png")[0] == 0
    RunStore.create(tmp_path / "fresh", {"archs": ["resnet", "mobilenetv2"]}).close()
    assert cli(capsys, "plot", tmp_path / "fresh", "-o", tmp_path / "fresh.png")[0] == 0
    assert (tmp_path / "fresh.png").stat().st_size > 0


def test_plot_bad_output(capsys, tmp_path, small_run):
    code, _, err = cli(capsys, "plot", small_run, "-o", tmp_path / "front.txt")
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "front.txt").exists()
    code, _, err = cli(capsys, "plot", small_run, "-o", tmp_path / "no" / "front.png")
    assert code == 2 and err.count("\n") == 1


# -- to-optuna -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["small_run", "cost_run"])
def test_to_optuna_best_trials_equal_front(request, capsys, tmp_path, fixture):
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    path = request.getfixturevalue(fixture)
    storage_file = tmp_path / "study.log"
    code, out, err = cli(capsys, "to-optuna", path, "--storage", storage_file)
    assert code == 0, err
    code, out, _ = cli(capsys, "front", path, "--format", "json")
    front_ids = sorted(r["id"] for r in json.loads(out))
    storage = JournalStorage(JournalFileBackend(str(storage_file)))
    study = optuna.load_study(study_name=path.name, storage=storage)
    run = load_run(path)
    statuses = run.candidates["status"]
    assert len(study.trials) == int(statuses.isin(["ok", "stopped"]).sum())
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert sorted(t.user_attrs["id"] for t in pruned) == sorted(run.candidates["id"][statuses == "stopped"])
    assert sorted(t.user_attrs["id"] for t in study.best_trials) == front_ids
    assert sorted(t.params["id"] for t in study.best_trials) == front_ids
    t = study.best_trials[0]
    rec = run.candidate(t.user_attrs["id"])
    assert t.user_attrs["formula"] == rec["formula"] and t.user_attrs["graph_hash"] == rec["graph_hash"]
    expected_dirs = [optuna.study.StudyDirection.MAXIMIZE if g == "max" else optuna.study.StudyDirection.MINIMIZE
                     for _, g in run.objectives]
    assert study.directions == expected_dirs
    # the same name again is refused; another name goes into the same file
    code, _, err = cli(capsys, "to-optuna", path, "--storage", storage_file)
    assert code == 2 and "already holds" in err
    assert cli(capsys, "to-optuna", path, "--storage", storage_file, "--study-name", "again")[0] == 0


def test_to_optuna_bad_storage(capsys, tmp_path, small_run):
    bad = tmp_path / "not-a-journal.log"
    bad.write_text("hello\n")
    code, _, err = cli(capsys, "to-optuna", small_run, "--storage", bad)
    assert code == 2 and err.count("\n") == 1 and bad.read_text() == "hello\n"


# -- broken run directories: one line on stderr, exit 2, for every command -------------------------


@pytest.mark.parametrize("command", ["front", "show", "plot", "to-optuna"])
def test_broken_run_dir_is_exit_2(capsys, tmp_path, broken_run, command):
    extra = {"show": ["0"], "plot": ["-o", str(tmp_path / "p.png")],
             "to-optuna": ["--storage", str(tmp_path / "s.log")]}.get(command, [])
    code, out, err = cli(capsys, command, broken_run, *extra)
    assert code == 2
    assert out == ""
    assert err.startswith("evonorm: error: ") and err.count("\n") == 1
    assert not (tmp_path / "p.png").exists() and not (tmp_path / "s.log").exists()
