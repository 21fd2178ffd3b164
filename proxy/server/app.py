"""The proxy as a raw ASGI app: own endpoints, and everything else forwarded to an upstream.

No framework routing on the hot path. Per request: authenticate, read the body
(bounded; the client's side is proxy.server.inbound), run the rewrite hook on compressible routes,
send upstream through proxy.server.forward's lean HTTP/1.1 client, then either buffer the response
(usage read, audit committed, then the body sent) or relay it as SSE frame by frame. Bytes nobody
rewrote are sent as they came; the proxy never answers 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from cachetools import LRUCache

from proxy.apis import Dialect, Route, forwarded_body
from proxy.config.model import Config, UpstreamConfig
from proxy.errors import (
    ProxyError,
    failing_closed,
    internal,
    shutting_down,
    unavailable,
)
from proxy.exchange import Exchange, Payload, Rewrite
from proxy.logs import RateLimitedLog
from proxy.metrics import CONTENT_TYPE_LATEST
from proxy.server.access import AccessLog
from proxy.server.asgi import Receive, Scope, Send
from proxy.server.auth import KEY_HEADERS, Authenticator
from proxy.server.body import BUFFER_BYTES, UsageTail, limit_encodings, relay_body, usage_of
from proxy.server.expand import ExpandLoop, identity_encoding, offer, wire_for
from proxy.server.forward import UpstreamPool, UpstreamResponse, read_failure
from proxy.server.health import UpstreamHealth
from proxy.server.hop import response_headers
from proxy.server.inbound import (
    ClientGone,
    DisconnectWatch,
    UpstreamRequest,
    read_body,
    request_headers,
    request_id,
    route_for,
    tersegate_headers,
    upstream_for,
    upstream_path_qs,
)
from proxy.server.paths import bad_path, path_problem
from proxy.server.relay import relay_stream
from proxy.server.routes import metric_route
from proxy.server.services import Services
from proxy.usage import UsageTap

__all__ = ["ProxyApp", "create_app"]

log = logging.getLogger("tersegate.app")

_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
_JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class _Bound:
    """Per-config state, rebuilt when hot reload swaps ``services.config``."""

    config: Config
    auth: Authenticator


class _Ctx:
    """What the outer handler needs to know about a request in progress."""

    __slots__ = ("audited", "committed", "exchange", "expand", "route", "started", "status", "team")

    def __init__(self, route: Route) -> None:
        self.route = route
        self.exchange: Exchange | None = None
        self.started = False
        self.status = 0
        self.team = "-"
        self.audited = False
        self.committed = False
        self.expand: ExpandLoop | None = None  # the proxy answers tersegate_expand calls


class ProxyApp:
    """The ASGI application. ``services.config`` is read per request (hot reload swaps it)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.pool = UpstreamPool()
        self._bound: _Bound | None = None
        # labels() takes a lock and builds tuples: children cached per (team, route, status), bounded
        # (team names come from clients in passthrough mode). One event loop: no lock needed.
        self._request_counters: LRUCache[tuple[str, str, int], Any] = LRUCache(maxsize=10_000)
        self._active: set[asyncio.Task[Any]] = set()  # requests in flight, awaited at shutdown
        self.health = UpstreamHealth()
        self._upstream_log = RateLimitedLog(log)
        path = services.config.access_log
        self._access = AccessLog(path) if path is not None else None  # from the config at start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if scope["method"] == "GET" and path in _OWN:
                try:
                    await _OWN[path](self, send)
                except Exception as exc:  # never a 500 from the proxy, even here
                    log.error("%s failed error=%s", path, type(exc).__name__)
                    await _send_simple(send, 503, unavailable(f"{path} failed").body(), _JSON_HEADERS)
                return
            await self._handle(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    # -- own endpoints -------------------------------------------------------------------------

    async def _healthz(self, send: Send) -> None:
        audit = self.services.audit
        audit_state = "off" if audit is None else "ok" if audit.healthy() else "failing"
        refusing = audit_state == "failing" and self._fails_closed()
        body = orjson.dumps(
            {
                "status": "unavailable" if refusing else "ok",
                "audit": audit_state,
                "compression": self.services.compression_state(),
                "upstreams": self.health.report(list(self.services.config.upstreams)),
            }
        )
        await _send_simple(send, 503 if refusing else 200, body, _JSON_HEADERS)

    async def _readyz(self, send: Send) -> None:
        """Readiness, for load balancers: 200 once policies are loaded and every model they
        need is warm (in every worker); 503 saying what is pending until then."""
        pending, failed = self.services.readiness()
        ready = not pending and not failed
        body: dict[str, Any] = {"status": "ready" if ready else "failed" if not pending else "warming"}
        if pending:
            body["pending"] = pending
        if failed:
            body["failed"] = failed
        await _send_simple(send, 200 if ready else 503, orjson.dumps(body), _JSON_HEADERS)

    async def _metrics(self, send: Send) -> None:
        body = self.services.metrics.render()
        await _send_simple(send, 200, body, [(b"content-type", CONTENT_TYPE_LATEST.encode())])

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.services.start()  # hot reload of config and policies
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._drained()
                if self._access is not None:
                    self._access.close()
                await self.pool.aclose()
                await self.services.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _drained(self) -> None:
        """Wait for requests still answering (uvicorn has cancelled them at the end of the grace:
        each sends its error and writes its audit record) before the audit closes."""
        if self._active:
            await asyncio.wait(set(self._active), timeout=10)

    # -- forwarding ----------------------------------------------------------------------------

    def _bind(self) -> _Bound:
        config = self.services.config
        bound = self._bound
        if bound is None or bound.config is not config:
            bound = self._bound = _Bound(config, Authenticator(config))
        return bound

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        metrics = self.services.metrics
        ctx = _Ctx(route_for(scope))
        route = ctx.route.route
        metrics.in_flight.inc()
        task = asyncio.current_task()
        assert task is not None
        self._active.add(task)
        try:
            problem = path_problem(scope.get("raw_path") or scope["path"].encode())
            if problem is not None:  # before routing, policy and audit look at it
                raise bad_path(problem)
            await self._forward(scope, receive, send, ctx)
        except ProxyError as exc:
            await self._fail(send, ctx, exc)
        except ClientGone:
            ctx.status = 499
        except asyncio.CancelledError:  # the shutdown grace ran out (uvicorn cancels what is left)
            task.uncancel()
            await self._fail(send, ctx, shutting_down())
        except Exception as exc:
            request_id = ctx.exchange.request_id if ctx.exchange else "-"
            # Type and place only: messages may quote request data.
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"
            log.error("proxy error request_id=%s error=%s at=%s", request_id, type(exc).__name__, where)
            await self._fail(send, ctx, internal(request_id))
        finally:
            self._active.discard(task)
            metrics.in_flight.dec()
            self._count(ctx.team, route, ctx.status)
            if self._access is not None:
                self._access.write(ctx.exchange, status=ctx.status, team=ctx.team, route=metric_route(route))
            if log.isEnabledFor(logging.DEBUG):
                exchange = ctx.exchange
                log.debug(
                    "request id=%s team=%s route=%s status=%s upstream_ms=%s error=%s",
                    exchange.request_id if exchange else "-",
                    ctx.team,
                    metric_route(route),
                    ctx.status,
                    f"{exchange.upstream_ms:.1f}" if exchange and exchange.upstream_ms is not None else "-",
                    exchange.error if exchange else None,
                )

    def _count(self, team: str, route: str, status: int) -> None:
        key = (team, route, status)
        counter = self._request_counters.get(key)
        if counter is None:
            counter = self.services.metrics.requests.labels(team, metric_route(route), str(status))
            self._request_counters[key] = counter
        counter.inc()

    async def _fail(self, send: Send, ctx: _Ctx, exc: ProxyError) -> None:
        exchange = ctx.exchange
        if exchange is not None:
            exchange.error = exc.kind
            exchange.status = exc.status
            if exc.kind.startswith("upstream"):
                self._upstream_failed(exchange, exc)
        if ctx.started:
            # Headers are out: end the body so the client is not left waiting (it sees a short body).
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        ctx.status = exc.status
        if exchange is not None:
            await self._commit(ctx, fail_closed_raises=False)
        headers = list(_JSON_HEADERS)
        if exchange is not None:
            headers.append((b"x-tersegate-request-id", exchange.request_id.encode()))
        ctx.started = True
        await _send_simple(send, exc.status, ctx.route.dialect.error_body(exc), headers)

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

    async def _commit(self, ctx: _Ctx, *, fail_closed_raises: bool = True) -> None:
        """Hand the exchange to the audit once; a lost record is counted here, and when the audit
        fails closed it turns into a 503 (``fail_closed_raises``: unless the answer is already decided)."""
        audit = self.services.audit
        if ctx.committed or not ctx.audited or audit is None or ctx.exchange is None:
            return
        ctx.committed = True
        try:
            await audit.commit(ctx.exchange)
        except Exception as exc:
            self.services.metrics.audit_write_errors.labels(ctx.team).inc()
            log.error(
                "audit write failed request_id=%s error=%s", ctx.exchange.request_id, type(exc).__name__
            )
            if fail_closed_raises and self._fails_closed():
                raise failing_closed() from None

    async def _forward(self, scope: Scope, receive: Receive, send: Send, ctx: _Ctx) -> None:
        bound = self._bind()
        config = bound.config
        method: str = scope["method"]
        found = ctx.route
        headers, creds, declared = request_headers(scope["headers"], strip_keys=bound.auth.strips_client_keys)
        identity = bound.auth.identify(creds, found.dialect)
        ctx.team = identity.team
        upstream = upstream_for(config, identity.team, found)
        exchange = ctx.exchange = Exchange(
            request_id=request_id(),
            method=method,
            route=found.route,
            team=identity.team,
            key_id=identity.key_id,
            upstream=upstream.name,
            started=time.time(),
            compressible=method == "POST" and found.compressible,
            api=found.api,
            deployment=found.deployment,
        )
        audit = self.services.audit
        ctx.audited = audit is not None and (exchange.compressible or config.audit.all_routes)
        if ctx.audited and audit is not None and not audit.healthy() and self._fails_closed():
            raise failing_closed()
        if ctx.audited:
            limit_encodings(headers)
        received = await read_body(receive, config.max_body_bytes, declared)
        body, streaming, tap = await self._prepare(
            exchange, found.dialect, received, scope["headers"], upstream
        )
        headers.extend(identity.upstream_auth)
        request = UpstreamRequest(method, upstream_path_qs(scope, upstream), headers, body, streaming)
        ctx.expand = self._expand_loop(exchange, found.dialect, upstream, request, tap)
        if streaming:  # the relay watches for a client that goes away itself
            await self._exchange(upstream, request, receive, send, ctx, tap)
            return
        # Waiting for a whole completion can take minutes: a client that gives up cancels the wait
        # and drops the upstream connection, so the upstream can stop generating tokens nobody reads.
        task = asyncio.current_task()
        assert task is not None
        watch = DisconnectWatch(receive, task)
        try:
            await self._exchange(upstream, request, receive, send, ctx, tap)
        except asyncio.CancelledError:
            task.uncancel()
            if not watch.gone:  # cancelled from outside: the shutdown grace ran out
                raise shutting_down() from None
            exchange.client_disconnected = True
            exchange.status = exchange.status or 499
            await self._commit(ctx, fail_closed_raises=False)
            raise ClientGone from None
        finally:
            watch.stop()

    async def _exchange(
        self,
        upstream: UpstreamConfig,
        request: UpstreamRequest,
        receive: Receive,
        send: Send,
        ctx: _Ctx,
        tap: UsageTap | None,
    ) -> None:
        t0 = time.perf_counter()
        response, deadline = await self.pool.send(
            upstream,
            method=request.method,
            path_qs=request.path_qs,
            headers=request.headers,
            body=request.body,
            streaming=request.streaming,
        )
        try:
            await self._respond(response, deadline, upstream, t0, receive, send, ctx, tap)
        finally:
            response.release()

    async def _prepare(
        self,
        exchange: Exchange,
        dialect: Dialect,
        body: bytes,
        raw_headers: list[tuple[bytes, bytes]],
        upstream: UpstreamConfig,
    ) -> tuple[Payload, bool, UsageTap | None]:
        """The rewrite hook: ``(bytes to send, streaming, usage tap)``."""
        if not exchange.compressible:
            return body, b'"stream"' in body and _STREAM_TRUE.search(body) is not None, None
        if len(body) > self.services.config.compression.max_parse_bytes:
            return self._unparsed(exchange, dialect, body)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            exchange.rewrite = Rewrite(skipped="body is not valid JSON")
            return body, _STREAM_TRUE.search(body) is not None, None
        if not isinstance(parsed, dict):
            exchange.rewrite = Rewrite(skipped="body is not a JSON object")
            return body, False, None
        model = parsed.get("model")
        exchange.model = model if isinstance(model, str) else None
        if dialect.by_deployment:  # priced by the deployments map, else the response's model
            # The deployment is in the path, or (/openai/responses, /openai/v1) the body's model.
            exchange.model = upstream.deployments.get(exchange.deployment or exchange.model or "")
        exchange.stream = parsed.get("stream") is True
        exchange.prompt = parsed
        if self.services.config.audit.include_text:
            exchange.request_body = parsed
        client_headers = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in raw_headers
            if name not in KEY_HEADERS
        }
        rewrite = exchange.rewrite = await self.services.rewriter(exchange, parsed, client_headers)
        offer(rewrite, dialect, parsed)  # tersegate_expand, for a retrieve policy (server.expand)
        out, injected = forwarded_body(body, parsed, rewrite.body, stream=exchange.stream, dialect=dialect)
        if out is body and rewrite.body is not None:  # could not be encoded: forwarded as sent (fail open)
            exchange.rewrite = dataclasses.replace(
                rewrite, body=None, fail_open="the rewritten body could not be encoded"
            )
        if not exchange.stream:
            return out, False, None
        return out, True, dialect.usage_tap(injected)

    def _expand_loop(
        self,
        exchange: Exchange,
        dialect: Dialect,
        upstream: UpstreamConfig,
        request: UpstreamRequest,
        tap: UsageTap | None,
    ) -> ExpandLoop | None:
        """The tool loop of a request that was offered ``tersegate_expand`` (proxy.server.expand)."""
        originals, wire, body = self.services.originals, wire_for(dialect), exchange.rewrite.body
        if originals is None or wire is None or body is None or not exchange.rewrite.retrieve:
            return None
        identity_encoding(request.headers)
        injected = tap.injected if tap is not None else False

        async def again(payload: bytes, streaming: bool) -> tuple[UpstreamResponse, float]:
            return await self.pool.send(
                upstream,
                method=request.method,
                path_qs=request.path_qs,
                headers=request.headers,
                body=payload,
                streaming=streaming,
            )

        return ExpandLoop(
            wire,
            originals,
            originals.scope(exchange.team),
            self.services.config.compression.retrieve.max_expansions_per_request,
            body,
            again,
            exchange,
            idle_timeout=upstream.stream_idle_timeout_s,
            injected=injected,
            metrics=self.services.metrics,
        )

    def _unparsed(
        self, exchange: Exchange, dialect: Dialect, body: bytes
    ) -> tuple[Payload, bool, UsageTap | None]:
        """A body too large to parse on the event loop: forwarded as it came (a stream only gets
        ``stream_options`` put in front); the model comes from the response, the tokens from the
        upstream's usage."""
        exchange.rewrite = Rewrite(skipped="body above compression.max_parse_bytes", unparsed=True)
        exchange.stream = b'"stream"' in body and _STREAM_TRUE.search(body) is not None
        if not exchange.stream:
            return body, False, None
        out, injected = dialect.prepare_unparsed_stream(body)
        return out, True, dialect.usage_tap(injected)

    async def _respond(
        self,
        response: UpstreamResponse,
        deadline: float,
        upstream: UpstreamConfig,
        t0: float,
        receive: Receive,
        send: Send,
        ctx: _Ctx,
        tap: UsageTap | None,
    ) -> None:
        exchange = ctx.exchange
        assert exchange is not None
        self.services.metrics.upstream_latency.labels(upstream.name).observe(time.perf_counter() - t0)
        self.health.success(upstream.name)
        exchange.status = ctx.status = response.status
        request_id = response.header(b"x-request-id")
        exchange.upstream_request_id = request_id.decode("latin-1") if request_id is not None else None
        headers = response_headers(response.raw_headers)
        headers.extend(tersegate_headers(exchange))
        content_type = response.header(b"content-type")
        if content_type is not None and content_type[:17].lower() == b"text/event-stream":
            await self._stream(response, upstream, t0, headers, receive, send, ctx, tap)
            return
        try:
            body, complete = await response.read_some(limit=BUFFER_BYTES, deadline=deadline)
        except Exception as exc:
            raise read_failure(upstream, exc, streaming=False) from None
        if not complete:
            await self._relay_large(response, body, deadline, upstream, t0, headers, send, ctx)
            return
        exchange.upstream_ms = (time.perf_counter() - t0) * 1000
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
        upstream: UpstreamConfig,
        t0: float,
        headers: list[tuple[bytes, bytes]],
        send: Send,
        ctx: _Ctx,
    ) -> None:
        """A body over BUFFER_BYTES goes to the client as it arrives (proxy/server/body.py)."""
        exchange = ctx.exchange
        assert exchange is not None
        length = response.header(b"content-length")
        if length is not None and length.strip().isdigit():
            headers.append((b"content-length", length.strip()))  # the same bytes follow
        want_usage = ctx.audited and response.status < 400
        tail = UsageTail(response.header(b"content-encoding")) if want_usage else None
        loop = asyncio.get_running_loop()

        async def commit() -> None:
            exchange.upstream_ms = (time.perf_counter() - t0) * 1000
            if tail is not None:
                exchange.usage = tail.usage()
            await self._commit(ctx)

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
        upstream: UpstreamConfig,
        t0: float,
        headers: list[tuple[bytes, bytes]],
        receive: Receive,
        send: Send,
        ctx: _Ctx,
        tap: UsageTap | None,
    ) -> None:
        exchange = ctx.exchange
        assert exchange is not None
        headers.append((b"x-accel-buffering", b"no"))
        ctx.started = True
        await send({"type": "http.response.start", "status": response.status, "headers": headers})

        async def commit() -> None:
            exchange.upstream_ms = (time.perf_counter() - t0) * 1000
            if exchange.client_disconnected:  # as for a non-streaming request the client left
                exchange.status = 499
            if tap is not None:
                exchange.usage = tap.usage
                exchange.model = exchange.model or tap.model
            await self._commit(ctx)

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
        if exchange.client_disconnected:
            ctx.status = 499

    async def _cut(
        self, ctx: _Ctx, failure: ProxyError, commit: Callable[[], Awaitable[None]], send: Send
    ) -> None:
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


async def _send_simple(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


_OWN: dict[str, Callable[[ProxyApp, Send], Awaitable[None]]] = {
    "/healthz": ProxyApp._healthz,
    "/readyz": ProxyApp._readyz,
    "/metrics": ProxyApp._metrics,
}


def create_app(services: Services) -> ProxyApp:
    """The ASGI app serving ``services``; the lifespan closes upstream sessions and the audit."""
    return ProxyApp(services)
