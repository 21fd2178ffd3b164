"""Token usage of streamed responses, so every streamed request is audited with real usage.

Chat and completions streams carry usage only when the client sets
``stream_options.include_usage``. When it did not, :func:`ask_stream_usage` asks
the upstream for it and :class:`UsageTap` removes what the client did not ask
for: the usage-only chunk (``choices: []``) and the ``"usage": null`` field the
upstream then adds to every other chunk. Clients that asked get the stream
unchanged. Responses-API streams always report usage in ``response.completed``.
Anthropic Messages streams have their own tap (:mod:`proxy.apis.messages`). Which tap and
whether to ask is the route's dialect's choice (:mod:`proxy.apis`).

The tap is on the hot path of every chunk: a frame is parsed only when its
bytes contain ``"usage"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from proxy.apis.splice import past_space
from proxy.exchange import Payload

__all__ = ["UsageTap", "ask_stream_usage", "ask_unparsed_stream_usage", "event_data"]

# `"usage": null` as a key of a chunk. In valid JSON an unescaped quote followed by
# `usage":` can only open a key, so this never matches inside a string value.
_NULL_USAGE = re.compile(rb'(,\s*"usage"\s*:\s*null(?=\s*[,}]))|("usage"\s*:\s*null\s*,\s*)')
_USAGE_EVENTS = (b"response.completed", b"response.incomplete", b"response.failed")


def ask_stream_usage(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """``(body to forward, injected)``: ask for stream usage if the client did not (chat and
    completions streams honour ``stream_options.include_usage``; their dialects call this).

    The client's body is not mutated; ``injected`` tells the tap to strip what
    the client did not ask for.
    """
    if body.get("stream") is not True:
        return body, False
    options = body.get("stream_options")
    if isinstance(options, Mapping) and options.get("include_usage") is True:
        return body, False
    new_options = dict(options) if isinstance(options, Mapping) else {}
    new_options["include_usage"] = True
    return {**body, "stream_options": new_options}, True


def ask_unparsed_stream_usage(body: bytes) -> tuple[Payload, bool]:
    """:func:`ask_stream_usage` for a body too large to parse: ``stream_options`` is written in
    front of the client's first key (the rest is the client's bytes, sent as a view of them, not
    copied), unless the client named ``stream_options`` itself (then its own choice stands)."""
    if b'"stream_options"' in body:
        return body, False
    start = past_space(body, 0)
    if body[start : start + 1] != b"{":
        return body, False
    rest = past_space(body, start + 1)
    joint = b"" if body[rest : rest + 1] == b"}" else b","
    return (b'{"stream_options":{"include_usage":true}' + joint, memoryview(body)[rest:]), True


def event_data(frame: bytes) -> bytes | None:
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
        payload = event_data(data)
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
