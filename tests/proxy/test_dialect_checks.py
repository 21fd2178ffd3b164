"""Nothing outside ``proxy/apis/`` decides a dialect by comparing an API name or a route string.

A route carries its dialect (:class:`proxy.apis.Route`); code elsewhere asks the dialect
(``route.dialect.error_body(...)``), never ``api == "anthropic"`` or ``route.endswith("/messages")``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "proxy"
API_NAMES = {"openai", "anthropic", "azure"}
ROUTE_PIECES = ("/messages", "/chat/completions", "/completions", "/responses", "/openai")
# The config parser validates the ``api:`` setting of an upstream (its allowed values, the base_url
# each expects) and picks the upstream serving an API: the setting's own vocabulary, not a dialect.
ALLOWED = {PACKAGE / "config" / "model.py"}


def _dialect_literal(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
        text = node.value.decode("latin-1") if isinstance(node.value, bytes) else node.value
        if text in API_NAMES or any(piece in text for piece in ROUTE_PIECES):
            return text
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return next((found for elt in node.elts if (found := _dialect_literal(elt)) is not None), None)
    return None


def dialect_checks(source: str) -> list[tuple[int, str]]:
    """``(line, literal)`` of every comparison with, or prefix/suffix test against, an API name or route."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        operands: list[ast.AST] = []
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("startswith", "endswith", "removeprefix", "removesuffix"):
                operands = list(node.args)
        elif isinstance(node, ast.match_case) and isinstance(node.pattern, ast.MatchValue):
            operands = [node.pattern.value]
        found += [(node.lineno, text) for op in operands if (text := _dialect_literal(op)) is not None]
    return found


def test_no_dialect_is_decided_outside_apis() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] == "apis" or path in ALLOWED:
            continue
        offenders += [
            f"proxy/{path.relative_to(PACKAGE)}:{line} {text!r}"
            for line, text in dialect_checks(path.read_text())
        ]
    assert offenders == [], "ask the route's dialect (proxy.apis) instead:\n" + "\n".join(offenders)


def test_the_checker_sees_each_way_of_asking() -> None:
    source = """
if api == "anthropic": pass
if route.endswith("/messages"): pass
if route in ("/v1/chat/completions", "/v1/completions"): pass
if raw.startswith(b"/openai/"): pass
x = "anthropic"  # a name, not a decision
if kind == "text": pass
"""
    assert [line for line, _ in dialect_checks(source)] == [2, 3, 4, 5]
