"""OpenAI chat completions (``/v1/chat/completions``).

Rewritable text: string message contents and ``text`` parts of content arrays, of every role; a
``tool`` message names its tool and carries the arguments of the assistant's ``tool_calls`` entry
it answers. Tool calls arrive in ``choices[0].message.tool_calls`` (JSON) or as
``choices[0].delta.tool_calls`` fragments (stream).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from proxy.apis.base import Block, Part, StreamItem, TextDelta, ToolCall
from proxy.apis.items import Item, content_texts, parts_of
from proxy.apis.openai import OpenAIDialect, tools_block
from proxy.apis.stream_usage import event_data

__all__ = ["CHAT", "ChatDialect", "ChatStreamReader"]

_TEXT_TYPES = frozenset({"text"})


def _calls_of(msg: Mapping[str, Any], calls: dict[str, tuple[str, str | None]]) -> None:
    """Remember the tool calls an assistant message made: id -> (name, arguments)."""
    for call in msg.get("tool_calls") or ():
        if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
            name = call["function"].get("name")
            args = call["function"].get("arguments")
            if isinstance(call.get("id"), str) and isinstance(name, str):
                calls[call["id"]] = (name, args if isinstance(args, str) else None)


def _message_block(i: int, msg: Mapping[str, Any], calls: dict[str, tuple[str, str | None]]) -> Block:
    role = msg.get("role")
    if not isinstance(role, str):
        return Block(("messages", i), "other", "", i, node=msg)  # no role: cached, never a part
    _calls_of(msg, calls)
    tool_name = args = None
    if role in ("tool", "function"):
        tool_name = msg.get("name") if isinstance(msg.get("name"), str) else None
        call_id = msg.get("tool_call_id")
        if isinstance(call_id, str) and call_id in calls:
            tool_name, args = calls[call_id]
    texts = content_texts(msg.get("content"), ("messages", i, "content"), _TEXT_TYPES)
    return Block(("messages", i), "message", role, i, texts, tool_name, args, node=msg)


class ChatDialect(OpenAIDialect):
    route: str | None = "/v1/chat/completions"
    include_usage = True

    def walk(self, body: Mapping[str, Any]) -> tuple[Block, ...]:
        out = tools_block(body)
        messages = body.get("messages")
        calls: dict[str, tuple[str, str | None]] = {}
        for i, msg in enumerate(messages if isinstance(messages, list) else ()):
            if isinstance(msg, Mapping):
                out.append(_message_block(i, msg, calls))
        return tuple(out)

    def parts(self, body: Mapping[str, Any], blocks: Sequence[Block] | None = None) -> list[Part]:
        items = []
        for block in self.walk(body) if blocks is None else blocks:
            if block.kind != "message":
                continue
            # Tool results must follow their call and a message with tool_calls must keep them.
            droppable = block.role in ("user", "assistant", "system", "developer") and not block.node.get(
                "tool_calls"
            )
            items.append(
                Item(
                    block.message,
                    block.role,
                    block.path,
                    list(block.texts),
                    block.tool_name,
                    block.role == "assistant",
                    droppable,
                    tool_arguments=block.tool_arguments,
                )
            )
        return parts_of(items)

    def tool_calls(self, response: Mapping[str, Any]) -> list[ToolCall]:
        message = self.assistant_turn(response)
        out = []
        for call in message.get("tool_calls") or ():
            function = call.get("function") if isinstance(call, Mapping) else None
            if isinstance(function, Mapping) and isinstance(function.get("name"), str):
                args = function.get("arguments")
                out.append(ToolCall(str(call.get("id") or ""), function["name"], _json_text(args)))
        return out

    def stream_reader(self) -> ChatStreamReader:
        return ChatStreamReader()

    def assistant_turn(self, response: Mapping[str, Any]) -> dict[str, Any]:
        choices = response.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        message = first.get("message") if isinstance(first, Mapping) else None
        return dict(message) if isinstance(message, Mapping) else {"role": "assistant", "content": None}

    def assistant_from(self, text: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in calls
            ]
        return message

    def follow_up(
        self, body: Mapping[str, Any], assistant: Any, results: Sequence[tuple[str, str]]
    ) -> dict[str, Any]:
        messages = list(body.get("messages") or ())
        messages.append(assistant)
        messages += [{"role": "tool", "tool_call_id": call_id, "content": text} for call_id, text in results]
        return {**body, "messages": messages}

    def add_tool(
        self, body: Mapping[str, Any], name: str, description: str, schema: Mapping[str, Any]
    ) -> dict[str, Any]:
        tool = {
            "type": "function",
            "function": {"name": name, "description": description, "parameters": schema},
        }
        return {**body, "tools": [*(body.get("tools") or ()), tool]}


def _json_text(value: Any) -> str:
    """Arguments as JSON text (the API sends a string; a client may have sent an object)."""
    if isinstance(value, str):
        return value
    return "{}" if value is None else orjson.dumps(value).decode()


class ChatStreamReader:
    """``choices[0].delta``: ``content`` pieces, and ``tool_calls`` fragments by ``index`` (the
    first names the id and function, later ones add argument text). A call is complete when a
    later index starts, the choice finishes, or the stream ends."""

    def __init__(self) -> None:
        self._open: dict[int, list[str]] = {}  # index -> [id, name, arguments...]

    def feed(self, frame: bytes) -> list[StreamItem]:
        data = event_data(frame)
        if data is None or data.strip() == b"[DONE]":
            return self.close() if data is not None else []
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            return []
        out: list[StreamItem] = []
        delta = choice.get("delta")
        if isinstance(delta, dict):
            if isinstance(delta.get("content"), str) and delta["content"]:
                out.append(TextDelta(delta["content"]))
            for fragment in delta.get("tool_calls") or ():
                if isinstance(fragment, dict):
                    out += self._fragment(fragment)
        if choice.get("finish_reason"):
            out += self.close()
        return out

    def _fragment(self, fragment: dict[str, Any]) -> list[StreamItem]:
        index = fragment.get("index", 0)
        if not isinstance(index, int):
            return []
        done: list[StreamItem] = []
        if index not in self._open:
            done = self._complete([k for k in self._open if k < index])
            self._open[index] = ["", ""]
        call = self._open[index]
        if isinstance(fragment.get("id"), str):
            call[0] = fragment["id"]
        function = fragment.get("function")
        if isinstance(function, dict):
            if isinstance(function.get("name"), str):
                call[1] += function["name"]
            if isinstance(function.get("arguments"), str):
                call.append(function["arguments"])
        return done

    def _complete(self, indexes: list[int]) -> list[StreamItem]:
        out: list[StreamItem] = []
        for k in sorted(indexes):
            call = self._open.pop(k)
            out.append(ToolCall(call[0], call[1], "".join(call[2:])))
        return out

    def close(self) -> list[StreamItem]:
        return self._complete(list(self._open))


CHAT = ChatDialect()
