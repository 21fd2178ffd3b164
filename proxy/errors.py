"""Errors the proxy itself answers, in the caller's API shape.

OpenAI (and Azure): ``{"error": {message, type, param, code}}``; other shapes (Anthropic's) are
written by the route's dialect (:mod:`proxy.apis`) from a :class:`ProxyError`.
Clients (the official SDKs) parse these shapes into their own exception types, so
a proxy-side failure looks like any other API error to them. Messages never
carry keys or prompt text.
"""

from __future__ import annotations

import orjson

__all__ = [
    "ProxyError",
    "error_body",
    "failing_closed",
    "forbidden",
    "internal",
    "not_found",
    "shutting_down",
    "timed_out",
    "too_large",
    "unauthorized",
    "unavailable",
    "unreachable",
]


def error_body(message: str, *, type: str, code: str | None = None, param: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


class ProxyError(Exception):
    """A failure answered by the proxy with ``status`` and an OpenAI-shaped body.

    ``kind`` is the short name used in metrics, logs and ``Exchange.error``.
    """

    def __init__(self, status: int, message: str, *, type: str, code: str | None = None, kind: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.kind = kind

    def body(self) -> bytes:
        """The OpenAI-shaped body; a route's dialect writes its own (:meth:`proxy.apis.Dialect.error_body`)."""
        return error_body(self.message, type=self.type, code=self.code)


def not_found(message: str) -> ProxyError:
    return ProxyError(404, message, type="invalid_request_error", code="not_found", kind="not_found")


def unauthorized(message: str) -> ProxyError:
    return ProxyError(401, message, type="invalid_request_error", code="invalid_api_key", kind="unauthorized")


def forbidden(message: str, *, code: str) -> ProxyError:
    """403: the caller is known (or needs no key) but may not do this; SDKs raise PermissionDeniedError."""
    return ProxyError(403, message, type="permission_denied", code=code, kind="forbidden")


def too_large(limit: int) -> ProxyError:
    return ProxyError(
        413,
        f"Request body exceeds the proxy's limit of {limit} bytes (max_body_bytes).",
        type="invalid_request_error",
        code="request_too_large",
        kind="too_large",
    )


def unreachable(upstream: str, reason: str) -> ProxyError:
    return ProxyError(
        502,
        f"Upstream {upstream!r} is unreachable: {reason}",
        type="upstream_error",
        code="upstream_unreachable",
        kind="upstream_unreachable",
    )


def timed_out(upstream: str, what: str) -> ProxyError:
    return ProxyError(
        504,
        f"Upstream {upstream!r} timed out ({what}).",
        type="upstream_error",
        code="upstream_timeout",
        kind="upstream_timeout",
    )


def unavailable(message: str) -> ProxyError:
    return ProxyError(503, message, type="server_error", code="service_unavailable", kind="unavailable")


def shutting_down() -> ProxyError:
    """A request still running when the shutdown grace (``shutdown_grace_s``) ran out."""
    return ProxyError(
        503,
        "The proxy is shutting down and its grace period for requests in flight has ended; retry.",
        type="server_error",
        code="shutting_down",
        kind="shutdown",
    )


def failing_closed() -> ProxyError:
    """The answer while the audit cannot be written and ``audit.on_error`` is fail-closed."""
    return unavailable("The audit log cannot be written; the proxy is failing closed (audit.on_error).")


def internal(request_id: str) -> ProxyError:
    return ProxyError(
        502,
        f"The proxy failed to handle this request (request id {request_id}); see its log.",
        type="proxy_error",
        code="proxy_error",
        kind="proxy_error",
    )
