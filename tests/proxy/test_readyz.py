"""``GET /readyz``: 200 only once the policies' models are warm; ``/healthz`` stays liveness."""

from __future__ import annotations

import time

import httpx
import pytest
from harness import MakeProxy, RunningProxy

RAG_POLICY = """\
name: rag
mode: enforce
latency_budget_ms: 5000
rules:
  - name: documents
    match: {roles: [user], min_tokens: 200}
    compressor: relevance
    rate: 0.3
    options: {scorer: embedding}
"""
BROKEN_POLICY = """\
name: broken
mode: enforce
rules:
  - name: words
    match: {roles: [user], min_tokens: 50}
    compressor: tokens
    rate: 0.5
    options: {scorer: llmlingua2, model: /nonexistent/llmlingua-model}
"""
DOCUMENTS = "\n\n".join(
    f"Document [{i}](Title: Topic {i}) " + " ".join(f"Fact {i}.{j} about subject {i}." for j in range(25))
    for i in range(8)
)


def poll_readyz(proxy: RunningProxy, timeout: float = 120) -> list[httpx.Response]:
    """Every /readyz answer up to and including the first 200 (or until ``timeout``)."""
    answers = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers.append(httpx.get(proxy.url + "/readyz", timeout=5))
        if answers[-1].status_code == 200:
            break
        time.sleep(0.05)
    return answers


def test_ready_without_policies(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    answers = poll_readyz(proxy, timeout=20)
    assert answers[-1].status_code == 200 and answers[-1].json() == {"status": "ready"}


@pytest.mark.slow
def test_ready_only_once_the_embedding_model_is_warm(spawn_proxy: MakeProxy) -> None:
    proxy = spawn_proxy(
        {"teams": {"default": {"policy": "rag"}}, "audit": {"path": "audit.jsonl"}},
        policies={"rag": RAG_POLICY},
    )
    answers = poll_readyz(proxy)
    assert answers[-1].status_code == 200, answers[-1].text
    loading = {"rag/documents (relevance)", "tokenizer o200k_base", "tokenizer cl100k_base"}
    loading |= {"audit price map", "policies (warm-up starting)"}
    for early in answers[:-1]:  # before that: what is pending, never a bare 503
        assert early.status_code == 503
        assert early.json()["status"] == "warming" and set(early.json()["pending"]) <= loading
    assert any("rag/documents (relevance)" in a.json().get("pending", []) for a in answers[:-1])
    assert httpx.get(proxy.url + "/healthz").status_code == 200
    reply = httpx.post(
        proxy.url + "/v1/chat/completions",
        json={
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": DOCUMENTS + "\n\nQuestion: fact 3.4?"}],
        },
        timeout=30,
    )
    # Ready means warm: the first request is compressed, not failed open on loading.
    before = int(reply.headers["x-tersegate-tokens-before"])
    assert int(reply.headers["x-tersegate-tokens-after"]) < before * 0.6
    log = proxy.log_text()
    assert "warm: rag/documents (relevance)" in log and "warm: tokenizer o200k_base" in log
    assert reply.elapsed.total_seconds() < 3  # nothing left to load on the first request


@pytest.mark.slow
def test_a_model_that_cannot_load_keeps_readyz_503_but_healthz_ok(make_proxy: MakeProxy) -> None:
    proxy = make_proxy({"teams": {"default": {"policy": "broken"}}}, policies={"broken": BROKEN_POLICY})
    deadline = time.monotonic() + 60
    body: dict[str, object] = {}
    while time.monotonic() < deadline:
        answer = httpx.get(proxy.url + "/readyz")
        assert answer.status_code == 503
        body = answer.json()
        if body["status"] == "failed":
            break
        time.sleep(0.05)
    assert body["status"] == "failed" and "pending" not in body
    failed = body["failed"]
    assert isinstance(failed, dict) and list(failed) == ["broken/words (tokens)"]
    assert "not available locally" in str(failed["broken/words (tokens)"])
    assert httpx.get(proxy.url + "/healthz").status_code == 200
