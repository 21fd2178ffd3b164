"""The shared vocabulary of one proxied request, passed between forwarding,
the rewrite hook (policy engine) and the audit.

The forwarding core creates an :class:`Exchange` per request and fills it as
the request passes; the rewrite hook returns a :class:`Rewrite`; the audit
sink turns a finished exchange into a record.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "COMPRESSIBLE_ROUTES",
    "UNCHANGED",
    "AuditLost",
    "AuditSink",
    "Exchange",
    "Payload",
    "Rewrite",
    "Rewriter",
    "payload_size",
]

# Endpoints whose request bodies carry prompts the rewrite hook may compress (and the audit records).
COMPRESSIBLE_ROUTES: tuple[str, ...] = (
    "/v1/chat/completions",
    "/v1/responses",
    "/v1/completions",
    "/v1/messages",  # Anthropic Messages; Azure's deployment paths route to their OpenAI twins
)

Payload = bytes | tuple[bytes | memoryview, ...]
"""A request body as it goes upstream: bytes, or pieces sent one after another. A large body is
spliced by sending views of it, never copied: on the event loop a 30 MB copy takes 10 ms on a quiet
machine and 300 ms where fresh pages are slow to fault in, and no other request is served meanwhile."""


def payload_size(body: Payload) -> int:
    return len(body) if isinstance(body, bytes) else sum(memoryview(piece).nbytes for piece in body)


@dataclass(slots=True)
class Rewrite:
    """What the rewrite hook did with a request body.

    ``body`` is the new parsed body to forward, or None: forward the original
    bytes untouched. Token counts are of the compressible text (prompt parts),
    with the model's tokenizer; equal when nothing changed.
    """

    body: dict[str, Any] | None = None
    policy: str | None = None
    mode: str = "off"  # enforce | shadow | off
    rules: tuple[str, ...] = ()
    tokens_before: int | None = None
    tokens_after: int | None = None
    # Estimated tokens of the rest of what is sent (tools, tool calls' inputs; Anthropic routes),
    # so the upstream's exact input count can calibrate the estimate (see docs/audit.md).
    tokens_other: int | None = None
    compress_ms: float = 0.0
    fail_open: str | None = None  # why the original was forwarded after an error / budget overrun
    skipped: str | None = None  # why the hook did not look (e.g. "body is not valid JSON")
    unparsed: bool = False  # a body above compression.max_parse_bytes: the audit counts the upstream's usage
    override: str | None = None  # the client's X-Tersegate-Mode: "applied" or "refused: why"
    retrieve: bool = False  # the policy keeps originals: the server offers tersegate_expand
    # Per-part details for `tersegate compress --explain` (never written to logs).
    parts: tuple[Mapping[str, Any], ...] = ()


UNCHANGED = Rewrite()


@dataclass(slots=True)
class Exchange:
    """Facts about one request, filled in as it passes through the proxy."""

    request_id: str
    method: str
    route: str  # the path with any /v1 prefix normalised: "/v1/chat/completions"; Azure: its OpenAI twin
    team: str
    key_id: str | None  # first 12 hex of the proxy key's SHA-256; never the key
    upstream: str
    started: float  # time.time() at arrival
    compressible: bool = False
    model: str | None = None
    stream: bool = False
    status: int | None = None
    rewrite: Rewrite = field(default_factory=Rewrite)
    upstream_request_id: str | None = None
    usage: dict[str, Any] | None = None  # the upstream's `usage` object as reported
    upstream_ms: float | None = None
    # Only kept when audit.include_text is on: the original and forwarded bodies.
    request_body: dict[str, Any] | None = None
    # The parsed body as the client sent it, in memory only: the audit's cache model digests it.
    prompt: dict[str, Any] | None = None
    # Its blocks (proxy.apis.Block) as the rewrite hook walked them, so the audit needs no second walk.
    blocks: tuple[Any, ...] | None = None
    error: str | None = None  # proxy-side error type (upstream_unreachable, timeout, ...)
    client_disconnected: bool = False
    partial: bool = False  # a response the proxy ended early after its headers were sent
    arrived: float = field(default_factory=time.monotonic)  # the clock latency budgets run on
    api: str = "openai"  # openai | anthropic | azure: the API the route speaks
    deployment: str | None = None  # Azure: the deployment named in the path
    # The proxy's tool loop (proxy.server.expand): tersegate_expand calls answered, bytes of
    # originals they returned, and the usage of each extra upstream call it made.
    expansions: int = 0
    expanded_bytes: int = 0
    extra_usage: list[dict[str, Any]] = field(default_factory=list)


class Rewriter(Protocol):
    """The rewrite hook: ``await rewriter(exchange, body, headers)`` -> a :class:`Rewrite`.

    The forwarding core calls it for compressible routes with the parsed JSON
    body and the client's headers (keys removed); the policy engine implements
    it. It must never raise: failures are reported as ``Rewrite(fail_open=...)``.
    It carries its own lifecycle, so the wiring needs not know which hook it runs.
    """

    async def __call__(
        self, exchange: Exchange, body: dict[str, Any], headers: Mapping[str, str]
    ) -> Rewrite: ...

    def start(self) -> None:
        """Begin background preparation (loading models) on the running loop; again after a reload."""

    async def ready(self) -> None:
        """Return once prepared (``tersegate compress`` waits, as a warm server would be)."""

    def is_ready(self) -> bool:
        """Prepared now (``/healthz`` reports it; false again while a worker is replaced)."""

    def close(self) -> None:
        """Stop background work and release workers."""


class AuditLost(Exception):
    """An audit record could not be written; the server counts it and applies ``audit.on_error``."""


class AuditSink(Protocol):
    """Receives each finished exchange. ``commit`` returns once the record is
    durably handed to the OS (written), so a response can finish after it, and
    raises :class:`AuditLost` (or any error) when it was not written. What then
    happens to the request (fail open or closed) is the server's decision, not the sink's."""

    async def commit(self, exchange: Exchange) -> None: ...

    def healthy(self) -> bool: ...

    async def aclose(self) -> None: ...
