"""Headers named in ``Connection`` are hop-by-hop (RFC 9110 7.6.1): stripped in both directions (proxy/server/hop.py)."""

from __future__ import annotations

import asyncio
import socket

import httpx
from harness import MakeProxy, Upstream
from raw_upstream import RawUpstream, header_value


def _send_raw(url: str, head: str) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_headers_the_client_names_in_connection_do_not_go_upstream(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy()
    host = proxy.url.removeprefix("http://")
    reply = _send_raw(
        proxy.url,
        f"GET /v1/models HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer sk-c\r\n"
        "Connection: close, X-Secret-Header\r\nconnection: x-other\r\nx-secret-header: s3cret\r\n"
        "x-other: 1\r\nx-kept: yes\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200")
    got = upstream.last().headers
    assert "x-secret-header" not in got and "x-other" not in got
    assert got["x-kept"] == "yes" and got["authorization"] == "Bearer sk-c"


def test_headers_the_upstream_names_in_connection_do_not_reach_the_client(make_proxy: MakeProxy) -> None:
    async def answer(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
            b"Connection: keep-alive, X-Internal-Route\r\nx-internal-route: pod-7\r\n"
            b"x-request-id: req_1\r\n\r\n{}"
        )
        await writer.drain()
        return True

    with RawUpstream(answer) as raw:
        proxy = make_proxy({"upstreams": {"fake": {"base_url": raw.base_url}}})
        reply = httpx.get(proxy.base_url + "/models", headers={"x-secret-header": "kept: not named"})
        assert reply.status_code == 200 and reply.content == b"{}"
        assert "x-internal-route" not in reply.headers
        assert reply.headers["x-request-id"] == "req_1"
        # A header the client did not name in Connection is an end-to-end header: forwarded.
        assert header_value(raw.requests[0][0], b"x-secret-header") == b"kept: not named"
