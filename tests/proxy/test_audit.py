"""The cost audit, end to end: a real proxy, the fake upstream and the official openai client."""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from harness import MakeProxy, RunningProxy, Upstream, tersegate_command

from compressors.tokenizer import tokenizer_for

TRIM_POLICY = """\
name: trim
mode: enforce
rules:
  - name: trim-system
    match: {roles: [system], min_tokens: 20}
    compressor: truncate
    rate: 0.3
"""
LONG_SYSTEM = " ".join(f"Rule {i}: answer politely and cite the handbook section {i}." for i in range(40))


def _price_map() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations)))
    return orjson.loads((folder / "model_prices_and_context_window_backup.json").read_bytes())  # type: ignore[no-any-return]


def records(proxy: RunningProxy, name: str = "audit/audit.jsonl") -> list[dict[str, Any]]:
    path = proxy.config_path.parent / name
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def verify(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tersegate_command(), "audit", "verify", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def audited_proxy(make: MakeProxy, **audit: Any) -> RunningProxy:
    return make(
        {"audit": {"path": "audit/audit.jsonl", **audit}, "teams": {"default": {"policy": "trim"}}},
        policies={"trim": TRIM_POLICY},
    )


def test_record_fields_and_costs_match_the_price_map(make_proxy: MakeProxy) -> None:
    proxy = audited_proxy(make_proxy)
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-client-secret-1234", max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o",
        messages=[{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "Say hello"}],
        extra_headers={"x-fake-cached-tokens": "40"},
    )
    usage = raw.parse().usage
    assert usage is not None
    [record] = records(proxy)
    assert record["request_id"] == raw.headers["x-tersegate-request-id"]
    assert record["upstream_request_id"] == raw.headers["x-request-id"]
    assert record["team"] == "default" and record["policy"] == "trim" and record["mode"] == "enforce"
    assert record["rules"] == ["trim-system"]
    assert record["route"] == "/v1/chat/completions" and record["model"] == "gpt-4o"
    assert record["stream"] is False and record["status"] == 200
    assert record["ts"].endswith("Z") and record["ts"][10] == "T"
    assert record["tokens_before"] > record["tokens_after"] > 0
    assert record["usage"] == {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": 40,
        "reasoning_tokens": 0,
    }
    price = _price_map()["gpt-4o"]
    p_in, p_out, p_cached = (
        price["input_cost_per_token"],
        price["output_cost_per_token"],
        price["cache_read_input_token_cost"],
    )
    after = (usage.prompt_tokens - 40) * p_in + 40 * p_cached + usage.completion_tokens * p_out
    removed = record["tokens_before"] - record["tokens_after"]
    before = (usage.prompt_tokens + removed - 40) * p_in + 40 * p_cached + usage.completion_tokens * p_out
    assert record["cost_after_usd"] == pytest.approx(after, abs=1e-9)
    assert record["cost_before_usd"] == pytest.approx(before, abs=1e-9)
    assert record["saved_usd"] == pytest.approx(removed * p_in, abs=1e-9)
    assert record["price_missing"] is False
    assert record["price_source"] == f"litellm {importlib.metadata.version('litellm')}"
    assert record["compress_ms"] >= 0 and record["upstream_ms"] > 0 and record["fail_open"] is None
    assert len(record["prev_hash"]) == 64 and len(record["hash"]) == 64
    # The key is never written, only its fingerprint; the prompt text is not written either.
    text = (proxy.config_path.parent / "audit/audit.jsonl").read_text()
    assert "sk-client-secret-1234" not in text and "handbook" not in text and "Say hello" not in text
    assert record["key_id"] is None or len(record["key_id"]) == 12


@pytest.mark.slow
def test_unknown_model_has_no_price(make_proxy: MakeProxy) -> None:
    proxy = audited_proxy(make_proxy)
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
    client.chat.completions.create(model="acme-llm-7", messages=[{"role": "user", "content": "hi"}])
    [record] = records(proxy)
    assert record["price_missing"] is True
    assert (
        record["cost_before_usd"] is None and record["cost_after_usd"] is None and record["saved_usd"] is None
    )
    assert record["usage"]["prompt_tokens"] == 1


def _sse_payloads(text: str) -> list[Any]:
    out = []
    for frame in text.split("\n\n"):
        for line in frame.splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(orjson.loads(line[6:]))
    return out


def test_stream_without_include_usage_gets_none_but_is_audited(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = audited_proxy(make_proxy)
    body = {
        "model": "gpt-4o-mini",
        "stream": True,
        "messages": [{"role": "user", "content": "count to three"}],
    }
    with httpx.stream("POST", proxy.base_url + "/chat/completions", json=body, timeout=30) as response:
        text = response.read().decode()
    assert upstream.last().json()["stream_options"] == {"include_usage": True}
    assert '"usage"' not in text  # neither the usage chunk nor the "usage": null fields
    chunks = _sse_payloads(text)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == (
        "Hello from the fake upstream."
    )
    assert text.rstrip().endswith("data: [DONE]")
    [record] = records(proxy)
    assert record["stream"] is True
    assert record["usage"]["prompt_tokens"] == 3 and record["usage"]["completion_tokens"] == 5
    assert record["cost_after_usd"] > 0


def test_stream_with_include_usage_is_unchanged(make_proxy: MakeProxy) -> None:
    proxy = audited_proxy(make_proxy)
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "count to three"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    [record] = records(proxy)
    assert record["usage"]["prompt_tokens"] == chunks[-1].usage.prompt_tokens


@pytest.mark.slow
def test_responses_and_completions_streams_are_audited_with_usage(make_proxy: MakeProxy) -> None:
    proxy = audited_proxy(make_proxy)
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
    events = list(client.responses.create(model="gpt-4o", input="one two three four", stream=True))
    assert events[-1].type == "response.completed"
    completion_chunks = list(
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="a b", stream=True)
    )
    assert all(not hasattr(c, "usage") or c.usage is None for c in completion_chunks)
    responses_record, completions_record = records(proxy)
    assert responses_record["route"] == "/v1/responses"
    assert (
        responses_record["usage"]["prompt_tokens"] == 4
        and responses_record["usage"]["completion_tokens"] == 5
    )
    assert completions_record["route"] == "/v1/completions"
    assert completions_record["usage"]["prompt_tokens"] == 2


@pytest.mark.slow
async def test_concurrency_100_gives_100_records(make_proxy: MakeProxy) -> None:
    proxy = audited_proxy(make_proxy)
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)

    async def one(i: int) -> str:
        messages: Any = [{"role": "user", "content": f"request {i}"}]
        if i % 2:
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=messages
            )
            return raw.headers["x-tersegate-request-id"]
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=messages, stream=True)
        async for _ in stream:
            pass
        return stream.response.headers["x-tersegate-request-id"]

    ids = await asyncio.gather(*(one(i) for i in range(100)))
    await client.close()
    found = records(proxy)
    assert sorted(r["request_id"] for r in found) == sorted(ids)
    assert all(r["usage"]["prompt_tokens"] == 2 for r in found)
    assert verify(proxy.config_path.parent / "audit/audit.jsonl").returncode == 0


@pytest.mark.slow
async def test_sigkill_right_after_responses_loses_no_record(spawn_proxy: MakeProxy) -> None:
    proxy = spawn_proxy({"audit": {"path": "audit/audit.jsonl"}})
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
    replies = await asyncio.gather(
        *(
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"n {i}"}])
            for i in range(60)
        )
    )
    proxy.kill()
    await client.close()
    assert len(replies) == 60
    path = proxy.config_path.parent / "audit/audit.jsonl"
    assert len(path.read_bytes().splitlines()) == 60
    result = verify(path)
    assert result.returncode == 0 and "60 records" in result.stdout


def test_restart_continues_the_chain(make_proxy: MakeProxy, tmp_path: Path) -> None:
    path = tmp_path / "shared-audit.jsonl"
    for _ in range(2):
        proxy = make_proxy({"audit": {"path": str(path)}})
        openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        proxy.stop()
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert len(lines) == 2 and lines[1]["prev_hash"] == lines[0]["hash"] and lines[0]["prev_hash"] == "0" * 64
    assert verify(path).returncode == 0


def test_rotation_keeps_the_chain(make_proxy: MakeProxy) -> None:
    proxy = audited_proxy(make_proxy, rotate_bytes=3000)
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
    for i in range(12):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"q {i}"}])
    folder = proxy.config_path.parent / "audit"
    files = sorted(folder.glob("*.jsonl"))
    assert len(files) >= 3 and files[-1].name == "audit.jsonl"
    assert all(f.stat().st_size <= 3000 for f in files)
    previous = orjson.loads(files[0].read_bytes().splitlines()[-1])
    second = orjson.loads(files[1].read_bytes().splitlines()[0])
    assert second["prev_hash"] == previous["hash"]
    assert sum(len(f.read_bytes().splitlines()) for f in files) == 12
    result = verify(folder)
    assert result.returncode == 0 and f"12 records in {len(files)} file(s)" in result.stdout


def test_tampered_line_is_named_by_verify(make_proxy: MakeProxy) -> None:
    proxy = audited_proxy(make_proxy)
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
    for _ in range(4):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    path = proxy.config_path.parent / "audit/audit.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"team":"default"', b'"team":"finance"')
    path.write_bytes(b"".join(lines))
    result = verify(path)
    assert result.returncode == 1
    assert f"{path}:3: hash mismatch" in result.stderr


def test_fail_closed_answers_503_when_the_audit_cannot_be_written(
    make_proxy: MakeProxy, tmp_path: Path
) -> None:
    blocked = tmp_path / "blocked.jsonl"
    blocked.mkdir()  # a folder where the audit file should be
    proxy = make_proxy({"audit": {"path": str(blocked), "on_error": "fail-closed"}})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 503
    assert "failing closed" in caught.value.message
    assert httpx.get(proxy.url + "/healthz").status_code == 503
    # Routes outside the audit still work.
    assert client.models.list().data


def test_fail_open_serves_and_counts_the_loss(make_proxy: MakeProxy, tmp_path: Path) -> None:
    blocked = tmp_path / "blocked.jsonl"
    blocked.mkdir()
    proxy = make_proxy({"audit": {"path": str(blocked), "on_error": "fail-open"}})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
    for _ in range(2):
        reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
    metrics = httpx.get(proxy.url + "/metrics").text
    assert 'tersegate_audit_write_errors_total{team="default"} 2.0' in metrics


def test_metrics_count_tokens_and_dollars_by_team(make_proxy: MakeProxy) -> None:
    proxy = audited_proxy(make_proxy)
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
    client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "Say hello"}],
    )
    [record] = records(proxy)
    metrics = httpx.get(proxy.url + "/metrics").text
    assert f'tersegate_tokens_before_total{{team="default"}} {float(record["tokens_before"])}' in metrics
    assert f'tersegate_tokens_after_total{{team="default"}} {float(record["tokens_after"])}' in metrics

    def counted(name: str) -> float:
        line = next(line for line in metrics.splitlines() if line.startswith(name + '{team="default"}'))
        return float(line.split()[-1])

    assert record["saved_usd"] > 0
    assert counted("tersegate_saved_usd_total") == pytest.approx(record["saved_usd"])
    assert counted("tersegate_cost_before_usd_total") == pytest.approx(record["cost_before_usd"])
    assert counted("tersegate_cost_after_usd_total") == pytest.approx(record["cost_after_usd"])


def test_all_routes_and_include_text(make_proxy: MakeProxy) -> None:
    proxy = make_proxy({"audit": {"path": "audit/audit.jsonl", "all_routes": True, "include_text": True}})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
    client.models.list()
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "visible prompt"}])
    models_record, chat_record = records(proxy)
    assert models_record["route"] == "/v1/models" and models_record["status"] == 200
    assert chat_record["text"]["request"]["messages"][0]["content"] == "visible prompt"


def test_only_compressible_routes_by_default(make_proxy: MakeProxy) -> None:
    proxy = make_proxy({"audit": {"path": "audit/audit.jsonl"}})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
    client.models.list()
    client.embeddings.create(model="text-embedding-3-small", input="x")
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert [r["route"] for r in records(proxy)] == ["/v1/chat/completions"]


def test_upstream_error_is_audited_without_costs(make_proxy: MakeProxy) -> None:
    proxy = make_proxy({"audit": {"path": "audit/audit.jsonl"}})
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="error-429", messages=[{"role": "user", "content": "hi"}])
    [record] = records(proxy)
    assert record["status"] == 429 and record["usage"] is None and record["cost_after_usd"] is None


def test_verify_cli_is_importable_without_litellm_import() -> None:
    # The audit tools read the cost map as JSON: litellm itself (slow, networked on import) stays out.
    code = "import sys, proxy.audit.sink, proxy.audit.pricing; proxy.audit.pricing.PriceBook().price_for('gpt-4o'); print('litellm' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, check=True
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("team_config", [{}, {"policy": "trim"}], ids=["no-policy", "mode-off-by-header"])
def test_requests_no_rule_touches_still_have_token_counts(
    make_proxy: MakeProxy, team_config: dict[str, Any]
) -> None:
    policy = TRIM_POLICY.replace("mode: enforce", "mode: enforce\nallow_client_override: true")
    proxy = make_proxy(
        {"audit": {"path": "audit/audit.jsonl"}, "teams": {"default": team_config}},
        policies={"trim": policy},
    )
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-client", max_retries=0)
    messages = [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "Say hello"}]
    client.chat.completions.create(
        model="gpt-4o", messages=messages, extra_headers={"x-tersegate-mode": "off"}
    )  # type: ignore[arg-type]
    [record] = records(proxy)
    expected = sum(tokenizer_for("gpt-4o").count(str(m["content"])) for m in messages)
    assert record["tokens_before"] == record["tokens_after"] == expected
    assert record["cost_before_usd"] == record["cost_after_usd"]
