"""Where the relevance scorer looks: short windows inside units, and which of them to embed.

An embedding costs ~20 MFLOP per word-piece on CPU, a hundred times BM25's counting, so a
long prompt cannot be embedded whole inside a latency budget. Each unit is cut into
windows of a few sentences (a document's ``Document [i](Title: ...)`` header is not part
of them; its title is put in front of each window's embedded text, so a sentence keeps
its topic). A first stage ranks the windows by BM25 against the query, with the unit's
own BM25 score mixed in at a quarter, and only the best windows are embedded, up to a budget of
tokens that grows slowly with the input (:func:`embed_budget`). The windows double as
the pieces a tight budget keeps of a unit that does not fit whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from compressors.bm25 import bm25_scores
from compressors.units import Layout

__all__ = ["CHARS_PER_TOKEN", "Window", "embed_budget", "first_stage", "header_end", "split_windows"]

# English prose averages about four characters per token (o200k, MiniLM word-pieces alike);
# estimating from characters saves a tokenizer pass over windows that are never embedded.
CHARS_PER_TOKEN = 4.0
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\n+")
_SPACE = re.compile(r"\s")
# "Document [3](Title: Some title) text": the header ends at the first ") " after the title.
_DOC_HEADER = re.compile(r"Document \[\d+\]\(Title: ")
_UNIT_WEIGHT = 0.25  # the unit's BM25 beside the window's: a window's topic is its unit's


@dataclass(frozen=True, slots=True)
class Window:
    """A piece of unit ``unit``: ``text[start:end]``, embedded as ``context + text[start:end]``."""

    unit: int
    start: int
    end: int
    context: str  # "(Title: ...) " for a document's windows, else ""


def header_end(text: str, start: int, end: int) -> int:
    """Where a ``Document [i](Title: ...)`` header ends (after its space), or ``start`` if none."""
    match = _DOC_HEADER.match(text, start, end)
    if match is None:
        return start
    close = text.find(") ", match.end(), end)
    return start if close < 0 else close + 2


def split_windows(layout: Layout, *, max_chars: int) -> list[Window]:
    """Every unit's windows in text order: whole sentences, joined while under ``max_chars``.

    A sentence longer than ``max_chars`` is cut at spaces. JSON members and lines are one
    window each (cut the same way when long): their sentences are not prose.
    """
    text = layout.text
    prose = layout.kind in ("documents", "paragraphs", "sections", "sentences")
    result: list[Window] = []
    for index, (start, end) in enumerate(layout.spans):
        body = header_end(text, start, end) if layout.kind == "documents" else start
        context = ""
        if body > start:
            context = "(" + text[start:body].split("(", 1)[1].rstrip()
            context += " "
        pieces = _sentences(text, body, end) if prose else [(body, end)]
        for piece_start, piece_end in _grouped(text, pieces, max_chars):
            result.append(Window(index, piece_start, piece_end, context))
    return result


def _sentences(text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for match in _SENTENCE_END.finditer(text, start, end):
        if match.start() > start:
            spans.append((start, match.start()))
        start = match.end()
    if start < end:
        spans.append((start, end))
    return spans


def _grouped(text: str, pieces: Sequence[tuple[int, int]], max_chars: int) -> list[tuple[int, int]]:
    """Consecutive pieces joined while the joined span stays under ``max_chars``; long ones cut."""
    result: list[tuple[int, int]] = []
    for start, end in pieces:
        if result and end - result[-1][0] <= max_chars:
            result[-1] = (result[-1][0], end)
            continue
        while end - start > max_chars:
            cut = _cut(text, start, start + max_chars)
            result.append((start, cut))
            start = cut
            while start < end and text[start].isspace():
                start += 1
        if start < end:
            result.append((start, end))
    return result


def _cut(text: str, start: int, limit: int) -> int:
    """The last space before ``limit`` (past the middle of the piece), else ``limit``."""
    for position in range(limit, start + (limit - start) // 2, -1):
        if _SPACE.match(text, position):
            return position
    return limit


def first_stage(
    query: str, text: str, windows: Sequence[Window], unit_texts: Sequence[str]
) -> tuple[list[float], list[float]]:
    """A cheap relevance of each window (its BM25 plus a quarter of its unit's) and of each unit (its BM25),
    each BM25 scaled to [0, 1]."""
    units = _scaled(bm25_scores(query, unit_texts))
    if not windows:
        return [], units
    own = _scaled(bm25_scores(query, [text[w.start : w.end] for w in windows]))
    return [score + _UNIT_WEIGHT * units[w.unit] for w, score in zip(windows, own, strict=True)], units


def _scaled(values: list[float]) -> list[float]:
    high = max(values, default=0.0)
    return [value / high for value in values] if high > 0 else [0.0 for _ in values]


def embed_budget(input_tokens: int, *, floor: int, share: float) -> int:
    """Tokens of windows the embedding may read for an input of ``input_tokens`` tokens."""
    return floor + round(share * input_tokens)
