"""The proxy's tool loop (proxy/server/expand): the model calls ``tersegate_expand``, the proxy answers
from the originals store, continues upstream, and the client sees only the final answer.

A real proxy on loopback, the fake model of tests/fake_expander.py behind it, the official openai
and anthropic SDKs in front. The original was kept by another replica (a second :class:`Originals`
on the same sqlite file), as an earlier turn's compression would have kept it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import orjson
import pytest
from harness import MakeProxy, RunningProxy, Upstream

from proxy.audit.report import aggregate_files, render
from proxy.policy.originals import Originals
from proxy.store.sqlite import SqliteStore

POLICY = """\
name: agents
retrieve: true
min_saving_tokens: 0
rules:
  - name: tool-output
    match: {roles: [tool], min_tokens: 100000}
    compressor: normalize
"""
LOG = "\n".join(
    [f"tests/test_app.py::test_case_{i} PASSED" for i in range(1, 500)]
    + ["tests/test_app.py::test_login FAILED - AssertionError: 401 != 200"]
    + [f"tests/test_db.py::test_row_{i} PASSED" for i in range(1, 500)]
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
ANTHROPIC_WEATHER = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def keep_original(folder: Path, team: str, text: str) -> str:
    async def keep() -> str:
        store = SqliteStore(folder / "state" / "memo.sqlite", max_bytes=1 << 26)
        try:
            return await Originals(store).keep(team, text)
        finally:
            await store.aclose()

    return asyncio.run(keep())


def start(make_proxy: MakeProxy, tmp_path: Path, **compression: Any) -> RunningProxy:
    config = {
        "upstreams": {
            "fake": {"base_url": "{upstream}", "api_key_env": "FAKE_UPSTREAM_KEY", "timeout_s": 30},
            "claude": {"api": "anthropic", "base_url": "{upstream_root}", "api_key_env": "FAKE_UPSTREAM_KEY"},
        },
        "default_anthropic_upstream": "claude",
        "teams": {"default": {"policy": "agents"}, "other": {"policy": "agents"}},
        "audit": {"path": "audit/audit.jsonl"},
        "compression": {
            "workers": 1,
            "memo": {"backend": "sqlite", "path": str(tmp_path / "state" / "memo.sqlite")},
            **compression,
        },
    }
    return make_proxy(config, policies={"agents": POLICY})


def started(make_proxy: MakeProxy, tmp_path: Path) -> tuple[RunningProxy, str]:
    """A proxy, and the id of LOG as another replica kept it."""
    return start(make_proxy, tmp_path), keep_original(tmp_path, "default", LOG)


def marker(ref: str) -> str:
    head = "\n".join(LOG.splitlines()[:3])
    return (
        f'{head}\n[996 lines like "tests/test_app.py::test_case_4 PASSED" omitted; lines=4-999; hash={ref}]'
    )


def chat_body(ref: str, **extra: Any) -> dict[str, Any]:
    call = {"id": "c1", "type": "function", "function": {"name": "pytest", "arguments": "{}"}}
    return {
        "model": "expander-1",
        "tools": [WEATHER],
        "messages": [
            {"role": "user", "content": "fix the failing test"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": marker(ref)},
        ],
        **extra,
    }


def messages_body(ref: str) -> dict[str, Any]:
    return {
        "model": "expander-1",
        "max_tokens": 100,
        "tools": [ANTHROPIC_WEATHER],
        "messages": [
            {"role": "user", "content": "fix the failing test"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t1", "name": "pytest", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": marker(ref)}],
            },
        ],
    }


def oai(proxy: RunningProxy, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0, default_headers=headers)


def claude(proxy: RunningProxy, **headers: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant", max_retries=0, default_headers=headers)


def records(proxy: RunningProxy) -> list[dict[str, Any]]:
    path = proxy.config_path.parent / "audit" / "audit.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


FAILED_LINE = "500: tests/test_app.py::test_login FAILED - AssertionError: 401 != 200"


def test_chat_json_the_client_gets_the_final_answer_only(
    make_proxy: MakeProxy, upstream: Upstream, tmp_path: Path
) -> None:
    proxy, ref = started(make_proxy, tmp_path)
    done = oai(proxy, **{"x-fake-expand-query": "FAILED"}).chat.completions.create(**chat_body(ref))
    message = done.choices[0].message
    assert message.content == f"The expansion returned: {FAILED_LINE}"
    assert message.tool_calls is None and done.choices[0].finish_reason == "stop"
    first, second = (r.json() for r in upstream.requests)
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather", "tersegate_expand"]
    assert second["messages"][-2]["tool_calls"][0]["function"]["name"] == "tersegate_expand"
    assert second["messages"][-1]["content"].startswith(FAILED_LINE)
    (record,) = records(proxy)
    assert record["expansions"] == 1 and record["expanded_bytes"] == len(second["messages"][-1]["content"])


def test_chat_stream_text_flows_then_the_continuation_resumes_the_stream(
    make_proxy: MakeProxy, upstream: Upstream, tmp_path: Path
) -> None:
    proxy, ref = started(make_proxy, tmp_path)
    chunks = list(
        oai(proxy, **{"x-fake-expand-query": "FAILED"}).chat.completions.create(**chat_body(ref), stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"Let me look at the omitted lines.The expansion returned: {FAILED_LINE}"
    assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    assert len({c.id for c in chunks}) == 1  # one stream, one id
    (record,) = records(proxy)
    assert (record["expansions"], record["expansion_calls"], record["stream"]) == (1, 1, True)
    metrics = httpx.get(f"{proxy.url}/metrics").text
    assert 'tersegate_expansions_total{status="ok",team="default"} 1.0' in metrics
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "stop"
    ]
    assert len(upstream.requests) == 2


def test_anthropic_json_and_stream_through_the_sdk(
    make_proxy: MakeProxy, upstream: Upstream, tmp_path: Path
) -> None:
    proxy, ref = started(make_proxy, tmp_path)
    client = claude(proxy, **{"x-fake-expand-query": "FAILED"})
    done = client.messages.create(**messages_body(ref))
    assert [b.type for b in done.content] == ["text"] and done.stop_reason == "end_turn"
    assert done.content[0].text.strip() == f"The expansion returned: {FAILED_LINE}"
    with client.messages.stream(**messages_body(ref)) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts).startswith("Let me look at the omitted lines.")
    assert [b.type for b in final.content] == ["text", "text"]  # the first turn's text, then the answer's
    assert final.content[1].text.strip() == f"The expansion returned: {FAILED_LINE}"
    assert final.stop_reason == "end_turn"
    assert len(upstream.requests) == 4


def test_with_the_clients_own_tool_the_client_gets_only_its_call(
    make_proxy: MakeProxy, upstream: Upstream, tmp_path: Path
) -> None:
    proxy, ref = started(make_proxy, tmp_path)
    client = oai(proxy, **{"x-fake-expand-mixed": "1"})
    done = client.chat.completions.create(**chat_body(ref))
    calls = done.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather"] and done.choices[
        0
    ].finish_reason == "tool_calls"
    chunks = list(client.chat.completions.create(**chat_body(ref), stream=True))
    streamed = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert [t.function.name for t in streamed if t.function and t.function.name] == ["get_weather"]
    assert [t.index for t in streamed] == [0] * len(streamed)
    anthropic_done = claude(proxy, **{"x-fake-expand-mixed": "1"}).messages.create(**messages_body(ref))
    assert [b.name for b in anthropic_done.content if b.type == "tool_use"] == ["get_weather"]


def test_expansions_stop_at_the_limit(make_proxy: MakeProxy, upstream: Upstream, tmp_path: Path) -> None:
    proxy = start(make_proxy, tmp_path, retrieve={"max_expansions_per_request": 2})
    ref = keep_original(tmp_path, "default", LOG)
    done = oai(proxy, **{"x-fake-expand-repeat": "1"}).chat.completions.create(**chat_body(ref))
    assert (
        done.choices[0].message.content
        == "The expansion returned: Limit reached: at most 2 expansions per request. Continue with what you have."
    )
    assert len(upstream.requests) == 4  # 2 expansions, 1 "limit reached", the answer
    assert records(proxy)[-1]["expansions"] == 2


def test_another_teams_id_and_an_unknown_id_are_answered_so(
    make_proxy: MakeProxy, upstream: Upstream, tmp_path: Path
) -> None:
    proxy, ref = started(make_proxy, tmp_path)
    other = openai.OpenAI(
        base_url=proxy.base_url, api_key="sk", max_retries=0, default_headers={"x-tersegate-team": "other"}
    )
    done = other.chat.completions.create(**chat_body(ref))
    assert (
        done.choices[0].message.content
        == f"The expansion returned: No original is known for hash={ref}: use a hash= value from an omission marker."
    )
    assert LOG.splitlines()[10] not in upstream.requests[-1].body.decode()


def test_the_tool_is_added_only_to_requests_with_tools_and_something_to_get_back(
    make_proxy: MakeProxy, upstream: Upstream, tmp_path: Path
) -> None:
    proxy, ref = started(make_proxy, tmp_path)
    plain = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    httpx.post(f"{proxy.base_url}/chat/completions", json=plain, timeout=10).raise_for_status()
    assert "tools" not in upstream.last().json()
    with_tools = {**plain, "tools": [WEATHER]}  # nothing in it was omitted: no tool, no tokens billed
    reply = httpx.post(f"{proxy.base_url}/chat/completions", json=with_tools, timeout=10).json()
    assert [t["function"]["name"] for t in upstream.last().json()["tools"]] == ["get_weather"]
    assert reply["choices"][0]["message"]["content"] == "Hello from the fake upstream."
    marked = {**chat_body(ref), "tools": [WEATHER]}  # a marker with hash=: the tool is offered
    httpx.post(f"{proxy.base_url}/chat/completions", json=marked, timeout=10).raise_for_status()
    assert [t["function"]["name"] for t in upstream.requests[-1].json()["tools"]] == [
        "get_weather",
        "tersegate_expand",
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_a_store_outage_answers_unavailable_and_the_request_completes(
    make_proxy: MakeProxy, upstream: Upstream, tmp_path: Path, stream: bool
) -> None:
    proxy, ref = started(make_proxy, tmp_path)
    (tmp_path / "state" / "memo.sqlite").unlink()
    (tmp_path / "state").rmdir()
    (tmp_path / "state").write_text("not a folder")  # the store's file cannot be opened again
    assert proxy.services.originals is not None
    proxy.services.originals.store = SqliteStore(tmp_path / "state" / "x" / "memo.sqlite", max_bytes=1 << 20)
    body = chat_body(ref, stream=stream)
    if stream:
        chunks = list(oai(proxy).chat.completions.create(**body))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        text = oai(proxy).chat.completions.create(**body).choices[0].message.content or ""
    assert text.endswith(
        "The expansion returned: The store of originals is unavailable right now; continue without it, or re-run the command that produced the output."
    )


def test_the_extra_call_is_priced_into_the_record_and_the_report(
    make_proxy: MakeProxy, upstream: Upstream, tmp_path: Path
) -> None:
    proxy, ref = started(make_proxy, tmp_path)
    client = oai(proxy, **{"x-fake-expander": "1", "x-fake-expand-query": "FAILED"})
    client.chat.completions.create(**{**chat_body(ref), "model": "gpt-4o"})
    (record,) = records(proxy)
    assert (record["expansions"], record["expansion_calls"]) == (1, 1)
    assert record["expansion_cost_usd"] > 0
    # Nothing was compressed in this request: all it saved is minus what the expansion cost.
    assert record["saved_usd"] == pytest.approx(-record["expansion_cost_usd"])
    assert record["cost_after_usd"] == pytest.approx(record["cost_before_usd"] + record["expansion_cost_usd"])
    rows = aggregate_files([proxy.config_path.parent / "audit" / "audit.jsonl"], by=("team",), since=None)
    text = render(rows, by=("team",), fmt="table")
    assert f"~ team=default: 1 expansions ({record['expanded_bytes']:,} bytes returned) cost $" in text
    assert rows[0].as_dict()["expansions"] == 1


def test_streams_stop_at_the_limit_and_anthropic_streams_give_the_client_its_own_call(
    make_proxy: MakeProxy, upstream: Upstream, tmp_path: Path
) -> None:
    proxy = start(make_proxy, tmp_path, retrieve={"max_expansions_per_request": 1})
    ref = keep_original(tmp_path, "default", LOG)
    chunks = list(
        oai(proxy, **{"x-fake-expand-repeat": "1"}).chat.completions.create(**chat_body(ref), stream=True)
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.endswith(
        "The expansion returned: Limit reached: at most 1 expansions per request. Continue with what you have."
    )
    assert len(upstream.requests) == 3 and records(proxy)[-1]["expansions"] == 1
    with claude(proxy, **{"x-fake-expand-mixed": "1"}).messages.stream(**messages_body(ref)) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "text", "tool_use"]
    assert [b.name for b in final.content if b.type == "tool_use"] == ["get_weather"]
    assert final.stop_reason == "tool_use"
