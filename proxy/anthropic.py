"""The Anthropic Messages body: its blocks in cache-prefix order, their text, their breakpoints.

Anthropic caches a prompt prefix in the order ``tools`` -> ``system`` -> ``messages``; a
``cache_control`` object on a block marks a breakpoint (the prefix up to and including that
block is cached, for 5 minutes or, with ``"ttl": "1h"``, an hour). :func:`blocks` lists a body's
blocks in that order with what a policy may rewrite in each:

* ``system`` as a string, or its ``text`` blocks;
* ``text`` blocks of user and assistant messages (a string ``content`` is one text block);
* ``tool_result`` content, a string or ``text`` blocks, as role ``tool``.

Everything else is listed (so breakpoints keep their positions) but has no rewritable text:
``tool_use`` blocks and their ``input``, ``thinking`` / ``redacted_thinking`` (signed), images,
documents, tool definitions. ``cache_control`` objects are never part of a rewritable path, so
no breakpoint is added, removed or moved. This module reads bodies only; writing new text back
is :func:`proxy.policy.parts.rewrite_body`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Block", "Breakpoint", "blocks", "breakpoints", "other_texts"]

Path = tuple[str | int, ...]

SYSTEM_MESSAGE = -1  # Block.message of system blocks
TOOLS_MESSAGE = -2  # Block.message of tool definitions


@dataclass(frozen=True, slots=True)
class Block:
    """One block of the cache prefix.

    ``path`` locates the block in the body (``("system",)`` for a string system prompt,
    ``("messages", i, "content")`` for a string message content); ``texts`` are its rewritable
    strings with their paths; ``role`` is ``tool`` for a ``tool_result``.
    """

    path: Path
    kind: str  # text | tool_use | tool_result | thinking | image | tool | ...
    role: str  # system | user | assistant | tool | tools
    message: int  # message index; SYSTEM_MESSAGE, TOOLS_MESSAGE
    texts: tuple[tuple[Path, str], ...] = ()
    tool_name: str | None = None
    cache_control: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """A ``cache_control`` marker: the index of its block in :func:`blocks` order, and its TTL."""

    block: int
    path: Path
    ttl: str  # "5m" | "1h"


def _cache_control(value: Any) -> Mapping[str, Any] | None:
    if isinstance(value, Mapping):
        marker = value.get("cache_control")
        if isinstance(marker, Mapping):
            return marker
    return None


def _texts_of(content: Any, base: Path) -> tuple[tuple[Path, str], ...]:
    """A tool_result's content: a string, or the strings of its text blocks."""
    if isinstance(content, str):
        return ((base, content),)
    if not isinstance(content, list):
        return ()
    return tuple(
        ((*base, k, "text"), piece["text"])
        for k, piece in enumerate(content)
        if isinstance(piece, Mapping) and piece.get("type") == "text" and isinstance(piece.get("text"), str)
    )


def _system_blocks(system: Any) -> list[Block]:
    if isinstance(system, str):
        return [Block(("system",), "text", "system", SYSTEM_MESSAGE, ((("system",), system),))]
    if not isinstance(system, list):
        return []
    out = []
    for j, piece in enumerate(system):
        if not isinstance(piece, Mapping):
            continue
        kind = str(piece.get("type"))
        path: Path = ("system", j)
        text = piece.get("text")
        texts = (((*path, "text"), text),) if kind == "text" and isinstance(text, str) else ()
        out.append(Block(path, kind, "system", SYSTEM_MESSAGE, texts, None, _cache_control(piece)))
    return out


def _content_block(i: int, j: int, role: str, piece: Mapping[str, Any], names: dict[str, str]) -> Block:
    kind = str(piece.get("type"))
    path: Path = ("messages", i, "content", j)
    marker = _cache_control(piece)
    if kind == "text" and isinstance(piece.get("text"), str) and role in ("user", "assistant"):
        return Block(path, kind, role, i, (((*path, "text"), piece["text"]),), None, marker)
    if kind == "tool_result":
        name = (
            names.get(piece.get("tool_use_id") or "") if isinstance(piece.get("tool_use_id"), str) else None
        )
        texts = _texts_of(piece.get("content"), (*path, "content"))
        return Block(path, kind, "tool", i, texts, name, marker)
    is_call = kind in ("tool_use", "server_tool_use")
    if is_call and isinstance(piece.get("id"), str) and isinstance(piece.get("name"), str):
        names[piece["id"]] = piece["name"]
    return Block(path, kind, role, i, (), None, marker)


def _message_blocks(messages: Any) -> list[Block]:
    if not isinstance(messages, list):
        return []
    names: dict[str, str] = {}  # tool_use id -> tool name
    out: list[Block] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or not isinstance(msg.get("role"), str):
            continue
        role = msg["role"]
        content = msg.get("content")
        if isinstance(content, str):
            path: Path = ("messages", i, "content")
            texts = ((path, content),) if role in ("user", "assistant") else ()
            out.append(Block(path, "text", role, i, texts))
        elif isinstance(content, list):
            for j, piece in enumerate(content):
                if isinstance(piece, Mapping):
                    out.append(_content_block(i, j, role, piece, names))
    return out


def blocks(body: Mapping[str, Any]) -> list[Block]:
    """The body's blocks in cache-prefix order: tools, system, messages."""
    tools = body.get("tools")
    out = [
        Block(("tools", k), "tool", "tools", TOOLS_MESSAGE, (), None, _cache_control(tool))
        for k, tool in enumerate(tools if isinstance(tools, list) else ())
    ]
    out += _system_blocks(body.get("system"))
    out += _message_blocks(body.get("messages"))
    return out


def breakpoints(body: Mapping[str, Any], found: list[Block] | None = None) -> list[Breakpoint]:
    """Every ``cache_control`` marker of ``body``, in prefix order."""
    listed = found if found is not None else blocks(body)
    return [
        Breakpoint(k, b.path, "1h" if b.cache_control.get("ttl") == "1h" else "5m")
        for k, b in enumerate(listed)
        if b.cache_control is not None
    ]


def other_texts(body: Mapping[str, Any]) -> list[str]:
    """What the upstream also counts as input besides the rewritable text: tool definitions,
    tool calls' inputs, thinking (as compact JSON). Images and documents are not estimated."""
    out: list[str] = []
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        out.append(orjson.dumps(tools).decode())
    for block in blocks(body):
        if block.kind in ("tool_use", "server_tool_use", "thinking"):
            node: Any = body
            for key in block.path:
                node = node[key]
            value = node.get("input") if block.kind != "thinking" else node.get("thinking")
            out.append(value if isinstance(value, str) else orjson.dumps(value).decode())
    return out
