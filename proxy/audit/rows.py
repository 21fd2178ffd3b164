"""Report rows and the sums they are made of, shared by the JSONL scan (:mod:`proxy.audit.report`)
and the SQLite index (:mod:`proxy.audit.index`), so both add records up the same way.

Dollar sums cover the requests that had a price and usage; ``price_missing``
counts the requests that could not be priced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["GROUP_KEYS", "Row", "Sums", "cache_tokens", "row_of", "usd"]

GROUP_KEYS = ("team", "model", "day", "route", "policy")
_USD_DIGITS = 8

# The totals of a group, in this order: requests, tokens before, tokens after, cost before,
# cost after, saved, priced requests, fail-open requests, unpriced requests, then over the priced
# requests: prompt tokens before and after, cached tokens before and after; then the proxy's tool
# loop: expansions, bytes they returned, dollars of its extra upstream calls (in cost after).
Totals = tuple[int, int, int, float, float, float, int, int, int, int, int, int, int, int, int, float]


@dataclass(frozen=True, slots=True)
class Row:
    keys: tuple[tuple[str, str | None], ...]  # (group key, value) in --by order
    requests: int
    tokens_before: int
    tokens_after: int
    cost_before_usd: float | None
    cost_after_usd: float | None
    saved_usd: float | None
    fail_open: int
    price_missing: int
    # Prompt and cached-read tokens of the priced requests: before (the cache model's estimate
    # for the uncompressed requests) and after (as the upstream reported).
    prompt_before: int = 0
    prompt_after: int = 0
    cached_before: int = 0
    cached_after: int = 0
    expansions: int = 0
    expanded_bytes: int = 0
    expansion_cost_usd: float = 0.0

    @property
    def cached_share_before(self) -> float | None:
        return round(100.0 * self.cached_before / self.prompt_before, 2) if self.prompt_before > 0 else None

    @property
    def cached_share_after(self) -> float | None:
        return round(100.0 * self.cached_after / self.prompt_after, 2) if self.prompt_after > 0 else None

    @property
    def cache_loss(self) -> bool:
        """Compression raised the bill: the cache-adjusted saving is negative."""
        return self.saved_usd is not None and self.saved_usd < 0

    @property
    def saving_pct(self) -> float:
        if self.tokens_before <= 0:
            return 0.0
        return round(100.0 * (self.tokens_before - self.tokens_after) / self.tokens_before, 2)

    def as_dict(self) -> dict[str, Any]:
        return {
            **dict(self.keys),
            "requests": self.requests,
            "tokens_before": self.tokens_before,
            "tokens_after": self.tokens_after,
            "saving_pct": self.saving_pct,
            "cost_before_usd": self.cost_before_usd,
            "cost_after_usd": self.cost_after_usd,
            "saved_usd": self.saved_usd,
            "fail_open": self.fail_open,
            "price_missing": self.price_missing,
            "cached_share_before": self.cached_share_before,
            "cached_share_after": self.cached_share_after,
            "cache_loss": self.cache_loss,
            "expansions": self.expansions,
            "expanded_bytes": self.expanded_bytes,
            "expansion_cost_usd": round(self.expansion_cost_usd, _USD_DIGITS),
        }


def cache_tokens(record: dict[str, Any]) -> tuple[int, int, int, int]:
    """``(prompt before, prompt after, cached before, cached after)`` of one record.

    Records written before the cache model count their reported cached tokens on both sides.
    """
    usage = record.get("usage") or {}
    after = usage.get("prompt_tokens") or 0
    cached = record.get("cached_tokens", usage.get("cached_tokens")) or 0
    before = record.get("prompt_tokens_before_est")
    cached_before = record.get("cached_tokens_before_est")
    return (
        after if before is None else before,
        after,
        cached if cached_before is None else cached_before,
        cached,
    )


def usd(total: float, priced: int) -> float | None:
    """A dollar sum for a report: None when no request in the group had a cost."""
    return round(total, _USD_DIGITS) if priced else None


def row_of(keys: tuple[tuple[str, str | None], ...], totals: Sequence[Any]) -> Row:
    """The row of a group from its :data:`Totals` (as :meth:`Sums.totals` gives or SQL sums them)."""
    priced = int(totals[6])
    return Row(
        keys=keys,
        requests=int(totals[0]),
        tokens_before=int(totals[1]),
        tokens_after=int(totals[2]),
        cost_before_usd=usd(totals[3], priced),
        cost_after_usd=usd(totals[4], priced),
        saved_usd=usd(totals[5], priced),
        fail_open=int(totals[7]),
        price_missing=int(totals[8]),
        prompt_before=int(totals[9]),
        prompt_after=int(totals[10]),
        cached_before=int(totals[11]),
        cached_after=int(totals[12]),
        expansions=int(totals[13]) if len(totals) > 13 else 0,
        expanded_bytes=int(totals[14]) if len(totals) > 14 else 0,
        expansion_cost_usd=float(totals[15]) if len(totals) > 15 else 0.0,
    )


class _ExactSum:
    """A running float sum rounded once, as ``math.fsum`` of every value added (Shewchuk's partials)."""

    __slots__ = ("partials",)

    def __init__(self) -> None:
        self.partials: list[float] = []

    def add(self, x: float) -> None:
        kept = 0
        for y in self.partials:
            if abs(x) < abs(y):
                x, y = y, x
            high = x + y
            low = y - (high - x)
            if low:
                self.partials[kept] = low
                kept += 1
            x = high
        del self.partials[kept:]
        self.partials.append(x)

    def value(self) -> float:
        return math.fsum(self.partials)


class Sums:
    """The running totals of one group of audit records."""

    __slots__ = (
        "after",
        "before",
        "cached",
        "cost_after",
        "cost_before",
        "expanded_bytes",
        "expansion_cost",
        "expansions",
        "fail_open",
        "priced",
        "requests",
        "saved",
        "unpriced",
    )

    def __init__(self) -> None:
        self.requests = self.before = self.after = self.fail_open = self.unpriced = self.priced = 0
        self.cost_before = _ExactSum()
        self.cost_after = _ExactSum()
        self.saved = _ExactSum()
        self.cached = [0, 0, 0, 0]  # prompt before, prompt after, cached before, cached after
        self.expansions = self.expanded_bytes = 0  # the tool loop's expansions, bytes they returned
        self.expansion_cost = _ExactSum()  # dollars of its extra upstream calls

    def add(self, record: dict[str, Any]) -> None:
        self.requests += 1
        self.before += record.get("tokens_before") or 0
        self.after += record.get("tokens_after") or 0
        self.fail_open += record.get("fail_open") is not None
        self.unpriced += record.get("price_missing") is True
        after = record.get("cost_after_usd")
        if after is not None:
            self.priced += 1
            self.cost_before.add(record.get("cost_before_usd") or 0.0)
            self.cost_after.add(after)
            self.saved.add(record.get("saved_usd") or 0.0)
            for i, value in enumerate(cache_tokens(record)):
                self.cached[i] += value
        self.expansions += record.get("expansions") or 0
        self.expanded_bytes += record.get("expanded_bytes") or 0
        self.expansion_cost.add(record.get("expansion_cost_usd") or 0.0)

    def totals(self) -> Totals:
        return (
            self.requests,
            self.before,
            self.after,
            self.cost_before.value(),
            self.cost_after.value(),
            self.saved.value(),
            self.priced,
            self.fail_open,
            self.unpriced,
            self.cached[0],
            self.cached[1],
            self.cached[2],
            self.cached[3],
            self.expansions,
            self.expanded_bytes,
            self.expansion_cost.value(),
        )

    def row(self, keys: tuple[tuple[str, str | None], ...]) -> Row:
        return row_of(keys, self.totals())
