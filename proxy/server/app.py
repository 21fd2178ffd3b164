"""The proxy as a raw ASGI app: own endpoints, and everything else forwarded to an upstream.

No framework routing on the hot path. Per request: authenticate, read the body
(bounded; the client's side is proxy.server.inbound), run the rewrite hook on compressible routes,
send upstream through proxy.server.forward's lean HTTP/1.1 client, then either buffer the response
(usage read, audit committed, then the body sent) or relay it as SSE frame by frame. Bytes nobody
rewrote are sent as they came; the proxy never answers 500. This module is the entry (own endpoints,
lifespan, the outer handler that maps failures to answers); a request's body is prepared in
:mod:`proxy.server.preparing`, answered by :mod:`proxy.server.responses`, and its one state is
:class:`~proxy.server.inflight.InFlight`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from cachetools import LRUCache

from proxy.config.model import Config
from proxy.errors import (
    ProxyError,
    failing_closed,
    internal,
    shutting_down,
    unavailable,
)
from proxy.exchange import Exchange
from proxy.logs import RateLimitedLog
from proxy.metrics import CONTENT_TYPE_LATEST
from proxy.server.access import AccessLog
from proxy.server.asgi import Receive, Scope, Send
from proxy.server.auth import Authenticator
from proxy.server.forward import UpstreamPool
from proxy.server.health import UpstreamHealth
from proxy.server.inbound import (
    ClientGone,
    DisconnectWatch,
    UpstreamRequest,
    read_body,
    request_headers,
    request_id,
    route_for,
    upstream_for,
    upstream_path_qs,
)
from proxy.server.inflight import InFlight
from proxy.server.paths import bad_path, path_problem
from proxy.server.preparing import RequestPreparation
from proxy.server.relay import (
    limit_encodings,
)
from proxy.server.responses import ResponsePaths
from proxy.server.routes import metric_route
from proxy.server.services import Services

__all__ = ["ProxyApp", "create_app"]

log = logging.getLogger("tersegate.app")

_JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class _Bound:
    """Per-config state, rebuilt when hot reload swaps ``services.config``."""

    config: Config
    auth: Authenticator


class ProxyApp(RequestPreparation, ResponsePaths):
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
        ctx = InFlight(route_for(scope))
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
            ctx.gone()
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

    async def _fail(self, send: Send, ctx: InFlight, exc: ProxyError) -> None:
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

    async def _forward(self, scope: Scope, receive: Receive, send: Send, ctx: InFlight) -> None:
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
        ctx.upstream, ctx.tap = upstream, tap
        if streaming:  # the relay watches for a client that goes away itself
            await self._exchange(request, receive, send, ctx)
            return
        # Waiting for a whole completion can take minutes: a client that gives up cancels the wait
        # and drops the upstream connection, so the upstream can stop generating tokens nobody reads.
        task = asyncio.current_task()
        assert task is not None
        watch = DisconnectWatch(receive, task)
        try:
            await self._exchange(request, receive, send, ctx)
        except asyncio.CancelledError:
            task.uncancel()
            if not watch.gone:  # cancelled from outside: the shutdown grace ran out
                raise shutting_down() from None
            ctx.gone()
            await self._commit(ctx, fail_closed_raises=False)
            raise ClientGone from None
        finally:
            watch.stop()


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
