"""The proxy's own tool loop: it answers the model's ``tersegate_expand`` calls and continues upstream.

Per request of a ``retrieve`` policy that carries tools (``offer`` added the tool). When a response
calls ``tersegate_expand``, the proxy answers each such call from the originals store, sends the
conversation on with the assistant's turn (its text and those calls only) and the answers, and does
so again for the continuation, at most ``max_expansions_per_request`` expansions (later calls are
answered "limit reached"; one round after that, calls still made are removed). The client only sees
the last response; calls of its own tools that came with ours reach it from the continuation, as the
model makes them again once our calls are answered.

Streams: frames pass at once until a tool call starts; from there the stream is held to its end.
Without a call of ours the held frames go out as they came; with one, they are dropped and the
continuation's frames resume the client's stream (same chunk id; Anthropic block indexes continued).
Every extra call's usage lands in the exchange (``extra_usage``) for the audit, with the count of
expansions and the bytes they returned. Failures fail open: the client gets the last good response.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.apis.wire import TOOL_NAME, Call, Cut, Wire
from proxy.exchange import Exchange
from proxy.metrics import Metrics
from proxy.policy.originals import Expansion, Originals
from proxy.server.asgi import Receive, Send
from proxy.server.body import usage_of
from proxy.server.forward import UpstreamResponse
from proxy.server.relay import watched
from proxy.usage import UsageTap

__all__ = ["ExpandLoop", "Upstream", "identity_encoding"]

log = logging.getLogger("tersegate.expand")

_FRAME_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_DONE = b"data: [DONE]"
_READ_LIMIT = 64 * 1024 * 1024

# Sends a body upstream: ``(response, body deadline)``; streaming or not.
Upstream = Callable[[bytes, bool], Awaitable[tuple[UpstreamResponse, float]]]
Commit = Callable[[], Awaitable[None]]


@dataclass(slots=True)
class ExpandLoop:
    wire: Wire
    originals: Originals
    scope: str
    limit: int
    body: dict[str, Any]  # as forwarded (with the tool)
    upstream: Upstream
    exchange: Exchange
    idle_timeout: float = 300.0
    injected: bool = False  # the stream's usage was asked for by the proxy (the taps strip it)
    metrics: Metrics | None = None
    rounds: int = 0
    answered: int = 0

    def _ours(self, calls: list[Call]) -> list[Call]:
        return [c for c in calls if c.name == TOOL_NAME]

    async def _answer(self, ours: list[Call]) -> list[str]:
        """Each call's tool result (counted in the exchange); past the limit, "limit reached"."""
        results = []
        for call in ours:
            args = call.input
            if self.answered >= self.limit:
                got = Expansion.refused("limit", "", limit=self.limit)
            else:
                query = args.get("query") if isinstance(args.get("query"), str) else None
                got = await self.originals.expand(self.scope, str(args.get("hash", "")), query)
                self.answered += 1
                self.exchange.expansions += 1
                self.exchange.expanded_bytes += got.returned_bytes
            log.info("expand request_id=%s status=%s", self.exchange.request_id, got.status)
            if self.metrics is not None:
                self.metrics.expansions.labels(team=self.exchange.team, status=got.status).inc()
            results.append(got.text)
        return results

    def _next_body(self, text: str, ours: list[Call], results: list[str]) -> bytes:
        self.body = self.wire.follow_up(self.body, text, ours, results)
        self.rounds += 1
        return orjson.dumps(self.body)

    def _last_round(self) -> bool:
        """Past the limit, one round answers "limit reached"; after it, calls of ours are removed."""
        return self.rounds > self.limit

    # -- JSON ----------------------------------------------------------------------------------

    async def finish_json(self, first: bytes) -> bytes:
        """The body the client gets for a JSON response (``first`` when no call of ours is in it)."""
        try:
            response = orjson.loads(first)
        except orjson.JSONDecodeError:
            return first
        current = first
        while isinstance(response, dict):
            ours = self._ours(self.wire.calls(response))
            if not ours:
                return current
            if self._last_round():
                return orjson.dumps(self.wire.strip(response, {c.id for c in ours}))
            results = await self._answer(ours)
            payload = self._next_body(self.wire.text(response), ours, results)
            nxt = await self._call_json(payload)
            if nxt is None:  # fail open: the last good response, without our calls
                return orjson.dumps(self.wire.strip(response, {c.id for c in ours}))
            current, response = nxt, orjson.loads(nxt)
        return current

    def _failed(self, exc: BaseException) -> None:
        log.warning(
            "expand continuation failed request_id=%s error=%s", self.exchange.request_id, type(exc).__name__
        )

    async def _call_json(self, payload: bytes) -> bytes | None:
        try:
            response, deadline = await self.upstream(payload, False)
        except Exception as exc:
            self._failed(exc)
            return None
        try:
            body, complete = await response.read_some(limit=_READ_LIMIT, deadline=deadline)
        except Exception as exc:
            self._failed(exc)
            return None
        finally:
            response.release()
        if response.status != 200 or not complete or response.header(b"content-encoding"):
            return None
        usage, _ = usage_of(body, None)
        self.exchange.extra_usage.append(usage or {})
        try:
            return body if isinstance(orjson.loads(body), dict) else None
        except orjson.JSONDecodeError:
            return None

    # -- streams -------------------------------------------------------------------------------

    async def relay(
        self,
        response: UpstreamResponse,
        *,
        send: Send,
        receive: Receive,
        tap: UsageTap | None,
        commit: Commit,
    ) -> None:
        """:func:`proxy.server.relay.relay_stream` for a stream whose calls of ours are answered here."""
        pump = self._pump(response, send, tap, commit)
        await watched(pump, response=response, receive=receive, exchange=self.exchange, commit=commit)

    async def _pump(
        self, response: UpstreamResponse, send: Send, tap: UsageTap | None, commit: Commit
    ) -> None:
        cut = self.wire.cut(None)
        done = await self._read(response, cut, tap, send)
        while True:
            ours = self._ours(cut.calls)
            if not ours:
                await _out(send, cut.release())
                break
            theirs = [c for c in cut.calls if c.name != TOOL_NAME]
            if self._last_round():
                await _out(send, self.wire.end_with(cut, theirs))
                break
            results = await self._answer(ours)
            nxt = await self._open_stream(self._next_body(cut.text, ours, results))
            if nxt is None:
                await _out(send, self.wire.end_with(cut, theirs))
                break
            cut, tap = self.wire.cut(cut), self.wire.dialect.usage_tap(self.injected)
            try:
                done = await self._read(nxt, cut, tap, send) or done
            finally:
                nxt.release()  # back to the pool when read to its end, else closed
            self.exchange.extra_usage.append((tap.usage if tap is not None else None) or {})
        await commit()
        await send({"type": "http.response.body", "body": done, "more_body": False})

    async def _read(self, response: UpstreamResponse, cut: Cut, tap: UsageTap | None, send: Send) -> bytes:
        """Feed one upstream stream through ``cut``; returns its ``[DONE]`` frame, if any."""
        tail, done = b"", b""
        async for chunk in response.chunks(idle_timeout=self.idle_timeout):
            data = tail + chunk
            start, out = 0, []
            for match in _FRAME_END.finditer(data):
                frame, start = data[start : match.end()], match.end()
                kept = tap.frame(frame) if tap is not None else frame
                if not kept:
                    continue
                if kept.startswith(_DONE):
                    done = kept
                    continue
                passed = self.wire.feed(cut, kept)
                if passed:
                    out.append(passed)
            tail = data[start:]
            if out:
                await _out(send, b"".join(out))
        return done

    async def _open_stream(self, payload: bytes) -> UpstreamResponse | None:
        body, _ = self.wire.dialect.prepare_stream(orjson.loads(payload))
        try:
            response, _deadline = await self.upstream(orjson.dumps(body), True)
        except Exception as exc:
            self._failed(exc)
            return None
        content_type = response.header(b"content-type") or b""
        if response.status != 200 or not content_type.lower().startswith(b"text/event-stream"):
            response.close()
            return None
        return response


async def _out(send: Send, data: bytes) -> None:
    if data:
        await send({"type": "http.response.body", "body": data, "more_body": True})


def identity_encoding(headers: list[tuple[bytes, bytes]]) -> None:
    """The loop reads every response it relays: ask for it unencoded."""
    headers[:] = [(n, v) for n, v in headers if n != b"accept-encoding"]
    headers.append((b"accept-encoding", b"identity"))
