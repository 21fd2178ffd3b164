"""Writing new text back into a body by path, and the bytes a rewritten body goes upstream as.

Text is rewritten at the paths of a dialect's parts; the only other change is a key a dialect
adds (:meth:`Dialect.breakpoint_at`). Everything else reaches the upstream as the same value:
:func:`rewrite_body` copies only the containers on the way to a changed value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from proxy.apis.base import Dialect, JsonPath
from proxy.apis.splice import encode_rewrite

__all__ = ["forwarded_body", "rewrite_body"]


def _copy(container: Any) -> Any:
    return list(container) if isinstance(container, list) else dict(container)


def rewrite_body(
    body: Mapping[str, Any],
    texts: Mapping[JsonPath, str],
    drop: Sequence[JsonPath] = (),
    added: Mapping[JsonPath, Any] | None = None,
) -> dict[str, Any]:
    """A copy of ``body`` with the strings at ``texts`` paths replaced, the values at ``added``
    paths set (keys a dialect adds) and the messages at ``drop`` paths removed. Only containers on
    a changed path are copied; every other value is the original object."""
    root: dict[str, Any] = dict(body)
    copied: set[JsonPath] = {()}
    for path, text in {**texts, **(added or {})}.items():
        node: Any = root
        for depth, key in enumerate(path[:-1]):
            prefix = path[: depth + 1]
            if prefix not in copied:
                node[key] = _copy(node[key])
                copied.add(prefix)
            node = node[key]
        node[path[-1]] = text
    by_list: dict[JsonPath, set[int]] = {}
    for path in drop:
        by_list.setdefault(path[:-1], set()).add(int(path[-1]))
    for list_path, indexes in by_list.items():
        node = root
        for key in list_path[:-1]:
            node = node[key]
        node[list_path[-1]] = [m for i, m in enumerate(node[list_path[-1]]) if i not in indexes]
    return root


def forwarded_body(
    original: bytes,
    parsed: dict[str, Any],
    rewritten: dict[str, Any] | None,
    *,
    stream: bool,
    dialect: Dialect,
) -> tuple[bytes, bool]:
    """``(bytes to send upstream, usage injected)`` after the rewrite hook: the original bytes when
    neither the hook nor :meth:`Dialect.prepare_stream` changed anything, else the changed values
    spliced into them (:mod:`proxy.apis.splice`). If the new body cannot be encoded, the original bytes
    (fail open)."""
    injected = False
    if stream:
        prepared, injected = dialect.prepare_stream(rewritten if rewritten is not None else parsed)
        if injected:
            rewritten = prepared
    if rewritten is None:
        return original, False
    encoded = encode_rewrite(original, parsed, rewritten)
    return (encoded, injected) if encoded is not None else (original, False)
