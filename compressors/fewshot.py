"""The coarse step of few-shot compression: keep or drop whole demonstrations (LLMLingua's budget controller).

At 20x, pruning words evenly leaves every example a fragment. Instead the examples
(:func:`compressors.templates.demonstrations`) are ranked by BM25 against the question and
kept whole, best first, while the words the fine step will keep of them (``inner``: the
share a token pruning leaves readable) still fit the budget; at least one is kept. The
block that holds the question is never a candidate. Dropped examples leave nothing behind,
not even their blank line; the fine step then prunes words inside the kept ones, whose
template lines it keeps whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from compressors.base import Decision
from compressors.bm25 import bm25_scores
from compressors.templates import demonstrations
from compressors.tokenizer import Tokenizer

__all__ = ["Selection", "select_demonstrations"]


@dataclass(frozen=True, slots=True)
class Selection:
    """The text with only the kept demonstrations, and one decision per demonstration."""

    text: str
    decisions: tuple[Decision, ...]
    kept: int
    total: int


def select_demonstrations(
    text: str, query: str | None, budget: int, tokenizer: Tokenizer, *, inner: float
) -> Selection | None:
    """Drop the demonstrations that do not fit ``budget`` at ``inner`` of their tokens; None if
    the text has fewer than two demonstrations besides the question's block."""
    found = demonstrations(text)
    asked = text.rfind(query.strip()) if query and query.strip() else -1
    candidates = [d for d in found if not d.start <= asked < d.end]
    if len(candidates) < 2:
        return None
    blocks = [text[d.start : d.end] for d in candidates]
    counts = tokenizer.count_many([text, *blocks])
    costs = counts[1:]
    fixed = counts[0] - sum(costs)
    relevance = bm25_scores(query or "", blocks)
    ranking = sorted(range(len(candidates)), key=lambda i: (-relevance[i], costs[i], i))
    room = budget - fixed
    kept: list[int] = []
    used = 0.0
    for i in ranking:
        if not kept or used + costs[i] * inner <= room:
            kept.append(i)
            used += costs[i] * inner
    if len(kept) == 1 and costs[kept[0]] * inner > room:
        # Nothing fits: the cheapest demonstration is the one that can come closest.
        kept = [min(range(len(candidates)), key=lambda i: (costs[i], -relevance[i], i))]
    dropped = sorted(set(range(len(candidates))) - set(kept), key=lambda i: candidates[i].start)
    pieces: list[str] = []
    cursor = 0
    for i in dropped:
        start, end = candidates[i].start, candidates[i].end
        # The block and the blank line after it (before it, for the text's last block).
        end = len(text) - len(text[end:].lstrip()) if text[end:].strip() else len(text)
        if end == len(text):
            start = len(text[:start].rstrip())
        pieces.append(text[cursor:start])
        cursor = end
    pieces.append(text[cursor:])
    decisions = tuple(
        Decision(
            index=i,
            kind="demonstration",
            tokens=costs[i],
            kept=i in kept,
            score=round(relevance[i], 6),
            reason=f"rank {ranking.index(i) + 1}",
            preview=blocks[i][:40],
        )
        for i in range(len(candidates))
    )
    return Selection("".join(pieces), decisions, len(kept), len(candidates))
