"""OpenAI Responses (``/v1/responses``).

Rewritable text: ``instructions``, a string ``input``, string input items, ``input_text`` /
``output_text`` / ``text`` parts of message items, and ``function_call_output`` outputs (role
``tool``, naming the ``function_call`` they answer and carrying its arguments). Tool calls are
``function_call`` items of ``output`` (JSON) or ``response.output_item.done`` events (stream).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from proxy.apis.base import Block, Part, StreamItem, TextDelta, ToolCall
from proxy.apis.items import Item, content_texts, parts_of
from proxy.apis.openai import OpenAIDialect, tools_block
from proxy.apis.stream_usage import event_data

__all__ = ["RESPONSES", "ResponsesDialect", "ResponsesStreamReader"]

_TEXT_TYPES = frozenset({"input_text", "output_text", "text"})
_INSTRUCTION_ROLES = frozenset({"system", "developer"})


def _item_block(i: int, item: Any, calls: dict[str, tuple[str, str | None]]) -> Block | None:
    path = ("input", i)
    if isinstance(item, str):
        return Block(path, "string", "user", i, ((path, item),), node=item)
    if not isinstance(item, Mapping):
        return None
    kind = item.get("type", "message")
    if kind == "function_call":
        if isinstance(item.get("call_id"), str) and isinstance(item.get("name"), str):
            args = item.get("arguments")
            calls[item["call_id"]] = (item["name"], args if isinstance(args, str) else None)
        return Block(path, "function_call", "assistant", i, node=item)
    if kind == "function_call_output":
        texts = content_texts(item.get("output"), (*path, "output"), _TEXT_TYPES)
        name, args = calls.get(item.get("call_id") or "", (None, None))
        return Block(path, "function_call_output", "tool", i, texts, name, args, node=item)
    if kind != "message" or not isinstance(item.get("role"), str):
        return Block(path, str(kind), str(kind), i, node=item)
    texts = content_texts(item.get("content"), (*path, "content"), _TEXT_TYPES)
    return Block(path, "message", item["role"], i, texts, node=item)


def _item(block: Block) -> Item:
    if block.kind == "instructions":
        return Item(-1, "system", block.path, list(block.texts), roles=_INSTRUCTION_ROLES)
    if block.kind == "input":
        return Item(0, "user", block.path, list(block.texts))
    if block.kind in ("string", "message"):
        return Item(
            block.message, block.role, block.path, list(block.texts), None, block.role == "assistant", True
        )
    if block.kind == "function_call":
        return Item(block.message, "assistant", block.path, [], None, True)
    texts = list(block.texts)
    return Item(
        block.message, block.role, block.path, texts, block.tool_name, tool_arguments=block.tool_arguments
    )


class ResponsesDialect(OpenAIDialect):
    route: str | None = "/v1/responses"

    def walk(self, body: Mapping[str, Any]) -> tuple[Block, ...]:
        out = tools_block(body)
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            out.append(
                Block(("instructions",), "instructions", "system", -1, ((("instructions",), instructions),))
            )
        value = body.get("input")
        if isinstance(value, str):
            out.append(Block(("input",), "input", "user", 0, ((("input",), value),)))
        elif isinstance(value, list):
            calls: dict[str, tuple[str, str | None]] = {}
            for i, raw in enumerate(value):
                block = _item_block(i, raw, calls)
                if block is not None:
                    out.append(block)
        return tuple(out)

    def parts(self, body: Mapping[str, Any], blocks: Sequence[Block] | None = None) -> list[Part]:
        listed = self.walk(body) if blocks is None else blocks
        return parts_of([_item(b) for b in listed if b.kind != "tools"])

    def cache_text(self, block: Block) -> str | None:
        if block.kind == "instructions":
            return "instructions\n" + block.texts[0][1]
        if block.kind == "input":
            return "user\n" + block.texts[0][1]
        return super().cache_text(block)  # a string item is not a Mapping: not rendered

    def tool_calls(self, response: Mapping[str, Any]) -> list[ToolCall]:
        return [_call(item) for item in self.assistant_turn(response) if item.get("type") == "function_call"]

    def stream_reader(self) -> ResponsesStreamReader:
        return ResponsesStreamReader()

    def assistant_turn(self, response: Mapping[str, Any]) -> list[dict[str, Any]]:
        output = response.get("output")
        return (
            [dict(item) for item in output if isinstance(item, Mapping)] if isinstance(output, list) else []
        )

    def assistant_from(self, text: str, calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        if text:  # an input message in its short form: an output message would need an id and status
            items.append({"role": "assistant", "content": text})
        items += [
            {"type": "function_call", "call_id": c.id, "name": c.name, "arguments": c.arguments}
            for c in calls
        ]
        return items

    def follow_up(
        self, body: Mapping[str, Any], assistant: Any, results: Sequence[tuple[str, str]]
    ) -> dict[str, Any]:
        value = body.get("input")
        items = [{"role": "user", "content": value}] if isinstance(value, str) else list(value or ())
        items += list(assistant)
        items += [
            {"type": "function_call_output", "call_id": call_id, "output": text} for call_id, text in results
        ]
        return {**body, "input": items}

    def add_tool(
        self, body: Mapping[str, Any], name: str, description: str, schema: Mapping[str, Any]
    ) -> dict[str, Any]:
        # Responses treat a tool as strict unless told: strict needs every property required.
        tool = {
            "type": "function",
            "name": name,
            "description": description,
            "parameters": schema,
            "strict": False,
        }
        return {**body, "tools": [*(body.get("tools") or ()), tool]}


def _call(item: Mapping[str, Any]) -> ToolCall:
    args = item.get("arguments")
    text = args if isinstance(args, str) else orjson.dumps(args if args is not None else {}).decode()
    return ToolCall(str(item.get("call_id") or item.get("id") or ""), str(item.get("name") or ""), text)


class ResponsesStreamReader:
    """``response.output_text.delta`` events are text; a ``response.output_item.done`` of type
    ``function_call`` is a complete call (its arguments whole)."""

    def feed(self, frame: bytes) -> list[StreamItem]:
        data = event_data(frame)
        if data is None:
            return []
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return []
        if not isinstance(event, dict):
            return []
        kind = event.get("type")
        if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            return [TextDelta(event["delta"])]
        item = event.get("item")
        if (
            kind == "response.output_item.done"
            and isinstance(item, dict)
            and item.get("type") == "function_call"
        ):
            return [_call(item)]
        return []

    def close(self) -> list[StreamItem]:
        return []  # a call is only reported once the upstream said it was done


RESPONSES = ResponsesDialect()
