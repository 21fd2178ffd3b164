"""The package's layers point one way (docs/design.md):
cli -> server -> {policy, audit} -> store -> config -> apis -> vocabulary.

A module may import from its own room and from any room below it, never from a room above or beside it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "proxy"

# Rank of each room: a module may import rooms of strictly lower rank (and its own room).
RANK: dict[str, int] = {
    "vocabulary": 0,
    "apis": 1,  # the API dialects: anything above may ask a route's dialect
    "config": 2,
    "store": 3,
    "policy": 4,
    "audit": 4,
    "server": 5,
    "cli": 6,
}
# The shared vocabulary: at most six modules (issue 19); anything else lives in a room.
VOCABULARY = {"exchange", "errors", "metrics", "logs", "__init__", "__main__"}


def room_of(module: str) -> str:
    """``proxy.server.app`` -> ``server``; top-level modules are the shared vocabulary."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return "cli"  # ``python -m proxy`` is an entry point: it sits at the top with the commands
    if len(parts) >= 2 and parts[1] in RANK:
        return parts[1]
    return "vocabulary"


def imports_of(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return [(line, name) for line, name in found if name == "proxy" or name.startswith("proxy.")]


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_sits_in_a_known_room() -> None:
    for path in modules():
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:
            assert rel.stem in VOCABULARY, f"{rel}: top level keeps only the shared vocabulary"
        else:
            assert rel.parts[0] in RANK, f"{rel}: unknown room {rel.parts[0]!r}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_runs_up_or_sideways(path: Path) -> None:
    rel = path.relative_to(PACKAGE).with_suffix("")
    here = room_of(".".join(("proxy", *rel.parts)))
    for line, target in imports_of(path):
        there = room_of(target)
        if there == here:
            continue
        assert RANK[there] < RANK[here], (
            f"proxy/{rel}.py:{line} imports {target} ({there}) from {here}: layers are "
            "cli -> server -> {policy, audit} -> store -> config -> apis -> vocabulary"
        )


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from proxy.server.app import create_app\nimport proxy.cli.main\nfrom proxy.errors import x\n"
    )
    found = [room_of(name) for _, name in imports_of(bad)]
    assert found == ["server", "cli", "vocabulary"]
    assert RANK["server"] > RANK["audit"]


# Storage never imports presentation (report tables, commands, rich): shared pieces such as report rows
# live below both (proxy/audit/rows.py).
PRESENTATION = ("proxy.audit.report", "proxy.cli", "rich")
STORAGE = ("audit/index.py", "audit/sink.py", "audit/chainfile.py", "audit/record.py", "audit/rows.py")


def presentation_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
    return [(line, n) for line, n in found if any(n == p or n.startswith(p + ".") for p in PRESENTATION)]


@pytest.mark.parametrize("storage", STORAGE)
def test_storage_does_not_import_presentation(storage: str) -> None:
    assert presentation_imports(PACKAGE / storage) == [], f"proxy/{storage} imports presentation"


def test_the_checker_sees_storage_importing_presentation(tmp_path: Path) -> None:
    bad = tmp_path / "index.py"
    bad.write_text(
        "from proxy.audit.report import Row\nimport rich.table\nfrom proxy.audit.rows import Row\n"
    )
    assert presentation_imports(bad) == [(1, "proxy.audit.report"), (2, "rich.table")]


def exported(module: str) -> set[str] | None:
    """The names in ``module``'s ``__all__`` (read from its source), or None without one."""
    parts = module.split(".")[1:]
    path = PACKAGE.joinpath(*parts).with_suffix(".py")
    if not path.is_file():
        path = PACKAGE.joinpath(*parts, "__init__.py")
    for node in ast.parse(path.read_text(), filename=str(path)).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return {str(ast.literal_eval(item)) for item in node.value.elts}  # type: ignore[attr-defined]
    return None


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_what_a_module_imports_from_another_is_in_its_all(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not (isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("proxy.")):
            continue
        names = exported(node.module)
        if names is None:
            continue  # a package's __init__ without __all__
        hidden = [alias.name for alias in node.names if alias.name not in names]
        assert not hidden, (
            f"{path.relative_to(PACKAGE)}:{node.lineno} imports {hidden} from {node.module}, not in its __all__"
        )
