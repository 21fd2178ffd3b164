"""History compaction's decision (proxy/policy/compaction.py) on small histories built from real files.

Each tool output is a real file of this repository as ``cat`` prints it; the assistant's words and
calls point at names in them, as an agent's do. The prices are litellm's (gpt-5: cached input at
10%; claude-sonnet-4-5: reads 0.1x, writes 1.25x / 2x).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import httpx
import pytest

from compressors.markers import find_markers
from compressors.tokenizer import tokenizer_for
from proxy.audit.pricing import PriceBook
from proxy.policy.compaction import CacheTerms, Entry, Knobs, decide, pointers_in, stub_for

REPO = Path(__file__).resolve().parents[2]
COUNT = tokenizer_for("gpt-5").count
MARKER = re.compile(
    r'^\[(\d+) lines like "[^"\n]*" omitted; lines=([\d,-]+); kinds=([^;\]\n]*)(?:; hash=([0-9a-f]{24}))?\]$'
)
# A public code base as installed (httpx's sources): stable, unlike this repository's own files.
# Every output of a history is the same file read again (a re-run `cat`), so the economics below
# depend on the number of outputs only: n outputs of one size, one a turn.
HTTPX = Path(httpx.__file__).resolve().parent
FILE = "httpx/_urls.py"
PRICES = PriceBook()


def history(outputs: int, *, cached_upto: int | None = None) -> list[Entry]:
    """system, task, then per turn: the assistant's call (``cat``), the output, and the
    assistant's next words naming a function of it (what later turns point at)."""
    entries = [
        Entry("sys", "system", "You are a coding agent.", 8, -1, True),
        Entry("task", "user", "Find why relative URLs lose their query.", 12, 0, True),
    ]
    text = (HTTPX.parent / FILE).read_text(encoding="utf-8")
    names = re.findall(r"^    def (\w+)", text, re.M)
    for i in range(outputs):
        words = f"The method {names[i % len(names)]} looks relevant."
        message, cached = 2 + 2 * i, cached_upto is None or i < cached_upto
        call = f'bash {{"command": "cat {FILE}"}}'
        entries.append(Entry(f"out{i}", "tool", text, COUNT(text), message, cached, True, call, turn=i + 1))
        entries.append(Entry(f"say{i}", "assistant", words, COUNT(words), message + 1, cached, turn=i + 1))
    return entries


def gpt5(*, warm: bool = True) -> CacheTerms:
    price = PRICES.price_for("gpt-5")
    assert price is not None
    return CacheTerms.prefix(price, warm=warm)


def test_a_stub_keeps_the_lines_later_turns_point_at_byte_identical_and_one_marker() -> None:
    text = (REPO / "proxy/audit/cache_rules.py").read_text(encoding="utf-8")
    later = pointers_in(["The bug is in anthropic_use: look at ANTHROPIC_LOOKBACK_BLOCKS and line 96."])
    ref = "0123456789abcdef01234567"
    stub = stub_for(
        text,
        tokens=COUNT(text),
        call='bash {"command": "cat cache_rules.py"}',
        pointers=later,
        ref=ref,
        max_lines=12,
    )
    first, *kept = stub.split("\n")
    (found,) = find_markers(stub)  # the product's one marker parser reads it
    assert found[2].ref == ref and found[2].unit == "lines"
    marker = MARKER.match(first)
    assert marker is not None, first
    assert marker.group(4) == ref
    assert "cat cache_rules.py" in marker.group(3) and f"{COUNT(text)} tokens" in marker.group(3)
    lines = text.split("\n")
    assert all(line in lines for line in kept)  # every kept line is a line of the original
    assert any("def anthropic_use(" in line for line in kept)
    assert any("ANTHROPIC_LOOKBACK_BLOCKS = 20" in line for line in kept)
    # lines= names exactly the omitted lines of the original (1-based)
    omitted = {
        n for a, b in (r.split("-") for r in marker.group(2).split(",")) for n in range(int(a), int(b) + 1)
    }
    assert int(marker.group(1)) == len(omitted) == len(lines) - len(kept)
    assert {lines[n - 1] for n in range(1, len(lines) + 1) if n not in omitted} == set(kept)
    assert COUNT(stub) * 5 < COUNT(text)


def test_nothing_is_compacted_while_the_cache_would_lose_more_than_the_turns_left_can_repay() -> None:
    entries = history(8)
    early = decide(entries, Knobs(keep_last=2, keep_tokens=500), gpt5(), turns=2, count=COUNT)
    assert early.stubs == {} and early.reason == "below break-even"
    assert early.horizon * early.saving_per_turn_usd <= 1.5 * early.cost_usd  # even removed whole
    later = decide(entries, Knobs(keep_last=2, keep_tokens=500), gpt5(), turns=30, count=COUNT)
    assert later.reason == "break-even" and later.stubs
    assert later.horizon * later.saving_per_turn_usd > 1.5 * later.cost_usd


def test_the_newest_outputs_and_tokens_always_stay_as_they_are() -> None:
    entries = history(10)
    decision = decide(entries, Knobs(keep_last=4, keep_tokens=3000), gpt5(warm=False), turns=10, count=COUNT)
    assert decision.reason == "cache cold"
    outputs = [e for e in entries if e.role == "tool"]
    assert not set(decision.stubs) & {e.key for e in outputs[-4:]}
    tail = 0
    for entry in reversed(entries):
        if entry.key in decision.stubs:
            assert tail >= 3000
        tail += entry.tokens
    # cold: every other old output at once
    assert set(decision.stubs) == {e.key for e in outputs[:-4] if e.tokens >= 200}


def test_a_cold_cache_compacts_at_once_even_when_a_warm_one_would_not() -> None:
    entries = history(8)
    knobs = Knobs(keep_last=2, keep_tokens=500)
    assert decide(entries, knobs, gpt5(), turns=2, count=COUNT).stubs == {}
    cold = decide(entries, knobs, gpt5(warm=False), turns=2, count=COUNT)
    assert cold.stubs and cold.cost_usd < 0


def test_anthropic_one_hour_writes_make_a_batch_wait_longer_than_five_minute_ones() -> None:
    price = PRICES.price_for("claude-sonnet-4-5")
    assert price is not None and price.cache_write_1h > price.cache_write_5m > price.input
    entries = history(10)
    knobs = Knobs(keep_last=2, keep_tokens=500)

    def first_turn(ttl: str) -> int:
        terms = CacheTerms.breakpoints(price, ttl, warm=True)
        return next(
            (t for t in range(1, 60) if decide(entries, knobs, terms, turns=t, count=COUNT).stubs), 10**6
        )

    assert first_turn("5m") < 60
    assert first_turn("1h") > first_turn("5m")
    no_breakpoint = CacheTerms.breakpoints(price, None, warm=True)
    assert decide(entries, knobs, no_breakpoint, turns=1, count=COUNT).reason == "cache cold"


def test_a_change_only_among_new_parts_costs_nothing() -> None:
    entries = history(8, cached_upto=0)  # nothing was in the previous request
    decision = decide(entries, Knobs(keep_last=2, keep_tokens=500), gpt5(), turns=1, count=COUNT)
    assert decision.stubs and decision.cost_usd < 0


@pytest.mark.parametrize("knobs", [Knobs(keep_last=10), Knobs(keep_tokens=10**7), Knobs(min_tokens=10**6)])
def test_nothing_old_enough_means_no_batch(knobs: Knobs) -> None:
    assert decide(history(10), knobs, gpt5(warm=False), turns=50, count=COUNT).stubs == {}


def test_a_change_the_cache_cannot_read_past_costs_everything_after_the_last_reachable_prefix() -> None:
    price = PRICES.price_for("claude-sonnet-4-5")
    assert price is not None
    terms = CacheTerms.breakpoints(price, "5m", warm=True)
    entries, knobs = history(10), Knobs(keep_last=2, keep_tokens=500)
    near = decide(entries, knobs, terms, turns=40, count=COUNT)
    far = decide(entries, knobs, terms, turns=40, count=COUNT, resent_from=lambda first: 0)
    assert near.stubs == far.stubs and far.cost_usd > near.cost_usd
    lost = sum(e.tokens for e in entries)
    assert far.cost_usd == pytest.approx(
        (
            lost
            - sum(
                entries[i].tokens - far.stubs[e.key][1] for i, e in enumerate(entries) if e.key in far.stubs
            )
        )
        * price.cache_write_5m
        - lost * price.cached_input
    )


def test_what_is_resent_besides_the_texts_counts_in_a_batchs_cost() -> None:
    """Framing and tool calls after the first change are re-written too: left out, the cost looked
    a third smaller than the provider bills it on the SWE-agent traces."""
    price = PRICES.price_for("claude-sonnet-4-5")
    assert price is not None
    terms, knobs = CacheTerms.breakpoints(price, "5m", warm=True), Knobs(keep_last=2, keep_tokens=500)
    bare = decide(history(10), knobs, terms, turns=40, count=COUNT)
    framed = [dataclasses.replace(e, extra=300) for e in history(10)]
    with_framing = decide(framed, knobs, terms, turns=40, count=COUNT)
    resent = sum(e.extra for e in framed[min(i for i, e in enumerate(framed) if e.key in bare.stubs) :])
    assert with_framing.cost_usd == pytest.approx(
        bare.cost_usd + resent * (price.cache_write_5m - price.cached_input)
    )


def test_a_batch_waits_until_the_saving_waiting_outweighs_another_rewrite() -> None:
    price = PRICES.price_for("claude-sonnet-4-5")
    assert price is not None
    terms, knobs = CacheTerms.breakpoints(price, "5m", warm=True), Knobs(keep_last=2, keep_tokens=500)
    # Five old outputs, one a turn: compacting them now, and again as each next one ages, costs
    # more rewrites than the reads saved by not waiting (sqrt(2 * cost / growth) > 5 turns).
    small = decide(history(7), knobs, terms, turns=40, count=COUNT)
    assert small.reason == "waiting for a bigger batch" and not small.stubs
    assert small.saving_per_turn_usd**2 < 2 * small.cost_usd * small.saving_per_turn_usd / 5
    assert decide(history(10), knobs, terms, turns=40, count=COUNT).reason == "break-even"


def test_a_read_run_again_later_keeps_no_line_whatever_later_turns_point_at() -> None:
    """The later read carries what the earlier one said (a file read again, a grep re-run): the
    earlier one's stub is its marker alone; a read that is not repeated keeps the lines pointed at."""
    urls = (HTTPX / "_urls.py").read_text(encoding="utf-8")
    models = (HTTPX / "_models.py").read_text(encoding="utf-8")
    reads = [("httpx/_urls.py", urls), ("httpx/_models.py", models), ("httpx/_urls.py", urls)]
    entries = [Entry("task", "user", "Find why relative URLs lose their query.", 12, 0, True)]
    for i, (path, text) in enumerate(reads):
        call = f'bash {{"command": "cat {path}"}}'
        entries.append(Entry(f"out{i}", "tool", text, COUNT(text), 1 + 2 * i, True, True, call, turn=i + 1))
        words = "copy_merge_params and _get_content_decoder look relevant."
        entries.append(Entry(f"say{i}", "assistant", words, COUNT(words), 2 + 2 * i, True, turn=i + 1))
    decision = decide(entries, Knobs(keep_last=1, keep_tokens=0), gpt5(warm=False), turns=3, count=COUNT)
    again, other = decision.stubs["out0"][0], decision.stubs["out1"][0]
    assert "copy_merge_params" in urls  # later turns point into it...
    assert again.count("\n") == 0 and "run again later" in again  # ...yet its stub is the marker alone
    assert "    def _get_content_decoder(self) -> ContentDecoder:" in other.split("\n")
    assert "run again later" not in other
    assert "out2" not in decision.stubs  # the newest read stays whole
