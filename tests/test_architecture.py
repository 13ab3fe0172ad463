"""The layering the README promises: mgen is the core library and data_prep a pipeline built on it, so no module
under mgen/ imports data_prep, except the command layer (mgen/commands/), which exposes `mgen prep`, `mgen demo`
and the pipeline benchmarks. Read from the source (every import statement, function-level ones included), so a
lazy import cannot hide a dependency."""

from __future__ import annotations

import ast
from pathlib import Path

MGEN = Path(__file__).resolve().parents[1] / "mgen"


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in `path` names (absolute imports; mgen uses no relative ones)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names.add(node.module or "")
    return names


def test_only_the_command_layer_imports_data_prep() -> None:
    offenders = {}
    for path in sorted(MGEN.rglob("*.py")):
        if path.relative_to(MGEN).parts[0] == "commands":
            continue
        found = sorted(m for m in imported_modules(path) if m == "data_prep" or m.startswith("data_prep."))
        if found:
            offenders[str(path.relative_to(MGEN.parent))] = found
    assert not offenders, f"modules under mgen/ that import data_prep: {offenders}"


def test_the_walk_sees_lazy_imports(tmp_path: Path) -> None:
    """The check would catch a function-level import (the kind that used to hide this dependency)."""
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from data_prep.shards import load_index\n    return load_index\n")
    assert "data_prep.shards" in imported_modules(module)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(MGEN.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """mgen module -> the mgen modules its import statements name (`from mgen.a import b` names mgen.a, and
    mgen.a.b when that is a module), function-level imports included."""
    modules = {module_name(p): p for p in MGEN.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.module:
                edges.update(m for m in (node.module, *(f"{node.module}.{a.name}" for a in node.names))
                             if m in modules)
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in modules)
        graph[name] = edges - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_among_mgen_modules() -> None:
    """Imports follow the data flow; a cycle (lm_module <-> parallel once) would be dodged with function-level
    imports, which this walk sees too."""
    assert cycles(import_graph()) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
