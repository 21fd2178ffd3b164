"""Hop-by-hop headers: what the proxy never forwards, in either direction.

Besides the fixed list, a message's ``Connection`` header may name more headers
that are meant for the one hop only (RFC 9110 section 7.6.1), e.g.
``Connection: close, x-secret-header``. Those are removed as well, from requests
before they go upstream and from responses before they reach the client.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["HOP_REQUEST", "HOP_RESPONSE", "connection_tokens", "response_headers", "without"]

# Request headers never forwarded (hop-by-hop, or recomputed by the client library).
HOP_REQUEST = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"host",
        b"content-length",
        b"expect",
    }
)
# Response headers never relayed (hop-by-hop; framing is the proxy's own).
HOP_RESPONSE = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"content-length",
        b"trailer",
        b"upgrade",
        b"te",
    }
)
# Connection options that name no header (dropped anyway).
_OPTIONS = frozenset({b"close", b"keep-alive", b""})


def connection_tokens(values: Iterable[bytes]) -> frozenset[bytes]:
    """The header names listed in ``Connection`` values (lower-case), minus plain options."""
    tokens = {token.strip().lower() for value in values for token in value.split(b",")}
    return frozenset(tokens - _OPTIONS)


def without(headers: list[tuple[bytes, bytes]], names: frozenset[bytes]) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in headers if name.lower() not in names]


def response_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The upstream's response headers to relay: hop-by-hop ones and those its Connection names removed."""
    kept: list[tuple[bytes, bytes]] = []
    named: list[bytes] = []
    for name, value in raw:
        lower = name.lower()
        if lower in HOP_RESPONSE:
            if lower == b"connection":
                named.append(value)
            continue
        kept.append((name, value))
    if named:
        tokens = connection_tokens(named)
        if tokens:
            kept = without(kept, tokens)
    return kept
