"""A fake model that uses ``tersegate_expand``: the fake upstream answers as this model for requests
whose model starts with ``expander`` or that carry header ``x-fake-expander`` (chat completions and
Anthropic Messages, JSON and SSE).

It reads the conversation as a model would:
- the last turn answers a ``tersegate_expand`` call: it replies with text quoting the first line of
  what came back (``The expansion returned: <line>``), or with header ``x-fake-expand-repeat`` it asks
  again (to reach the proxy's limit) until the answer says "Limit reached";
- the last turn is a tool output holding a marker ``hash=<24 hex>`` and the request offers
  ``tersegate_expand``: it says ``Let me look at the omitted lines.`` and calls it with that hash (and
  the query of header ``x-fake-expand-query``); with header ``x-fake-expand-mixed`` it also calls the
  client's first tool in the same turn, and calls it again once the expansion is answered;
- anything else: None (the fake upstream's usual answer).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import orjson

TOOL = "tersegate_expand"
LOOK = "Let me look at the omitted lines."
_HASH = re.compile(r"hash=([0-9a-f]{24})")

# (text, [(call id, tool name, arguments)]) the model answers with
Turn = tuple[str, list[tuple[str, str, dict[str, Any]]]]


def _tool_names(body: Mapping[str, Any]) -> list[str]:
    names = []
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        names.append(str(function.get("name")))
    return names


def _last_results(body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(tool name, result text)`` of the tool outputs that end the conversation (both dialects)."""
    messages = list(body.get("messages") or ())
    names: dict[str, str] = {}
    for message in messages:
        for call in message.get("tool_calls") or ():
            names[call["id"]] = call["function"]["name"]
        content = message.get("content")
        for block in content if isinstance(content, list) else ():
            if isinstance(block, dict) and block.get("type") == "tool_use":
                names[block["id"]] = block["name"]
    out: list[tuple[str, str]] = []
    for message in reversed(messages):
        content = message.get("content")
        if message.get("role") == "tool":
            out.insert(0, (names.get(message.get("tool_call_id", ""), ""), str(content)))
            continue
        if isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        ):
            for b in content:
                if isinstance(b, dict) and b.get("type") == "tool_result":
                    text = b.get("content")
                    if isinstance(text, list):
                        text = "".join(str(x.get("text", "")) for x in text if isinstance(x, dict))
                    out.append((names.get(b.get("tool_use_id", ""), ""), str(text)))
        break
    return out


def wanted(model: str, headers: Mapping[str, str]) -> bool:
    return model.startswith("expander") or "x-fake-expander" in headers


def decide(body: Mapping[str, Any], headers: Mapping[str, str]) -> Turn | None:
    tools = _tool_names(body)
    results = _last_results(body)
    if TOOL not in tools or not results:
        return None
    client_tool = next((t for t in tools if t != TOOL), None)
    mixed = "x-fake-expand-mixed" in headers and client_tool is not None
    ours = [text for name, text in results if name == TOOL]
    if ours:
        repeat = "x-fake-expand-repeat" in headers and not ours[-1].startswith("Limit reached")
        found = _HASH.findall(_conversation_text(body))
        if repeat and found:
            return LOOK, [(_id(), TOOL, {"hash": found[-1]})]
        quoted = f"The expansion returned: {ours[-1].splitlines()[0] if ours[-1] else ''}"
        if mixed:
            return quoted, [(_id(), str(client_tool), {"city": "Paris"})]
        return quoted, []
    hashes = [h for _, text in results for h in _HASH.findall(text)]
    if not hashes:
        return None
    args: dict[str, Any] = {"hash": hashes[-1]}
    if headers.get("x-fake-expand-query"):
        args["query"] = headers["x-fake-expand-query"]
    calls = [(_id(), TOOL, args)]
    if mixed:
        calls.append((_id(), str(client_tool), {"city": "Paris"}))
    return LOOK, calls


def _conversation_text(body: Mapping[str, Any]) -> str:
    return orjson.dumps(body.get("messages") or []).decode()


def _id() -> str:
    return "call_" + os.urandom(6).hex()


# -- chat completions ---------------------------------------------------------------------------


def chat_message(turn: Turn) -> dict[str, Any]:
    text, calls = turn
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    if calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": orjson.dumps(a).decode()}}
            for i, n, a in calls
        ]
    return message


def chat_delta_frames(turn: Turn, chunk: Any) -> list[bytes]:
    """``chunk(delta, finish)`` builds one frame; text word by word, then each call in pieces."""
    text, calls = turn
    frames = [chunk({"role": "assistant", "content": "", "refusal": None})]
    words = text.split(" ")
    frames += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
    for index, (call_id, name, args) in enumerate(calls):
        raw = orjson.dumps(args).decode()
        head = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        frames.append(chunk({"tool_calls": [head]}))
        for piece in (raw[: len(raw) // 2], raw[len(raw) // 2 :]):
            frames.append(chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]}))
    frames.append(chunk({}, "tool_calls" if calls else "stop"))
    return frames


# -- Anthropic Messages -------------------------------------------------------------------------


def anthropic_content(turn: Turn) -> tuple[list[dict[str, Any]], str]:
    text, calls = turn
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    content += [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in calls]
    return content, "tool_use" if calls else "end_turn"


def anthropic_block_frames(turn: Turn, event: Any) -> list[bytes]:
    """The content block events of ``turn``; ``event(name, payload)`` frames one."""
    text, calls = turn
    out = [event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})]
    for word in text.split(" "):
        out.append(
            event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": word + " "}})
        )
    out.append(event("content_block_stop", {"index": 0}))
    for index, (call_id, name, args) in enumerate(calls, start=1):
        block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
        out.append(event("content_block_start", {"index": index, "content_block": block}))
        raw = orjson.dumps(args).decode()
        for piece in (raw[: len(raw) // 2], raw[len(raw) // 2 :]):
            delta = {"type": "input_json_delta", "partial_json": piece}
            out.append(event("content_block_delta", {"index": index, "delta": delta}))
        out.append(event("content_block_stop", {"index": index}))
    return out
