"""The package's import structure, as DESIGN.md lays it out: `primitives` imports nothing from
the other two, `evaluators` nothing from `search`, nothing imports `search`; and no module
imports, even inside a function, a module that imports it back (a circle that only works
because one side imports late)."""
import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("primitives", "evaluators", "search")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module
    else:
        parts = importer.split(".")
        keep = len(parts) - node.level + (1 if is_package else 0)
        base = ".".join(parts[:keep] + ([node.module] if node.module else []))
    # `from pkg import name` may name a submodule: count it when it is one
    return [base] + [f"{base}.{a.name}" for a in node.names]


def import_graph() -> nx.DiGraph:
    """Module -> every module of the package it imports, anywhere in its text."""
    files = {(_module(p), p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    known = {m for m, _ in files}
    graph = nx.DiGraph()
    graph.add_nodes_from(known)
    for module, path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = _resolve(module, path.name == "__init__.py", node)
            for t in targets:
                if t in known and t != module:
                    graph.add_edge(module, t)
    return graph


def test_the_layers_import_downwards_only():
    graph = import_graph()
    rank = {"primitives": 0, "evaluators": 1, "search": 2}
    upward = [(a, b) for a, b in graph.edges if rank[b.split(".")[0]] > rank[a.split(".")[0]]]
    assert upward == []


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_circles_between_modules(package):
    graph = import_graph()
    # a package's __init__ re-exporting its modules is not a circle through them
    inner = graph.subgraph(m for m in graph if m.startswith(package))
    edges = [(a, b) for a, b in inner.edges if not (b == a.rsplit(".", 1)[0] or a == b.rsplit(".", 1)[0])]
    cycles = list(nx.simple_cycles(nx.DiGraph(edges)))
    assert cycles == []


def test_every_error_a_user_can_see_derives_from_one_base():
    """Each exception class the package defines is an EvonormError, which the CLI turns into one
    line and exit status 2: a user never sees a traceback for bad input."""
    import importlib
    import inspect

    from primitives.errors import EvonormError

    defined = []
    for module in import_graph():
        for name, obj in vars(importlib.import_module(module)).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module:
                defined.append(obj)
    assert len(defined) >= 10
    assert [c.__qualname__ for c in defined if not issubclass(c, EvonormError)] == []
