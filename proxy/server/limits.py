"""Client limits on the listening side: header size and count, time to send headers, open connections.

uvicorn's httptools protocol has a keep-alive timeout (``timeout_keep_alive``,
armed only after a response) and ``limit_concurrency`` (a plain-text 503), but
no limit on header bytes or count, and no timer before a request's headers are
complete: a client that connects and sends nothing, or one header byte a second
(slowloris), holds its connection forever, and 16 MiB of headers are buffered
and forwarded. :func:`limited_protocol` returns a subclass of that protocol that

- counts the bytes of a request's head as they arrive, and answers 431 once they
  pass ``max_header_bytes`` (so no more than that plus one read is buffered), or
  once the head holds more than ``max_headers`` fields;
- gives a client ``header_timeout_s`` from connecting, or from the first read of
  its next request's head that does not complete it, to finish the head: then 408
  (or a silent close if it sent nothing, like an expired keep-alive connection);
- answers requests on connections beyond ``max_connections`` with 503 and closes them.

Every refusal is in OpenAI's error shape and closes the connection. The checks
cost a few attribute tests per read; the per-header work stays in httptools.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from proxy.config.model import LimitsConfig
from proxy.errors import error_body
from proxy.logs import RateLimitedLog

__all__ = ["limited_protocol"]

log = logging.getLogger("tersegate.limits")
_shed_log = RateLimitedLog(log)  # one info line per kind per second at most: refusals come in floods

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a refused request."""


def _refusal(status: int, message: str, code: str) -> bytes:
    kind = "server_error" if status == 503 else "invalid_request_error"
    body = error_body(message, type=kind, code=code)
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
    )
    return head % (status, _REASONS[status], len(body)) + body


async def _busy(scope: Any, receive: Any, send: Any) -> None:
    """The app for a request on a connection beyond ``max_connections``."""
    _shed_log.info(("503",), "shed a request: 503 service_unavailable (limits.max_connections reached)")
    body = error_body(
        "The proxy is at its connection limit (limits.max_connections); retry shortly.",
        type="server_error",
        code="service_unavailable",
    )
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        (b"retry-after", b"1"),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class _LimitedProtocol(HttpToolsProtocol):
    limits: LimitsConfig = LimitsConfig()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keepalive_timeout_s  # type: ignore[assignment]
        self._in_head = True  # the next bytes belong to a request head
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _responding(self) -> bool:
        """A response is still going out (a pipelined head must not be answered into it)."""
        return self.cycle is not None and not self.cycle.response_complete

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._responding():
            self._arm_head_timer()  # a pipelined head waits its turn; the clock restarts after
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing sent: like an expired keep-alive connection
            return
        message = f"Request headers not received within {self.limits.header_timeout_s:g}s."
        self._refuse(408, message, "request_timeout")

    def _refuse(self, status: int, message: str, code: str) -> None:
        self._cancel_head_timer()
        self._in_head = False
        _shed_log.info((code,), "refused a request: %d %s", status, code)  # no header or client data
        if not self.transport.is_closing():
            if not self._responding():  # else only the close: never bytes inside another response
                self.transport.write(_refusal(status, message, code))
            self.transport.close()

    def _too_large(self) -> None:
        limit = self.limits.max_header_bytes
        message = f"Request headers exceed the proxy's limit of {limit} bytes (limits.max_header_bytes)."
        self._refuse(431, message, "request_headers_too_large")

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self._in_head:
            self._head_bytes += len(data)
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _Refused):
                return
            self._bad_request()
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # as uvicorn does with no websocket library: served as HTTP
        except httptools.HttpParserError:
            self._bad_request()
        else:
            if self._in_head and self._head_bytes:  # a head begun and not finished in this read
                if self._head_bytes > self.limits.max_header_bytes:
                    self._too_large()  # still inside the head, and already too much of it
                else:
                    self._arm_head_timer()  # (a head that arrives whole, the usual case, needs no timer)

    def _bad_request(self) -> None:
        self._cancel_head_timer()
        self.logger.warning("Invalid HTTP request received.")
        self.send_400_response("Invalid HTTP request received.")

    def on_headers_complete(self) -> None:
        limits = self.limits
        self._cancel_head_timer()
        self._in_head = False
        if len(self.headers) > limits.max_headers:
            message = f"Request has more than {limits.max_headers} header fields (limits.max_headers)."
            self._refuse(431, message, "too_many_headers")
            raise _Refused
        # The counted bytes may include the start of the body; measure the head itself only then.
        if self._head_bytes > limits.max_header_bytes and self._head_size() > limits.max_header_bytes:
            self._too_large()
            raise _Refused
        self._head_bytes = 0
        if len(self.connections) > limits.max_connections:
            app, self.app = self.app, _busy
            try:
                super().on_headers_complete()
            finally:
                self.app = app
            return
        super().on_headers_complete()

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers) + 16

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True  # the request is read: what follows is the next head (timed from its first byte)
        self._head_bytes = 0


def limited_protocol(limits: LimitsConfig) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with ``limits`` enforced."""
    return type("LimitedHttpToolsProtocol", (_LimitedProtocol,), {"limits": limits})
