"""Token usage of streamed responses, so every streamed request is audited with real usage.

Chat and completions streams carry usage only when the client sets
``stream_options.include_usage``. When it did not, :func:`prepare_stream` asks
the upstream for it and :class:`UsageTap` removes what the client did not ask
for: the usage-only chunk (``choices: []``) and the ``"usage": null`` field the
upstream then adds to every other chunk. Clients that asked get the stream
unchanged. Responses-API streams always report usage in ``response.completed``.
Anthropic Messages streams report it in ``message_start`` (input and cache tokens) and
``message_delta`` (output tokens, cumulative): :class:`AnthropicUsageTap` merges the two and
never changes a frame.

The tap is on the hot path of every chunk: a frame is parsed only when its
bytes contain ``"usage"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.exchange import Payload
from proxy.splice import encode_rewrite

__all__ = [
    "AnthropicUsageTap",
    "UsageTap",
    "forwarded_body",
    "normalize_usage",
    "prepare_stream",
    "prepare_unparsed_stream",
]

# Routes whose streams honour stream_options.include_usage.
_INCLUDE_USAGE_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions"})
_JSON_SPACE = re.compile(rb"[ \t\r\n]*")
# `"usage": null` as a key of a chunk. In valid JSON an unescaped quote followed by
# `usage":` can only open a key, so this never matches inside a string value.
_NULL_USAGE = re.compile(rb'(,\s*"usage"\s*:\s*null(?=\s*[,}]))|("usage"\s*:\s*null\s*,\s*)')
_USAGE_EVENTS = (b"response.completed", b"response.incomplete", b"response.failed")


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _detail(usage: Mapping[str, Any], key: str, field: str) -> int | None:
    details = usage.get(key)
    return _int(details.get(field)) if isinstance(details, Mapping) else None


def _anthropic_usage(raw: Mapping[str, Any]) -> dict[str, int | None]:
    """Anthropic's usage: ``input_tokens`` excludes cached tokens, so the prompt is the sum of
    input, cache writes and cache reads; writes are split into 5-minute and 1-hour caches
    (``cache_creation.ephemeral_5m_input_tokens`` / ``ephemeral_1h_input_tokens``; without that
    split every write counts as 5-minute, Anthropic's default TTL)."""
    fresh = _int(raw.get("input_tokens"))
    written = _int(raw.get("cache_creation_input_tokens")) or 0
    read = _int(raw.get("cache_read_input_tokens")) or 0
    one_hour = _detail(raw, "cache_creation", "ephemeral_1h_input_tokens")
    five_min = _detail(raw, "cache_creation", "ephemeral_5m_input_tokens")
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


def normalize_usage(raw: Mapping[str, Any] | None, *, api: str = "openai") -> dict[str, int | None] | None:
    """The upstream's usage object in the audit record's names, for chat, completions,
    embeddings (prompt tokens only), the Responses API (input/output tokens) and, with
    ``api="anthropic"``, Anthropic Messages (see :func:`_anthropic_usage`)."""
    if not isinstance(raw, Mapping):
        return None
    if api == "anthropic":
        return _anthropic_usage(raw)
    if "input_tokens" in raw or "output_tokens" in raw:  # Responses API
        return {
            "prompt_tokens": _int(raw.get("input_tokens")),
            "completion_tokens": _int(raw.get("output_tokens")),
            "cached_tokens": _detail(raw, "input_tokens_details", "cached_tokens"),
            "reasoning_tokens": _detail(raw, "output_tokens_details", "reasoning_tokens"),
        }
    return {
        "prompt_tokens": _int(raw.get("prompt_tokens")),
        "completion_tokens": _int(raw.get("completion_tokens")),
        "cached_tokens": _detail(raw, "prompt_tokens_details", "cached_tokens"),
        "reasoning_tokens": _detail(raw, "completion_tokens_details", "reasoning_tokens"),
    }


def _wants_usage_injection(body: Mapping[str, Any], route: str | None) -> bool:
    if route is not None:
        return route in _INCLUDE_USAGE_ROUTES
    # No route given: the Responses API is the one whose prompt is `input`.
    return "messages" in body or "prompt" in body


def prepare_stream(body: dict[str, Any], *, route: str | None = None) -> tuple[dict[str, Any], bool]:
    """``(body to forward, injected)``: ask for stream usage if the client did not.

    The client's body is not mutated; ``injected`` tells the tap to strip what
    the client did not ask for.
    """
    if body.get("stream") is not True or not _wants_usage_injection(body, route):
        return body, False
    options = body.get("stream_options")
    if isinstance(options, Mapping) and options.get("include_usage") is True:
        return body, False
    new_options = dict(options) if isinstance(options, Mapping) else {}
    new_options["include_usage"] = True
    return {**body, "stream_options": new_options}, True


def _past_space(data: bytes, at: int) -> int:
    """The index of the first byte at or after ``at`` that is not JSON whitespace (no copy made)."""
    found = _JSON_SPACE.match(data, at)
    return found.end() if found is not None else at


def prepare_unparsed_stream(body: bytes, *, route: str) -> tuple[Payload, bool]:
    """:func:`prepare_stream` for a body too large to parse: ``stream_options`` is written in
    front of the client's first key (the rest is the client's bytes, sent as a view of them, not
    copied), unless the client named ``stream_options`` itself (then its own choice stands)."""
    if route not in _INCLUDE_USAGE_ROUTES or b'"stream_options"' in body:
        return body, False
    start = _past_space(body, 0)
    if body[start : start + 1] != b"{":
        return body, False
    rest = _past_space(body, start + 1)
    joint = b"" if body[rest : rest + 1] == b"}" else b","
    return (b'{"stream_options":{"include_usage":true}' + joint, memoryview(body)[rest:]), True


def forwarded_body(
    original: bytes, parsed: dict[str, Any], rewritten: dict[str, Any] | None, *, stream: bool, route: str
) -> tuple[bytes, bool]:
    """``(bytes to send upstream, usage injected)`` after the rewrite hook: the original bytes when
    neither the hook nor :func:`prepare_stream` changed anything, else the changed values spliced into
    them (:mod:`proxy.splice`). If the new body cannot be encoded, the original bytes (fail open)."""
    injected = False
    if stream:
        prepared, injected = prepare_stream(rewritten if rewritten is not None else parsed, route=route)
        if injected:
            rewritten = prepared
    if rewritten is None:
        return original, False
    encoded = encode_rewrite(original, parsed, rewritten)
    return (encoded, injected) if encoded is not None else (original, False)


def _event_data(frame: bytes) -> bytes | None:
    """The data of one SSE event (``data:`` lines joined), or None for a non-data frame."""
    parts = []
    for line in frame.splitlines():
        if line.startswith(b"data:"):
            value = line[5:]
            parts.append(value[1:] if value.startswith(b" ") else value)
    return b"\n".join(parts) if parts else None


class UsageTap:
    """Per stream: watches each SSE frame for usage, strips what was injected.

    ``frame`` returns the bytes to send to the client, or None to drop the frame.
    ``usage`` holds the upstream's usage object once seen (as reported, not normalised).
    """

    __slots__ = ("injected", "model", "usage")

    def __init__(self, injected: bool) -> None:
        self.injected = injected
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None  # the model the upstream named with the usage (Azure pricing)

    def frame(self, data: bytes) -> bytes | None:
        if b'"usage"' not in data:
            return data
        payload = _event_data(data)
        if payload is None or payload == b"[DONE]":
            return data
        if any(event in data for event in _USAGE_EVENTS):
            self._take_responses_usage(payload)
            return data
        try:
            chunk = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return data
        if not isinstance(chunk, dict):
            return data
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
            if isinstance(chunk.get("model"), str):
                self.model = chunk["model"]
        if not self.injected:
            return data
        if isinstance(usage, dict) and chunk.get("choices") == []:
            return None  # the usage-only chunk the client did not ask for
        if "usage" in chunk and usage is None:
            return _NULL_USAGE.sub(b"", data, count=1)
        return data

    def _take_responses_usage(self, payload: bytes) -> None:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        response = event.get("response") if isinstance(event, dict) else None
        usage = response.get("usage") if isinstance(response, dict) else None
        if isinstance(usage, dict):
            self.usage = usage
            if isinstance(response, dict) and isinstance(response.get("model"), str):
                self.model = response["model"]


class AnthropicUsageTap(UsageTap):
    """Per Anthropic stream: usage from ``message_start`` updated by each ``message_delta``
    (whose counts are cumulative). Frames pass unchanged, always."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(False)

    def frame(self, data: bytes) -> bytes | None:
        if b'"usage"' not in data:
            return data
        payload = _event_data(data)
        if payload is None:
            return data
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return data
        if not isinstance(event, dict):
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
