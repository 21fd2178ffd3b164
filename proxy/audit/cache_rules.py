"""Providers' prompt-cache rules as pure functions: what a provider would bill as cached.

OpenAI (automatic): a prompt of at least 1,024 tokens is cached in 128-token steps from its
start; a later prompt reads the longest cached prefix, rounded down to a step. Entries live
5-10 minutes after their last use: we keep them 10 minutes (refreshed on every use), since the
calibration against the upstream's reported tokens corrects a model that expects too many hits,
never one that expects too few.

Anthropic (explicit): the client marks ``cache_control`` breakpoints; the prefix up to each
breakpoint is written (1.25x the input price, 2x with ``"ttl": "1h"``) and read back at 0.1x.
A read looks for the longest written prefix ending at a block boundary up to 20 blocks before
each breakpoint. Prefixes shorter than the model's minimum are not cached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ANTHROPIC_LOOKBACK_BLOCKS",
    "ANTHROPIC_READ_MULTIPLIER",
    "ANTHROPIC_TTL_S",
    "ANTHROPIC_WRITE_MULTIPLIER",
    "OPENAI_MIN_TOKENS",
    "OPENAI_STEP",
    "OPENAI_TTL_S",
    "AnthropicUse",
    "anthropic_min_tokens",
    "anthropic_use",
    "calibrate",
    "lookback",
    "openai_cached",
]

OPENAI_MIN_TOKENS = 1024
OPENAI_STEP = 128
OPENAI_TTL_S = 600.0
ANTHROPIC_TTL_S = {"5m": 300.0, "1h": 3600.0}
ANTHROPIC_WRITE_MULTIPLIER = {"5m": 1.25, "1h": 2.0}
ANTHROPIC_READ_MULTIPLIER = 0.1
ANTHROPIC_LOOKBACK_BLOCKS = 20


def openai_cached(matched: int, *, min_tokens: int = OPENAI_MIN_TOKENS, step: int = OPENAI_STEP) -> int:
    """Cached tokens for a prompt whose first ``matched`` tokens are in the cache."""
    if matched < min_tokens:
        return 0
    return matched // step * step


def anthropic_min_tokens(model: str | None) -> int:
    """The shortest cacheable prefix: 2,048 tokens for Haiku models, 1,024 for the others."""
    return 2048 if model and "haiku" in model.lower() else 1024


@dataclass(frozen=True, slots=True)
class AnthropicUse:
    read: int  # cache_read_input_tokens
    written: dict[str, int]  # cache_creation tokens by TTL ("5m", "1h")
    stored: tuple[int, ...]  # block indexes whose prefix is written (or refreshed) in the cache

    @property
    def write_total(self) -> int:
        return sum(self.written.values())


def anthropic_use(
    ends: Sequence[int],
    breakpoints: Sequence[tuple[int, str]],
    hit: int | None,
    *,
    min_tokens: int,
) -> AnthropicUse:
    """What one request reads and writes.

    ``ends[i]`` is the prompt's token count up to and including block ``i``; ``breakpoints``
    are ``(block index, ttl)`` in order; ``hit`` is the longest block index whose prefix was
    found in the cache (within the lookback of some breakpoint), or None.
    """
    read = ends[hit] if hit is not None else 0
    written: dict[str, int] = {}
    stored: list[int] = [hit] if hit is not None else []
    done = read
    for block, ttl in breakpoints:
        if ends[block] < min_tokens or (hit is not None and block <= hit):
            continue
        written[ttl] = written.get(ttl, 0) + ends[block] - done
        done = ends[block]
        stored.append(block)
    return AnthropicUse(read=read, written=written, stored=tuple(stored))


def lookback(breakpoints: Sequence[tuple[int, str]]) -> list[int]:
    """Block indexes where a read may hit, longest first."""
    found: set[int] = set()
    for block, _ in breakpoints:
        found.update(range(max(0, block - ANTHROPIC_LOOKBACK_BLOCKS), block + 1))
    return sorted(found, reverse=True)


def calibrate(simulated_before: int, simulated_after: int, reported_after: int) -> int:
    """The uncompressed request's cached tokens, from the model's two runs and the upstream's report.

    Where the upstream cached less than the model expected for what was forwarded (a TTL expiry,
    an eviction, a routing miss), the counterfactual is scaled by the same ratio; where it cached
    more (token boundaries the model does not see), the excess is added. When nothing was
    compressed both runs agree and the result is what the upstream reported.
    """
    if simulated_after <= 0:
        return max(simulated_before, reported_after)
    if reported_after >= simulated_after:
        return simulated_before + reported_after - simulated_after
    return round(simulated_before * reported_after / simulated_after)
