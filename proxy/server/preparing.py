"""Preparing a request to forward: the rewrite hook on its parsed body (or the unparsed path for a
body too large to parse), the stream's usage tap, and the expand loop of a retrieve policy."""

from __future__ import annotations

import dataclasses
import re

import orjson

from proxy.apis import Dialect, forwarded_body
from proxy.apis.stream_usage import UsageTap
from proxy.config.model import UpstreamConfig
from proxy.exchange import Exchange, Payload, Rewrite
from proxy.server.auth import KEY_HEADERS
from proxy.server.expand import ExpandLoop, identity_encoding, offer, wire_for
from proxy.server.forward import UpstreamPool, UpstreamResponse
from proxy.server.inbound import (
    UpstreamRequest,
)
from proxy.server.services import Services

__all__ = ["RequestPreparation"]

_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')


def _says_stream(body: bytes) -> bool:
    """Whether an unparsed body asks for a stream (the one sniff: a scan, then the pattern)."""
    return b'"stream"' in body and _STREAM_TRUE.search(body) is not None


class RequestPreparation:
    """The part of :class:`~proxy.server.app.ProxyApp` that prepares a request's body."""

    services: Services
    pool: UpstreamPool

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
            return body, _says_stream(body), None
        if len(body) > self.services.config.compression.max_parse_bytes:
            return self._unparsed(exchange, dialect, body)
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            exchange.rewrite = Rewrite(skipped="body is not valid JSON")
            return body, _says_stream(body), None
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
        exchange.stream = _says_stream(body)
        if not exchange.stream:
            return body, False, None
        out, injected = dialect.prepare_unparsed_stream(body)
        return out, True, dialect.usage_tap(injected)
