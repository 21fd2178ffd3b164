"""From a body's messages to its parts: what every dialect shares once it has listed its items.

A dialect groups its blocks into items (a message or input item with its text, its role and
whether it may be dropped); :func:`parts_of` adds what needs the whole conversation (ages, turns,
the last user message).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.apis.base import JsonPath, Part

__all__ = ["Item", "compact_json", "content_texts", "parts_of", "sorted_json"]


@dataclass(slots=True)
class Item:
    """A message or input item with its text parts, before ages are known."""

    index: int
    role: str
    path: JsonPath
    texts: list[tuple[JsonPath, str]]
    tool_name: str | None = None
    assistant_turn: bool = False
    droppable: bool = False
    roles: frozenset[str] | None = None
    blank: str = ""
    tool_arguments: str | None = None


def content_texts(content: Any, base: JsonPath, types: frozenset[str]) -> tuple[tuple[JsonPath, str], ...]:
    """A string content, or the strings of its parts whose ``type`` is in ``types``."""
    if isinstance(content, str):
        return ((base, content),)
    if not isinstance(content, list):
        return ()
    return tuple(
        ((*base, j, "text"), piece["text"])
        for j, piece in enumerate(content)
        if isinstance(piece, Mapping) and piece.get("type") in types and isinstance(piece.get("text"), str)
    )


def parts_of(items: Sequence[Item]) -> list[Part]:
    """Every text of ``items`` as a :class:`Part`, in order."""
    last_user = max((k for k, it in enumerate(items) if it.role == "user"), default=-1)
    ages = _assistant_turns_after(items)
    parts: list[Part] = []
    turn = 0
    for k, item in enumerate(items):
        if item.assistant_turn and (k == 0 or not items[k - 1].assistant_turn):
            turn += 1
        for path, text in item.texts:
            parts.append(
                Part(
                    path=path,
                    text=text,
                    role=item.role,
                    roles=item.roles or frozenset({item.role}),
                    message=item.index,
                    message_path=item.path,
                    tool_name=item.tool_name,
                    age=ages[k],
                    last_user=k == last_user,
                    droppable=item.droppable,
                    turn=turn,
                    blank=item.blank,
                    tool_arguments=item.tool_arguments,
                )
            )
    return parts


def _assistant_turns_after(items: Sequence[Item]) -> list[int]:
    """For each item, how many assistant turns (runs of assistant items) follow it."""
    ages = [0] * len(items)
    turns = 0
    previous_assistant = False
    for k in range(len(items) - 1, -1, -1):
        ages[k] = turns
        if items[k].assistant_turn and not previous_assistant:
            turns += 1
        previous_assistant = items[k].assistant_turn
    return ages


def sorted_json(value: Any) -> str:
    """Compact JSON with sorted keys: how the cache model renders a non-text value."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def compact_json(value: Any) -> str:
    return orjson.dumps(value).decode()
