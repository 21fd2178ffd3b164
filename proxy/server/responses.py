"""The response paths of a forwarded request: a buffered body, a large body relayed as it arrives,
an SSE stream (or the expand loop's); each commits the audit record once, before the client's last
byte, and ends a failed stream with the dialect's error frame."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from proxy.errors import (
    ProxyError,
    failing_closed,
    shutting_down,
)
from proxy.exchange import AuditSink, Exchange
from proxy.logs import RateLimitedLog
from proxy.server.asgi import Receive, Send
from proxy.server.forward import UpstreamPool, UpstreamResponse, read_failure
from proxy.server.health import UpstreamHealth
from proxy.server.hop import response_headers
from proxy.server.inbound import (
    UpstreamRequest,
    tersegate_headers,
)
from proxy.server.inflight import InFlight
from proxy.server.relay import (
    BUFFER_BYTES,
    Commit,
    UsageTail,
    relay_body,
    relay_stream,
    usage_of,
)
from proxy.server.routes import metric_route
from proxy.server.services import Services

__all__ = ["ResponsePaths"]

log = logging.getLogger("tersegate.app")


class ResponsePaths:
    """The part of :class:`~proxy.server.app.ProxyApp` that answers from the upstream's response."""

    services: Services
    pool: UpstreamPool
    health: UpstreamHealth
    _upstream_log: RateLimitedLog

    def _fails_closed(self) -> bool:
        """The one reading of ``audit.on_error``: whether an audit that cannot write refuses requests."""
        return self.services.config.audit.on_error == "fail-closed"

    def _upstream_failed(self, exchange: Exchange, failure: ProxyError, *, streaming: bool = False) -> None:
        """Count, remember (/healthz) and log (rate-limited) one upstream failure."""
        self.services.metrics.upstream_errors.labels(exchange.upstream, failure.kind).inc()
        self.health.failure(exchange.upstream, failure.kind)
        self._upstream_log.info(
            (exchange.upstream, failure.kind),
            "upstream failure upstream=%s error=%s status=%d stream=%s request_id=%s team=%s route=%s",
            exchange.upstream,
            failure.kind,
            failure.status,
            "mid-stream" if streaming else exchange.stream,
            exchange.request_id,
            exchange.team,
            metric_route(exchange.route),
        )

    def _committer(
        self, ctx: InFlight, usage: Callable[[], tuple[dict[str, Any] | None, str | None]] | None
    ) -> Commit:
        """The commit a relay calls before the client's last byte (or when the client has gone):
        the upstream's time, the usage read on the way (``usage``: ``(usage, model)``), then the
        audit record."""
        exchange = ctx.exchange
        assert exchange is not None

        async def commit() -> None:
            exchange.upstream_ms = (time.perf_counter() - ctx.sent_at) * 1000
            if exchange.client_disconnected:  # seen by the relay: as for a non-streaming request
                ctx.gone()
            if usage is not None:
                exchange.usage, model = usage()
                exchange.model = exchange.model or model
            await self._commit(ctx)

        return commit

    async def _commit(self, ctx: InFlight, *, fail_closed_raises: bool = True) -> None:
        """Hand the exchange to the audit once; a lost record is counted here, and when the audit
        fails closed it turns into a 503 (``fail_closed_raises``: unless the answer is already decided).

        The write runs as its own task, shielded: a request cancelled mid-write (its client left,
        e.g. Codex CLI closing on ``response.completed``) keeps its record, and the handler's second
        call (the 499 path) waits for that write instead of skipping it."""
        audit = self.services.audit
        if not ctx.audited or audit is None or ctx.exchange is None:
            return
        if ctx.committed is None:
            ctx.committed = asyncio.ensure_future(self._write_record(audit, ctx.exchange, ctx.team))
        if not await asyncio.shield(ctx.committed) and fail_closed_raises and self._fails_closed():
            raise failing_closed()

    async def _write_record(self, audit: AuditSink, exchange: Exchange, team: str) -> bool:
        try:
            await audit.commit(exchange)
        except Exception as exc:
            self.services.metrics.audit_write_errors.labels(team).inc()
            log.error("audit write failed request_id=%s error=%s", exchange.request_id, type(exc).__name__)
            return False
        return True

    async def _exchange(self, request: UpstreamRequest, receive: Receive, send: Send, ctx: InFlight) -> None:
        ctx.sent_at = time.perf_counter()
        response, deadline = await self.pool.send(
            ctx.upstream,
            method=request.method,
            path_qs=request.path_qs,
            headers=request.headers,
            body=request.body,
            streaming=request.streaming,
        )
        try:
            await self._respond(response, deadline, receive, send, ctx)
        finally:
            response.release()

    async def _respond(
        self, response: UpstreamResponse, deadline: float, receive: Receive, send: Send, ctx: InFlight
    ) -> None:
        exchange = ctx.exchange
        assert exchange is not None
        upstream = ctx.upstream
        self.services.metrics.upstream_latency.labels(upstream.name).observe(
            time.perf_counter() - ctx.sent_at
        )
        self.health.success(upstream.name)
        exchange.status = ctx.status = response.status
        request_id = response.header(b"x-request-id")
        exchange.upstream_request_id = request_id.decode("latin-1") if request_id is not None else None
        headers = response_headers(response.raw_headers)
        headers.extend(tersegate_headers(exchange))
        content_type = response.header(b"content-type")
        if content_type is not None and content_type[:17].lower() == b"text/event-stream":
            await self._stream(response, headers, receive, send, ctx)
            return
        try:
            body, complete = await response.read_some(limit=BUFFER_BYTES, deadline=deadline)
        except Exception as exc:
            raise read_failure(upstream, exc, streaming=False) from None
        if not complete:
            await self._relay_large(response, body, deadline, headers, send, ctx)
            return
        exchange.upstream_ms = (time.perf_counter() - ctx.sent_at) * 1000
        if ctx.audited and response.status < 400:
            exchange.usage, model = usage_of(body, response.header(b"content-encoding"))
            exchange.model = exchange.model or model
        if ctx.expand is not None and response.status == 200:
            body = await ctx.expand.finish_json(body)
        await self._commit(ctx)
        headers.append((b"content-length", str(len(body)).encode()))
        ctx.started = True
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _relay_large(
        self,
        response: UpstreamResponse,
        first: bytes,
        deadline: float,
        headers: list[tuple[bytes, bytes]],
        send: Send,
        ctx: InFlight,
    ) -> None:
        """A body over BUFFER_BYTES goes to the client as it arrives (proxy/server/relay.py)."""
        exchange = ctx.exchange
        assert exchange is not None
        length = response.header(b"content-length")
        if length is not None and length.strip().isdigit():
            headers.append((b"content-length", length.strip()))  # the same bytes follow
        want_usage = ctx.audited and response.status < 400
        tail = UsageTail(response.header(b"content-encoding")) if want_usage else None
        loop = asyncio.get_running_loop()
        upstream = ctx.upstream
        commit = self._committer(ctx, None if tail is None else lambda: (tail.usage(), None))
        ctx.started = True
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        try:
            await relay_body(
                response,
                first=first,
                timeout=lambda: deadline - loop.time(),
                send=send,
                tail=tail,
                commit=commit,
            )
        except Exception as exc:
            # Returning with the body unfinished makes uvicorn drop the connection: the client sees
            # a cut response, not a complete-looking short one.
            failure = exc if isinstance(exc, ProxyError) else read_failure(upstream, exc, streaming=False)
            exchange.error = failure.kind
            self.services.metrics.upstream_errors.labels(upstream.name, failure.kind).inc()
            await commit()

    async def _stream(
        self,
        response: UpstreamResponse,
        headers: list[tuple[bytes, bytes]],
        receive: Receive,
        send: Send,
        ctx: InFlight,
    ) -> None:
        exchange = ctx.exchange
        assert exchange is not None
        headers.append((b"x-accel-buffering", b"no"))
        ctx.started = True
        await send({"type": "http.response.start", "status": response.status, "headers": headers})

        upstream, tap = ctx.upstream, ctx.tap
        commit = self._committer(ctx, None if tap is None else lambda: (tap.usage, tap.model))
        failure: ProxyError | None = None
        try:
            if ctx.expand is not None and response.status == 200:
                await ctx.expand.relay(response, send=send, receive=receive, tap=tap, commit=commit)
                return
            await relay_stream(
                response,
                send=send,
                receive=receive,
                exchange=exchange,
                tap=tap,
                idle_timeout=upstream.stream_idle_timeout_s,
                split_frames=response.header(b"content-encoding") is None,
                commit=commit,
            )
        except asyncio.CancelledError:  # the shutdown grace ran out
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            failure = shutting_down()
        except Exception as exc:
            failure = exc if isinstance(exc, ProxyError) else read_failure(upstream, exc, streaming=True)
            self._upstream_failed(exchange, failure, streaming=True)
        if failure is not None:
            await self._cut(ctx, failure, commit, send)

    async def _cut(self, ctx: InFlight, failure: ProxyError, commit: Commit, send: Send) -> None:
        """End a stream whose headers are out: audit it with the failure's status (``partial``),
        then send the error as a last SSE event (OpenAI's SDKs raise an APIError for it)."""
        exchange = ctx.exchange
        assert exchange is not None
        exchange.error = failure.kind
        exchange.partial = True
        exchange.status = ctx.status = failure.status
        await commit()
        # The SDKs raise an APIError for the dialect's error frame.
        frame = ctx.route.dialect.stream_error_frame(failure)
        await send({"type": "http.response.body", "body": frame, "more_body": False})
