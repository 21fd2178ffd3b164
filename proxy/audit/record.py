"""The audit record of a finished exchange, priced: tokens before and after, the upstream's usage,
and what the request cost with and without compression (the cache model's estimate for the
uncompressed request when there is one). Hashing and writing it: :mod:`proxy.audit.chainfile`,
:mod:`proxy.audit.sink`.
"""

from __future__ import annotations

import functools
import logging
from datetime import UTC, datetime
from typing import Any

from proxy.apis import dialect_for
from proxy.audit.cache_model import CacheEstimate
from proxy.audit.pricing import Costs, PriceBook, PricingError, costs_for
from proxy.exchange import Exchange

__all__ = ["build_record", "prompt_removed", "token_scale"]

log = logging.getLogger("tersegate.audit")


@functools.lru_cache(maxsize=8)
def _whole_second(whole: int) -> str:
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _rfc3339(ts: float) -> str:
    """``2025-03-01T12:00:00.123Z`` (milliseconds, truncated), as datetime would print it; the
    whole second is formatted once per second (records come thousands a second)."""
    whole = int(ts)
    micros = round((ts - whole) * 1_000_000)  # datetime rounds to the microsecond, then we truncate
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    return f"{_whole_second(whole)}.{micros // 1000:03d}Z"


def token_scale(exchange: Exchange, usage: dict[str, int | None] | None) -> float | None:
    """Where the proxy's counts are estimates (Anthropic: tiktoken o200k, there is no offline Claude
    tokenizer): the upstream's exact input count over our estimate of what was sent, by which the
    estimated saving is scaled before it is priced. None when either side is unknown."""
    rw = exchange.rewrite
    if not dialect_for(exchange.route, exchange.api).estimated_tokens or not usage or rw.tokens_after is None:
        return None
    exact = usage.get("prompt_tokens")
    estimate = rw.tokens_after + (rw.tokens_other or 0)
    if not exact or estimate <= 0:
        return None
    return round(exact / estimate, 4)


def build_record(
    exchange: Exchange, *, prices: PriceBook, include_text: bool, cache: CacheEstimate | None = None
) -> dict[str, Any]:
    """The audit record of a finished exchange, without ``prev_hash`` and ``hash``.

    ``cache`` is the cache model's estimate for the uncompressed request; without one,
    ``cost_before_usd`` assumes the cache use the upstream reported.
    """
    rw = exchange.rewrite
    usage = dialect_for(exchange.route, exchange.api).usage(exchange.usage)
    delta, scale = prompt_removed(exchange, usage)
    prompt = usage.get("prompt_tokens") if usage else None
    if cache is not None and cache.prompt_before is not None and prompt is not None:
        # Anthropic: the cache model counted the original and the forwarded prompt whole, in the
        # upstream's units; their difference is what compression removed (framing cancels out).
        delta = cache.prompt_before - prompt
    prompt_before = _prompt_before(usage, delta)
    cached_before = cache.cached_before if cache is not None else None
    if cached_before is not None and prompt_before is not None:
        cached_before = min(cached_before, prompt_before)
    written_before = cache.written_before if cache is not None else None
    tokens = (rw.tokens_before, rw.tokens_after)
    if rw.unparsed and prompt is not None:  # not counted by the proxy, forwarded as sent
        tokens = (prompt, prompt)
    costs, source = _priced(prices, exchange.model, usage, delta, cached_before, written_before)
    record: dict[str, Any] = {
        "ts": _rfc3339(exchange.started),
        "request_id": exchange.request_id,
        "upstream_request_id": exchange.upstream_request_id,
        "team": exchange.team,
        "key_id": exchange.key_id,
        "policy": rw.policy,
        "rules": list(rw.rules),
        "mode": rw.mode,
        "route": exchange.route,
        "api": exchange.api,
        "model": exchange.model,
        "stream": exchange.stream,
        "status": exchange.status,
        "tokens_before": tokens[0],
        "tokens_after": tokens[1],
        "tokens_scale": scale,
        "usage": usage,
        "cached_tokens": usage.get("cached_tokens") if usage else None,
        "prompt_tokens_before_est": prompt_before,
        "cached_tokens_before_est": cached_before,
        "cost_before_usd": costs.before_usd,
        "cost_after_usd": costs.after_usd,
        "saved_usd": costs.saved_usd,
        "price_missing": costs.price_missing,
        "price_source": source,
        "compress_ms": round(rw.compress_ms, 3),
        "upstream_ms": round(exchange.upstream_ms, 3) if exchange.upstream_ms is not None else None,
        "fail_open": rw.fail_open,
    }
    _add_expansions(record, exchange, prices)
    if usage is not None and "cache_write_tokens" in usage:
        record["cache_write_tokens_before_est"] = (
            None if written_before is None else sum(written_before.values())
        )
    _add_outcome(record, exchange, include_text=include_text)
    return record


def _priced(
    prices: PriceBook,
    model: str | None,
    usage: dict[str, int | None] | None,
    delta: int,
    cached_before: int | None,
    written_before: dict[str, int] | None,
) -> tuple[Costs, str | None]:
    """The request's costs and the price map they come from; a model without a price is logged
    and its costs are None (``price_missing``), never a failed record."""
    try:
        price = prices.price_for(model)
        costs = costs_for(
            price, usage, prompt_delta=delta, cached_before=cached_before, written_before=written_before
        )
        return costs, prices.source
    except PricingError as exc:
        log.error("audit: %s", exc)
        return costs_for(None, usage, prompt_delta=delta), None


def _add_outcome(record: dict[str, Any], exchange: Exchange, *, include_text: bool) -> None:
    """The fields only some records have: an error, a client that left, a partial answer, the texts."""
    if exchange.error is not None:
        record["error"] = exchange.error
    if exchange.client_disconnected:
        record["client_disconnected"] = True
    if exchange.partial:
        record["partial"] = True
    if include_text:
        record["text"] = {"request": exchange.request_body, "forwarded": exchange.rewrite.body}


def _add_expansions(record: dict[str, Any], exchange: Exchange, prices: PriceBook) -> None:
    """The proxy's tool loop (proxy.server.expand): its extra upstream calls are part of what the
    request cost, priced from their own usage (cache reads as the upstream reported them), so
    ``cost_after_usd`` and ``saved_usd`` include them and the uncompressed request never needed them."""
    if not exchange.expansions and not exchange.extra_usage:
        return
    extra, priced = 0.0, True
    dialect = dialect_for(exchange.route, exchange.api)
    try:
        price = prices.price_for(exchange.model)
    except PricingError:
        price = None
    for raw in exchange.extra_usage:
        cost = costs_for(price, dialect.usage(raw), prompt_delta=0).after_usd
        priced = priced and cost is not None
        extra += cost or 0.0
    record["expansions"] = exchange.expansions
    record["expanded_bytes"] = exchange.expanded_bytes
    record["expansion_calls"] = len(exchange.extra_usage)
    record["expansion_cost_usd"] = round(extra, 10) if priced else None
    if priced and record["cost_after_usd"] is not None and record["cost_before_usd"] is not None:
        record["cost_after_usd"] = round(record["cost_after_usd"] + extra, 10)
        record["saved_usd"] = round(record["cost_before_usd"] - record["cost_after_usd"], 10)


def prompt_removed(exchange: Exchange, usage: dict[str, int | None] | None) -> tuple[int, float | None]:
    """``(prompt tokens compression removed from what was forwarded, Anthropic's token scale)``;
    nothing was removed in shadow mode or after a fail-open."""
    rw = exchange.rewrite
    applied = rw.mode == "enforce" and rw.fail_open is None
    counted = rw.tokens_before is not None and rw.tokens_after is not None
    delta = (rw.tokens_before or 0) - (rw.tokens_after or 0) if applied and counted else 0
    scale = token_scale(exchange, usage)
    return (delta if scale is None else round(delta * scale)), scale


def _prompt_before(usage: dict[str, int | None] | None, delta: int) -> int | None:
    prompt = usage.get("prompt_tokens") if usage else None
    return None if prompt is None else prompt + delta
