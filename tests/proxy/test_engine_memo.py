"""Cache stability in the engine: a part keeps the form it was first forwarded in.

Driven through :class:`PolicyRewriter` directly (as ``tersegate compress`` and
the server call it) so a test can swap policies between turns.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import pytest

import evaldata
from proxy.exchange import Exchange
from proxy.policy.engine import PolicyRewriter
from proxy.policy.model import PolicySet, load_policy

needs_evaldata = pytest.mark.evaldata(evaldata.NQ)


def policy_set(tmp_path: Path, text: str) -> PolicySet:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    policy, _ = load_policy(path)
    return PolicySet(policies={policy.name: policy}, team_policy={"t": policy.name})


def exchange() -> Exchange:
    return Exchange("r", "POST", "/v1/chat/completions", "t", None, "u", time.time(), True)


def documents(n: int = 20) -> str:
    return "\n\n".join(evaldata.document(row, i + 1) for i, row in enumerate(evaldata.nq_rows(n)))


RELEVANCE_ON_TOOLS = """\
name: docs
min_saving_tokens: 0
latency_budget_ms: {budget}
rules:
  - name: search-results
    match: {{roles: [tool]}}
    compressor: {compressor}
    rate: 0.3
"""


def conversation(question: str, *more: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": question},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": documents()},
            *more,
        ],
    }


@pytest.mark.slow
@needs_evaldata
async def test_a_part_keeps_its_first_form_after_the_query_changes(tmp_path: Path) -> None:
    policies = policy_set(tmp_path, RELEVANCE_ON_TOOLS.format(budget=60000, compressor="relevance"))
    rewriter = PolicyRewriter(policies, memo_bytes=1 << 24, workers=2)
    try:
        first = await rewriter(exchange(), conversation("who got the first nobel prize in physics?"), {})
        assert first.body is not None
        kept = first.body["messages"][2]["content"]
        # The same documents compressed fresh for another question come out differently...
        other = PolicyRewriter(policies, memo_bytes=1 << 24, workers=1)
        fresh = await other(exchange(), conversation("how many episodes are in chicago fire season 4?"), {})
        other.close()
        assert fresh.body is not None and fresh.body["messages"][2]["content"] != kept
        # ...but on the next turn of the first conversation they are re-sent as first sent.
        later = conversation(
            "who got the first nobel prize in physics?",
            {"role": "assistant", "content": "Röntgen."},
            {"role": "user", "content": "how many episodes are in chicago fire season 4?"},
        )
        second = await rewriter(exchange(), later, {})
        assert second.body is not None and second.body["messages"][2]["content"] == kept
        assert next(p for p in second.parts if p["message"] == 2)["source"] == "memo"
    finally:
        rewriter.close()


@needs_evaldata
async def test_a_part_past_the_latency_budget_stays_uncompressed_on_later_turns(tmp_path: Path) -> None:
    slow = policy_set(tmp_path, RELEVANCE_ON_TOOLS.format(budget=1, compressor="tokens"))
    rewriter = PolicyRewriter(slow, memo_bytes=1 << 24, workers=1)
    try:
        body = conversation("who got the first nobel prize in physics?")
        first = await rewriter(exchange(), body, {})
        assert first.body is None and first.fail_open == "latency_budget"
        # The same rule with a generous budget: the part was sent as it came, so it stays so.
        generous = dataclasses.replace(slow.policies["docs"], latency_budget_ms=60000)
        rewriter.policies = dataclasses.replace(slow, policies={"docs": generous})
        second = await rewriter(exchange(), body, {})
        assert second.body is None and second.fail_open is None
        assert second.tokens_after == second.tokens_before
        # A new part of the same conversation is compressed normally; the old one stays as sent.
        question = body["messages"][0]["content"]
        later = conversation(
            question,
            {"role": "assistant", "content": "Let me look further."},
            {"role": "tool", "tool_call_id": "c1", "content": documents(12)},
        )
        third = await rewriter(exchange(), later, {})
        assert (
            third.body is not None and third.body["messages"][2]["content"] == body["messages"][2]["content"]
        )
        assert len(third.body["messages"][4]["content"]) < len(documents(12))
        # The failed-open form belongs to the conversation that sent it: a new conversation with
        # the same documents gets them compressed.
        other = await rewriter(exchange(), conversation("who wrote the iliad?"), {})
        assert other.body is not None
        assert len(other.body["messages"][2]["content"]) < len(body["messages"][2]["content"])
    finally:
        rewriter.close()
