"""``truncate``: keep the head, the tail, or both ends of a prompt, cut on unit boundaries.

Units are paragraphs, lines, sentences or tokens (option ``unit``). The unit the
cut falls in is split into finer units (paragraph -> line -> sentence -> token)
until the budget is filled to within 5%. A unit boundary never falls inside a
preserved span that fits the budget, so such spans are kept or cut away whole.
A preserved span bigger than the whole budget is never dropped for its size:
a JSON one is minified, then its biggest arrays digested (compressors.jsondigest);
a multi-line one is cut on its lines; a one-line one is kept whole and the target
reported missed. The input is tokenized once per unit level, plus the one unit
each cut lands in. The omission is one marker (docs/markers.md).
"""

from __future__ import annotations

import bisect
import itertools
import re
from dataclasses import dataclass

from compressors.base import Ask, Compressed, Compressor, Decision, OptionsError
from compressors.jsondigest import shrink
from compressors.markers import format_marker
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
    """What one call works on: the text, its preserved spans, the tokenizer.

    ``big`` holds the starts of spans bigger than the whole budget: a multi-line one
    gets line boundaries inside it, a one-line one is kept whole where the cut lands.
    """

    text: str
    spans: list[Span]
    starts: list[int]
    tokenizer: Tokenizer
    slack: int
    big: frozenset[int] = frozenset()

    def span_at(self, pos: int) -> Span | None:
        """The preserved span strictly containing ``pos``, if any."""
        i = bisect.bisect_right(self.starts, pos) - 1
        if i >= 0 and self.spans[i].start < pos < self.spans[i].end:
            return self.spans[i]
        return None

    def blocks(self, pos: int, level: str) -> bool:
        """Whether a ``level`` boundary at ``pos`` would split a span it must not."""
        span = self.span_at(pos)
        return span is not None and not (level in ("paragraph", "line") and span.start in self.big)

    def bounds(self, start: int, end: int, level: str) -> list[int]:
        """Unit boundaries of ``text[start:end]`` at ``level``, none inside a span (but big ones' lines)."""
        cuts = [start]
        for match in _BOUNDARY[level].finditer(self.text, start, end):
            if start < match.end() < end and not self.blocks(match.end(), level):
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
    if span.start not in cut.big:
        pos = span.end if from_end else span.start  # never half a span
    elif "\n" in cut.text[span.start : span.end]:  # a big multi-line span: cut on its line boundary
        if from_end:
            at = cut.text.find("\n", pos, b)
            pos = b if at < 0 else at + 1
        else:
            pos = max(a, cut.text.rfind("\n", a, pos) + 1)
    else:
        pos = span.start if from_end else span.end  # a big one-line span: kept whole, target missed
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
        tokenizer = ask.tokenizer  # no query: not question-aware
        tokens_before = tokenizer.count(text)
        budget = ask.target.budget(tokens_before)
        if tokens_before <= budget:
            return Compressed(text, tokens_before, tokens_before, self.name, budget)
        text, spans, reshaped = _shrink_big_json(text, budget, ask)
        if reshaped:
            now = tokenizer.count(text)
            if now <= budget:
                return Compressed(text, tokens_before, now, self.name, budget)
        big = frozenset(s.start for s in spans if _is_big(text, s, budget, tokenizer))
        levels = _LEVELS[_LEVELS.index(self.options["unit"]) :]
        cut = _Cut(text, spans, [s.start for s in spans], tokenizer, max(1, int(budget * _FILL)), big)
        bounds = [0, len(text)] if levels[0] == "token" else cut.bounds(0, len(text), levels[0])
        counts = [tokens_before] if levels[0] == "token" else cut.counts(bounds)
        if levels[0] == "token":
            levels = ("token", "token")  # the one unit is refined at token level
        marks = _Marks(ask.ref, not reshaped)
        room = budget
        for _ in range(2):  # a second pass only if joins tokenized longer than the parts
            head_end, tail_start, out = self._select(cut, bounds, counts, room, levels[1:], marks)
            tokens_after = tokenizer.count(out)
            pinned = _pinned(cut, head_end, tail_start)
            if tokens_after <= budget * (1 + _SLACK) or pinned:  # a span kept whole: no retry helps
                break
            room -= tokens_after - budget
        met = tokens_after <= budget * (1 + _SLACK)
        note = ""
        if not met:
            note = (
                f"a preserved {pinned[0].category} span bigger than the budget is kept whole "
                "(preserved spans are never dropped to meet a target)"
                if pinned
                else "the kept text tokenizes longer than its parts"
            )
        decisions = _decisions(text, bounds, counts, head_end, tail_start, levels[0])
        return Compressed(out, tokens_before, tokens_after, self.name, budget, met, note, decisions)

    def _select(
        self,
        cut: _Cut,
        bounds: list[int],
        counts: list[int],
        room: int,
        finer: tuple[str, ...],
        marks: _Marks,
    ) -> tuple[int, int, str]:
        """``(head end, tail start, output)`` for a ``room``-token budget."""
        text, mode = cut.text, self.options["mode"]
        marker = ""
        if self.options["marker"]:  # its size, for the room: the longest it can be
            lines = ((1, text.count("\n") + 1),) if marks.lines else ()
            marker = format_marker(cut.tokenizer.count(text), "tokens", lines=lines, ref=marks.ref)
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
            tail_start, _ = _tail(cut, tail_bounds, tail_counts, max(0, room - head_used), finer)
        head, tail = text[:head_end], text[tail_start:]
        if marker and tail_start > head_end:
            marker = _marker(cut, head_end, tail_start, marks)
            if head and not head.endswith("\n"):
                marker = "\n" + marker
            if tail and not tail.startswith("\n"):
                marker += "\n"
        elif tail_start <= head_end:
            marker = ""
        return head_end, max(head_end, tail_start), head + marker + tail


@dataclass(frozen=True, slots=True)
class _Marks:
    """The marker's ``hash`` and whether its ``lines=`` may be given (not after a JSON rewrite)."""

    ref: str | None
    lines: bool


def _marker(cut: _Cut, head_end: int, tail_start: int, marks: _Marks) -> str:
    """The marker for ``text[head_end:tail_start]``, with the lines it touches (whole or in part)."""
    text = cut.text
    omitted = cut.tokenizer.count(text[head_end:tail_start])
    lines: tuple[tuple[int, int], ...] = ()
    if marks.lines:
        first = text.count("\n", 0, head_end) + 1
        lines = ((first, first + text.count("\n", head_end, max(head_end, tail_start - 1))),)
    return format_marker(omitted, "tokens", lines=lines, ref=marks.ref)


def _is_big(text: str, span: Span, budget: int, tokenizer: Tokenizer) -> bool:
    # a token is at least one character almost always: only long spans are counted
    return span.end - span.start > budget and tokenizer.count(text[span.start : span.end]) > budget


def _shrink_big_json(text: str, budget: int, ask: Ask) -> tuple[str, list[Span], bool]:
    """``text`` with each JSON span bigger than the budget minified and digested to fit it,
    its spans (found again when anything changed), and whether anything changed."""
    spans = find_spans(text, ask.preserve)
    parts: list[str] = []
    pos = 0
    for span in spans:
        if text[span.start] not in "{[" or not _is_big(text, span, budget, ask.tokenizer):
            continue
        small = shrink(text[span.start : span.end], budget, ask.tokenizer.count, ref=ask.ref)
        if small is None:
            continue
        parts.append(text[pos : span.start])
        parts.append(small.text)
        pos = span.end
    if not parts:
        return text, spans, False
    parts.append(text[pos:])
    shrunk = "".join(parts)
    return shrunk, find_spans(shrunk, ask.preserve), True


def _pinned(cut: _Cut, head_end: int, tail_start: int) -> list[Span]:
    """Big one-line spans the kept text holds whole."""
    return [
        s
        for s in cut.spans
        if s.start in cut.big
        and "\n" not in cut.text[s.start : s.end]
        and (s.start < head_end or s.end > tail_start)
    ]


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
