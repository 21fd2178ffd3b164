"""Word units for token-level pruning: segmentation and reassembly.

Text is cut into units (words, numbers, punctuation) separated by pure
whitespace gaps, so that kept units joined with their gaps rebuild the input
byte for byte. Entity runs ("Ludwig van Beethoven"), dates, numbers with
their units and every atomic span the caller gives (preserved spans, kept
regions, the query line) become single units: kept or dropped whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from typing import NamedTuple, overload

import numpy as np
import numpy.typing as npt
from wordfreq import zipf_frequency

__all__ = ["Unit", "Units", "assemble", "atomic_spans", "segment", "zipf"]

Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

# Numbers first (1,234.5 / 3.75 / 2/5 / 10%), then words with inner hyphens and
# apostrophes, then runs of one punctuation character.
_PIECE = re.compile(
    r"(\$?\d+(?:[.,:/]\d+)*(?:%|[^\W\d_]+\b)?(?:[-/][^\W\d_]\w*)*|\w+(?:[-'’/]\w+)*|([^\w\s])\2*)"
)

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
# Patterns start with a character class, not \b: `re` then skips ahead fast (a leading \b makes it try
# every position). The word boundary before a match and the month name are checked in Python.
_DATE = re.compile(
    r"[ADFJMNOS][a-z]{2,8}(?:\.? \d{1,2}(?:st|nd|rd|th)?,? \d{4}|,? \d{4})\b"  # May 18, 2018 / October 2014
    rf"|\d(?:\d?(?:st|nd|rd|th)? {_MONTH},? \d{{4}}|\d{{3}}-\d{{2}}-\d{{2}})\b"  # 18 May 2018 / 2018-05-18
)
_MONTHS = frozenset(
    "jan january feb february mar march apr april may jun june jul july aug august sep sept september "  # noqa: SIM905
    "oct october nov november dec december".split()
)
# A number and the unit word that gives it meaning: "25 km", "$5 million", "3 hours".
_QUANTITY = re.compile(
    r"[$€£¥\d](?:(?<=[$€£¥])\s?\d+|(?<=\d)\d*)(?:[.,]\d+)*\s?(?:%|percent|per cent|million|billion|trillion|thousand|hundred|"
    r"km|kg|mg|cm|mm|m|g|lb|lbs|mph|ft|feet|miles?|meters?|metres?|kilometers?|kilometres?|"
    r"seconds?|minutes?|hours?|days?|weeks?|months?|years?|°[CF]?)(?![\w])"
)
# Arithmetic stays whole: "25*2= 50", "120 / 60 = 2", "$1.5 x 4".
_EXPRESSION = re.compile(
    r"[$\d](?:(?<=\$)\d+|(?<=\d)\d*)(?:[.,]\d+)*%?(?:\s?[-–+*/x×÷=]\s?\$?\d+(?:[.,]\d+)*%?)+(?:\s?=\s?\$?\d+(?:[.,]\d+)*)?"
)
# Capitalized words joined by at most these lowercase particles make one name.
_PARTICLES = frozenset(
    {"van", "von", "de", "der", "den", "da", "di", "del", "della", "du", "la", "le", "of", "y"}
)
_CAPWORD = re.compile(r"[A-Z][\w'’.-]*\w|[A-Z]")
_NAME_RUN = re.compile(
    r"[A-Z][\w'’.-]*(?:(?: (?:van|von|de|der|den|da|di|del|della|du|la|le|of|y))* [A-Z][\w'’.-]*)+"
)
# A capitalized word this common in lowercase is a sentence start, not a name ("The", "In").
_COMMON_ZIPF = 6.0


@lru_cache(maxsize=200_000)
def zipf(word: str) -> float:
    """wordfreq's Zipf frequency of ``word`` in English (0 when unknown)."""
    return zipf_frequency(word, "en")


class Unit(NamedTuple):
    """One unit of text: ``text[start:end]``; ``kind`` is word, number, punct or atomic."""

    start: int
    end: int
    kind: str


def _name_spans(text: str) -> Iterable[tuple[int, int]]:
    for match in _NAME_RUN.finditer(text):
        start, end = match.span()
        words = match.group().split(" ")
        # Drop leading common words ("The Beatles" -> "Beatles"; "In New York" -> "New York").
        while len(words) > 1 and zipf(words[0].lower()) >= _COMMON_ZIPF:
            start += len(words[0]) + 1
            words = words[1:]
        while words and words[-1] in _PARTICLES:
            end -= len(words[-1]) + 1
            words = words[:-1]
        if len(words) > 1:
            yield start, end


def _dates(text: str) -> list[tuple[int, int]]:
    """Dates that start at a word boundary and name a real month."""
    found: list[tuple[int, int]] = []
    position = 0
    while (match := _DATE.search(text, position)) is not None:
        start, end = match.span()
        before = text[start - 1] if start else " "
        word = match.group().split(" ", 1)[0].rstrip(".,")
        if before.isalnum() or before == "_" or (not word[0].isdigit() and word.lower() not in _MONTHS):
            position = start + 1  # not a date here; one may start inside
            continue
        found.append((start, end))
        position = end
    return found


def atomic_spans(
    text: str, extra: Iterable[tuple[int, int]] = (), *, detect: bool = True
) -> list[tuple[int, int]]:
    """Sorted, merged spans that must stay whole: ``extra`` and, with ``detect``, dates,
    quantities and names found in ``text``."""
    spans: list[tuple[int, int]] = []
    if detect:
        spans += _dates(text)
        spans += [m.span() for m in _QUANTITY.finditer(text)]
        spans += [m.span() for m in _EXPRESSION.finditer(text)]
        spans += list(_name_spans(text))
    spans += [(s, e) for s, e in extra if e > s]
    spans.sort()
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


class Units(Sequence[Unit]):
    """The units of one text as arrays (``starts``, ``ends``, ``atomic``); a :class:`Unit` on access.

    Hot paths read the arrays; building one object per word would cost more than the scoring.
    """

    __slots__ = ("atomic", "ends", "starts", "text")

    def __init__(self, text: str, starts: Ints, ends: Ints, atomic: Bools) -> None:
        self.text = text
        self.starts = starts
        self.ends = ends
        self.atomic = atomic

    def __len__(self) -> int:
        return len(self.starts)

    @overload
    def __getitem__(self, index: int) -> Unit: ...

    @overload
    def __getitem__(self, index: slice) -> list[Unit]: ...

    def __getitem__(self, index: int | slice) -> Unit | list[Unit]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        start, end = int(self.starts[index]), int(self.ends[index])
        return Unit(start, end, "atomic" if self.atomic[index] else _kind(self.text[start:end]))

    def __iter__(self) -> Iterator[Unit]:
        return (self[i] for i in range(len(self)))


def _kind(piece: str) -> str:
    first = piece[0]
    if first.isdigit() or (first == "$" and len(piece) > 1):
        return "number"
    return "word" if first.isalnum() or first == "_" else "punct"


def segment(text: str, spans: Sequence[tuple[int, int]] = ()) -> Units:
    """Cut ``text`` into units; each of ``spans`` (sorted, disjoint) becomes one ``atomic`` unit.

    A span that cuts a word is widened to the whole word, so no word is ever halved.
    The text between consecutive units is whitespace only.
    """
    # One C-level split: [gap, piece, inner group, gap, piece, ...]; offsets from cumulative lengths.
    parts = _PIECE.split(text)
    lengths = np.zeros(len(parts) // 3 * 2, np.int64)
    lengths[0::2] = list(map(len, parts[0:-1:3]))
    lengths[1::2] = list(map(len, parts[1::3]))
    bounds = np.cumsum(lengths)
    starts, ends = bounds[0::2], bounds[1::2]
    atomic = np.zeros(len(starts), bool)
    if not spans or not len(starts):
        return Units(text, starts, ends, atomic)
    span_starts = np.array([s for s, _ in spans], np.int64)
    span_ends = np.array([e for _, e in spans], np.int64)
    firsts = np.searchsorted(ends, span_starts, side="right").tolist()  # first piece ending after the start
    stops = np.searchsorted(starts, span_ends, side="left").tolist()  # first piece at or after the end
    removed = np.zeros(len(starts), bool)
    previous = -1  # the piece holding the last atomic unit
    for first, stop, span_start, span_end in zip(
        firsts, stops, span_starts.tolist(), span_ends.tolist(), strict=False
    ):
        if first >= stop:
            continue  # whitespace only: nothing to hold together
        start = min(span_start, int(starts[first]))
        end = max(span_end, int(ends[stop - 1]))
        if previous >= 0 and ends[previous] > start:  # a widened span reached into this one: one unit
            first, start = previous, int(starts[previous])
        removed[first + 1 : stop] = True
        starts[first], ends[first], atomic[first] = start, max(end, int(ends[first])), True
        previous = first
    keep = ~removed
    return Units(text, starts[keep], ends[keep], atomic[keep])


def _separator(text: str, end: int, start: int, *, leading: bool, trailing: bool) -> str:
    """What replaces ``text[end:start]`` (dropped units and their gaps): its newlines, else one space."""
    region = text[end:start]
    newlines = region.count("\n")
    if newlines:
        tail = region[region.rfind("\n") + 1 :]
        return "\n" * newlines + ("" if trailing or not tail.isspace() else tail)
    if leading or trailing:
        return ""
    if any(c.isspace() for c in region):
        return " "
    # A dropped "-" or "*" must not glue "25" and "2" into "252".
    return " " if text[end - 1 : end].isalnum() and text[start : start + 1].isalnum() else ""


def assemble(text: str, units: Sequence[Unit], kept: Sequence[bool]) -> str:
    """Kept units joined with their original separators; newlines always survive.

    A run of kept units is copied verbatim; dropped units leave a single space
    (never a double one) and never take a newline with them.
    """
    if not units:
        return text
    if isinstance(units, Units):
        starts, ends = units.starts, units.ends
    else:
        starts = np.array([u.start for u in units], np.int64)
        ends = np.array([u.end for u in units], np.int64)
    flags = np.zeros(len(units) + 2, np.int8)
    flags[1:-1] = np.asarray(kept, bool)
    change = np.diff(flags)
    run_firsts = np.flatnonzero(change == 1)  # unit index where a kept run begins
    run_stops = np.flatnonzero(change == -1)  # one past its last unit
    if not len(run_firsts):
        return _separator(text, 0, len(text), leading=True, trailing=True)
    run_starts = starts[run_firsts].tolist()
    run_ends = ends[run_stops - 1].tolist()
    parts: list[str] = []
    previous_end = 0
    for number, (start, end) in enumerate(zip(run_starts, run_ends, strict=True)):
        if number == 0 and run_firsts[0] == 0:
            parts.append(text[:start])
        else:
            parts.append(_separator(text, previous_end, start, leading=number == 0, trailing=False))
        parts.append(text[start:end])
        previous_end = end
    if run_stops[-1] == len(units):
        parts.append(text[previous_end:])
    else:
        parts.append(_separator(text, previous_end, len(text), leading=False, trailing=True))
    return "".join(parts)
