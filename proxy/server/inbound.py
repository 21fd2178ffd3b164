"""The client's side of a request: its headers (what is forwarded, its credentials, its declared
length), its body (bounded, never copied on the event loop when large), its route and upstream,
the request that goes upstream, and the watch for a client that leaves while it waits.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

from proxy.apis import Route, route_of, upstream_path
from proxy.config.model import Config, UpstreamConfig
from proxy.errors import not_found, too_large
from proxy.exchange import Exchange, Payload
from proxy.server.asgi import Receive, Scope
from proxy.server.auth import KEY_HEADERS, TEAM_HEADER, Credentials
from proxy.server.hop import HOP_REQUEST, connection_tokens, without
from proxy.server.relay import watch_disconnect

__all__ = [
    "ClientGone",
    "DisconnectWatch",
    "UpstreamRequest",
    "read_body",
    "request_headers",
    "request_id",
    "route_for",
    "tersegate_headers",
    "upstream_for",
    "upstream_path_qs",
]

_TERSEGATE_PREFIX = b"x-tersegate-"
_ANTHROPIC_VERSION = b"anthropic-version"
_JOIN_ON_LOOP_BELOW = 1 << 20  # a request body's chunks are joined on the loop below this size


def request_id() -> str:
    # An identifier, not a secret: the non-cryptographic generator is cheaper than urandom.
    return f"{random.getrandbits(96):024x}"


class ClientGone(Exception):
    """The client disconnected before its request body arrived or its response was ready."""


@dataclass(slots=True, frozen=True)
class UpstreamRequest:
    """What goes upstream."""

    method: str
    path_qs: bytes
    headers: list[tuple[bytes, bytes]]
    body: Payload
    streaming: bool


class DisconnectWatch:
    """Cancels ``task`` if the client goes away, watching only once a wait has lasted ``after`` s.

    Most answers of a local or cached upstream come back sooner: they never pay for the
    watcher task, only for a timer.
    """

    __slots__ = ("_receive", "_stopped", "_task", "_timer", "_watcher", "gone")

    def __init__(self, receive: Receive, task: asyncio.Task[Any], *, after: float = 0.05) -> None:
        self._receive = receive
        self._task = task
        self._watcher: asyncio.Future[None] | None = None
        self._stopped = False
        self.gone = False
        self._timer = asyncio.get_running_loop().call_later(after, self._start)

    def _start(self) -> None:
        self._watcher = asyncio.ensure_future(watch_disconnect(self._receive))
        self._watcher.add_done_callback(self._done)

    def _done(self, watcher: asyncio.Future[None]) -> None:
        # After stop() the request is past its wait: a late disconnect must not cancel what follows.
        if not self._stopped and not watcher.cancelled() and watcher.exception() is None:
            self.gone = True
            self._task.cancel()

    def stop(self) -> None:
        self._stopped = True
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()


def request_headers(
    raw: list[tuple[bytes, bytes]], *, strip_keys: bool
) -> tuple[list[tuple[bytes, bytes]], Credentials, int | None]:
    """One pass over the client's headers: what to forward, credentials, declared length."""
    forward: list[tuple[bytes, bytes]] = []
    creds = Credentials()
    length: int | None = None
    named: list[bytes] = []
    for name, value in raw:
        if name in HOP_REQUEST:
            if name == b"content-length" and value.isdigit():
                length = int(value)
            elif name == b"connection":
                named.append(value)
            continue
        if name in KEY_HEADERS:
            if name == b"authorization":
                creds.authorization = value
            else:
                creds.api_key = value
            if strip_keys:
                continue
        elif name.startswith(_TERSEGATE_PREFIX):
            if name == TEAM_HEADER:
                creds.team = value
            continue
        forward.append((name, value))
    if named:  # headers the client named in Connection are for this hop only (RFC 9110 7.6.1)
        tokens = connection_tokens(named)
        if tokens:
            forward = without(forward, tokens)
    return forward, creds, length


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    if declared is not None and declared > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            if len(chunks) == 1:
                return chunks[0]
            if size < _JOIN_ON_LOOP_BELOW:
                return b"".join(chunks)
            # Off the loop: joining bytes of 1 MiB and more releases the GIL while it copies (and
            # faults in fresh pages: up to 300 ms for 30 MB on a busy machine), so others go on.
            return await asyncio.to_thread(b"".join, chunks)


def tersegate_headers(exchange: Exchange) -> list[tuple[bytes, bytes]]:
    out = [(b"x-tersegate-request-id", exchange.request_id.encode())]
    if not exchange.compressible:
        return out
    rw = exchange.rewrite
    if rw.tokens_before is not None:
        out.append((b"x-tersegate-tokens-before", str(rw.tokens_before).encode()))
    if rw.tokens_after is not None:
        out.append((b"x-tersegate-tokens-after", str(rw.tokens_after).encode()))
    if rw.policy is not None:
        out.append((b"x-tersegate-policy", rw.policy.encode("utf-8", "replace")))
        out.append((b"x-tersegate-mode", rw.mode.encode()))
    if rw.override is not None:
        out.append((b"x-tersegate-mode-override", rw.override.encode("utf-8", "replace")))
    return out


def route_for(scope: Scope) -> Route:
    has_version = any(name == _ANTHROPIC_VERSION for name, _ in scope["headers"])
    return route_of(scope["path"], anthropic_version=has_version)


def upstream_path_qs(scope: Scope, upstream: UpstreamConfig) -> bytes:
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    path_qs = upstream_path(raw_path, upstream.api)
    return path_qs + b"?" + scope["query_string"] if scope["query_string"] else path_qs


def upstream_for(config: Config, team: str, route: Route) -> UpstreamConfig:
    upstream = config.upstream_for(team, route.api)
    if not route.dialect.accepts_upstream(upstream.api):
        raise not_found(
            f"Paths of the {route.api} API need an upstream with api: {route.api}; "
            f"team {team!r} uses {upstream.name!r}."
        )
    return upstream
