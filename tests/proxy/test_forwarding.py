"""Forwarding: an OpenAI client pointed at the proxy works exactly as against the upstream."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from harness import MakeProxy, Upstream
from openapi_shapes import OPENAPI, schema_errors
from raw_upstream import RawUpstream

from proxy.exchange import Exchange, Rewrite

OPENAI_HEADERS = (
    "x-request-id",
    "openai-processing-ms",
    "openai-version",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}]}


def client(base_url: str, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="sk-client-key", max_retries=0, **kw)


class RecordingAudit:
    """An audit sink that keeps the exchanges it was given (the real sink writes JSONL)."""

    def __init__(self, *, healthy: bool = True) -> None:
        self.exchanges: list[Exchange] = []
        self._healthy = healthy

    async def commit(self, exchange: Exchange) -> None:
        self.exchanges.append(exchange)

    def healthy(self) -> bool:
        return self._healthy

    async def aclose(self) -> None:
        return None


class ShortenLastMessage:
    """A rewrite hook that replaces the last message's content, as a policy would."""

    async def __call__(self, exchange: Exchange, body: dict[str, Any], headers: Mapping[str, str]) -> Rewrite:
        new = {**body, "messages": [*body["messages"][:-1], {"role": "user", "content": "short"}]}
        return Rewrite(body=new, policy="test", mode="enforce", tokens_before=9, tokens_after=1)


@pytest.mark.evaldata(OPENAPI)
def test_chat_completion_conforms_and_keeps_openai_headers(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = make_proxy()
    raw = client(proxy.base_url).chat.completions.with_raw_response.create(**CHAT)  # type: ignore[call-overload]
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake upstream."
    assert completion.usage.prompt_tokens == 2
    assert completion.usage.prompt_tokens_details.cached_tokens == 0
    assert schema_errors(json.loads(raw.content), "CreateChatCompletionResponse") == []
    direct = httpx.post(upstream.base_url + "/chat/completions", json=CHAT)
    for name in OPENAI_HEADERS:
        assert raw.headers.get(name) is not None, name
        if name != "x-request-id":
            assert raw.headers[name] == direct.headers[name]
    assert raw.headers["x-request-id"] == upstream.requests[0].headers.get(
        "x-request-id", raw.headers["x-request-id"]
    )
    assert len(raw.headers["x-tersegate-request-id"]) == 24
    assert upstream.requests[0].headers["authorization"] == "Bearer sk-client-key"


async def test_async_client_embeddings_and_models(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    aclient = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-client-key", max_retries=0)
    emb = await aclient.embeddings.create(model="text-embedding-3-small", input=["one two", "three"])
    assert [d.index for d in emb.data] == [0, 1] and len(emb.data[0].embedding) == 8
    assert emb.usage.prompt_tokens == 3
    models = await aclient.models.list()
    assert "gpt-4o-mini" in [m.id for m in models.data]
    assert (await aclient.models.retrieve("gpt-4o")).id == "gpt-4o"
    chat = await aclient.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert chat.choices[0].finish_reason == "stop"
    await aclient.close()


@pytest.mark.evaldata(OPENAPI)
def test_completions_and_responses_conform(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    c = client(proxy.base_url)
    text = c.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="Say hi")
    assert text.parse().choices[0].text == "Hello from the fake upstream."
    assert schema_errors(json.loads(text.content), "CreateCompletionResponse") == []
    resp = c.responses.with_raw_response.create(model="gpt-4o-mini", input="Say hi")
    assert resp.parse().output_text == "Hello from the fake upstream."
    assert schema_errors(json.loads(resp.content), "Response") == []


def test_paths_without_v1_query_strings_and_methods(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = make_proxy()
    # A client configured without /v1 reaches the same upstream endpoint.
    assert client(proxy.url).chat.completions.create(**CHAT).choices  # type: ignore[call-overload]
    assert upstream.last().path == "/v1/chat/completions"
    r = httpx.get(proxy.url + "/models?limit=2&after=a%20b&x=%2F", headers={"authorization": "Bearer k"})
    assert r.status_code == 200
    assert (upstream.last().path, upstream.last().query) == ("/v1/models", "limit=2&after=a%20b&x=%2F")
    r = httpx.delete(proxy.base_url + "/files/file-abc123")
    assert r.json() == {"id": "file-abc123", "object": "file", "deleted": True}
    assert (upstream.last().method, upstream.last().path) == ("DELETE", "/v1/files/file-abc123")
    r = httpx.get(proxy.base_url + "/no/such/thing")
    assert r.status_code == 404 and r.json()["error"]["message"] == "Fake upstream error 404."


@pytest.mark.parametrize("route", ["/chat/completions", "/embeddings"])
def test_unrewritten_bytes_reach_the_upstream_unchanged(
    make_proxy: MakeProxy, upstream: Upstream, route: str
) -> None:
    proxy = make_proxy()
    body = b'{ "messages":[{"content":"x  y\\u00e9","role":"user"}],\n\t"model" : "gpt-4o-mini", "input":"a",  "z":1.50}'
    r = httpx.post(proxy.base_url + route, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert upstream.last().body == body


def test_headers_forwarded_minus_hop_by_hop_and_tersegate(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = make_proxy()
    headers = {
        "x-custom": "kept",
        "openai-organization": "org-1",
        "x-tersegate-debug": "1",
        "proxy-authorization": "Basic c2VjcmV0",
        "te": "trailers",
        "authorization": "Bearer sk-client-key",
    }
    httpx.post(proxy.base_url + "/chat/completions", json=CHAT, headers=headers)
    got = upstream.last().headers
    assert got["x-custom"] == "kept" and got["openai-organization"] == "org-1"
    assert not {"x-tersegate-debug", "proxy-authorization", "te"} & set(got)
    assert got["host"] == upstream.url.removeprefix("http://")
    assert got["content-length"] == str(len(upstream.last().body))


def test_invalid_json_is_forwarded_untouched_and_marked_skipped(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy()
    audit = RecordingAudit()
    assert proxy.services is not None
    proxy.services.audit = audit
    body = b'{"model": "gpt-4o-mini", "messages": [ not json'
    r = httpx.post(
        proxy.base_url + "/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 200
    assert upstream.last().body == body
    assert audit.exchanges[0].rewrite.skipped == "body is not valid JSON"


def test_upstream_errors_pass_through_untouched(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = make_proxy()
    for model, status in (("error-429", 429), ("error-500", 500), ("error-400", 400)):
        body = {**CHAT, "model": model}
        direct = httpx.post(upstream.base_url + "/chat/completions", json=body)
        through = httpx.post(proxy.base_url + "/chat/completions", json=body)
        assert through.status_code == status
        assert through.content == direct.content
        for name in ("retry-after", "retry-after-ms", "x-should-retry"):
            assert through.headers.get(name) == direct.headers.get(name)
    with pytest.raises(openai.RateLimitError) as caught:
        client(proxy.base_url).chat.completions.create(**{**CHAT, "model": "error-429"})  # type: ignore[call-overload]
    assert caught.value.status_code == 429


@pytest.mark.evaldata(OPENAPI)
def test_rewrite_hook_changes_what_the_upstream_gets(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = make_proxy()
    assert proxy.services is not None
    proxy.services.rewriter = ShortenLastMessage()
    long = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "a very long prompt indeed yes"}],
    }
    raw = client(proxy.base_url).chat.completions.with_raw_response.create(**long)  # type: ignore[call-overload]
    assert upstream.last().json()["messages"] == [{"role": "user", "content": "short"}]
    assert schema_errors(upstream.last().json(), "CreateChatCompletionRequest") == []
    assert raw.parse().usage.prompt_tokens == 1
    assert raw.headers["x-tersegate-tokens-before"] == "9"
    assert raw.headers["x-tersegate-tokens-after"] == "1"
    assert (raw.headers["x-tersegate-policy"], raw.headers["x-tersegate-mode"]) == ("test", "enforce")
    # Routes that are not compressible never reach the hook.
    emb = httpx.post(proxy.base_url + "/embeddings", json={"model": "e", "input": "x"})
    assert "x-tersegate-policy" not in emb.headers and "x-tersegate-request-id" in emb.headers


def test_body_over_limit_is_413_and_never_forwarded(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = make_proxy({"max_body_bytes": 1000})
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 2000}]}
    r = httpx.post(proxy.base_url + "/chat/completions", json=big)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "request_too_large"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}

    def chunks() -> Any:  # no content-length: the limit is enforced while reading
        for _ in range(5):
            yield b"x" * 400

    r = httpx.post(proxy.base_url + "/embeddings", content=chunks())
    assert r.status_code == 413
    assert upstream.requests == []
    assert httpx.post(proxy.base_url + "/chat/completions", json=CHAT).status_code == 200


def test_unreachable_upstream_is_502_in_openai_shape(make_proxy: MakeProxy, upstream: Upstream) -> None:
    import socket

    with socket.socket() as sock:  # a port with nobody listening
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    proxy = make_proxy({"upstreams": {"fake": {"base_url": f"http://127.0.0.1:{dead}/v1"}}})
    with pytest.raises(openai.InternalServerError) as caught:
        client(proxy.base_url).chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert caught.value.status_code == 502
    error = caught.value.response.json()["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_unreachable")


def test_slow_upstream_is_504_after_the_configured_timeout(make_proxy: MakeProxy) -> None:
    proxy = make_proxy({"upstreams": {"fake": {"base_url": "{upstream}", "timeout_s": 0.3}}})
    r = httpx.post(
        proxy.base_url + "/chat/completions", json={**CHAT, "model": "slow"}, headers={"x-fake-delay": "2"}
    )
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert r.elapsed.total_seconds() < 1.5


def test_metrics_and_healthz(make_proxy: MakeProxy) -> None:
    proxy = make_proxy({"teams": {"default": {}, "rag": {}}})
    c = client(proxy.base_url)
    c.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    c.with_options(default_headers={"X-Tersegate-Team": "rag"}).embeddings.create(model="e", input="x")
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(**{**CHAT, "model": "error-429"})  # type: ignore[call-overload]
    text = httpx.get(proxy.url + "/metrics").text
    assert 'tersegate_requests_total{route="/v1/chat/completions",status="200",team="default"} 1.0' in text
    assert 'tersegate_requests_total{route="/v1/chat/completions",status="429",team="default"} 1.0' in text
    assert 'tersegate_requests_total{route="/v1/embeddings",status="200",team="rag"} 1.0' in text
    assert 'tersegate_upstream_latency_seconds_count{upstream="fake"} 3.0' in text
    health = httpx.get(proxy.url + "/healthz")
    body = health.json()
    assert health.status_code == 200 and (body["status"], body["audit"]) == ("ok", "off")
    assert body["upstreams"]["fake"]["state"] == "ok" and body["upstreams"]["fake"]["failures_in_a_row"] == 0


def test_fail_closed_audit_that_is_unhealthy_refuses_with_503(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy({"audit": {"path": "audit/a.jsonl", "on_error": "fail-closed"}})
    assert proxy.services is not None
    proxy.services.audit = RecordingAudit(healthy=False)
    health = httpx.get(proxy.url + "/healthz")
    assert (health.status_code, health.json()["audit"]) == (503, "failing")
    with pytest.raises(openai.APIStatusError) as caught:
        client(proxy.base_url).chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert caught.value.status_code == 503
    assert "failing closed" in caught.value.message
    assert upstream.requests == []


def test_audit_gets_usage_before_the_client_gets_the_body(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = make_proxy()
    audit = RecordingAudit()
    assert proxy.services is not None
    proxy.services.audit = audit
    raw = client(proxy.base_url).chat.completions.with_raw_response.create(  # type: ignore[call-overload]
        **CHAT, extra_headers={"x-fake-cached-tokens": "1"}
    )
    [exchange] = audit.exchanges
    assert exchange.usage is not None and exchange.usage["prompt_tokens_details"]["cached_tokens"] == 1
    assert (exchange.status, exchange.model, exchange.stream) == (200, "gpt-4o-mini", False)
    assert exchange.upstream_request_id == raw.headers["x-request-id"]
    assert exchange.request_id == raw.headers["x-tersegate-request-id"]
    assert exchange.key_id is not None and len(exchange.key_id) == 12


def test_connections_to_the_upstream_are_kept_alive_and_renewed(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    import time

    from fake_upstream import FakeUpstream
    from harness import ServerThread

    proxy = make_proxy()
    c = client(proxy.base_url)
    for _ in range(10):
        c.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert len({r.client_port for r in upstream.requests}) == 1
    # An upstream that drops idle connections quickly: the next request opens a new one.
    short = FakeUpstream()
    server = ServerThread(short, keep_alive_s=0.2).start()
    try:
        proxy = make_proxy({"upstreams": {"fake": {"base_url": server.url + "/v1"}}})
        c = client(proxy.base_url)
        c.chat.completions.create(**CHAT)  # type: ignore[call-overload]
        time.sleep(0.5)
        assert c.chat.completions.create(**CHAT).choices  # type: ignore[call-overload]
        assert len({r.client_port for r in short.requests}) == 2
    finally:
        server.stop()


def test_chunked_gzip_and_head_responses(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = make_proxy()
    audit = RecordingAudit()
    assert proxy.services is not None
    proxy.services.audit = audit
    for headers in (
        {"x-fake-chunked": "1"},
        {"x-fake-gzip": "1"},
        {"x-fake-gzip": "1", "x-fake-chunked": "1"},
    ):
        direct = httpx.post(upstream.base_url + "/chat/completions", json=CHAT, headers=headers)
        through = httpx.post(proxy.base_url + "/chat/completions", json=CHAT, headers=headers)
        assert through.status_code == 200
        assert through.headers.get("content-encoding") == direct.headers.get("content-encoding")
        assert through.json()["choices"] == direct.json()["choices"]
        assert audit.exchanges[-1].usage is not None and audit.exchanges[-1].usage["prompt_tokens"] == 2
    # Audited routes ask only for encodings whose usage the proxy can read.
    httpx.post(proxy.base_url + "/chat/completions", json=CHAT, headers={"accept-encoding": "br, gzip;q=0.5"})
    assert upstream.last().headers["accept-encoding"] == "gzip;q=0.5"
    httpx.post(
        proxy.base_url + "/embeddings", json={"model": "e", "input": "x"}, headers={"accept-encoding": "br"}
    )
    assert upstream.last().headers["accept-encoding"] == "br"
    # A HEAD response announces a body it does not carry; the connection stays usable.
    head = httpx.head(proxy.base_url + "/models")
    assert head.status_code == 404 and head.content == b""
    assert upstream.last().method == "HEAD"
    assert httpx.get(proxy.base_url + "/models").status_code == 200


def test_tls_upstream(make_proxy: MakeProxy, tmp_path: Path) -> None:
    import shutil
    import subprocess

    import uvicorn
    from fake_upstream import FakeUpstream
    from harness import ServerThread

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    app = FakeUpstream()
    config = uvicorn.Config(
        app, http="httptools", ws="none", log_config=None, ssl_certfile=str(cert), ssl_keyfile=str(key)
    )
    server = ServerThread(app, config=config).start()
    try:
        url = server.url.replace("http://", "https://")
        proxy = make_proxy(
            {"upstreams": {"fake": {"base_url": url + "/v1"}}}, env={"SSL_CERT_FILE": str(cert)}
        )
        reply = client(proxy.base_url).chat.completions.create(**CHAT)  # type: ignore[call-overload]
        assert reply.choices[0].message.content == "Hello from the fake upstream."
        assert app.requests[-1].headers["host"] == url.removeprefix("https://")
    finally:
        server.stop()


class DroppingServer:
    """A raw HTTP/1.1 server that answers the first request of each connection and closes the
    connection, unanswered, on the second: the race of a keep-alive timeout on the server side."""

    RESPONSE = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'

    def __init__(self, *, answer_first: bool = True) -> None:
        self.answer_first = answer_first
        self._seen: set[int] = set()  # id() of each connection's writer, once it sent a request
        self._answered: set[int] = set()
        self.raw = RawUpstream(self._answer)
        self.port = self.raw.port

    @property
    def connections(self) -> int:
        return len(self._seen)

    async def _answer(self, head: bytes, body: bytes, writer: Any) -> bool:
        self._seen.add(id(writer))  # writers live as long as their connection: ids stay distinct
        if not self.answer_first or id(writer) in self._answered:
            return False  # the connection is closed, this request unanswered
        self._answered.add(id(writer))
        writer.write(self.RESPONSE)
        await writer.drain()
        return True

    def stop(self) -> None:
        self.raw.stop()


def test_request_on_a_stale_keep_alive_connection_is_retried_once(make_proxy: MakeProxy) -> None:
    server = DroppingServer()
    try:
        proxy = make_proxy({"upstreams": {"fake": {"base_url": f"http://127.0.0.1:{server.port}/v1"}}})
        for _ in range(3):
            r = httpx.post(proxy.base_url + "/embeddings", json={"model": "e", "input": "x"})
            assert (r.status_code, r.json()) == (200, {"ok": True})
        assert server.connections >= 2
    finally:
        server.stop()
    # A fresh connection closed without an answer is not retried: the client gets a 502.
    server = DroppingServer(answer_first=False)
    try:
        proxy = make_proxy({"upstreams": {"fake": {"base_url": f"http://127.0.0.1:{server.port}/v1"}}})
        r = httpx.post(proxy.base_url + "/embeddings", json={"model": "e", "input": "x"})
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"
        assert server.connections == 1
    finally:
        server.stop()


def test_a_client_giving_up_on_a_slow_answer_cancels_the_upstream_and_is_audited(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy({"audit": {"path": "audit/audit.jsonl"}})
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            proxy.base_url + "/chat/completions",
            json={**CHAT, "model": "slow"},
            headers={"x-fake-delay": "30"},
            timeout=httpx.Timeout(5, read=0.5),
        )
    gave_up = time.monotonic()
    record = upstream.last()
    while record.disconnected_at is None and time.monotonic() < gave_up + 3:
        time.sleep(0.01)
    assert record.disconnected_at is not None, "the upstream kept working for a client that left"
    assert record.disconnected_at - gave_up < 1.0
    path = proxy.config_path.parent / "audit/audit.jsonl"
    while not path.is_file() or not path.read_bytes():
        assert time.monotonic() < gave_up + 3, "no audit record for the abandoned request"
        time.sleep(0.01)
    [audited] = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert audited["client_disconnected"] is True and audited["status"] == 499
    # The proxy still serves; the abandoned upstream connection was dropped, not reused.
    reply = httpx.post(proxy.base_url + "/chat/completions", json=CHAT, timeout=5)
    assert reply.status_code == 200 and reply.json()["choices"]
