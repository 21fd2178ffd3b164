"""Word units for token-level pruning: segmentation and reassembly.

Text is cut into units (words, numbers, punctuation) separated by pure
whitespace gaps, so that kept units joined with their gaps rebuild the input
byte for byte. Entity runs ("Ludwig van Beethoven"), dates, numbers with
their units and every atomic span the caller gives (preserved spans, kept
regions, the query line) become single units: kept or dropped whole.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import NamedTuple

from wordfreq import zipf_frequency

__all__ = ["Unit", "assemble", "atomic_spans", "segment", "zipf"]

# Numbers first (1,234.5 / 3.75 / 2/5 / 10%), then words with inner hyphens and
# apostrophes, then runs of one punctuation character.
_PIECE = re.compile(
    r"(?P<number>\$?\d+(?:[.,:/]\d+)*(?:%|[^\W\d_]+\b)?)|(?P<word>\w+(?:[-'’]\w+)*)|(?P<punct>([^\w\s])\4*)"
)

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_DATE = re.compile(
    rf"\b{_MONTH}\.? \d{{1,2}}(?:st|nd|rd|th)?,? \d{{4}}\b"  # May 18, 2018
    rf"|\b\d{{1,2}}(?:st|nd|rd|th)? {_MONTH},? \d{{4}}\b"  # 18 May 2018
    rf"|\b{_MONTH},? \d{{4}}\b"  # October 2014
    r"|\b\d{4}-\d{2}-\d{2}\b"
)
# A number and the unit word that gives it meaning: "25 km", "$5 million", "3 hours".
_QUANTITY = re.compile(
    r"(?:[$€£¥]\s?)?\d+(?:[.,]\d+)*\s?(?:%|percent|per cent|million|billion|trillion|thousand|hundred|"
    r"km|kg|mg|cm|mm|m|g|lb|lbs|mph|ft|feet|miles?|meters?|metres?|kilometers?|kilometres?|"
    r"seconds?|minutes?|hours?|days?|weeks?|months?|years?|°[CF]?)(?![\w])"
)
# Arithmetic stays whole: "25*2= 50", "120 / 60 = 2", "$1.5 x 4".
_EXPRESSION = re.compile(
    r"\$?\d+(?:[.,]\d+)*%?(?:\s?[-–+*/x×÷=]\s?\$?\d+(?:[.,]\d+)*%?)+(?:\s?=\s?\$?\d+(?:[.,]\d+)*)?"
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


def atomic_spans(
    text: str, extra: Iterable[tuple[int, int]] = (), *, detect: bool = True
) -> list[tuple[int, int]]:
    """Sorted, merged spans that must stay whole: ``extra`` and, with ``detect``, dates,
    quantities and names found in ``text``."""
    spans: list[tuple[int, int]] = []
    if detect:
        spans += [m.span() for m in _DATE.finditer(text)]
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


def segment(text: str, spans: Sequence[tuple[int, int]] = ()) -> list[Unit]:
    """Cut ``text`` into units; each of ``spans`` (sorted, disjoint) becomes one ``atomic`` unit.

    A span that cuts a word is widened to the whole word, so no word is ever halved.
    The text between consecutive units is whitespace only.
    """
    # One C-level regex pass; the group that matched names the kind.
    pieces = [(m.start(), m.end(), m.lastgroup or "punct") for m in _PIECE.finditer(text)]
    if not spans:
        return list(map(Unit._make, pieces))
    starts = [p[0] for p in pieces]
    ends = [p[1] for p in pieces]
    units: list[Unit] = []
    cursor = 0
    for span_start, span_end in spans:
        first = bisect.bisect_right(ends, span_start, cursor)  # first piece ending inside or after
        stop = bisect.bisect_left(starts, span_end, first)  # first piece starting at or after the end
        if first >= stop:
            continue  # whitespace only: nothing to hold together
        units.extend(map(Unit._make, pieces[cursor:first]))
        start = min(span_start, pieces[first][0])
        end = max(span_end, pieces[stop - 1][1])
        if units and units[-1].end > start:  # a widened span reached into this one: one unit
            start = units.pop().start
        units.append(Unit(start, end, "atomic"))
        cursor = stop
    units.extend(map(Unit._make, pieces[cursor:]))
    return units


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
    parts: list[str] = []
    previous_end = 0  # end of the last kept run
    leading = True
    index = 0
    count = len(units)
    while index < count:
        if not kept[index]:
            index += 1
            continue
        run_start = index
        while index < count and kept[index]:
            index += 1
        start, end = units[run_start].start, units[index - 1].end
        if run_start == 0:
            parts.append(text[:start])
        else:
            parts.append(_separator(text, previous_end, start, leading=leading, trailing=False))
        parts.append(text[start:end])
        previous_end = end
        leading = False
    if kept[-1]:
        parts.append(text[previous_end:])
    else:
        parts.append(_separator(text, previous_end, len(text), leading=leading, trailing=True))
    return "".join(parts)
