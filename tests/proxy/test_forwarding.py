"""Forwarding: an OpenAI client pointed at the proxy works exactly as against the upstream."""

from __future__ import annotations

import openai
from conftest import MakeProxy, Upstream


def test_chat_completion_through_the_proxy(make_proxy: MakeProxy, upstream: Upstream) -> None:
    proxy = make_proxy()
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake upstream."
    assert completion.usage is not None and completion.usage.prompt_tokens == 2
    got = upstream.last()
    assert got.path == "/v1/chat/completions"
    assert got.headers["authorization"] == "Bearer sk-client"
    assert raw.headers["openai-version"] == "2020-10-01"
    assert raw.headers["x-request-id"].startswith("req_")
    assert len(raw.headers["x-tersegate-request-id"]) == 24
