"""Anthropic usage in the audit's names, the stream tap, and prices by cache TTL."""

from __future__ import annotations

import orjson
import pytest
from harness import MakeProxy

from proxy.apis import MESSAGES
from proxy.apis.messages import MessagesUsageTap
from proxy.audit.pricing import PriceBook, costs_for


def _event(name: str, payload: dict[str, object]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def test_writes_without_a_ttl_split_count_as_five_minute_writes() -> None:
    usage = MESSAGES.usage(
        {
            "input_tokens": 10,
            "cache_creation_input_tokens": 30,
            "cache_read_input_tokens": 60,
            "output_tokens": 5,
        },
    )
    assert usage is not None
    assert usage["prompt_tokens"] == 100 and usage["cached_tokens"] == 60
    assert usage["cache_write_5m_tokens"] == 30 and usage["cache_write_1h_tokens"] == 0


def test_the_tap_merges_message_start_and_the_cumulative_message_delta() -> None:
    tap = MessagesUsageTap()
    start = {
        "type": "message_start",
        "message": {
            "model": "claude-haiku-4-5",
            "usage": {
                "input_tokens": 7,
                "cache_creation_input_tokens": 20,
                "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 20},
                "output_tokens": 1,
            },
        },
    }
    frames = [
        _event("message_start", start),
        _event("ping", {"type": "ping"}),
        _event(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 42}},
        ),
    ]
    assert [tap.frame(f) for f in frames] == frames  # never changed
    usage = MESSAGES.usage(tap.usage)
    assert usage is not None and usage["completion_tokens"] == 42 and usage["cache_write_1h_tokens"] == 20
    price = PriceBook().price_for("claude-haiku-4-5")
    assert price is not None
    costs = costs_for(price, usage, prompt_delta=100)
    expected = 7 * price.input + 20 * price.cache_write_1h + 42 * price.output
    assert costs.after_usd == pytest.approx(expected) and costs.saved_usd == pytest.approx(100 * price.input)


def test_an_unknown_claude_model_is_price_missing(make_proxy: MakeProxy) -> None:
    import anthropic
    from test_anthropic import anthropic_config, records

    proxy = make_proxy(anthropic_config(audit={"path": "audit/audit.jsonl"}))
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-test", max_retries=0)
    client.messages.create(
        model="claude-unreleased-9", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    [record] = records(proxy)
    assert record["price_missing"] is True and record["cost_after_usd"] is None
    assert record["usage"]["prompt_tokens"] > 0
