"""Client limits (proxy/server/limits.py), tried with real slow, idle and oversized clients on loopback."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from harness import MakeProxy, Upstream

from proxy.config.model import ConfigErrors, load_config

_OPEN: list[socket.socket] = []  # the raw client sockets of the running test


@pytest.fixture(autouse=True)
def close_sockets() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    _OPEN.append(sock)
    return sock


def read_all(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def status_and_error(reply: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body)["error"]


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closed ``sock`` within ``seconds``, and what it sent first."""
    sock.settimeout(seconds)
    try:
        return True, read_all(sock)
    except TimeoutError:
        return False, b""


def test_oversized_headers_get_431_before_they_are_buffered(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy({"limits": {"max_header_bytes": 16384}})
    sock = connect(proxy.url)
    sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 20000)  # head not even finished
    status, error = status_and_error(read_all(sock))
    assert status == 431 and error["code"] == "request_headers_too_large"
    # 16 MiB of headers: the proxy hangs up long before the client is done sending.
    sock = connect(proxy.url)
    sent = 0
    with pytest.raises(OSError):
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n")
        for _ in range(256):
            sock.sendall(b"x-big: " + b"a" * 65536 + b"\r\n")
            sent += 65536
    assert sent < 8 << 20
    # Headers that fit, but in one packet with a body: measured exactly, still refused.
    sock = connect(proxy.url)
    body = b"{}"
    sock.sendall(
        b"POST /v1/embeddings HTTP/1.1\r\nhost: x\r\nx-big: "
        + b"a" * 17000
        + b"\r\ncontent-length: 2\r\n\r\n"
        + body
    )
    assert status_and_error(read_all(sock))[0] == 431
    assert upstream.requests == []
    assert httpx.get(proxy.base_url + "/models", headers={"x-fine": "a" * 8000}).status_code == 200


def test_default_limits_refuse_16_mib_of_headers_and_20000_fields(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy()  # no limits section: the defaults
    for head in (
        b"x-big: " + b"a" * (16 << 20) + b"\r\n",
        b"".join(b"x-h%d: v\r\n" % i for i in range(20_000)),
    ):
        sock = connect(proxy.url)
        with contextlib.suppress(OSError):  # the proxy may hang up mid-send
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n" + head + b"\r\n")
        reply = read_all(sock)
        assert not reply.startswith(b"HTTP/1.1 200")
    assert upstream.requests == []


def test_too_many_header_fields_get_431(
    make_proxy: MakeProxy, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tersegate.limits")
    proxy = make_proxy({"limits": {"max_headers": 50}})
    for count in (60, 20_000):  # 20,000: over the byte limit first, refused all the same
        sock = connect(proxy.url)
        fields = b"".join(b"x-h%d: v\r\n" % i for i in range(count))
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n" + fields + b"\r\n")
        status, error = status_and_error(read_all(sock))
        assert status == 431, count
        assert error["code"] in ("too_many_headers", "request_headers_too_large")
    assert upstream.requests == []
    shed = [r.getMessage() for r in caplog.records if r.name == "tersegate.limits"]
    assert shed and all(m.startswith("refused a request: 431 ") for m in shed)  # at info, one per kind
    assert not any("x-h" in m for m in shed)  # nothing of the request's headers


def test_slowloris_clients_are_cut_off_after_the_header_timeout(make_proxy: MakeProxy) -> None:
    proxy = make_proxy({"limits": {"header_timeout_s": 1}})
    socks = [connect(proxy.url) for _ in range(50)]
    stop = threading.Event()

    def drip() -> None:  # one header byte per socket every 0.2 s
        for sock in socks:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nx-slow: ")
        while not stop.wait(0.2):
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.sendall(b"a")

    dripper = threading.Thread(target=drip, daemon=True)
    started = time.monotonic()
    dripper.start()
    try:
        replies = [closed_within(sock, 5) for sock in socks]
    finally:
        stop.set()
        dripper.join(5)
    assert time.monotonic() - started < 4
    assert all(closed for closed, _ in replies)
    assert {status_and_error(reply)[0] for _, reply in replies} == {408}
    assert httpx.get(proxy.base_url + "/models").status_code == 200  # the proxy serves on


@pytest.mark.slow
def test_idle_connections_are_closed(make_proxy: MakeProxy) -> None:
    proxy = make_proxy({"limits": {"header_timeout_s": 1, "keepalive_timeout_s": 0.5}})
    idle = [connect(proxy.url) for _ in range(2000)]  # as many as the issue held open forever
    started = time.monotonic()
    results = [closed_within(sock, 5) for sock in idle]
    assert all(closed and reply == b"" for closed, reply in results)  # closed quietly, nothing sent
    assert time.monotonic() - started < 4
    # After a response, a kept-alive connection that stays idle is closed after keepalive_timeout_s.
    sock = connect(proxy.url)
    sock.sendall(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
    sock.settimeout(5)
    first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    began = time.monotonic()
    closed, _ = closed_within(sock, 5)
    assert closed and time.monotonic() - began < 2


def test_connections_beyond_max_connections_get_503_in_openai_shape(
    make_proxy: MakeProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tersegate.limits")
    proxy = make_proxy({"limits": {"max_connections": 5, "header_timeout_s": 30}})
    held = [connect(proxy.url) for _ in range(5)]
    time.sleep(0.2)
    reply = httpx.get(proxy.base_url + "/models", headers={"connection": "close"})
    assert reply.status_code == 503
    assert reply.json()["error"]["code"] == "service_unavailable" and reply.headers["retry-after"] == "1"
    assert any("shed a request: 503" in r.getMessage() for r in caplog.records)
    for sock in held:
        sock.close()
    time.sleep(0.2)
    assert httpx.get(proxy.base_url + "/models").status_code == 200


def test_limits_config_errors_point_at_the_line(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "upstreams: {openai: {base_url: 'https://api.openai.com/v1'}}\n"
        "teams: {default: {}}\n"
        "limits:\n  max_headers: 0\n  header_timeout_s: soon\n  max_conections: 5\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    text = str(caught.value)
    assert f"{path}:4: limits.max_headers: must be a positive integer" in text
    assert f"{path}:5:" in text and "header_timeout_s" in text
    assert f"{path}:6:" in text and "max_conections" in text
    defaults = load_config(Path(__file__).resolve().parents[2] / "config.yaml").limits
    assert (defaults.max_header_bytes, defaults.max_headers, defaults.max_connections) == (65536, 100, 2048)
