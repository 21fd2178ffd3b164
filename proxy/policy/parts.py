"""The text parts of a request body, and writing new text back by path.

Only text is ever rewritten: string message contents, ``text`` / ``input_text``
/ ``output_text`` parts of content arrays, Responses ``instructions`` and
``function_call_output`` outputs, completions prompts, and in Anthropic Messages
bodies the ``system`` text, message text blocks and ``tool_result`` content
(:mod:`proxy.anthropic` finds them). Everything else
(images, audio, files, tool calls and their arguments, tool definitions,
response formats, fields we do not know) is never looked at and reaches the
upstream as the same value: :func:`rewrite_body` copies only the containers on
the way to a changed string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from proxy import anthropic

__all__ = ["Part", "extract_parts", "rewrite_body"]

Path = tuple[str | int, ...]

_CHAT_TEXT_TYPES = frozenset({"text"})
_RESPONSES_TEXT_TYPES = frozenset({"input_text", "output_text", "text"})
_INSTRUCTION_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class Part:
    """One rewritable string in a body.

    ``message`` is the index of the message / input item it belongs to (-1 for
    ``instructions``, the prompt index for completions); ``message_path`` is that
    message's path (what ``action: drop`` removes). ``age`` counts the assistant
    turns that followed the message; ``last_user`` marks the last user message.
    ``turn`` counts the assistant replies (runs of assistant items) up to and including the
    message: the parts of turns ``<= turn`` are the request in which the part was first sent.
    """

    path: Path
    text: str
    role: str
    roles: frozenset[str]  # roles a rule may match it by
    message: int
    message_path: Path | None
    tool_name: str | None = None
    age: int = 0
    last_user: bool = False
    droppable: bool = False  # removing the whole message leaves a valid request
    turn: int = 0
    blank: str = ""  # what the text becomes when dropped but its message must stay


@dataclass(slots=True)
class _Item:
    """A message or input item with its text parts, before ages are known."""

    index: int
    role: str
    path: Path
    texts: list[tuple[Path, str]]
    tool_name: str | None
    assistant_turn: bool
    droppable: bool
    roles: frozenset[str] | None = None
    blank: str = ""


def _content_texts(content: Any, base: Path, types: frozenset[str]) -> list[tuple[Path, str]]:
    if isinstance(content, str):
        return [(base, content)]
    if not isinstance(content, list):
        return []
    found: list[tuple[Path, str]] = []
    for j, piece in enumerate(content):
        if isinstance(piece, Mapping) and piece.get("type") in types and isinstance(piece.get("text"), str):
            found.append(((*base, j, "text"), piece["text"]))
    return found


def _chat_items(body: Mapping[str, Any]) -> list[_Item]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    call_names: dict[str, str] = {}
    items: list[_Item] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or not isinstance(msg.get("role"), str):
            continue
        role = msg["role"]
        for call in msg.get("tool_calls") or ():
            if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
                name = call["function"].get("name")
                if isinstance(call.get("id"), str) and isinstance(name, str):
                    call_names[call["id"]] = name
        tool_name = None
        if role in ("tool", "function"):
            call_id = msg.get("tool_call_id")
            tool_name = msg.get("name") if isinstance(msg.get("name"), str) else None
            if isinstance(call_id, str) and call_id in call_names:
                tool_name = call_names[call_id]
        texts = _content_texts(msg.get("content"), ("messages", i, "content"), _CHAT_TEXT_TYPES)
        # Tool results must follow their call and a message with tool_calls must keep them.
        droppable = role in ("user", "assistant", "system", "developer") and not msg.get("tool_calls")
        items.append(_Item(i, role, ("messages", i), texts, tool_name, role == "assistant", droppable))
    return items


def _responses_item(i: int, item: Any, call_names: dict[str, str]) -> _Item | None:
    if isinstance(item, str):
        return _Item(i, "user", ("input", i), [(("input", i), item)], None, False, True)
    if not isinstance(item, Mapping):
        return None
    kind = item.get("type", "message")
    path: Path = ("input", i)
    if kind == "function_call":
        if isinstance(item.get("call_id"), str) and isinstance(item.get("name"), str):
            call_names[item["call_id"]] = item["name"]
        return _Item(i, "assistant", path, [], None, True, False)
    if kind == "function_call_output":
        texts = _content_texts(item.get("output"), (*path, "output"), _RESPONSES_TEXT_TYPES)
        name = call_names.get(item.get("call_id") or "")
        return _Item(i, "tool", path, texts, name, False, False)
    if kind != "message" or not isinstance(item.get("role"), str):
        return _Item(i, str(kind), path, [], None, False, False)
    role = item["role"]
    texts = _content_texts(item.get("content"), (*path, "content"), _RESPONSES_TEXT_TYPES)
    return _Item(i, role, path, texts, None, role == "assistant", True)


def _responses_items(body: Mapping[str, Any]) -> list[_Item]:
    items: list[_Item] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        items.append(
            _Item(-1, "system", ("instructions",), [(("instructions",), instructions)], None, False, False)
        )
        items[-1].roles = _INSTRUCTION_ROLES
    value = body.get("input")
    if isinstance(value, str):
        items.append(_Item(0, "user", ("input",), [(("input",), value)], None, False, False))
    elif isinstance(value, list):
        call_names: dict[str, str] = {}
        for i, raw in enumerate(value):
            item = _responses_item(i, raw, call_names)
            if item is not None:
                items.append(item)
    return items


def _completions_items(body: Mapping[str, Any]) -> list[_Item]:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [_Item(0, "user", ("prompt",), [(("prompt",), prompt)], None, False, False)]
    if isinstance(prompt, list) and all(isinstance(p, str) for p in prompt):
        return [
            _Item(i, "user", ("prompt", i), [(("prompt", i), p)], None, False, False)
            for i, p in enumerate(prompt)
        ]
    return []  # token-id prompts are not text


# Anthropic rejects empty text blocks: a dropped one keeps this (a tool_result may be empty).
_ANTHROPIC_BLANK = "[omitted]"


def _anthropic_items(body: Mapping[str, Any]) -> list[_Item]:
    """One item per tool_result (role ``tool``), one per system prompt, and one per message
    for its text blocks; messages are never dropped (roles must alternate)."""
    items: list[_Item] = []
    by_message: dict[int, _Item] = {}
    for block in anthropic.blocks(body):
        if block.kind == "tool_result":
            items.append(
                _Item(
                    block.message,
                    "tool",
                    ("messages", block.message),
                    list(block.texts),
                    block.tool_name,
                    False,
                    False,
                )
            )
            continue
        if not block.texts and block.role != "assistant":
            continue  # an assistant message of tool_use / thinking blocks still counts as a turn
        item = by_message.get(block.message)
        if item is None:
            path: Path = ("system",) if block.message < 0 else ("messages", block.message)
            item = _Item(block.message, block.role, path, [], None, block.role == "assistant", False)
            item.blank = _ANTHROPIC_BLANK
            by_message[block.message] = item
            items.append(item)
        item.texts.extend(block.texts)
    return items


def extract_parts(route: str, body: Mapping[str, Any]) -> list[Part]:
    """Every rewritable text part of ``body`` for ``route``, in body order."""
    if route.endswith("/messages"):
        items = _anthropic_items(body)
    elif route.endswith("/chat/completions"):
        items = _chat_items(body)
    elif route.endswith("/responses"):
        items = _responses_items(body)
    elif route.endswith("/completions"):
        items = _completions_items(body)
    else:
        return []
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
                )
            )
    return parts


def _assistant_turns_after(items: Sequence[_Item]) -> list[int]:
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


def _copy(container: Any) -> Any:
    return list(container) if isinstance(container, list) else dict(container)


def rewrite_body(
    body: Mapping[str, Any], texts: Mapping[Path, str], drop: Sequence[Path] = ()
) -> dict[str, Any]:
    """A copy of ``body`` with the strings at ``texts`` paths replaced and the
    messages at ``drop`` paths removed. Only containers on a changed path are
    copied; every other value is the original object."""
    root: dict[str, Any] = dict(body)
    copied: set[Path] = {()}
    for path, text in texts.items():
        node: Any = root
        for depth, key in enumerate(path[:-1]):
            prefix = path[: depth + 1]
            if prefix not in copied:
                node[key] = _copy(node[key])
                copied.add(prefix)
            node = node[key]
        node[path[-1]] = text
    by_list: dict[Path, set[int]] = {}
    for path in drop:
        by_list.setdefault(path[:-1], set()).add(int(path[-1]))
    for list_path, indexes in by_list.items():
        node = root
        for key in list_path[:-1]:
            node = node[key]
        node[list_path[-1]] = [m for i, m in enumerate(node[list_path[-1]]) if i not in indexes]
    return root
