"""``truncate``: keep the head, the tail, or both ends of a prompt, cut on unit boundaries.

Units are paragraphs, lines, sentences or tokens (option ``unit``). The unit the
cut falls in is split into finer units (paragraph -> line -> sentence -> token)
until the budget is filled to within 5%. A unit boundary never falls inside a
preserved span, so spans are kept or dropped whole. The input is tokenized
once per unit level, plus the one unit each cut lands in.
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass

from compressors.base import Ask, Compressed, Compressor, Decision, OptionsError
from compressors.preserve import Span, find_spans
from compressors.tokenizer import Tokenizer

__all__ = ["Truncate"]

_LEVELS: tuple[str, ...] = ("paragraph", "line", "sentence", "token")
_MODES = ("head", "tail", "middle")
# A unit ends where a match ends.
_BOUNDARY: dict[str, re.Pattern[str]] = {
    "paragraph": re.compile(r"\n[ \t]*\n\s*"),
    "line": re.compile(r"\n"),
    "sentence": re.compile(r"[.!?][)\"'\]\u201d\u2019]*[ \t]+|\n"),
}
_SLACK = 0.05  # the contract: within 5% of the budget
_FILL = 0.02  # refine the cut unit until the budget is this full (inside the 5%)


@dataclass(frozen=True, slots=True)
class _Cut:
    """What one call works on: the text, its preserved spans, the tokenizer."""

    text: str
    spans: list[Span]
    starts: list[int]
    tokenizer: Tokenizer
    slack: int

    def span_at(self, pos: int) -> Span | None:
        """The preserved span strictly containing ``pos``, if any."""
        i = bisect.bisect_right(self.starts, pos) - 1
        if i >= 0 and self.spans[i].start < pos < self.spans[i].end:
            return self.spans[i]
        return None

    def bounds(self, start: int, end: int, level: str) -> list[int]:
        """Unit boundaries of ``text[start:end]`` at ``level``, none inside a span."""
        cuts = [start]
        for match in _BOUNDARY[level].finditer(self.text, start, end):
            if start < match.end() < end and self.span_at(match.end()) is None:
                cuts.append(match.end())
        cuts.append(end)
        return cuts

    def counts(self, bounds: list[int]) -> list[int]:
        return self.tokenizer.count_many([self.text[a:b] for a, b in itertools.pairwise(bounds)])


def _head(
    cut: _Cut, bounds: list[int], counts: list[int], room: int, finer: tuple[str, ...]
) -> tuple[int, int]:
    """Where a head of at most ``room`` tokens ends, and its tokens."""
    used = 0
    for i, count in enumerate(counts):
        if used + count <= room:
            used += count
            continue
        a, b = bounds[i], bounds[i + 1]
        if room - used > cut.slack and finer:
            pos, extra = _refine(cut, a, b, room - used, finer, from_end=False)
            return pos, used + extra
        return a, used
    return bounds[-1], used


def _tail(
    cut: _Cut, bounds: list[int], counts: list[int], room: int, finer: tuple[str, ...]
) -> tuple[int, int]:
    """Where a tail of at most ``room`` tokens starts, and its tokens."""
    used = 0
    for i in range(len(counts) - 1, -1, -1):
        if used + counts[i] <= room:
            used += counts[i]
            continue
        a, b = bounds[i], bounds[i + 1]
        if room - used > cut.slack and finer:
            pos, extra = _refine(cut, a, b, room - used, finer, from_end=True)
            return pos, used + extra
        return b, used
    return bounds[0], used


def _refine(
    cut: _Cut, a: int, b: int, room: int, levels: tuple[str, ...], *, from_end: bool
) -> tuple[int, int]:
    """Fill ``room`` from one unit ``text[a:b]`` with finer units."""
    if levels[0] == "token":
        return _token_cut(cut, a, b, room, from_end=from_end)
    bounds = cut.bounds(a, b, levels[0])
    counts = cut.counts(bounds)
    pick = _tail if from_end else _head
    return pick(cut, bounds, counts, room, levels[1:])


def _token_cut(cut: _Cut, a: int, b: int, room: int, *, from_end: bool) -> tuple[int, int]:
    unit = cut.text[a:b]
    ids = cut.tokenizer.encode(unit)
    k = min(room, len(ids))
    while k > 0:
        piece = cut.tokenizer.decode(ids[len(ids) - k :] if from_end else ids[:k])
        # a cut inside a multi-byte character decodes to U+FFFD: step back a token
        if unit.endswith(piece) if from_end else unit.startswith(piece):
            break
        k -= 1
    if k == 0:
        return (b if from_end else a), 0
    pos = b - len(piece) if from_end else a + len(piece)
    span = cut.span_at(pos)
    if span is None:
        return pos, k
    pos = span.end if from_end else span.start  # never half a span
    return pos, cut.tokenizer.count(cut.text[pos:b] if from_end else cut.text[a:pos])


class Truncate(Compressor):
    """Keeps the start (``head``), the end (``tail``) or both ends (``middle``)."""

    name = "truncate"
    cost = "linear"
    option_types = {
        "mode": (str, "head"),
        "unit": (str, "line"),
        "marker": (bool, True),
    }

    def _validate(self) -> None:
        if self.options["mode"] not in _MODES:
            raise OptionsError(
                f"truncate: mode must be one of {', '.join(_MODES)}, got {self.options['mode']!r}"
            )
        if self.options["unit"] not in _LEVELS:
            raise OptionsError(
                f"truncate: unit must be one of {', '.join(_LEVELS)}, got {self.options['unit']!r}"
            )

    def _compress(self, text: str, ask: Ask) -> Compressed:
        target, preserve, tokenizer = ask.target, ask.preserve, ask.tokenizer  # not question-aware
        tokens_before = tokenizer.count(text)
        budget = target.budget(tokens_before)
        if tokens_before <= budget:
            return Compressed(text, tokens_before, tokens_before, self.name, budget)
        spans = find_spans(text, preserve)
        levels = _LEVELS[_LEVELS.index(self.options["unit"]) :]
        cut = _Cut(text, spans, [s.start for s in spans], tokenizer, max(1, int(budget * _FILL)))
        bounds = [0, len(text)] if levels[0] == "token" else cut.bounds(0, len(text), levels[0])
        counts = [tokens_before] if levels[0] == "token" else cut.counts(bounds)
        if levels[0] == "token":
            levels = ("token", "token")  # the one unit is refined at token level
        room = budget
        for _ in range(2):  # a second pass only if joins tokenized longer than the parts
            head_end, tail_start, out = self._select(cut, bounds, counts, room, levels[1:], tokens_before)
            tokens_after = tokenizer.count(out)
            if tokens_after <= budget * (1 + _SLACK):
                break
            room -= tokens_after - budget
        met = tokens_after <= budget * (1 + _SLACK)
        note = "" if met else "the kept text tokenizes longer than its parts"
        decisions = _decisions(text, bounds, counts, head_end, tail_start, levels[0])
        return Compressed(out, tokens_before, tokens_after, self.name, budget, met, note, decisions)

    def _select(
        self, cut: _Cut, bounds: list[int], counts: list[int], room: int, finer: tuple[str, ...], total: int
    ) -> tuple[int, int, str]:
        """``(head end, tail start, output)`` for a ``room``-token budget."""
        text, mode = cut.text, self.options["mode"]
        marker = f"[... {total - room} tokens omitted ...]" if self.options["marker"] else ""
        marker_tokens = cut.tokenizer.count(marker) + 2 if marker else 0
        if marker_tokens >= room:
            marker, marker_tokens = "", 0  # no room for a marker: the cut stays silent
        room -= marker_tokens
        head_end, tail_start, head_used = 0, len(text), 0
        if mode in ("head", "middle"):
            head_room = room if mode == "head" else room // 2
            head_end, head_used = _head(cut, bounds, counts, head_room, finer)
        if mode in ("tail", "middle") and head_end < len(text):
            idx = bisect.bisect_right(bounds, head_end)  # the first boundary after the head
            tail_bounds, tail_counts = [head_end, *bounds[idx:]], counts[idx - 1 :]
            if bounds[idx - 1] != head_end:  # the head cut a unit in two: recount its rest
                tail_counts = [cut.tokenizer.count(text[head_end : bounds[idx]]), *counts[idx:]]
            tail_start, _ = _tail(cut, tail_bounds, tail_counts, room - head_used, finer)
        head, tail = text[:head_end], text[tail_start:]
        if marker:
            omitted = cut.tokenizer.count(text[head_end:tail_start])
            marker = f"[... {omitted} tokens omitted ...]"
            if head and not head.endswith("\n"):
                marker = "\n" + marker
            if tail and not tail.startswith("\n"):
                marker += "\n"
        return head_end, tail_start, head + marker + tail


def _decisions(
    text: str, bounds: list[int], counts: list[int], head_end: int, tail_start: int, kind: str
) -> tuple[Decision, ...]:
    out: list[Decision] = []
    for i, count in enumerate(counts):
        a, b = bounds[i], bounds[i + 1]
        if b <= head_end or a >= tail_start:
            kept, reason = True, "kept"
        elif a < head_end or b > tail_start:
            kept, reason = True, "partly kept (cut inside)"
        else:
            kept, reason = False, "truncated"
        out.append(Decision(i, kind, count, kept, reason=reason, preview=text[a : min(b, a + 40)]))
    return tuple(out)
