"""The package's floors: every import points down a floor, and no module imports itself back.

Floors, from the bottom: shared types; imagery, models and the synthetic world; FLOPs
and strategies; training; benchmarking; the application. A module may import its own
floor and those below; ``synthetic`` (the world only) may import the shared types and
``imagery`` but nothing else.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "lrsvqa"

FLOORS: dict[str, int] = {
    "lrsvqa": 0,
    "errors": 0,
    "labels": 0,
    "types": 0,
    "budgets": 0,
    "version": 0,
    "imagery": 1,
    "models": 1,
    "synthetic": 1,
    "flops": 2,
    "strategies": 2,
    "train": 3,
    "bench": 4,
    "app": 5,
    "integrations": 5,
}
# Beside the floor rule: what a package of the same floor, or below, it may not import.
FORBIDDEN: dict[str, set[str]] = {
    "synthetic": {"models"},
    "imagery": {"models", "synthetic"},
    "models": {"imagery", "synthetic"},
    "flops": {"strategies"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``lrsvqa`` module the file imports, at module level or inside functions."""
    found: set[str] = set()
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else None
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = (package or _module_name(path)).split(".")
                base = base[: len(base) - node.level + 1]
                found.add(".".join([*base, node.module] if node.module else base))
            elif node.module and node.module.split(".")[0] == "lrsvqa":
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "lrsvqa")
    return found


def _floor_key(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _graph() -> nx.DiGraph:
    graph = nx.DiGraph()
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        graph.add_node(name)
        for target in _imports(path):
            graph.add_edge(name, target)
    return graph


def test_every_package_has_a_floor() -> None:
    keys = {_floor_key(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert keys <= set(FLOORS), f"give these a floor in FLOORS: {keys - set(FLOORS)}"


def test_no_import_points_up_a_floor() -> None:
    upward = []
    for source, target in _graph().edges:
        a, b = _floor_key(source), _floor_key(target)
        if a == b:
            continue
        if FLOORS[b] > FLOORS[a] or b in FORBIDDEN.get(a, set()):
            upward.append(f"{source} -> {target}")
    assert not upward, "imports pointing up (or sideways where forbidden):\n" + "\n".join(upward)


def test_no_import_cycle() -> None:
    cycles = list(nx.simple_cycles(_graph()))
    cycles = [c for c in cycles if len(c) > 1]
    assert not cycles, f"import cycles: {cycles[:5]}"


@pytest.mark.parametrize("source", ["lrsvqa.imagery.reader", "lrsvqa.app.cli"])
def test_the_graph_sees_imports_inside_functions(source: str) -> None:
    """A guard on the guard: the CLI imports lazily, and the graph must still see it."""
    assert _graph().out_degree(source) > 0
