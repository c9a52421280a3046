"""The layers stay apart: the MPI runtime, the transport and the optimizer API never import the
simulator or the training application (they share pcasgd.engine, pcasgd.flat, pcasgd.protocol)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pcasgd"
LOWER = [*sorted((PACKAGE / "runtime").glob("*.py")), *sorted((PACKAGE / "transport").glob("*.py"))]
LOWER += [
    PACKAGE / "optim.py",
    PACKAGE / "collectives.py",
    PACKAGE / "engine.py",
    PACKAGE / "flat.py",
    *sorted((PACKAGE / "protocol").glob("*.py")),
]
FORBIDDEN = ("pcasgd.sim", "pcasgd.app")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize("path", LOWER, ids=[str(p.relative_to(PACKAGE)) for p in LOWER])
def test_lower_layers_never_import_the_simulator_or_the_application(path):
    bad = sorted(m for m in imported_modules(path) if m.startswith(FORBIDDEN))
    assert bad == [], f"{path.relative_to(PACKAGE)} imports {bad}"


def test_the_check_sees_a_lazy_import(tmp_path):
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from pcasgd.sim import simulate\n    return simulate\n")
    assert "pcasgd.sim" in imported_modules(module)
