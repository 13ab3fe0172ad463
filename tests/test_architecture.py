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
