"""Dollar costs from litellm's model cost map, read from the copy bundled in the package.

litellm fetches the map from GitHub on import unless ``LITELLM_LOCAL_MODEL_COST_MAP``
is set, which stalls start-up without network, and importing litellm takes
seconds. We need only its JSON, so we locate the package with importlib (no
import) and read ``model_prices_and_context_window_backup.json`` once, lazily.

Lookups are exact: a model name maps to a price only when the map holds that
name, the name without a provider prefix the map attributes to that provider,
or the name without a date suffix when that shorter key exists. Anything else
is "price missing", never a guess.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from cachetools import LRUCache

__all__ = [
    "Costs",
    "Price",
    "PriceBook",
    "PricingError",
    "anthropic_cost_usd",
    "costs_for",
    "request_cost_usd",
]

_MAP_FILE = "model_prices_and_context_window_backup.json"
# Snapshot suffixes names carry: -2024-08-06, -0613, -1106 (OpenAI), -20250929 (Anthropic).
_DATE_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$")
_DIGITS = 10  # dollars rounded to 1e-10: whole-token prices are >= 1e-9, float noise is not


class PricingError(RuntimeError):
    """The bundled cost map could not be found or read."""


@dataclass(frozen=True, slots=True)
class Price:
    key: str  # the cost-map entry the model resolved to
    input: float  # dollars per prompt token
    output: float  # dollars per completion token
    cached_input: float  # dollars per cached prompt token (the input price when the map has none)
    # Anthropic cache writes, per token: 5-minute and 1-hour TTL (the input price when the map has none).
    cache_write_5m: float = 0.0
    cache_write_1h: float = 0.0


@dataclass(frozen=True, slots=True)
class Costs:
    before_usd: float | None
    after_usd: float | None
    saved_usd: float | None
    price_missing: bool


def _litellm_dir() -> Path:
    spec = importlib.util.find_spec("litellm")
    if spec is None or not spec.submodule_search_locations:
        raise PricingError("litellm is not installed: no model cost map")
    return Path(next(iter(spec.submodule_search_locations)))


def _price_of(key: str, entry: dict[str, Any]) -> Price | None:
    given_in, given_out = entry.get("input_cost_per_token"), entry.get("output_cost_per_token")
    if not isinstance(given_in, (int, float)) or not isinstance(given_out, (int, float)):
        return None

    def per_token(name: str, default: float) -> float:
        value = entry.get(name)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default

    write_5m = per_token("cache_creation_input_token_cost", float(given_in))
    return Price(
        key=key,
        input=float(given_in),
        output=float(given_out),
        cached_input=per_token("cache_read_input_token_cost", float(given_in)),
        cache_write_5m=write_5m,
        cache_write_1h=per_token("cache_creation_input_token_cost_above_1hr", write_5m),
    )


class PriceBook:
    """Model name -> :class:`Price`, from a cost map loaded on first use (thread-safe)."""

    def __init__(self, *, map_path: Path | None = None) -> None:
        self._map_path = map_path
        self._lock = threading.Lock()
        self._entries: dict[str, dict[str, Any]] | None = None
        # Model names come from clients: the cache is bounded.
        self._resolved: LRUCache[str, Price | None] = LRUCache(maxsize=10_000)
        self._source: str | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        entries = self._entries
        if entries is not None:
            return entries
        with self._lock:
            if self._entries is None:
                path = self._map_path or _litellm_dir() / _MAP_FILE
                try:
                    raw = orjson.loads(path.read_bytes())
                except (OSError, orjson.JSONDecodeError) as exc:
                    raise PricingError(f"cannot read the model cost map {path}: {exc}") from exc
                self._entries = {k: v for k, v in raw.items() if isinstance(v, dict)}
            return self._entries

    @property
    def source(self) -> str:
        """``"litellm <version>"``: which cost map the prices came from."""
        if self._source is None:
            try:
                version = importlib.metadata.version("litellm")
            except importlib.metadata.PackageNotFoundError:
                version = "unknown"
            self._source = f"litellm {version}" if self._map_path is None else str(self._map_path)
        return self._source

    def price_for(self, model: str | None) -> Price | None:
        if not model:
            return None
        with self._lock:  # a read reorders an LRU cache too
            if model in self._resolved:
                return self._resolved[model]
        price = self._resolve(model)
        with self._lock:
            self._resolved[model] = price
        return price

    def _resolve(self, model: str) -> Price | None:
        entries = self._load()
        for key in self._candidates(model, entries):
            price = _price_of(key, entries[key])
            if price is not None:
                return price
        return None

    @staticmethod
    def _candidates(model: str, entries: dict[str, dict[str, Any]]) -> list[str]:
        names = [model]
        provider, sep, bare = model.partition("/")
        # "openai/gpt-4o" is litellm's spelling; the map keys OpenAI models bare.
        if sep and bare in entries and entries[bare].get("litellm_provider") == provider:
            names.append(bare)
        for name in list(names):
            undated = _DATE_SUFFIX.sub("", name)
            if undated != name:
                names.append(undated)
        return [name for name in names if name in entries]


def request_cost_usd(
    price: Price,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int,
    written_tokens: int = 0,
    written_1h_tokens: int = 0,
) -> float:
    """What the upstream bills. Reasoning tokens are part of completion tokens, so not added.

    ``written_tokens`` (Anthropic's cache writes, of which ``written_1h_tokens`` with a 1-hour TTL)
    are part of the prompt tokens, like ``cached_tokens``.
    """
    prompt = max(prompt_tokens, 0)
    cached = min(max(cached_tokens, 0), prompt)
    written = min(max(written_tokens, 0), prompt - cached)
    written_1h = min(max(written_1h_tokens, 0), written)
    uncached = prompt - cached - written
    return (
        uncached * price.input
        + cached * price.cached_input
        + (written - written_1h) * price.cache_write_5m
        + written_1h * price.cache_write_1h
        + max(completion_tokens, 0) * price.output
    )


def anthropic_cost_usd(price: Price, usage: dict[str, int | None], *, extra_input: int = 0) -> float:
    """What Anthropic bills for a normalised usage (see :func:`proxy.apis.messages.anthropic_usage`):
    uncached input, cache writes at the 5-minute and 1-hour prices, cache reads, output;
    ``extra_input`` more tokens at the input price."""
    fresh = max((usage.get("input_tokens") or 0) + extra_input, 0)
    return (
        fresh * price.input
        + max(usage.get("cache_write_5m_tokens") or 0, 0) * price.cache_write_5m
        + max(usage.get("cache_write_1h_tokens") or 0, 0) * price.cache_write_1h
        + max(usage.get("cached_tokens") or 0, 0) * price.cached_input
        + max(usage.get("completion_tokens") or 0, 0) * price.output
    )


def costs_for(
    price: Price | None,
    usage: dict[str, int | None] | None,
    *,
    prompt_delta: int,
    cached_before: int | None = None,
    written_before: dict[str, int] | None = None,
) -> Costs:
    """Costs of a request from its normalised usage.

    ``prompt_delta`` is how many prompt tokens compression removed from what was
    forwarded; the uncompressed request is priced with that many more prompt tokens
    and ``cached_before`` cached tokens (``written_before`` cache writes by TTL): the
    cache model's estimate (:mod:`proxy.audit.cache_model`). Without an estimate it
    assumes the cache use the upstream reported. No usage: no costs. A compression
    that raised the bill has a negative ``saved_usd``.
    """
    if price is None:
        return Costs(None, None, None, price_missing=True)
    if not usage or usage.get("prompt_tokens") is None:
        return Costs(None, None, None, price_missing=False)
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    cached = usage.get("cached_tokens") or 0
    written, written_1h = usage.get("cache_write_tokens") or 0, usage.get("cache_write_1h_tokens") or 0
    if "cache_write_tokens" in usage:  # Anthropic: writes priced by TTL
        after = anthropic_cost_usd(price, usage)
    else:
        after = request_cost_usd(
            price, prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached
        )
    if written_before is not None:
        written, written_1h = sum(written_before.values()), written_before.get("1h", 0)
    before = request_cost_usd(
        price,
        prompt_tokens=prompt + prompt_delta,
        completion_tokens=completion,
        cached_tokens=cached if cached_before is None else cached_before,
        written_tokens=written,
        written_1h_tokens=written_1h,
    )
    return Costs(
        before_usd=round(before, _DIGITS),
        after_usd=round(after, _DIGITS),
        saved_usd=round(before - after, _DIGITS),
        price_missing=False,
    )
