"""Retrieval across a fleet: two ``tersegate serve`` replicas share a real Redis memo; a tool output
compressed by one is expanded by the other, for the official openai and anthropic SDKs, streaming
and not. One team cannot expand another's id, and no prompt text reaches the logs or /metrics.
"""

from __future__ import annotations

import re
from typing import Any

import anthropic
import httpx
import openai
import pytest
from harness import MakeProxy, RunningProxy, Upstream
from redis_server import RedisServer, redis_server

__all__ = ["redis_server"]

pytestmark = pytest.mark.slow

POLICY = """\
name: agents
retrieve: true
min_saving_tokens: 0
latency_budget_ms: 30000
rules:
  - name: tool-output
    match: {roles: [tool]}
    compressor: truncate
    max_tokens: 300
    options: {mode: middle, unit: line}
"""
LOG = "\n".join(
    [f"tests/test_app.py::test_case_{i} PASSED" for i in range(1, 500)]
    + ["tests/test_app.py::test_login FAILED - AssertionError: 401 != 200"]
    + [f"tests/test_db.py::test_row_{i} PASSED" for i in range(1, 500)]
)
FAILED_LINE = "500: tests/test_app.py::test_login FAILED - AssertionError: 401 != 200"
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


def replicas(spawn_proxy: MakeProxy, redis: RedisServer) -> tuple[RunningProxy, RunningProxy]:
    config = {
        "upstreams": {
            "fake": {"base_url": "{upstream}", "api_key_env": "FAKE_UPSTREAM_KEY", "timeout_s": 30},
            "claude": {"api": "anthropic", "base_url": "{upstream_root}", "api_key_env": "FAKE_UPSTREAM_KEY"},
        },
        "default_anthropic_upstream": "claude",
        "teams": {"default": {"policy": "agents"}, "other": {"policy": "agents"}},
        "audit": {"path": "audit/audit.jsonl"},
        "compression": {"workers": 1, "memo": {"backend": "redis", "url": redis.url}},
    }
    one = spawn_proxy(config, policies={"agents": POLICY})
    two = spawn_proxy(config, policies={"agents": POLICY})
    return one, two


def chat(model: str) -> dict[str, Any]:
    call = {"id": "c1", "type": "function", "function": {"name": "pytest", "arguments": "{}"}}
    return {
        "model": model,
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "fix the failing test"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": LOG},
        ],
    }


def messages(model: str) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 100,
        "tools": [{"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}],
        "messages": [
            {"role": "user", "content": "fix the failing test"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "pytest", "input": {}}],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": LOG}]},
        ],
    }


def hashes(upstream: Upstream) -> set[str]:
    return set(re.findall(r"hash=([0-9a-f]{24})", upstream.last().body.decode()))


def oai(proxy: RunningProxy, team: str = "default") -> openai.OpenAI:
    headers = {"x-fake-expand-query": "FAILED", "x-tersegate-team": team}
    return openai.OpenAI(base_url=proxy.base_url, api_key="sk", max_retries=0, default_headers=headers)


def test_compressed_by_one_replica_expanded_by_the_other(
    spawn_proxy: MakeProxy, upstream: Upstream, redis_server: RedisServer
) -> None:
    pytest.importorskip("compressors.markers", reason="markers with hash= come with helper tooloutput")
    one, two = replicas(spawn_proxy, redis_server)
    oai(one).chat.completions.create(**chat("gpt-4o"))  # replica one compresses, keeps the original
    (ref,) = hashes(upstream)
    done = oai(two).chat.completions.create(**chat("expander-1"))  # replica two expands it
    assert done.choices[0].message.content == f"The expansion returned: {FAILED_LINE}"
    stream = oai(two).chat.completions.create(**chat("expander-1"), stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == f"Let me look at the omitted lines.The expansion returned: {FAILED_LINE}"
    claude = anthropic.Anthropic(
        base_url=two.url, api_key="sk-ant", max_retries=0, default_headers={"x-fake-expand-query": "FAILED"}
    )
    claude_one = anthropic.Anthropic(base_url=one.url, api_key="sk-ant", max_retries=0)
    claude_one.messages.create(**messages("claude-sonnet-4-5"))
    (anthropic_ref,) = hashes(upstream)
    assert anthropic_ref == ref  # the same original in the same team: the same id
    reply = claude.messages.create(**messages("expander-1"))
    assert reply.content[-1].text.strip() == f"The expansion returned: {FAILED_LINE}"
    with claude.messages.stream(**messages("expander-1")) as events:
        final = events.get_final_message()
    assert final.content[-1].type == "text" and FAILED_LINE in final.content[-1].text
    # Another team, the same id pasted into its conversation: as if it never existed.
    pasted = chat("expander-1")
    pasted["messages"][-1]["content"] = f"[998 lines omitted; hash={ref}]"
    theirs = oai(two, team="other").chat.completions.create(**pasted)
    assert theirs.choices[0].message.content == (
        f"The expansion returned: No original is known for hash={ref}: use a hash= value from an omission marker."
    )
    for proxy in (one, two):  # no prompt text in logs or metrics
        assert proxy.log_path is not None
        logged = proxy.log_path.read_text() + httpx.get(proxy.url + "/metrics").text
        assert "test_login" not in logged and "test_case_17" not in logged
    assert (
        two.log_path is not None and "expand request_id=" in two.log_path.read_text()
    )  # ids and statuses only
