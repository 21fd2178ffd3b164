"""The OpenAI API: what its dialects share (key header, error shape, usage, paths), and the
dialect of its other routes (``/v1/models``, ``/v1/embeddings``, ...), which carry no prompt.

Chat, Responses and completions (:mod:`proxy.apis.chat`, :mod:`~proxy.apis.responses`,
:mod:`~proxy.apis.completions`) subclass :class:`OpenAIDialect`; Azure wraps them
(:mod:`proxy.apis.azure`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from proxy.apis.base import Block, DialectBase
from proxy.apis.items import sorted_json
from proxy.apis.stream_usage import UsageTap, ask_stream_usage, ask_unparsed_stream_usage
from proxy.errors import ProxyError, error_body
from proxy.exchange import Payload

__all__ = ["OPENAI", "OpenAIDialect", "message_text", "openai_usage", "tools_block"]

TOOLS_MESSAGE = -2  # Block.message of tool definitions


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _detail(usage: Mapping[str, Any], key: str, field: str) -> int | None:
    details = usage.get(key)
    return _int(details.get(field)) if isinstance(details, Mapping) else None


def openai_usage(raw: Mapping[str, Any] | None) -> dict[str, int | None] | None:
    """The upstream's usage object in the audit record's names, for chat, completions,
    embeddings (prompt tokens only) and the Responses API (input/output tokens)."""
    if not isinstance(raw, Mapping):
        return None
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


def tools_block(body: Mapping[str, Any]) -> list[Block]:
    """OpenAI renders the tool definitions first: one block of them, if any."""
    tools = body.get("tools")
    return [Block(("tools",), "tools", "tools", TOOLS_MESSAGE, node=tools)] if tools else []


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return "" if content is None else sorted_json(content)
    out = []
    for part in content:
        text = part.get("text") if isinstance(part, Mapping) else None
        out.append(text if isinstance(text, str) else sorted_json(part))
    return "\n".join(out)


def message_text(message: Mapping[str, Any]) -> str:
    """Role, content and the other fields (tool calls, ids) of one chat message or Responses item:
    the text its cached tokens come from."""
    head = str(message.get("role") or message.get("type") or "")
    body, output = "content", message.get("output")
    if message.get("type") == "function_call_output" and isinstance(output, str):
        # A Responses tool output is read as text, like a chat tool message's content, not as
        # escaped JSON; the policy engine counted that same text, so its ids are reused (store/tokens.py).
        body = "output"
        text = head + "\n" + output
    else:
        text = head + "\n" + _content_text(message.get("content"))
        if len(message) <= 2 and "role" in message and "content" in message:
            return text  # the usual message: no other fields to render
    rest = {k: v for k, v in message.items() if k not in ("role", body)}
    return text + ("\n" + sorted_json(rest) if rest else "")


class OpenAIDialect(DialectBase):
    """An OpenAI route without a prompt; the base of the OpenAI dialects with one."""

    api = "openai"
    caching = "prefix"
    estimated_tokens = False
    by_deployment = False
    key_hint = "'Authorization: Bearer <key>'"
    include_usage = False  # the stream honours stream_options.include_usage

    def cache_text(self, block: Block) -> str | None:
        if block.kind == "tools":
            return "tools\n" + sorted_json(block.node)
        return message_text(block.node) if isinstance(block.node, Mapping) else None

    def cache_key(self, body: Mapping[str, Any]) -> str | None:
        key = body.get("prompt_cache_key")
        return key if isinstance(key, str) and key else None

    def usage(self, raw: Mapping[str, Any] | None) -> dict[str, int | None] | None:
        return openai_usage(raw)

    def usage_tap(self, injected: bool) -> UsageTap:
        return UsageTap(injected)

    def prepare_stream(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        return ask_stream_usage(body) if self.include_usage else (body, False)

    def prepare_unparsed_stream(self, body: bytes) -> tuple[Payload, bool]:
        return ask_unparsed_stream_usage(body) if self.include_usage else (body, False)

    def error_body(self, failure: ProxyError) -> bytes:
        return error_body(failure.message, type=failure.type, code=failure.code)

    def stream_error_frame(self, failure: ProxyError) -> bytes:
        # OpenAI's SDKs raise an APIError for a data frame holding an "error" object.
        return b"data: " + self.error_body(failure) + b"\n\n"

    def key_header(self, key: bytes) -> tuple[bytes, bytes]:
        return (b"authorization", b"Bearer " + key)

    def upstream_path(self, raw_path: bytes) -> bytes:
        """An OpenAI ``base_url`` already ends in ``/v1``: the path after the prefix is sent."""
        if raw_path.startswith(b"/v1/") or raw_path == b"/v1":
            return raw_path[3:] or b"/"
        return raw_path


OPENAI = OpenAIDialect()
