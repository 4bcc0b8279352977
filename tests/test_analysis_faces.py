"""The result tools from Python (`search.analysis`): what the commands print and draw, without
the CLI; and the commands are thin layers that import none of each other."""
from __future__ import annotations

import pathlib
import re

import pytest

from search.errors import ConfigError, RunDirError, UnwritableError
from search.store import load_run

COMMANDS = pathlib.Path(__file__).resolve().parents[1] / "search" / "commands"
PNG = b"\x89PNG\r\n\x1a\n"


def test_commands_import_none_of_each_other_nor_the_cli():
    for path in sorted(COMMANDS.glob("*.py")):
        text = path.read_text()
        assert not re.search(r"from search\.commands|import search\.commands", text), path.name
        assert "search.cli" not in text, path.name


def test_front_frame_and_render(small_run):
    from search.analysis.front import front_frame, render

    df = front_frame(load_run(small_run))
    assert len(df) and list(df.columns[:2]) == ["id", "formula"]
    means = df[["acc_resnet", "acc_mobilenetv2"]].astype(float).mean(axis=1).tolist()
    assert means == sorted(means, reverse=True)
    assert render(df, "markdown").splitlines()[0].startswith("| id | formula |")


def test_plot_run_writes_a_png_from_a_run_or_its_directory(small_run, tmp_path):
    from search.analysis.plots import plot_run

    assert plot_run(small_run, tmp_path / "a.png") == tmp_path / "a.png"
    plot_run(load_run(small_run), tmp_path / "b.png", dpi=60)
    assert (tmp_path / "a.png").read_bytes()[:8] == (tmp_path / "b.png").read_bytes()[:8] == PNG
    assert (tmp_path / "b.png").stat().st_size < (tmp_path / "a.png").stat().st_size
    with pytest.raises(ConfigError, match="must end in .png"):
        plot_run(small_run, tmp_path / "c.gif")
    with pytest.raises(ConfigError, match="dpi"):
        plot_run(small_run, tmp_path / "c.png", dpi=5)
    with pytest.raises(RunDirError):
        plot_run(tmp_path / "nope", tmp_path / "c.png")
    with pytest.raises(UnwritableError):
        plot_run(small_run, tmp_path / "no-dir" / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_draw_graph_to_a_path_or_a_file(tmp_path):
    import io

    from primitives import parse
    from search.analysis.drawing import draw_graph

    graph = parse("x * sigmoid(v1 * x) / group_std(x) * gamma + beta")
    draw_graph(graph, tmp_path / "g.png")
    buffer = io.BytesIO()
    draw_graph(graph, buffer, fmt="png")
    assert (tmp_path / "g.png").read_bytes() == buffer.getvalue() and buffer.getvalue()[:8] == PNG
    draw_graph(graph, tmp_path / "g.svg")
    assert b"<svg" in (tmp_path / "g.svg").read_bytes()[:500]


def test_write_study_holds_the_runs_trials(small_run, tmp_path):
    from search.analysis.studies import trials_for, write_study

    run = load_run(small_run)
    study = write_study(run, tmp_path / "study.log", "demo")
    directions, trials = trials_for(run)
    assert directions == ["maximize", "maximize"] and len(study.trials) == len(trials) > 0
    with pytest.raises(ConfigError, match="already holds a study"):
        write_study(run, tmp_path / "study.log", "demo")
    (tmp_path / "junk.log").write_text("not a journal\n")
    with pytest.raises(UnwritableError, match="not an Optuna journal"):
        write_study(run, tmp_path / "junk.log")
