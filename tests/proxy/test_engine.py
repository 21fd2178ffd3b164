"""The policy engine through a real proxy: what reaches the upstream, on real traffic.

Every part a rule did not select must arrive byte-identical in value; selected
parts must shrink as configured; modes, client override, fail-open and
``min_saving_tokens`` behave as a user of the proxy would see them.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from harness import MakeProxy, Upstream

import evaldata
from compressors.tokenizer import tokenizer_for

PYDICOM = "swe-agent-traces/gpt4__pydicom-1458.traj"
needs_evaldata = pytest.mark.evaldata(evaldata.NQ, evaldata.QA_PROMPT)
COUNT = tokenizer_for("gpt-4o").count

NORMALIZE_ALL = """\
name: tidy
min_saving_tokens: 0
allow_client_override: {override}
mode: {mode}
rules:
  - name: tool-output
    match: {{roles: [tool], tool_names: ["get_*"]}}
    compressor: normalize
  - name: long-user
    match: {{roles: [user], min_tokens: 200}}
    compressor: normalize
"""


def tidy_policy(*, mode: str = "enforce", override: bool = False) -> dict[str, str]:
    return {"tidy": NORMALIZE_ALL.format(mode=mode, override=str(override).lower())}


def team_config(policy: str) -> dict[str, Any]:
    return {"teams": {"default": {"policy": policy}}}


def post(proxy: Any, route: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    sent = {"Authorization": "Bearer sk-client", **{k.replace("_", "-"): v for k, v in headers.items()}}
    response = httpx.post(proxy.base_url + route, content=orjson.dumps(body), headers=sent, timeout=60)
    assert response.status_code == 200, response.text
    return response


@dataclass(frozen=True)
class Sample:
    """A tool output (a pretty-printed JSON schema) and a long user-role observation with layout to tidy."""

    schema: str
    observation: str


def built_sample() -> Sample:
    """Made here, so the engine keeps its tests where the evaluation data is absent."""
    properties = {
        f"field_{i}": {"type": "string", "description": f"The value of field {i}, as the caller sent it."}
        for i in range(40)
    }
    schema = {"type": "object", "properties": properties, "required": sorted(properties)[:5]}
    topics = ("parser", "cache", "scheduler", "renderer", "importer", "billing", "session", "search")
    lines = [
        f"The {topic}   module   handles   step {i} of the request,    and its   tests   cover   it.    "
        for i in range(40)
        for topic in topics[i % len(topics) : i % len(topics) + 1]
    ]
    observation = (
        "Search results in the repository:\n\n\n\n\n" + "\n\n\n\n\n".join(lines) + "\n\n\n\n\nbash-$"
    )
    return Sample(json.dumps(schema, indent=4), observation)


def real_sample() -> Sample:
    """A pretty-printed schema from OpenAI's spec, the longest observation of a SWE-agent trace."""
    spec = json.loads(evaldata.text(evaldata.OPENAPI))
    schema = json.dumps(spec["components"]["schemas"]["CreateChatCompletionRequest"], indent=4)
    history = evaldata.agent_messages(PYDICOM)
    return Sample(schema, str(max((m["content"] for m in history if m["role"] == "user"), key=len)))


@pytest.fixture(params=["built", pytest.param("real", marks=pytest.mark.evaldata(evaldata.OPENAPI, PYDICOM))])
def sample(request: pytest.FixtureRequest) -> Sample:
    return built_sample() if request.param == "built" else real_sample()


def diff_paths(a: Any, b: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths where two JSON values differ (leaves only)."""
    if isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys():
        return [p for k in a for p in diff_paths(a[k], b[k], (*path, k))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [p for i, (x, y) in enumerate(zip(a, b, strict=True)) for p in diff_paths(x, y, (*path, i))]
    return [] if a == b and type(a) is type(b) else [path]


def at(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


def test_chat_only_selected_text_changes(make_proxy: MakeProxy, upstream: Upstream, sample: Sample) -> None:
    proxy = make_proxy(team_config("tidy"), policies=tidy_policy())
    long_user = sample.observation
    body = {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a careful   assistant.\n\n\n\n" * 30},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": long_user},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=   "}},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                    {"type": "file", "file": {"file_id": "file-abc", "filename": "a   b.pdf"}},
                ],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_schema", "arguments": '{"name":  "chat",\n\n\n "x": 1}'},
                    },
                    {"id": "call_2", "type": "function", "function": {"name": "search", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": sample.schema},
            {"role": "tool", "tool_call_id": "call_2", "content": sample.schema},
            {"role": "user", "content": "What    fields are required?"},
        ],
        "tools": [{"type": "function", "function": {"name": "get_schema", "parameters": {"type": "object"}}}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "object"}},
        },
        "x_vendor_field": {"keep": "  as   is  ", "n": 1.50},
        "temperature": 0.2,
    }
    response = post(proxy, "/chat/completions", body)
    forwarded = upstream.last().json()
    changed = diff_paths(body, forwarded)
    assert sorted(changed, key=str) == sorted(
        [("messages", 1, "content", 0, "text"), ("messages", 3, "content")], key=str
    )
    for path in changed:
        assert COUNT(at(forwarded, path)) < COUNT(at(body, path))
    # The tool output of `search` is not selected (tool_names: get_*) and stays as sent.
    assert forwarded["messages"][4]["content"] == body["messages"][4]["content"]
    assert json.loads(forwarded["messages"][3]["content"]) == json.loads(body["messages"][3]["content"])
    before, after = (
        int(response.headers["x-tersegate-tokens-before"]),
        int(response.headers["x-tersegate-tokens-after"]),
    )
    assert after < before
    assert response.headers["x-tersegate-policy"] == "tidy"
    assert response.headers["x-tersegate-mode"] == "enforce"


def test_responses_api_inputs(make_proxy: MakeProxy, upstream: Upstream, sample: Sample) -> None:
    proxy = make_proxy(team_config("tidy"), policies=tidy_policy())
    body = {
        "model": "gpt-4o",
        "previous_response_id": "resp_123",
        "instructions": "Answer   briefly.\n\n\n\n\nUse tools.",
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": sample.observation},
                    {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "high"},
                ],
            },
            {"type": "function_call", "call_id": "c1", "name": "get_schema", "arguments": '{"a":   1}'},
            {"type": "function_call_output", "call_id": "c1", "output": sample.schema},
            {"type": "function_call", "call_id": "c2", "name": "search", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c2", "output": sample.schema},
        ],
        "tools": [{"type": "function", "name": "get_schema", "parameters": {"type": "object"}}],
    }
    post(proxy, "/responses", body)
    forwarded = upstream.last().json()
    changed = diff_paths(body, forwarded)
    assert sorted(changed, key=str) == sorted(
        [("input", 0, "content", 0, "text"), ("input", 2, "output")], key=str
    )
    for path in changed:
        assert COUNT(at(forwarded, path)) < COUNT(at(body, path))


def test_responses_string_input_and_completions_prompt(
    make_proxy: MakeProxy, upstream: Upstream, sample: Sample
) -> None:
    proxy = make_proxy(team_config("tidy"), policies=tidy_policy())
    text = sample.observation
    post(proxy, "/responses", {"model": "gpt-4o", "input": text})
    assert COUNT(upstream.last().json()["input"]) < COUNT(text)
    post(proxy, "/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": [text, "short   one"]})
    prompt = upstream.last().json()["prompt"]
    assert COUNT(prompt[0]) < COUNT(text) and prompt[1] == "short   one"


def test_shadow_forwards_the_original_bytes_and_reports_the_saving(
    make_proxy: MakeProxy, upstream: Upstream, sample: Sample
) -> None:
    proxy = make_proxy(team_config("tidy"), policies=tidy_policy(mode="shadow"))
    raw = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": sample.observation}]})
    response = httpx.post(
        proxy.base_url + "/chat/completions", content=raw, headers={"Authorization": "Bearer k"}, timeout=60
    )
    assert upstream.last().body == raw
    assert response.headers["x-tersegate-mode"] == "shadow"
    assert int(response.headers["x-tersegate-tokens-after"]) < int(
        response.headers["x-tersegate-tokens-before"]
    )


@pytest.mark.slow
@pytest.mark.parametrize("override", [True, False])
def test_client_override_only_where_the_policy_allows(
    make_proxy: MakeProxy, upstream: Upstream, sample: Sample, override: bool
) -> None:
    proxy = make_proxy(team_config("tidy"), policies=tidy_policy(override=override))
    raw = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": sample.observation}]})
    for asked in ("off", "shadow"):
        response = httpx.post(
            proxy.base_url + "/chat/completions",
            content=raw,
            headers={"Authorization": "Bearer k", "X-Tersegate-Mode": asked},
            timeout=60,
        )
        assert response.status_code == 200
        if override:
            assert response.headers["x-tersegate-mode"] == asked
            assert upstream.last().body == raw
        else:
            assert response.headers["x-tersegate-mode"] == "enforce"
            assert len(upstream.last().body) < len(raw)


def test_min_saving_tokens_leaves_small_savings_alone(
    make_proxy: MakeProxy, upstream: Upstream, sample: Sample
) -> None:
    strict = NORMALIZE_ALL.format(mode="enforce", override="false").replace(
        "min_saving_tokens: 0", "min_saving_tokens: 100000"
    )
    proxy = make_proxy(team_config("tidy"), policies={"tidy": strict})
    raw = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": sample.observation}]})
    response = httpx.post(
        proxy.base_url + "/chat/completions", content=raw, headers={"Authorization": "Bearer k"}
    )
    assert upstream.last().body == raw
    assert response.headers["x-tersegate-tokens-after"] == response.headers["x-tersegate-tokens-before"]


@pytest.mark.slow
def test_compressor_error_fails_open(make_proxy: MakeProxy, upstream: Upstream, sample: Sample) -> None:
    broken = """\
name: broken
min_saving_tokens: 0
latency_budget_ms: 30000
rules:
  - name: documents
    match: {roles: [user]}
    compressor: relevance
    rate: 0.3
    options: {scorer: embedding, model: /nonexistent/minilm}
"""
    proxy = make_proxy(team_config("broken"), policies={"broken": broken})
    # The warm-up has tried (and failed) to load the model: the request's own failure is then quick.
    assert proxy.services is not None and proxy.services.rewriter.warmed.wait(120)  # type: ignore[attr-defined]
    question = sample.observation + "\n\nWhich file should be edited?"
    raw = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": question}]})
    response = httpx.post(
        proxy.base_url + "/chat/completions", content=raw, headers={"Authorization": "Bearer k"}, timeout=120
    )
    assert response.status_code == 200
    assert upstream.last().body == raw
    metrics = httpx.get(proxy.url + "/metrics").text
    assert 'tersegate_fail_open_total{reason="compressor_error",team="default"} 1.0' in metrics


def test_drop_rule_removes_only_old_messages(make_proxy: MakeProxy, upstream: Upstream) -> None:
    policy = """\
name: forgetful
min_saving_tokens: 0
rules:
  - name: forget-old-users
    action: drop
    match: {roles: [user], older_than_turns: 2}
  - name: empty-old-tools
    action: drop
    match: {roles: [tool], older_than_turns: 2}
"""
    proxy = make_proxy(team_config("forgetful"), policies={"forgetful": policy})
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "old question"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "old output"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "new question"},
        {"role": "assistant", "content": "second answer"},
        {"role": "user", "content": "newest question"},
    ]
    body = {"model": "gpt-4o", "messages": copy.deepcopy(messages)}
    post(proxy, "/chat/completions", body)
    forwarded = upstream.last().json()["messages"]
    assert [m.get("content") for m in forwarded] == [
        "sys",
        None,
        "",
        "first answer",
        "new question",
        "second answer",
        "newest question",
    ]
    assert forwarded[1]["tool_calls"] == messages[2]["tool_calls"]


@pytest.mark.slow
@needs_evaldata
def test_nq_question_and_instruction_survive_relevance(make_proxy: MakeProxy, upstream: Upstream) -> None:
    rows = evaldata.nq_rows(20)
    gold = rows[7]
    prompt = evaldata.qa_prompt(
        [evaldata.document(row, i + 1) for i, row in enumerate(rows)], gold["question"]
    )
    template = evaldata.text(evaldata.QA_PROMPT)
    rag = (Path(__file__).resolve().parents[2] / "policies" / "rag.yaml").read_text()
    proxy = make_proxy(
        team_config("rag"),
        policies={"rag": rag.replace("latency_budget_ms: 1000", "latency_budget_ms: 60000")},
    )
    post(proxy, "/chat/completions", {"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]})
    sent = upstream.last().json()["messages"][0]["content"]
    instruction = template.split("\n\n")[0]
    assert sent.startswith(instruction + "\n\n")
    assert sent.endswith(f"Question: {gold['question']}\nAnswer:")
    assert any(answer in sent for answer in gold["answers"])
    assert COUNT(sent) <= 0.4 * COUNT(prompt)
