"""Anthropic Messages (``/v1/messages``), and the Anthropic API's other routes.

Anthropic caches a prompt prefix in the order ``tools`` -> ``system`` -> ``messages``; a
``cache_control`` object on a block marks a breakpoint (the prefix up to and including that
block is cached, for 5 minutes or, with ``"ttl": "1h"``, an hour). :meth:`MessagesDialect.walk`
lists a body's blocks in that order with what a policy may rewrite in each:

* ``system`` as a string, or its ``text`` blocks;
* ``text`` blocks of user and assistant messages (a string ``content`` is one text block);
* ``tool_result`` content, a string or ``text`` blocks, as role ``tool`` (naming the
  ``tool_use`` it answers, with that call's ``input`` as JSON).

Everything else is listed (so breakpoints keep their positions) but has no rewritable text:
``tool_use`` blocks and their ``input``, ``thinking`` / ``redacted_thinking`` (signed), images,
documents, tool definitions. ``cache_control`` objects are never part of a rewritable path, so
no breakpoint is added, removed or moved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.apis.base import Block, DialectBase, JsonPath, Part, StreamItem, TextDelta, ToolCall
from proxy.apis.items import Item, compact_json, content_texts, parts_of, sorted_json
from proxy.apis.stream_usage import UsageTap, event_data
from proxy.errors import ProxyError
from proxy.exchange import Payload

__all__ = [
    "ANTHROPIC",
    "MESSAGES",
    "AnthropicDialect",
    "Breakpoint",
    "MessagesDialect",
    "MessagesStreamReader",
    "MessagesUsageTap",
    "anthropic_usage",
    "breakpoints",
]

SYSTEM_MESSAGE = -1  # Block.message of system blocks
TOOLS_MESSAGE = -2  # Block.message of tool definitions
_TEXT_TYPES = frozenset({"text"})
_CALLS = ("tool_use", "server_tool_use")
# Anthropic rejects empty text blocks: a dropped one keeps this (a tool_result may be empty).
_BLANK = "[omitted]"
# Anthropic's error type for each of our kinds (https://docs.anthropic.com/en/api/errors).
_ERROR_TYPES = {
    "unauthorized": "authentication_error",
    "too_large": "request_too_large",
    "not_found": "not_found_error",
    "bad_path": "invalid_request_error",
}


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """A ``cache_control`` marker: the index of its block in walk order, and its TTL."""

    block: int
    path: JsonPath
    ttl: str  # "5m" | "1h"


MAX_BREAKPOINTS = 4  # cache_control markers Anthropic accepts in one request


def _ttl(value: Any) -> str | None:
    """The TTL of a ``cache_control`` on ``value``, or None without one."""
    if isinstance(value, Mapping):
        marker = value.get("cache_control")
        if isinstance(marker, Mapping):
            return "1h" if marker.get("ttl") == "1h" else "5m"
    return None


def _system_blocks(system: Any) -> list[Block]:
    if isinstance(system, str):
        return [Block(("system",), "text", "system", SYSTEM_MESSAGE, ((("system",), system),), node=system)]
    out = []
    for j, piece in enumerate(system if isinstance(system, list) else ()):
        if not isinstance(piece, Mapping):
            continue
        kind = str(piece.get("type"))
        path: JsonPath = ("system", j)
        text = piece.get("text")
        texts = (((*path, "text"), text),) if kind == "text" and isinstance(text, str) else ()
        out.append(Block(path, kind, "system", SYSTEM_MESSAGE, texts, breakpoint=_ttl(piece), node=piece))
    return out


def _content_block(i: int, j: int, role: str, piece: Mapping[str, Any], calls: dict[str, Any]) -> Block:
    kind = str(piece.get("type"))
    path: JsonPath = ("messages", i, "content", j)
    ttl = _ttl(piece)
    if kind == "text" and isinstance(piece.get("text"), str) and role in ("user", "assistant"):
        return Block(path, kind, role, i, (((*path, "text"), piece["text"]),), breakpoint=ttl, node=piece)
    if kind == "tool_result":
        call = calls.get(piece["tool_use_id"]) if isinstance(piece.get("tool_use_id"), str) else None
        name, args = (call[0], compact_json(call[1])) if call is not None else (None, None)
        texts = content_texts(piece.get("content"), (*path, "content"), _TEXT_TYPES)
        return Block(path, kind, "tool", i, texts, name, args, ttl, piece)
    if kind in _CALLS and isinstance(piece.get("id"), str) and isinstance(piece.get("name"), str):
        calls[piece["id"]] = (piece["name"], piece.get("input") if piece.get("input") is not None else {})
    return Block(path, kind, role, i, breakpoint=ttl, node=piece)


def _message_blocks(messages: Any) -> list[Block]:
    calls: dict[str, Any] = {}  # tool_use id -> (tool name, input)
    out: list[Block] = []
    for i, msg in enumerate(messages if isinstance(messages, list) else ()):
        if not isinstance(msg, Mapping) or not isinstance(msg.get("role"), str):
            continue
        role = msg["role"]
        content = msg.get("content")
        if isinstance(content, str):
            path: JsonPath = ("messages", i, "content")
            texts = ((path, content),) if role in ("user", "assistant") else ()
            out.append(Block(path, "text", role, i, texts, node=content))
        elif isinstance(content, list):
            out += [
                _content_block(i, j, role, p, calls) for j, p in enumerate(content) if isinstance(p, Mapping)
            ]
    return out


def _items(blocks: Sequence[Block]) -> list[Item]:
    """One item per tool_result (role ``tool``), one per system prompt, and one per message
    for its text blocks; messages are never dropped (roles must alternate)."""
    items: list[Item] = []
    by_message: dict[int, Item] = {}
    for block in blocks:
        if block.kind == "tool_result":
            path: JsonPath = ("messages", block.message)
            items.append(Item(block.message, "tool", path, list(block.texts), block.tool_name))
            items[-1].tool_arguments = block.tool_arguments
            continue
        if block.message == TOOLS_MESSAGE or (not block.texts and block.role != "assistant"):
            continue  # an assistant message of tool_use / thinking blocks still counts as a turn
        item = by_message.get(block.message)
        if item is None:
            path = ("system",) if block.message < 0 else ("messages", block.message)
            item = Item(block.message, block.role, path, [], None, block.role == "assistant", blank=_BLANK)
            by_message[block.message] = item
            items.append(item)
        item.texts.extend(block.texts)
    return items


def breakpoints(body: Mapping[str, Any], blocks: Sequence[Block] | None = None) -> list[Breakpoint]:
    """Every ``cache_control`` marker of ``body``, in prefix order."""
    listed = MESSAGES.walk(body) if blocks is None else blocks
    return [Breakpoint(k, b.path, b.breakpoint) for k, b in enumerate(listed) if b.breakpoint is not None]


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _detail(raw: Mapping[str, Any], field: str) -> int | None:
    details = raw.get("cache_creation")
    return _int(details.get(field)) if isinstance(details, Mapping) else None


def anthropic_usage(raw: Mapping[str, Any] | None) -> dict[str, int | None] | None:
    """Anthropic's usage: ``input_tokens`` excludes cached tokens, so the prompt is the sum of
    input, cache writes and cache reads; writes are split into 5-minute and 1-hour caches
    (``cache_creation.ephemeral_5m_input_tokens`` / ``ephemeral_1h_input_tokens``; without that
    split every write counts as 5-minute, Anthropic's default TTL)."""
    if not isinstance(raw, Mapping):
        return None
    fresh = _int(raw.get("input_tokens"))
    written = _int(raw.get("cache_creation_input_tokens")) or 0
    read = _int(raw.get("cache_read_input_tokens")) or 0
    one_hour = _detail(raw, "ephemeral_1h_input_tokens")
    five_min = _detail(raw, "ephemeral_5m_input_tokens")
    if one_hour is None and five_min is None:
        five_min, one_hour = written, 0
    return {
        "prompt_tokens": None if fresh is None else fresh + written + read,
        "completion_tokens": _int(raw.get("output_tokens")),
        "cached_tokens": read,
        "reasoning_tokens": None,
        "input_tokens": fresh,
        "cache_write_tokens": written,
        "cache_write_5m_tokens": five_min or 0,
        "cache_write_1h_tokens": one_hour or 0,
    }


class MessagesUsageTap(UsageTap):
    """Per Anthropic stream: usage from ``message_start`` updated by each ``message_delta``
    (whose counts are cumulative). Frames pass unchanged, always."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(False)

    def frame(self, data: bytes) -> bytes | None:
        if b'"usage"' not in data:
            return data
        event = _event(data)
        if event is None:
            return data
        kind = event.get("type")
        if kind == "message_start" and isinstance(event.get("message"), dict):
            usage = event["message"].get("usage")
            if isinstance(usage, dict):
                self.usage = dict(usage)
            if isinstance(event["message"].get("model"), str):
                self.model = event["message"]["model"]
        elif kind == "message_delta" and isinstance(event.get("usage"), dict):
            merged = dict(self.usage or {})
            merged.update({k: v for k, v in event["usage"].items() if v is not None})
            self.usage = merged
        return data


def _event(frame: bytes) -> dict[str, Any] | None:
    payload = event_data(frame)
    if payload is None:
        return None
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


class AnthropicDialect(DialectBase):
    """An Anthropic route without a prompt (``/v1/models``, ``/v1/messages/count_tokens``); the
    base of :class:`MessagesDialect`."""

    api = "anthropic"
    caching = "breakpoints"
    estimated_tokens = True  # no offline Claude tokenizer: counts are o200k estimates
    key_hint = "'x-api-key: <key>'"

    by_deployment = False

    def usage(self, raw: Mapping[str, Any] | None) -> dict[str, int | None] | None:
        return anthropic_usage(raw)

    def usage_tap(self, injected: bool) -> UsageTap:
        return MessagesUsageTap()

    def prepare_stream(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        return body, False  # message_start and message_delta always carry usage

    def prepare_unparsed_stream(self, body: bytes) -> tuple[Payload, bool]:
        return body, False

    def error_body(self, failure: ProxyError) -> bytes:
        kind = _ERROR_TYPES.get(failure.kind, "api_error")
        return orjson.dumps({"type": "error", "error": {"type": kind, "message": failure.message}})

    def stream_error_frame(self, failure: ProxyError) -> bytes:
        # Anthropic's SDKs raise an APIError for an `error` event.
        return b"event: error\ndata: " + self.error_body(failure) + b"\n\n"

    def key_header(self, key: bytes) -> tuple[bytes, bytes]:
        return (b"x-api-key", key)

    def upstream_path(self, raw_path: bytes) -> bytes:
        """An Anthropic ``base_url`` is the API root: ``/v1/...`` is sent."""
        return raw_path if raw_path.startswith(b"/v1/") or raw_path == b"/v1" else b"/v1" + raw_path


class MessagesDialect(AnthropicDialect):
    route: str | None = "/v1/messages"

    def walk(self, body: Mapping[str, Any]) -> tuple[Block, ...]:
        """The body's blocks in cache-prefix order: tools, system, messages."""
        tools = body.get("tools")
        out = [
            Block(("tools", k), "tool", "tools", TOOLS_MESSAGE, breakpoint=_ttl(tool), node=tool)
            for k, tool in enumerate(tools if isinstance(tools, list) else ())
        ]
        out += _system_blocks(body.get("system"))
        out += _message_blocks(body.get("messages"))
        return tuple(out)

    def parts(self, body: Mapping[str, Any], blocks: Sequence[Block] | None = None) -> list[Part]:
        return parts_of(_items(self.walk(body) if blocks is None else blocks))

    def breakpoint_at(self, blocks: Sequence[Block], index: int) -> tuple[JsonPath, Any] | None:
        """A content block of a message (not a string ``content``) with no marker, before the
        body's last one (a marker after it would write a prefix the client never asked to cache),
        while the body has fewer than :data:`MAX_BREAKPOINTS`. A 1-hour TTL must not follow a
        5-minute one, so the new marker takes the TTL of the last, which follows it."""
        marked = [k for k, b in enumerate(blocks) if b.breakpoint is not None]
        block = blocks[index]
        if (
            len(marked) >= MAX_BREAKPOINTS
            or not marked
            or index >= marked[-1]
            or block.breakpoint is not None
            or not isinstance(block.node, Mapping)
            or block.path[:1] != ("messages",)
            or len(block.path) != 4
        ):
            return None
        ttl = blocks[marked[-1]].breakpoint
        value = {"type": "ephemeral", "ttl": "1h"} if ttl == "1h" else {"type": "ephemeral"}
        return (*block.path, "cache_control"), value

    def other_texts(self, body: Mapping[str, Any], blocks: Sequence[Block] | None = None) -> list[str]:
        """What the upstream also counts as input besides the rewritable text: tool definitions,
        tool calls' inputs, thinking (as compact JSON). Images and documents are not estimated."""
        out: list[str] = []
        tools = body.get("tools")
        if isinstance(tools, list) and tools:
            out.append(compact_json(tools))
        for block in self.walk(body) if blocks is None else blocks:
            if block.kind in (*_CALLS, "thinking"):
                value = block.node.get("input") if block.kind != "thinking" else block.node.get("thinking")
                out.append(value if isinstance(value, str) else compact_json(value))
        return out

    def cache_text(self, block: Block) -> str | None:
        """A block's role and text; one without rewritable text counts as its JSON."""
        if block.texts:
            return block.role + "\n" + "\n".join(t for _, t in block.texts)
        value = block.node
        if isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k != "cache_control"}
        return block.role + "\n" + (value if isinstance(value, str) else sorted_json(value))

    def tool_calls(self, response: Mapping[str, Any]) -> list[ToolCall]:
        content = self.assistant_turn(response)["content"]
        return [
            _call(block) for block in content if isinstance(block, Mapping) and block.get("type") in _CALLS
        ]

    def stream_reader(self) -> MessagesStreamReader:
        return MessagesStreamReader()

    def assistant_turn(self, response: Mapping[str, Any]) -> dict[str, Any]:
        content = response.get("content")
        return {"role": "assistant", "content": list(content) if isinstance(content, list) else []}

    def assistant_from(self, text: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        content += [{"type": "tool_use", "id": c.id, "name": c.name, "input": c.input} for c in calls]
        return {"role": "assistant", "content": content}

    def follow_up(
        self, body: Mapping[str, Any], assistant: Any, results: Sequence[tuple[str, str]]
    ) -> dict[str, Any]:
        answers = [
            {"type": "tool_result", "tool_use_id": call_id, "content": text} for call_id, text in results
        ]
        messages = [*(body.get("messages") or ()), assistant, {"role": "user", "content": answers}]
        return {**body, "messages": messages}

    def add_tool(
        self, body: Mapping[str, Any], name: str, description: str, schema: Mapping[str, Any]
    ) -> dict[str, Any]:
        tool = {"name": name, "description": description, "input_schema": schema}
        return {**body, "tools": [*(body.get("tools") or ()), tool]}


def _call(block: Mapping[str, Any]) -> ToolCall:
    value = block.get("input")
    return ToolCall(str(block.get("id") or ""), str(block.get("name") or ""), compact_json(value or {}))


class MessagesStreamReader:
    """``text_delta`` pieces are text; a ``tool_use`` block opened by ``content_block_start``
    gathers its ``input_json_delta`` pieces and is complete at its ``content_block_stop``."""

    def __init__(self) -> None:
        self._open: dict[int, list[str]] = {}  # block index -> [id, name, partial json...]

    def feed(self, frame: bytes) -> list[StreamItem]:
        event = _event(frame)
        if event is None:
            return []
        kind, index = event.get("type"), event.get("index")
        if kind == "content_block_start" and isinstance(index, int):
            block = event.get("content_block")
            if isinstance(block, dict) and block.get("type") in _CALLS:
                start = compact_json(block["input"]) if block.get("input") else ""
                self._open[index] = [str(block.get("id") or ""), str(block.get("name") or ""), start]
        elif kind == "content_block_delta" and isinstance(event.get("delta"), dict):
            delta = event["delta"]
            if delta.get("type") == "text_delta" and isinstance(delta.get("text"), str):
                return [TextDelta(delta["text"])]
            if delta.get("type") == "input_json_delta" and index in self._open:
                self._open[index].append(str(delta.get("partial_json") or ""))
        elif kind == "content_block_stop" and index in self._open:
            return [self._complete(self._open.pop(index))]
        return []

    @staticmethod
    def _complete(call: list[str]) -> ToolCall:
        return ToolCall(call[0], call[1], "".join(call[2:]) or "{}")

    def close(self) -> list[StreamItem]:
        done: list[StreamItem] = [self._complete(call) for _, call in sorted(self._open.items())]
        self._open.clear()
        return done


ANTHROPIC = AnthropicDialect()
MESSAGES = MessagesDialect()
