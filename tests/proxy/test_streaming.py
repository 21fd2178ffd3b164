"""Streaming: SSE relayed frame by frame as it arrives; disconnects and idle timeouts handled."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from harness import MakeProxy, Upstream

from proxy.exchange import Exchange


class RecordingAudit:
    """An audit sink that keeps each exchange with the moment it was committed."""

    def __init__(self) -> None:
        self.commits: list[tuple[Exchange, float]] = []

    async def commit(self, exchange: Exchange) -> None:
        self.commits.append((exchange, time.monotonic()))

    def healthy(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def audited(proxy: object) -> RecordingAudit:
    audit = RecordingAudit()
    proxy.services.audit = audit  # type: ignore[attr-defined]
    return audit


CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello"}], "stream": True}


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key="sk-client-key", max_retries=0)


def test_chat_stream_with_and_without_usage(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    c = client(proxy.base_url)
    chunks = list(c.chat.completions.create(**CHAT))  # type: ignore[call-overload]
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "Hello from the fake upstream."
    assert all(ch.choices for ch in chunks) and all(ch.usage is None for ch in chunks)
    chunks = list(c.chat.completions.create(**CHAT, stream_options={"include_usage": True}))  # type: ignore[call-overload]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 2


async def test_async_streams_of_chat_completions_and_responses(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    aclient = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-client-key", max_retries=0)
    text = ""
    async for chunk in await aclient.chat.completions.create(**CHAT):  # type: ignore[call-overload]
        text += chunk.choices[0].delta.content or ""
    assert text == "Hello from the fake upstream."
    events = [event async for event in await aclient.responses.create(model="m", input="hi", stream=True)]
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage is not None and events[-1].response.usage.input_tokens == 1
    prompt = await aclient.completions.create(model="m", prompt="hi", stream=True)
    assert "".join([c.choices[0].text async for c in prompt]) == "Hello from the fake upstream."
    await aclient.close()


def test_stream_headers_disable_buffering(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    with httpx.stream("POST", proxy.base_url + "/chat/completions", json=CHAT) as r:
        body = r.read()
    assert r.headers["x-accel-buffering"] == "no"
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["openai-version"] == "2020-10-01"
    assert body.endswith(b"data: [DONE]\n\n")


def test_heartbeat_frame_arrives_at_once(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = make_proxy()
    body = {**CHAT, "model": "heartbeat"}
    with httpx.stream(
        "POST", proxy.base_url + "/chat/completions", json=body, headers={"x-fake-gap": "1.5"}
    ) as r:
        raw = r.iter_raw()
        first = next(raw)
        arrived = time.monotonic()
        rest = b"".join(raw)
    sent = upstream.last().first_frame_at
    assert first == b": heartbeat\n\n"
    assert sent is not None and arrived - sent < 0.3  # the next frame comes 1.5 s later
    assert rest.endswith(b"data: [DONE]\n\n")


def test_client_disconnect_cancels_the_upstream_within_a_second(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy()
    with httpx.stream("POST", proxy.base_url + "/chat/completions", json={**CHAT, "model": "forever"}) as r:
        received = 0
        for chunk in r.iter_raw():
            received += chunk.count(b"data: ")
            if received >= 3:
                break
        closed = time.monotonic()
    record = upstream.last()
    deadline = closed + 2
    while record.disconnected_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert record.disconnected_at is not None, "the upstream never saw the client go away"
    assert record.disconnected_at - closed < 1.0
    # The proxy still serves (its upstream connection was released, not leaked).
    assert client(proxy.base_url).chat.completions.create(**{**CHAT, "stream": False}).choices  # type: ignore[call-overload]


def test_idle_stream_times_out_but_total_time_does_not_apply(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy(
        {"upstreams": {"fake": {"base_url": "{upstream}", "timeout_s": 0.3, "stream_idle_timeout_s": 0.6}}}
    )
    started = time.monotonic()
    with httpx.stream("POST", proxy.base_url + "/chat/completions", json={**CHAT, "model": "forever"}) as r:
        frames = 0
        for chunk in r.iter_raw():  # a stream that keeps talking outlives timeout_s
            frames += chunk.count(b"data: ")
            if time.monotonic() - started > 1.0:
                break
    assert frames > 10
    c = client(proxy.base_url)
    with pytest.raises(openai.APIError) as caught:
        for _ in c.chat.completions.create(**{**CHAT, "model": "stall"}):  # type: ignore[call-overload]
            pass
    assert "timed out" in caught.value.message


def test_unreachable_upstream_on_a_stream_is_502(make_proxy: MakeProxy) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    proxy = make_proxy({"upstreams": {"fake": {"base_url": f"http://127.0.0.1:{dead}/v1"}}})
    r = httpx.post(proxy.base_url + "/chat/completions", json=CHAT)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"


def test_stream_usage_reaches_the_audit_before_done_even_when_the_client_did_not_ask(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy()
    audit = audited(proxy)
    with httpx.stream("POST", proxy.base_url + "/chat/completions", json=CHAT) as r:
        body = b""
        for chunk in r.iter_raw():
            body += chunk
            if b"data: [DONE]" in body:
                done_at = time.monotonic()
    [(exchange, committed_at)] = audit.commits
    assert committed_at < done_at
    assert upstream.last().json()["stream_options"] == {"include_usage": True}  # asked on the client's behalf
    assert b'"usage"' not in body  # ...and hidden from the client, who did not ask
    assert exchange.usage is not None and exchange.usage["prompt_tokens"] == 2
    assert (exchange.stream, exchange.status, exchange.error) == (True, 200, None)


def test_disconnect_and_mid_stream_timeout_are_audited(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = make_proxy({"upstreams": {"fake": {"base_url": "{upstream}", "stream_idle_timeout_s": 0.5}}})
    audit = audited(proxy)
    with httpx.stream("POST", proxy.base_url + "/chat/completions", json={**CHAT, "model": "forever"}) as r:
        raw = r.iter_raw()
        next(raw)
    deadline = time.monotonic() + 2
    while not audit.commits and time.monotonic() < deadline:
        time.sleep(0.01)
    assert audit.commits[0][0].client_disconnected
    with httpx.stream("POST", proxy.base_url + "/chat/completions", json={**CHAT, "model": "stall"}) as r:
        body = r.read()
    assert body.endswith(b"\n\n") and b'"code":"upstream_timeout"' in body
    assert audit.commits[1][0].error == "upstream_timeout"


def test_a_disconnected_stream_frees_its_upstream_connection(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(
        {"upstreams": {"fake": {"base_url": "{upstream}", "max_connections": 1, "connect_timeout_s": 0.3}}}
    )
    plain = {**CHAT, "stream": False}
    with httpx.stream("POST", proxy.base_url + "/chat/completions", json={**CHAT, "model": "forever"}) as r:
        raw = r.iter_raw()  # kept referenced: a dropped iterator closes the response
        next(raw)
        # The only connection is streaming: another request waits for it, then gives up.
        busy = httpx.post(proxy.base_url + "/chat/completions", json=plain)
        assert busy.status_code == 504 and "connections busy" in busy.json()["error"]["message"]
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if httpx.post(proxy.base_url + "/chat/completions", json=plain).status_code == 200:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the streaming request's connection was never freed")
