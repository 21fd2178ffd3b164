"""The Anthropic Messages API of the fake upstream (shapes from Anthropic's API reference).

``POST /v1/messages``: a message, or with ``"stream": true`` its SSE events
(``message_start`` ... ``message_stop`` with a ``ping``). A request whose ``tools`` are not
empty gets a ``tool_use`` answer: streamed, its input arrives as ``input_json_delta`` pieces
that only parse once joined (:data:`TOOL_INPUT`). ``POST /v1/messages/count_tokens`` answers
``{"input_tokens": n}``. Models ``error-429`` / ``error-529`` answer Anthropic's error shape.

Usage: ``input_tokens`` is the prompt's word count (minus cache reads and writes);
headers ``x-fake-cache-read``, ``x-fake-cache-write-5m`` and ``x-fake-cache-write-1h``
set the cache counts. Every answer carries ``request-id`` and ``anthropic-ratelimit-*`` headers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import fake_expander
import orjson

REPLY = "Hello from the fake Anthropic upstream."
TOOL_INPUT = {"city": "Paris", "unit": "celsius"}
# Split mid-token, as Anthropic does: no piece is valid JSON on its own.
TOOL_INPUT_PIECES = ['{"city": "Pa', 'ris", "un', 'it": "cel', 'sius"}']


def headers(request_id: str, content_type: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", content_type),
        (b"request-id", request_id.encode()),
        (b"anthropic-organization-id", b"fake-org"),
        (b"anthropic-ratelimit-requests-limit", b"4000"),
        (b"anthropic-ratelimit-requests-remaining", b"3999"),
        (b"anthropic-ratelimit-input-tokens-limit", b"400000"),
    ]


def error(status: int) -> dict[str, Any]:
    kinds = {429: "rate_limit_error", 529: "overloaded_error", 401: "authentication_error"}
    return {
        "type": "error",
        "error": {"type": kinds.get(status, "api_error"), "message": f"Fake upstream error {status}."},
    }


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(v) for v in value)
    if isinstance(value, dict):
        return sum(_words(v) for k, v in value.items() if k not in ("type", "role", "cache_control", "id"))
    return 0


def prompt_tokens(body: Mapping[str, Any]) -> int:
    return _words(body.get("system")) + _words(body.get("messages")) + _words(body.get("tools"))


def usage(body: Mapping[str, Any], fake: Mapping[str, str], output: int) -> dict[str, Any]:
    read = int(fake.get("x-fake-cache-read", "0"))
    w5 = int(fake.get("x-fake-cache-write-5m", "0"))
    w1 = int(fake.get("x-fake-cache-write-1h", "0"))
    return {
        "input_tokens": max(prompt_tokens(body) - read - w5 - w1, 0),
        "cache_creation_input_tokens": w5 + w1,
        "cache_read_input_tokens": read,
        "cache_creation": {"ephemeral_5m_input_tokens": w5, "ephemeral_1h_input_tokens": w1},
        "output_tokens": output,
        "service_tier": "standard",
    }


def _wants_tool(body: Mapping[str, Any]) -> bool:
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return False
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    content = last.get("content") if isinstance(last, dict) else None
    # A turn that answers a tool call gets text back, so agent loops end.
    return not (isinstance(content, list) and any(b.get("type") == "tool_result" for b in content))


def _expander(body: Mapping[str, Any], fake: Mapping[str, str]) -> fake_expander.Turn | None:
    return fake_expander.decide(body, fake) if fake_expander.wanted(str(body.get("model")), fake) else None


def message(
    body: Mapping[str, Any], fake: Mapping[str, str], turn: fake_expander.Turn | None = None
) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": REPLY}]
    stop = "end_turn"
    turn = turn or _expander(body, fake)
    if turn is not None:
        content, stop = fake_expander.anthropic_content(turn)
    elif _wants_tool(body):
        name = body["tools"][0].get("name", "tool")
        content.append({"type": "tool_use", "id": "toolu_fake01", "name": name, "input": TOOL_INPUT})
        stop = "tool_use"
    return {
        "id": "msg_" + os.urandom(8).hex(),
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": usage(body, fake, len(REPLY.split())),
    }


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def frames(body: Mapping[str, Any], fake: Mapping[str, str]) -> list[bytes]:
    """The SSE events of the streamed message, framed as Anthropic frames them."""
    turn = _expander(body, fake)
    whole = message(body, fake, turn)
    start_usage = {**whole["usage"], "output_tokens": 1}
    start = {**whole, "content": [], "stop_reason": None, "usage": start_usage}
    out = [_event("message_start", {"type": "message_start", "message": start})]
    if turn is not None:
        out += fake_expander.anthropic_block_frames(turn, lambda n, p: _event(n, {"type": n, **p}))
        end = {"stop_reason": whole["stop_reason"], "stop_sequence": None}
        delta = {
            "type": "message_delta",
            "delta": end,
            "usage": {"output_tokens": whole["usage"]["output_tokens"]},
        }
        return [*out, _event("message_delta", delta), _event("message_stop", {"type": "message_stop"})]
    out.append(
        _event(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
    )
    out.append(_event("ping", {"type": "ping"}))
    for word in REPLY.split(" "):
        delta = {"type": "text_delta", "text": word + " "}
        out.append(_event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}))
    out.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    if whole["stop_reason"] == "tool_use":
        call = whole["content"][1]
        block = {"type": "tool_use", "id": call["id"], "name": call["name"], "input": {}}
        out.append(
            _event("content_block_start", {"type": "content_block_start", "index": 1, "content_block": block})
        )
        for piece in TOOL_INPUT_PIECES:
            delta = {"type": "input_json_delta", "partial_json": piece}
            out.append(
                _event("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": delta})
            )
        out.append(_event("content_block_stop", {"type": "content_block_stop", "index": 1}))
    end = {"stop_reason": whole["stop_reason"], "stop_sequence": None}
    out.append(
        _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": end,
                "usage": {"output_tokens": whole["usage"]["output_tokens"]},
            },
        )
    )
    out.append(_event("message_stop", {"type": "message_stop"}))
    return out
