"""Anthropic Messages through the proxy, driven by the official ``anthropic`` SDK.

A real proxy in front of the fake upstream (which also speaks Anthropic, see
tests/fake_anthropic.py): JSON and SSE answers, tool calls streamed as
``input_json_delta`` pieces, headers and query strings passed through, the two
auth modes, Anthropic-shaped proxy errors, compression of the rewritable blocks
only, and an audit record priced with Anthropic's cache rules.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import anthropic
import fake_anthropic
import httpx
import orjson
import pytest
from harness import UPSTREAM_KEY, MakeProxy, RunningProxy, Upstream

from proxy.audit.pricing import PriceBook

MODEL = "claude-sonnet-4-5-20250929"
TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather in a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
# Lines of a long command output: what an agent's tool results look like.
LOG = "\n".join(f"src/module_{i}.py:{i}: warning: unused import os (W0611)" for i in range(400))
HALVE_TOOLS = """\
name: halve
mode: enforce
latency_budget_ms: 30000  # this measures what is rewritten, not how busy the machine is
rules:
  - name: halve-tool-output
    match: {roles: [tool], min_tokens: 200}
    compressor: truncate
    rate: 0.5
    options: {mode: middle, unit: line}
"""


def anthropic_config(**extra: Any) -> dict[str, Any]:
    return {
        "upstreams": {
            "fake": {"base_url": "{upstream}", "api_key_env": "FAKE_UPSTREAM_KEY", "timeout_s": 30},
            "claude": {
                "api": "anthropic",
                "base_url": "{upstream_root}",
                "api_key_env": "FAKE_UPSTREAM_KEY",
                "timeout_s": 30,
            },
        },
        "default_anthropic_upstream": "claude",
        **extra,
    }


def audited(make: MakeProxy, *, policy: str | None = None) -> RunningProxy:
    teams = {"default": {"policy": "halve"}} if policy else {"default": {}}
    return make(
        anthropic_config(audit={"path": "audit/audit.jsonl"}, teams=teams),
        policies={"halve": HALVE_TOOLS} if policy else None,
    )


def records(proxy: RunningProxy) -> list[dict[str, Any]]:
    path = proxy.config_path.parent / "audit" / "audit.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def client(proxy: RunningProxy, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-client-1", max_retries=0, **kwargs)


def test_sync_message_reaches_the_anthropic_upstream_with_headers_and_is_audited_in_dollars(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = audited(make_proxy)
    raw = client(proxy).messages.with_raw_response.create(
        model=MODEL,
        max_tokens=100,
        system=[
            {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ],
        messages=[{"role": "user", "content": "Say hello"}],
        extra_headers={
            "anthropic-beta": "prompt-caching-2024-07-31",
            "x-fake-cache-write-1h": "3",
            "x-fake-cache-read": "2",
        },
    )
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == fake_anthropic.REPLY
    assert raw.headers["request-id"].startswith("req_") and raw.headers["x-tersegate-request-id"]
    sent = upstream.last()
    assert sent.path == "/v1/messages"  # the API root plus the path, not /v1/v1/...
    # passthrough: the client's key goes unchanged, in the header the SDK chose
    assert sent.headers.get("x-api-key", sent.headers.get("authorization")) in (
        "sk-ant-client-1",
        "Bearer sk-ant-client-1",
    )
    assert sent.headers["anthropic-version"] == raw.http_request.headers["anthropic-version"]
    assert sent.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    [record] = records(proxy)
    assert record["route"] == "/v1/messages" and record["api"] == "anthropic"
    assert record["model"] == MODEL and record["stream"] is False and record["status"] == 200
    usage = record["usage"]
    assert usage["cache_write_1h_tokens"] == 3 and usage["cache_write_5m_tokens"] == 0
    assert usage["cached_tokens"] == 2 and usage["completion_tokens"] == message.usage.output_tokens
    assert usage["prompt_tokens"] == message.usage.input_tokens + 3 + 2
    price = PriceBook().price_for(MODEL)
    assert price is not None and price.cache_write_1h > price.cache_write_5m > price.input
    expected = (
        message.usage.input_tokens * price.input
        + 3 * price.cache_write_1h
        + 2 * price.cached_input
        + message.usage.output_tokens * price.output
    )
    assert record["cost_after_usd"] == pytest.approx(expected, rel=1e-9)
    assert record["price_missing"] is False and record["tokens_scale"] is not None


def test_async_client_and_bearer_token_pass_through(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = audited(make_proxy)

    async def ask() -> anthropic.types.Message:
        async with anthropic.AsyncAnthropic(
            base_url=proxy.url, auth_token="oauth-token-1", max_retries=0
        ) as c:
            return await c.messages.create(
                model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            )

    message = asyncio.run(ask())
    assert message.content[0].text == fake_anthropic.REPLY  # type: ignore[union-attr]
    assert upstream.last().headers["authorization"] == "Bearer oauth-token-1"
    assert "x-api-key" not in upstream.last().headers


def test_streamed_tool_call_arrives_whole_and_the_stream_is_audited(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = audited(make_proxy)
    events: list[Any] = []
    with client(proxy).messages.stream(
        model=MODEL,
        max_tokens=100,
        tools=TOOLS,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    ) as stream:
        for event in stream:
            events.append(event)
        final = stream.get_final_message()
    pieces = [
        e.delta.partial_json
        for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert pieces == fake_anthropic.TOOL_INPUT_PIECES
    [call] = [b for b in final.content if b.type == "tool_use"]
    assert call.input == fake_anthropic.TOOL_INPUT and final.stop_reason == "tool_use"
    assert {e.type for e in events} >= {"message_start", "message_delta", "message_stop"}
    [record] = records(proxy)
    assert record["stream"] is True and record["model"] == MODEL
    assert record["usage"]["completion_tokens"] == final.usage.output_tokens
    assert record["usage"]["prompt_tokens"] == final.usage.input_tokens
    assert record["cost_after_usd"] > 0
    assert "stream_options" not in upstream.last().json()  # nothing OpenAI-specific injected


def _without_ids(data: bytes) -> bytes:
    return re.sub(rb'"msg_[0-9a-f]+"', b'"msg_"', data)


def test_stream_bytes_relay_unchanged_with_query_and_x_api_key(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = audited(make_proxy)
    body = {
        "model": MODEL,
        "max_tokens": 10,
        "stream": True,
        "tools": TOOLS,
        "messages": [{"role": "user", "content": "x"}],
    }
    headers = {"x-api-key": "sk-ant-k", "anthropic-version": "2023-06-01"}
    got = httpx.post(proxy.url + "/v1/messages?beta=true", json=body, headers=headers, timeout=10)
    assert got.status_code == 200 and got.headers["content-type"].startswith("text/event-stream")
    assert _without_ids(got.content) == _without_ids(b"".join(fake_anthropic.frames(body, {})))
    assert upstream.last().query == "beta=true" and upstream.last().headers["x-api-key"] == "sk-ant-k"


@pytest.mark.slow
def test_beta_query_string_and_count_tokens_are_forwarded_untouched(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy(
        anthropic_config(teams={"default": {"policy": "halve"}}), policies={"halve": HALVE_TOOLS}
    )
    c = client(proxy)
    c.beta.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert upstream.last().path == "/v1/messages"
    raw = (
        b'{"model":"claude-sonnet-4-5","messages":[{"role":"user","content":"'
        + LOG.encode().replace(b"\n", b"\\n")
        + b'"}]}'
    )
    got = httpx.post(
        proxy.url + "/v1/messages/count_tokens",
        content=raw,
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01", "content-type": "application/json"},
    )
    assert got.status_code == 200 and got.json()["input_tokens"] > 0
    assert upstream.last().path == "/v1/messages/count_tokens" and upstream.last().body == raw


def test_keys_mode_checks_the_proxy_key_from_x_api_key_and_sends_the_upstream_key(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    import hashlib

    digest = hashlib.sha256(b"tg-team-key-1").hexdigest()
    proxy = make_proxy(anthropic_config(auth="keys", teams={"default": {"keys_sha256": [digest]}}))
    ok = anthropic.Anthropic(base_url=proxy.url, api_key="tg-team-key-1", max_retries=0)
    ok.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    sent = upstream.last().headers
    assert sent["x-api-key"] == UPSTREAM_KEY and "authorization" not in sent
    by_header = httpx.post(  # Claude Code sends the key as x-api-key
        proxy.url + "/v1/messages",
        json={"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": "tg-team-key-1", "anthropic-version": "2023-06-01"},
    )
    assert by_header.status_code == 200 and upstream.last().headers["x-api-key"] == UPSTREAM_KEY
    wrong = anthropic.Anthropic(base_url=proxy.url, api_key="tg-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as caught:
        wrong.messages.create(model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    body = caught.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "authentication_error" and "tg-wrong" not in str(body)


def test_upstream_errors_pass_through_and_proxy_errors_are_anthropic_shaped(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy(anthropic_config())
    c = client(proxy)
    with pytest.raises(anthropic.APIStatusError) as caught:
        c.messages.create(model="error-529", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 529
    assert caught.value.body == fake_anthropic.error(529)
    with pytest.raises(anthropic.RateLimitError):
        c.messages.create(model="error-429", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    upstream.server.stop()  # nothing listens: the proxy answers 502 itself
    try:
        got = httpx.post(
            proxy.url + "/v1/messages",
            json={"model": MODEL, "max_tokens": 5, "messages": []},
            headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
            timeout=20,
        )
    finally:
        restart(upstream)
    assert got.status_code == 502
    assert got.json()["type"] == "error" and got.json()["error"]["type"] == "api_error"


def restart(upstream: Upstream) -> None:
    from fake_upstream import ServerThread

    upstream.server = ServerThread(upstream.app, port=upstream.server.port).start()


@pytest.mark.slow
def test_only_text_and_tool_results_are_rewritten_and_markers_stay(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = audited(make_proxy, policy="halve")
    thinking = {"type": "thinking", "thinking": LOG, "signature": "sig-abc"}
    call = {"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": "lint", "log": LOG}}
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    marker = {"type": "ephemeral"}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Lint the repo."}]},
        {"role": "assistant", "content": [thinking, call]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": LOG, "cache_control": marker},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": LOG}, image],
                },
            ],
        },
    ]
    c = client(proxy)
    c.messages.create(
        model=MODEL,
        max_tokens=10,
        system="Be brief.",
        tools=TOOLS,
        metadata={"user_id": "u1"},  # type: ignore[arg-type]
        messages=messages,  # type: ignore[arg-type]
    )
    sent = upstream.last().json()
    first, second = sent["messages"][2]["content"]
    assert len(first["content"]) < len(LOG) and first["cache_control"] == marker
    assert len(second["content"][0]["text"]) < len(LOG) and second["content"][1] == image
    assert sent["messages"][1]["content"] == [thinking, call]  # signed thinking and tool input untouched
    assert sent["tools"] == TOOLS and sent["metadata"] == {"user_id": "u1"} and sent["system"] == "Be brief."
    [record] = records(proxy)
    assert record["tokens_before"] > record["tokens_after"] and record["rules"] == ["halve-tool-output"]
    assert record["saved_usd"] > 0


def test_a_stalled_stream_ends_with_an_anthropic_error_event(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    config = anthropic_config()
    config["upstreams"]["claude"].update(stream_idle_timeout_s=1, timeout_s=2)
    proxy = make_proxy(config)
    request = {"model": "stall", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    # The SDK raises on the error event.
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        client(proxy).messages.stream(**request) as stream,
    ):  # type: ignore[arg-type]
        for _ in stream:
            pass
    assert "timed out" in str(caught.value)
    got = httpx.post(
        proxy.url + "/v1/messages",
        json={"model": "stall", "max_tokens": 5, "stream": True, "messages": []},
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        timeout=20,
    )
    last = got.content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b"event: error\ndata: ")
    assert orjson.loads(last.split(b"data: ", 1)[1])["error"]["type"] == "api_error"
