"""The API dialects: one module per wire format, all behind :class:`~proxy.apis.base.Dialect`.

Like mitmproxy's ``proxy/layers/http/_http1.py`` / ``_http2.py``: chat (:mod:`.chat`),
Responses (:mod:`.responses`), completions (:mod:`.completions`), Anthropic Messages
(:mod:`.messages`), Azure's mapping over the OpenAI ones (:mod:`.azure`), and each API's routes
without a prompt (:mod:`.openai`, :mod:`.messages`). A request's :class:`Route` carries its
dialect; nothing outside this package asks which API or route a request is to decide how to
read it. Beside them: the OpenAI streams' usage tap (:mod:`.stream_usage`) and the splice that
encodes a rewritten body (:mod:`.splice`). This package imports only the shared vocabulary
(``proxy.exchange``, ``errors``).
"""

from __future__ import annotations

from proxy.apis.base import (
    Block,
    Dialect,
    JsonPath,
    Part,
    StreamItem,
    StreamReader,
    TextDelta,
    ToolCall,
    Unsupported,
)
from proxy.apis.chat import CHAT
from proxy.apis.completions import COMPLETIONS
from proxy.apis.messages import MESSAGES, Breakpoint, breakpoints
from proxy.apis.responses import RESPONSES
from proxy.apis.rewrite import forwarded_body, rewrite_body
from proxy.apis.routing import Route, dialect_for, dialect_of_api, route_of, split_path, upstream_path

__all__ = [
    "CHAT",
    "COMPLETIONS",
    "MESSAGES",
    "RESPONSES",
    "Block",
    "Breakpoint",
    "Dialect",
    "JsonPath",
    "Part",
    "Route",
    "StreamItem",
    "StreamReader",
    "TextDelta",
    "ToolCall",
    "Unsupported",
    "breakpoints",
    "dialect_for",
    "dialect_of_api",
    "forwarded_body",
    "rewrite_body",
    "route_of",
    "split_path",
    "upstream_path",
]
