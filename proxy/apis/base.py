"""The protocol every API dialect implements, and the vocabulary it speaks.

A :class:`Dialect` knows one wire format (OpenAI chat, Responses, completions, Anthropic
Messages, or an API's other routes): the blocks of a request body in the order the provider
caches them (walked once, :meth:`Dialect.walk`), the text parts a policy may rewrite, the tool
calls of a response, usage, how a stream is prepared, error bodies, the key header. Code above
``proxy/apis/`` asks the route's dialect and never which API it is talking to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from proxy.apis.stream_usage import UsageTap
from proxy.errors import ProxyError
from proxy.exchange import Payload

__all__ = [
    "Block",
    "Dialect",
    "DialectBase",
    "JsonPath",
    "Part",
    "StreamItem",
    "StreamReader",
    "TextDelta",
    "ToolCall",
    "Unsupported",
]

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Block:
    """One block of a body, in the order the provider caches the prompt.

    A chat message, a Responses input item, a completions prompt, or one Anthropic content block
    (system, tool definition, text, tool_use, tool_result, thinking, ...). ``texts`` are the
    strings a policy may rewrite, with their paths; ``node`` is the JSON value itself (what the
    cache model renders, :meth:`Dialect.cache_text`). A tool output names its tool and carries the
    call's arguments (JSON text) where the body holds the call.
    """

    path: JsonPath
    kind: str  # message | text | tool_use | tool_result | thinking | function_call | tools | ...
    role: str  # system | user | assistant | tool | tools | developer | ...
    message: int  # message / input item index; -1 system or instructions, -2 tool definitions
    texts: tuple[tuple[JsonPath, str], ...] = ()
    tool_name: str | None = None
    tool_arguments: str | None = None
    breakpoint: str | None = None  # Anthropic: the TTL ("5m" | "1h") of a cache_control on it
    node: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Part:
    """One rewritable string in a body.

    ``message`` is the index of the message / input item it belongs to (-1 for
    ``instructions``, the prompt index for completions); ``message_path`` is that
    message's path (what ``action: drop`` removes). ``age`` counts the assistant
    turns that followed the message; ``last_user`` marks the last user message.
    ``turn`` counts the assistant replies (runs of assistant items) up to and including the
    message: the parts of turns ``<= turn`` are the request in which the part was first sent.
    A tool output carries its tool's name and the call's arguments (JSON text) when known.
    """

    path: JsonPath
    text: str
    role: str
    roles: frozenset[str]  # roles a rule may match it by
    message: int
    message_path: JsonPath | None
    tool_name: str | None = None
    age: int = 0
    last_user: bool = False
    droppable: bool = False  # removing the whole message leaves a valid request
    turn: int = 0
    blank: str = ""  # what the text becomes when dropped but its message must stay
    tool_arguments: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call the model made: its id, the tool's name, the arguments as JSON text."""

    id: str
    name: str
    arguments: str

    @property
    def input(self) -> dict[str, Any]:
        """The arguments parsed; ``{}`` when they are empty or not a JSON object."""
        try:
            value = orjson.loads(self.arguments) if self.arguments.strip() else {}
        except orjson.JSONDecodeError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the model's text, as a stream delivered it."""

    text: str


StreamItem = TextDelta | ToolCall


class StreamReader(Protocol):
    """Fed a streamed response's SSE events one at a time, reports text deltas and completed tool calls."""

    def feed(self, frame: bytes) -> list[StreamItem]:
        """One SSE event (its ``event:`` / ``data:`` lines); what it completed or delivered."""

    def close(self) -> list[StreamItem]:
        """The stream ended: the tool calls still open, completed as they stand."""


class Unsupported(ValueError):
    """The dialect has no such thing (completions have no tools)."""


class Dialect(Protocol):
    """One API dialect. Module-level instances live in ``proxy.apis`` (``CHAT``, ``MESSAGES``, ...)."""

    api: str  # openai | anthropic | azure: the API a client speaks (the audit record's ``api``)
    route: str | None  # the compressible route it parses ("/v1/chat/completions"); None: other routes
    caching: str  # "prefix" (OpenAI: the longest cached prefix) | "breakpoints" (Anthropic cache_control)
    estimated_tokens: bool  # the proxy's tokenizer only estimates the upstream's counts
    by_deployment: bool  # priced by the upstream's deployments map (Azure)
    key_hint: str  # how a client sends its key, for a 401's message

    @property
    def compressible(self) -> bool:
        """Whether a POST carries prompts the rewrite hook may compress."""

    # The body.
    def walk(self, body: Mapping[str, Any]) -> tuple[Block, ...]:
        """The body's blocks in the order the provider caches them (walk a body once, pass these on)."""

    def parts(self, body: Mapping[str, Any], blocks: Sequence[Block] | None = None) -> list[Part]:
        """Every rewritable text part, in body order."""

    def other_texts(self, body: Mapping[str, Any], blocks: Sequence[Block] | None = None) -> list[str]:
        """What the upstream counts as input besides the parts, where the proxy estimates it."""

    def cache_text(self, block: Block) -> str | None:
        """The text the cache model tokenizes for ``block``; None: not part of the cached prompt."""

    def cache_key(self, body: Mapping[str, Any]) -> str | None:
        """A client-set key that narrows the cache's scope (OpenAI's ``prompt_cache_key``)."""

    def breakpoint_at(self, blocks: Sequence[Block], index: int) -> tuple[JsonPath, Any] | None:
        """``(path, value)`` to add so that block ``index`` ends a cached prefix, with the TTL of the
        body's last breakpoint; None where the API places no breakpoints, the block cannot carry
        one, it has one, or the body has no room for another."""

    # Usage and streams.
    def usage(self, raw: Mapping[str, Any] | None) -> dict[str, int | None] | None:
        """The upstream's usage object in the audit record's names."""

    def usage_tap(self, injected: bool) -> UsageTap:
        """The per-stream watcher of usage frames (``injected``: strip what the client did not ask for)."""

    def prepare_stream(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """``(body to forward, injected)``: ask for stream usage if the client did not."""

    def prepare_unparsed_stream(self, body: bytes) -> tuple[Payload, bool]:
        """:meth:`prepare_stream` for a body too large to parse."""

    # Errors and keys.
    def error_body(self, failure: ProxyError) -> bytes:
        """The JSON error body a client of this API parses."""

    def stream_error_frame(self, failure: ProxyError) -> bytes:
        """The last SSE event of a stream the proxy ends with ``failure``."""

    def key_header(self, key: bytes) -> tuple[bytes, bytes]:
        """The header carrying an upstream key to this API."""

    def upstream_path(self, raw_path: bytes) -> bytes:
        """The path (without query) to append to an upstream's ``base_url`` of this API."""

    def accepts_upstream(self, upstream_api: str) -> bool:
        """Whether an upstream of ``upstream_api`` can serve this dialect's requests."""

    # Tool calls.
    def tool_calls(self, response: Mapping[str, Any]) -> list[ToolCall]:
        """The tool calls of a non-streamed response."""

    def stream_reader(self) -> StreamReader:
        """A reader of one streamed response (see :class:`StreamReader`)."""

    def assistant_turn(self, response: Mapping[str, Any]) -> Any:
        """The assistant's turn of a non-streamed response, as :meth:`follow_up` takes it."""

    def assistant_from(self, text: str, calls: Sequence[ToolCall]) -> Any:
        """An assistant turn built from a streamed response's text and tool calls."""

    def follow_up(
        self, body: Mapping[str, Any], assistant: Any, results: Sequence[tuple[str, str]]
    ) -> dict[str, Any]:
        """A copy of ``body`` with the assistant's turn and the tool results ``(call id, text)`` appended."""

    def add_tool(
        self, body: Mapping[str, Any], name: str, description: str, schema: Mapping[str, Any]
    ) -> dict[str, Any]:
        """A copy of ``body`` with one more function tool."""


class DialectBase:
    """What a dialect without a prompt answers (an API's other routes: ``/v1/models``); the API
    classes (:mod:`proxy.apis.openai`, :mod:`proxy.apis.messages`) add their wire, the body
    dialects their grammar and tools."""

    route: str | None = None

    @property
    def compressible(self) -> bool:
        return self.route is not None

    def walk(self, body: Mapping[str, Any]) -> tuple[Block, ...]:
        return ()

    def parts(self, body: Mapping[str, Any], blocks: Sequence[Block] | None = None) -> list[Part]:
        return []

    def other_texts(self, body: Mapping[str, Any], blocks: Sequence[Block] | None = None) -> list[str]:
        return []

    def cache_text(self, block: Block) -> str | None:
        return None

    def cache_key(self, body: Mapping[str, Any]) -> str | None:
        return None

    def breakpoint_at(self, blocks: Sequence[Block], index: int) -> tuple[JsonPath, Any] | None:
        return None

    def accepts_upstream(self, upstream_api: str) -> bool:
        return True

    def tool_calls(self, response: Mapping[str, Any]) -> list[ToolCall]:
        return []

    def _no_tools(self) -> Unsupported:
        return Unsupported(f"{self.route or 'this route'} has no tool calls")

    def stream_reader(self) -> StreamReader:
        raise self._no_tools()

    def assistant_turn(self, response: Mapping[str, Any]) -> Any:
        raise self._no_tools()

    def assistant_from(self, text: str, calls: Sequence[ToolCall]) -> Any:
        raise self._no_tools()

    def follow_up(
        self, body: Mapping[str, Any], assistant: Any, results: Sequence[tuple[str, str]]
    ) -> dict[str, Any]:
        raise self._no_tools()

    def add_tool(
        self, body: Mapping[str, Any], name: str, description: str, schema: Mapping[str, Any]
    ) -> dict[str, Any]:
        raise self._no_tools()
