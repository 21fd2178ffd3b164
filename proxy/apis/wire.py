"""What the expand loop needs of chat completions and Anthropic Messages, JSON and SSE.

One :class:`Wire` per dialect (it lives in the dialect room: only here may a dialect be named): add the tool to a body, find tool calls in a response, build the
follow-up turn, remove calls from a response; and per upstream stream a :class:`Cut`, which passes
frames to the client until a tool call starts, holds the rest, and at the end either releases what
it held as it came or writes end frames carrying only the calls the client should see. A
continuation's cut rewrites its frames to continue the client's stream (the chat chunk id; the
Anthropic content block indexes, without a second ``message_start``).

The JSON half is the dialect protocol's (proxy/apis: ``add_tool``, ``tool_calls``, ``assistant_from``,
``follow_up``); the stream half (holding, releasing, rewriting frames) is the loop's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from proxy.apis import Dialect, ToolCall

__all__ = ["DESCRIPTION", "SCHEMA", "TOOL_NAME", "Call", "Cut", "Wire", "wire_for"]

TOOL_NAME = "tersegate_expand"
DESCRIPTION = (
    "Get back text that was omitted from a tool output. Use it only when an omission marker such as "
    '[912 lines like "..." omitted; lines=12-923; hash=<24 hex>] hides something you need to continue. '
    "Pass the marker's hash; add a query (a word, path, test name or error) to get only the matching "
    "lines with their line numbers instead of the whole output."
)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "hash": {"type": "string", "description": "the hash= value of the omission marker"},
        "query": {"type": "string", "description": "optional: return only lines containing this"},
    },
    "required": ["hash"],
}


Call = ToolCall  # id, name, arguments (JSON text); ``input`` parses them


def _data(frame: bytes) -> bytes | None:
    lines = [line[5:].lstrip(b" ") for line in frame.splitlines() if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _load(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


@dataclass(slots=True)
class Cut:
    """One upstream stream as the client sees it. ``feed`` returns a frame to send now or None
    (held, or dropped); after the stream: ``calls``, ``text`` (what the client was sent), then
    ``release()`` or ``end_with(calls)``."""

    prior: Cut | None = None
    holding: bool = False
    held: list[bytes] = field(default_factory=list)
    text: str = ""
    parts: dict[int, list[str]] = field(default_factory=dict)  # index -> [id, name, arguments...]
    ident: str | None = None  # chat: the chunk id the client saw first
    base: dict[str, Any] = field(default_factory=dict)  # chat: a chunk's fields, for end frames
    blocks: int = 0  # messages: content blocks the client was sent, all cuts so far
    end_usage: Any = None  # messages: the held message_delta's usage

    @property
    def calls(self) -> list[Call]:
        return [Call(p[0], p[1], "".join(p[2:])) for _, p in sorted(self.parts.items())]

    def release(self) -> bytes:
        return b"".join(self.held)


class Wire(Protocol):
    dialect: Dialect

    def offer(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """A copy of ``body`` with the tool, or None: the request carries no tools (or wants n > 1)."""

    def calls(self, response: Mapping[str, Any]) -> list[Call]: ...

    def text(self, response: Mapping[str, Any]) -> str: ...

    def follow_up(
        self, body: Mapping[str, Any], text: str, ours: Sequence[Call], results: Sequence[str]
    ) -> dict[str, Any]:
        """``body`` with the assistant's turn (its text and our calls only) and our results appended."""

    def strip(self, response: dict[str, Any], drop: set[str]) -> dict[str, Any]:
        """``response`` without the calls whose ids are in ``drop`` (stop reason adjusted)."""

    def cut(self, prior: Cut | None) -> Cut: ...

    def feed(self, cut: Cut, frame: bytes) -> bytes | None: ...

    def end_with(self, cut: Cut, calls: Sequence[Call]) -> bytes:
        """End frames of the stream carrying only ``calls`` (the held frames are dropped)."""


class _JsonHalf:
    """What every wire takes from its dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect

    def calls(self, response: Mapping[str, Any]) -> list[Call]:
        return self.dialect.tool_calls(response)

    def follow_up(
        self, body: Mapping[str, Any], text: str, ours: Sequence[Call], results: Sequence[str]
    ) -> dict[str, Any]:
        assistant = self.dialect.assistant_from(text if text.strip() else "", ours)
        answers = [(c.id, r) for c, r in zip(ours, results, strict=True)]
        return self.dialect.follow_up(body, assistant, answers)

    def _with_tool(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return self.dialect.add_tool(body, TOOL_NAME, DESCRIPTION, SCHEMA)


class ChatWire(_JsonHalf):
    def offer(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        tools = body.get("tools")
        if not isinstance(tools, list) or not tools or body.get("n") not in (None, 1):
            return None
        return self._with_tool(body)

    @staticmethod
    def _message(response: Mapping[str, Any]) -> dict[str, Any]:
        choices = response.get("choices")
        first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        message = first.get("message")
        return message if isinstance(message, dict) else {}

    def text(self, response: Mapping[str, Any]) -> str:
        content = self._message(response).get("content")
        return content if isinstance(content, str) else ""

    def strip(self, response: dict[str, Any], drop: set[str]) -> dict[str, Any]:
        message = self._message(response)
        kept = [
            c for c in message.get("tool_calls") or () if not (isinstance(c, dict) and c.get("id") in drop)
        ]
        if kept:
            message["tool_calls"] = kept
        else:
            message.pop("tool_calls", None)
            response["choices"][0]["finish_reason"] = "stop"
        return response

    def cut(self, prior: Cut | None) -> Cut:
        return Cut(prior=prior, ident=prior.ident if prior else None)

    def feed(self, cut: Cut, frame: bytes) -> bytes | None:
        chunk = _load(_data(frame))
        if chunk is None:
            return self._hold(cut, frame)
        if cut.ident is None:
            cut.ident = chunk.get("id") if isinstance(chunk.get("id"), str) else None
        elif chunk.get("id") != cut.ident:  # a continuation: the client's stream keeps its id
            chunk["id"] = cut.ident
            frame = b"data: " + orjson.dumps(chunk) + b"\n\n"
        cut.base = {k: v for k, v in chunk.items() if k not in ("choices", "usage")}
        choices = chunk.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        delta = _dict(choice.get("delta"))
        for fragment in delta.get("tool_calls") or ():
            if isinstance(fragment, dict) and isinstance(fragment.get("index"), int):
                cut.holding = True
                part = cut.parts.setdefault(fragment["index"], ["", ""])
                function = _dict(fragment.get("function"))
                part[0] = fragment["id"] if isinstance(fragment.get("id"), str) else part[0]
                part[1] += function.get("name") or ""
                part.append(function.get("arguments") or "")
        if not cut.holding and isinstance(delta.get("content"), str):
            cut.text += delta["content"]
        return self._hold(cut, frame)

    @staticmethod
    def _hold(cut: Cut, frame: bytes) -> bytes | None:
        if cut.holding:
            cut.held.append(frame)
            return None
        return frame

    def end_with(self, cut: Cut, calls: Sequence[Call]) -> bytes:
        def chunk(choice: dict[str, Any]) -> bytes:
            return (
                b"data: "
                + orjson.dumps({**cut.base, "choices": [{"index": 0, "logprobs": None, **choice}]})
                + b"\n\n"
            )

        out = []
        if calls:
            fragments = [
                {
                    "index": i,
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments},
                }
                for i, c in enumerate(calls)
            ]
            out.append(chunk({"delta": {"tool_calls": fragments}, "finish_reason": None}))
        out.append(chunk({"delta": {}, "finish_reason": "tool_calls" if calls else "stop"}))
        # The usage-only chunk (choices: []) the client asked for, as the upstream sent it.
        out += [f for f in cut.held if (c := _load(_data(f))) is not None and c.get("choices") == []]
        return b"".join(out)


class MessagesWire(_JsonHalf):
    def offer(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        tools = body.get("tools")
        return self._with_tool(body) if isinstance(tools, list) and tools else None

    @staticmethod
    def _blocks(response: Mapping[str, Any]) -> list[Any]:
        content = response.get("content")
        return content if isinstance(content, list) else []

    def text(self, response: Mapping[str, Any]) -> str:
        return "".join(
            b["text"]
            for b in self._blocks(response)
            if isinstance(b, dict) and isinstance(b.get("text"), str)
        )

    def strip(self, response: dict[str, Any], drop: set[str]) -> dict[str, Any]:
        blocks = self._blocks(response)
        response["content"] = [b for b in blocks if not (isinstance(b, dict) and b.get("id") in drop)]
        if not any(isinstance(b, dict) and b.get("type") == "tool_use" for b in response["content"]):
            response["stop_reason"] = "end_turn"
        return response

    def cut(self, prior: Cut | None) -> Cut:
        return Cut(prior=prior, blocks=prior.blocks if prior else 0)

    def feed(self, cut: Cut, frame: bytes) -> bytes | None:
        event = _load(_data(frame))
        kind = event.get("type") if event is not None else None
        if event is None or kind == "ping":
            return None if cut.holding else frame
        if kind == "message_start" and cut.prior is not None:
            return None  # the client's message started with the first stream
        if kind in ("content_block_start", "content_block_delta", "content_block_stop"):
            index = event.get("index")
            if isinstance(index, int) and cut.prior is not None:
                event["index"] = index + cut.prior.blocks
                frame = b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
            self._track(cut, kind, event)
        if kind == "message_delta":
            cut.end_usage = event.get("usage")
        if cut.holding:
            cut.held.append(frame)
            return None
        if kind == "content_block_start":
            cut.blocks += 1
        return frame

    @staticmethod
    def _track(cut: Cut, kind: str, event: dict[str, Any]) -> None:
        index = event.get("index")
        block = _dict(event.get("content_block"))
        delta = _dict(event.get("delta"))
        if kind == "content_block_start" and block.get("type") == "tool_use" and isinstance(index, int):
            cut.holding = True
            cut.parts[index] = [str(block.get("id") or ""), str(block.get("name") or "")]
        elif delta.get("type") == "input_json_delta" and index in cut.parts:
            cut.parts[index].append(str(delta.get("partial_json") or ""))
        elif delta.get("type") == "text_delta" and not cut.holding:
            cut.text += str(delta.get("text") or "")

    def end_with(self, cut: Cut, calls: Sequence[Call]) -> bytes:
        def event(kind: str, payload: dict[str, Any]) -> bytes:
            return (
                b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"
            )

        out = []
        for i, c in enumerate(calls, start=cut.blocks):
            block = {"type": "tool_use", "id": c.id, "name": c.name, "input": {}}
            out.append(event("content_block_start", {"index": i, "content_block": block}))
            delta = {"type": "input_json_delta", "partial_json": c.arguments}
            out.append(event("content_block_delta", {"index": i, "delta": delta}))
            out.append(event("content_block_stop", {"index": i}))
        stop = {"stop_reason": "tool_use" if calls else "end_turn", "stop_sequence": None}
        out.append(event("message_delta", {"delta": stop, "usage": cut.end_usage or {"output_tokens": 0}}))
        out.append(event("message_stop", {}))
        return b"".join(out)


def wire_for(dialect: Dialect) -> Wire | None:
    """The wire of a dialect whose tool loop the proxy runs: chat completions (OpenAI, Azure) and
    Anthropic Messages (Responses: docs/retrieve.md says why not yet)."""
    if dialect.route == "/v1/chat/completions":
        return ChatWire(dialect)
    if dialect.route == "/v1/messages" and dialect.api == "anthropic":
        return MessagesWire(dialect)
    return None
