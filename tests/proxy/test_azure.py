"""Azure OpenAI through the proxy with the official ``openai.AzureOpenAI`` client.

The fake upstream answers Azure's paths (``/openai/deployments/{name}/...?api-version=``)
and names the deployed model in its answers, as Azure does.
"""

from __future__ import annotations

import hashlib
from typing import Any

import openai
import orjson
from harness import UPSTREAM_KEY, MakeProxy, RunningProxy, Upstream

from proxy.audit.pricing import PriceBook

API_VERSION = "2024-10-21"
LONG_SYSTEM = " ".join(f"Rule {i}: answer politely and cite the handbook section {i}." for i in range(40))
TRIM = """\
name: trim
mode: enforce
latency_budget_ms: 30000
rules:
  - name: trim-system
    match: {roles: [system], min_tokens: 20}
    compressor: truncate
    rate: 0.3
"""


def azure_config(**extra: Any) -> dict[str, Any]:
    return {
        "upstreams": {
            "fake": {"base_url": "{upstream}", "api_key_env": "FAKE_UPSTREAM_KEY", "timeout_s": 30},
            "azure": {
                "api": "azure",
                "base_url": "{upstream_root}",
                "api_key_env": "FAKE_UPSTREAM_KEY",
                "deployments": {"gpt4o-prod": "gpt-4o"},
            },
        },
        "audit": {"path": "audit/audit.jsonl"},
        "teams": {"default": {"policy": "trim", "upstream": "azure"}},
        **extra,
    }


def records(proxy: RunningProxy) -> list[dict[str, Any]]:
    path = proxy.config_path.parent / "audit" / "audit.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def azure(proxy: RunningProxy, key: str = "az-client-key-1") -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=proxy.url, api_key=key, api_version=API_VERSION, max_retries=0)


def messages() -> list[Any]:
    return [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "Say hello"}]


def test_chat_on_a_deployment_is_compressed_forwarded_and_priced_by_the_deployments_map(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy(azure_config(), policies={"trim": TRIM})
    raw = azure(proxy).chat.completions.with_raw_response.create(model="gpt4o-prod", messages=messages())
    reply = raw.parse()
    assert reply.choices[0].message.content
    sent = upstream.last()
    assert sent.path == "/openai/deployments/gpt4o-prod/chat/completions"  # no /v1 in front
    assert sent.query == f"api-version={API_VERSION}"
    assert sent.headers["api-key"] == "az-client-key-1"  # passthrough: the client's key
    assert len(sent.json()["messages"][0]["content"]) < len(LONG_SYSTEM)  # compressed like OpenAI's twin
    [record] = records(proxy)
    assert record["api"] == "azure" and record["route"] == "/v1/chat/completions"
    assert record["model"] == "gpt-4o" and record["policy"] == "trim"
    price = PriceBook().price_for("gpt-4o")
    assert price is not None and reply.usage is not None
    expected = reply.usage.prompt_tokens * price.input + reply.usage.completion_tokens * price.output
    assert abs(record["cost_after_usd"] - expected) < 1e-9 and record["saved_usd"] > 0


def test_unmapped_deployment_is_priced_by_the_answers_model_also_streamed(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy(azure_config(), policies={"trim": TRIM})
    client = azure(proxy)
    client.chat.completions.create(model="other-deployment", messages=messages())
    chunks = list(client.chat.completions.create(model="other-deployment", messages=messages(), stream=True))
    assert chunks and all(c.usage is None for c in chunks)  # the injected usage chunk is not shown
    plain, streamed = records(proxy)
    assert plain["model"] == "gpt-4o-2024-08-06" and plain["cost_after_usd"] > 0
    assert streamed["stream"] is True and streamed["model"] == "gpt-4o-2024-08-06"
    assert streamed["usage"]["prompt_tokens"] > 0 and streamed["cost_after_usd"] > 0


def test_responses_and_completions_on_azure_paths_are_compressible(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy(azure_config(), policies={"trim": TRIM})
    client = azure(proxy)
    client.responses.create(model="gpt4o-prod", instructions=LONG_SYSTEM, input="hi")
    assert upstream.last().path == "/openai/responses"
    assert len(upstream.last().json()["instructions"]) < len(LONG_SYSTEM)
    client.completions.create(model="gpt4o-prod", prompt="hello there")
    assert upstream.last().path == "/openai/deployments/gpt4o-prod/completions"
    assert [r["route"] for r in records(proxy)] == ["/v1/responses", "/v1/completions"]
    assert [r["model"] for r in records(proxy)] == ["gpt-4o", "gpt-4o"]  # the body names the deployment


def test_keys_mode_sends_the_upstream_key_as_api_key(make_proxy: MakeProxy, upstream: Upstream) -> None:
    digest = hashlib.sha256(b"tg-azure-team").hexdigest()
    config = azure_config(auth="keys", teams={"default": {"upstream": "azure", "keys_sha256": [digest]}})
    proxy = make_proxy(config)
    azure(proxy, key="tg-azure-team").chat.completions.create(model="gpt4o-prod", messages=messages())
    sent = upstream.last().headers
    assert sent["api-key"] == UPSTREAM_KEY and "authorization" not in sent


def test_azure_path_without_an_azure_upstream_is_refused_in_openai_shape(
    make_proxy: MakeProxy, upstream: Upstream
) -> None:
    proxy = make_proxy({"teams": {"default": {}}})
    try:
        azure(proxy).chat.completions.create(model="gpt4o-prod", messages=messages())
    except openai.NotFoundError as exc:
        assert "api: azure" in str(exc)
    else:
        raise AssertionError("expected a 404")
    assert upstream.requests == []
