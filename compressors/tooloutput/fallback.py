"""Anything else: similar lines collapse, the cut keeps the head and tail and every error-like line."""

from __future__ import annotations

from compressors.tooloutput.common import ERROR_LIKE, masks, query_lines, rare_first, traceback_blocks
from compressors.tooloutput.lines import Doc, Selection
from compressors.tooloutput.shape import LineShape

__all__ = ["Fallback"]

_ENDS = 3  # first and last lines always kept


class Fallback(LineShape):
    name = "fallback"

    def score(self, doc: Doc) -> float:
        return 0.0  # chosen when no shape is sure

    def select(self, doc: Doc) -> Selection:
        n = len(doc.lines)
        must = {i for i, line in enumerate(doc.lines) if ERROR_LIKE.search(line)}
        must |= traceback_blocks(doc.lines)
        must |= set(range(min(_ENDS, n))) | set(range(max(0, n - _ENDS), n))
        rest = [i for i in range(n) if i not in must]
        ranked = rare_first(rest, masks(doc.lines))
        why = "error-like lines and the first and last lines are never cut"
        return Selection(must, ranked, why=why, pointed=query_lines(doc, rest))
