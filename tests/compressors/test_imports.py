"""compressors/ stands alone: no module imports ``proxy``, and no two modules import each other in a cycle.

Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "compressors"


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``path``, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return found


def graph(package: Path) -> dict[str, set[str]]:
    """Module name -> the package's modules it imports (``from compressors import x`` names module x)."""
    names = {path.stem for path in package.glob("*.py")}
    edges: dict[str, set[str]] = {}
    for path in sorted(package.glob("*.py")):
        targets = set()
        for _, module in imports_of(path):
            parts = module.split(".")
            if parts[0] == package.name and len(parts) > 1 and parts[1] in names:
                targets.add(parts[1])
            elif parts[0] == package.name and len(parts) == 1:
                targets.add("__init__")
        targets.discard(path.stem)
        edges[path.stem] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, each as the path of modules that closes it (depth-first search)."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            found.append([*path[path.index(node) :], node])
            return
        if node in done:
            return
        for target in sorted(edges.get(node, ())):
            visit(target, [*path, node])
        done.add(node)

    for node in sorted(edges):
        visit(node, [])
    return found


def test_compressors_never_imports_proxy() -> None:
    for path in sorted(PACKAGE.glob("*.py")):
        for line, module in imports_of(path):
            assert module.split(".")[0] != "proxy", f"compressors/{path.name}:{line} imports {module}"


def test_no_module_imports_another_in_a_cycle() -> None:
    assert cycles(graph(PACKAGE)) == []


def test_the_checker_sees_a_cycle_and_a_proxy_import(tmp_path: Path) -> None:
    package = tmp_path / "compressors"
    package.mkdir()
    (package / "a.py").write_text("def f():\n    from compressors.b import g\n")
    (package / "b.py").write_text("from compressors import c\n")
    (package / "c.py").write_text("import compressors.a\nimport proxy.server\n")
    assert cycles(graph(package)) == [["a", "b", "c", "a"]]
    assert (2, "proxy.server") in imports_of(package / "c.py")
