"""Prices come from litellm's bundled cost map, looked up exactly; unknown models get no price."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.audit.pricing import PriceBook, PricingError, costs_for


@pytest.fixture(scope="module")
def cost_map() -> dict[str, Any]:
    spec = importlib.util.find_spec("litellm")
    assert spec is not None and spec.submodule_search_locations
    folder = Path(next(iter(spec.submodule_search_locations)))
    return orjson.loads((folder / "model_prices_and_context_window_backup.json").read_bytes())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook()


def test_exact_dated_and_provider_prefixed_names(book: PriceBook, cost_map: dict[str, Any]) -> None:
    gpt4o = cost_map["gpt-4o"]
    for name in ("gpt-4o", "openai/gpt-4o"):
        price = book.price_for(name)
        assert price is not None and price.key == "gpt-4o"
        assert price.input == gpt4o["input_cost_per_token"] and price.output == gpt4o["output_cost_per_token"]
        assert price.cached_input == gpt4o["cache_read_input_token_cost"]
    dated = book.price_for("gpt-4o-2024-08-06")
    assert dated is not None and dated.key == "gpt-4o-2024-08-06"  # its own entry, not the alias's
    # A snapshot the map does not list falls back to its undated entry, which exists.
    future = book.price_for("gpt-4o-2031-01-01")
    assert future is not None and future.key == "gpt-4o"


def test_unknown_names_are_never_guessed(book: PriceBook) -> None:
    for name in ("acme-llm-7", "gpt-4o-turbo-ultra", "gpt-4o-custom", "anthropic/gpt-4o", None, ""):
        assert book.price_for(name) is None
    costs = costs_for(book.price_for("acme-llm-7"), {"prompt_tokens": 10}, prompt_delta=5)
    assert costs.price_missing and costs.before_usd is None and costs.after_usd is None


def test_costs_with_cached_tokens_match_hand_computation(book: PriceBook, cost_map: dict[str, Any]) -> None:
    entry = cost_map["gpt-4o-mini"]
    usage: dict[str, int | None] = {
        "prompt_tokens": 12_000,
        "completion_tokens": 800,
        "cached_tokens": 4_096,
        "reasoning_tokens": 300,  # part of completion_tokens: not billed twice
    }
    costs = costs_for(book.price_for("gpt-4o-mini"), usage, prompt_delta=3_000)
    p_in, p_out, p_cached = (
        entry["input_cost_per_token"],
        entry["output_cost_per_token"],
        entry["cache_read_input_token_cost"],
    )
    after = (12_000 - 4_096) * p_in + 4_096 * p_cached + 800 * p_out
    before = (15_000 - 4_096) * p_in + 4_096 * p_cached + 800 * p_out
    assert costs.after_usd == pytest.approx(after, abs=1e-10)
    assert costs.before_usd == pytest.approx(before, abs=1e-10)
    assert costs.saved_usd == pytest.approx(3_000 * p_in, abs=1e-10)
    assert not costs.price_missing


def test_no_usage_means_no_costs(book: PriceBook) -> None:
    costs = costs_for(book.price_for("gpt-4o"), None, prompt_delta=0)
    assert (costs.before_usd, costs.after_usd, costs.price_missing) == (None, None, False)


def test_model_without_a_cached_price_bills_cached_tokens_at_the_input_price(tmp_path: Path) -> None:
    cost_file = tmp_path / "map.json"
    cost_file.write_bytes(orjson.dumps({"m": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6}}))
    book = PriceBook(map_path=cost_file)
    costs = costs_for(book.price_for("m"), {"prompt_tokens": 100, "cached_tokens": 50}, prompt_delta=0)
    assert costs.after_usd == pytest.approx(100 * 1e-6)
    assert book.source == str(cost_file)


def test_unreadable_cost_map_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PricingError, match="cannot read the model cost map"):
        PriceBook(map_path=tmp_path / "missing.json").price_for("gpt-4o")
