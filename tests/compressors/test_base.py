"""Compressor.compress: inline tag regions, error containment, thread safety."""

from __future__ import annotations

import threading

import pytest

from compressors import CompressorError, OptionsError, Target, create, tokenizer_for
from compressors.base import Ask, Compressed, Compressor

LINES = "\n".join(f"filler line {i} about nothing in particular at all" for i in range(120))


def test_keep_region_survives_verbatim_and_tags_are_removed() -> None:
    secret = "KEEP   THIS    exact  text, 42 tokens or so, untouched"
    text = LINES + "\n<keep>" + secret + "</keep>\n" + LINES
    result = create("truncate", {"mode": "head"}).compress(text, target=Target(rate=0.3), model="gpt-4o")
    assert secret in result.text
    assert "<keep>" not in result.text and "</keep>" not in result.text
    assert result.tokens_after == tokenizer_for("gpt-4o").count(result.text)
    assert result.target_met and result.tokens_after <= result.target_tokens * 1.05  # type: ignore[operator]


def test_rate_region_compressed_at_its_own_rate() -> None:
    text = "intro\n<llmlingua, rate=0.2>" + LINES + "</llmlingua>\n<keep>tail part</keep>"
    result = create("truncate").compress(text, target=Target(rate=1.0))
    tokenizer = tokenizer_for(None)
    inner = tokenizer.count(LINES)
    body = result.text.removeprefix("intro\n").removesuffix("\ntail part")
    assert 0.15 * inner <= tokenizer.count(body) <= 0.25 * inner
    assert result.text.startswith("intro\n") and result.text.endswith("\ntail part")


def test_plain_regions_share_what_is_left() -> None:
    text = LINES + "<keep>middle</keep>" + LINES
    result = create("truncate").compress(text, target=Target(rate=0.5))
    first, second = result.text.split("middle")
    tokenizer = tokenizer_for(None)
    assert abs(tokenizer.count(first) - tokenizer.count(second)) < 0.1 * result.tokens_after
    assert result.target_met


def test_keep_regions_larger_than_the_budget_are_reported() -> None:
    text = "<keep>" + LINES + "</keep>" + "\n" + LINES
    result = create("truncate").compress(text, target=Target(rate=0.3))
    assert LINES in result.text
    assert not result.target_met
    assert "keep" in result.note


def test_decision_indices_continue_across_regions() -> None:
    # region 1: lines 0-4 (dropped from line 1); the keep region; region 2: dropped from its line 2
    text = "a\n" * 4 + "<keep>kept</keep>\n" + "z\n" * 4
    result = create("normalize").compress(text, target=Target(rate=1.0))
    kinds = [(d.index, d.kind) for d in result.decisions]
    assert kinds == [(1, "lines"), (2, "keep-tag"), (3 + 2, "lines")]


def test_no_tags_takes_the_direct_path() -> None:
    calls: list[str] = []

    class Echo(Compressor):
        name = "echo"

        def _compress(self, text: str, ask: Ask) -> Compressed:
            calls.append(text)
            n = ask.tokenizer.count(text)
            return Compressed(text, n, n, self.name, ask.target.budget(n))

    Echo().compress("no tags <here> at all", target=Target(rate=1.0))
    Echo().compress("x <keep>k</keep> y", target=Target(rate=1.0))
    assert calls == ["no tags <here> at all", "x ", " y"]


def test_failures_are_contained_as_compressor_errors() -> None:
    class Broken(Compressor):
        name = "broken"

        def _compress(self, text: str, ask: Ask) -> Compressed:
            raise KeyError("boom")

    with pytest.raises(CompressorError, match="broken: KeyError"):
        Broken().compress("text", target=Target(rate=0.5))


def test_options_validated_at_construction() -> None:
    with pytest.raises(OptionsError, match="unknown option"):
        create("truncate", {"nope": 1})
    with pytest.raises(OptionsError):
        Target(rate=0.0)


def test_concurrent_calls_give_identical_results() -> None:
    text = LINES + "\n<keep>k</keep>\n" + LINES.replace("filler", "other   filler")
    compressors = [create("truncate", {"mode": "middle"}), create("normalize")]
    expected = [c.compress(text, target=Target(rate=0.4)).text for c in compressors]
    seen: list[list[str]] = []

    def work() -> None:
        for _ in range(5):
            seen.append([c.compress(text, target=Target(rate=0.4)).text for c in compressors])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [expected] * 20
