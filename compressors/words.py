"""Word units for token-level pruning: segmentation and reassembly.

Text is cut into units (words, numbers, punctuation) separated by pure
whitespace gaps, so that kept units joined with their gaps rebuild the input
byte for byte. Entity runs ("Ludwig van Beethoven"), dates, numbers with
their units and every atomic span the caller gives (preserved spans, kept
regions, the query line) become single units: kept or dropped whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from wordfreq import zipf_frequency

__all__ = ["Unit", "assemble", "atomic_spans", "segment", "zipf"]

# Numbers first (1,234.5 / 3.75 / 2/5 / 10%), then words with inner hyphens and
# apostrophes, then runs of one punctuation character.
_PIECE = re.compile(r"\$?\d+(?:[.,:/]\d+)*(?:%|[^\W\d_]+\b)?|\w+(?:[-'’]\w+)*|([^\w\s])\1*")

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


@dataclass(frozen=True, slots=True)
class Unit:
    """One unit of text: ``text[start:end]``; ``kind`` is word, number, punct, entity or atomic."""

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


def _kind(piece: str) -> str:
    first = piece[0]
    if first.isdigit() or (first == "$" and len(piece) > 1):
        return "number"
    if first.isalnum() or first == "_":
        return "word"
    return "punct"


def segment(text: str, spans: Sequence[tuple[int, int]] = ()) -> list[Unit]:
    """Cut ``text`` into units; each of ``spans`` (sorted, disjoint) becomes one ``atomic`` unit.

    A span that cuts a word is widened to the whole word, so no word is ever halved.
    The text between consecutive units is whitespace only.
    """
    units: list[Unit] = []
    pieces = _PIECE.finditer(text)
    span_index = 0
    pending: tuple[int, int] | None = None  # an atomic unit being grown over its pieces
    for match in pieces:
        start, end = match.span()
        while span_index < len(spans) and spans[span_index][1] <= start:
            span_index += 1
        inside = span_index < len(spans) and spans[span_index][0] < end
        if inside:
            span_start, span_end = spans[span_index]
            if pending is None:
                pending = (min(start, span_start), max(end, span_end))
            else:
                pending = (pending[0], max(pending[1], end, span_end))
            continue
        if pending is not None:
            units.append(Unit(pending[0], pending[1], "atomic"))
            pending = None
        units.append(Unit(start, end, _kind(match.group())))
    if pending is not None:
        units.append(Unit(pending[0], pending[1], "atomic"))
    return _absorb_stray(text, units)


def _absorb_stray(text: str, units: list[Unit]) -> list[Unit]:
    """Merge units that a widened atomic span now overlaps, keeping gaps whitespace-only."""
    out: list[Unit] = []
    for unit in units:
        if out and unit.start < out[-1].end:
            last = out[-1]
            out[-1] = Unit(last.start, max(last.end, unit.end), "atomic")
        else:
            out.append(unit)
    return out


def _join_gaps(gaps: Sequence[str], *, leading: bool) -> str:
    """One separator for the gaps around dropped units: their newlines, else one space."""
    if len(gaps) == 1:
        return gaps[0]
    newlines = sum(gap.count("\n") for gap in gaps)
    if newlines:
        last = next(gap for gap in reversed(gaps) if "\n" in gap)
        return "\n" * newlines + last.rsplit("\n", 1)[1]
    return "" if leading or not any(gaps) else " "


def assemble(text: str, units: Sequence[Unit], kept: Sequence[bool]) -> str:
    """Kept units joined with their original separators; newlines always survive.

    Dropped units leave a single space (never a double one) and never take a
    newline with them.
    """
    parts: list[str] = []
    pending: list[str] = []  # gaps since the last kept unit
    position = 0
    leading = True
    for unit, keep in zip(units, kept, strict=True):
        pending.append(text[position : unit.start])
        position = unit.end
        if not keep and "\n" in text[unit.start : unit.end]:
            pending.append(
                "\n" * text.count("\n", unit.start, unit.end)
            )  # a dropped span keeps its line breaks
        if keep:
            separator = _join_gaps(pending, leading=leading)
            if (
                not separator
                and len(pending) > 1
                and parts
                and parts[-1][-1:].isalnum()
                and text[unit.start].isalnum()
            ):
                separator = " "  # a dropped "-" or "*" must not glue "25" and "2" into "252"
            parts.append(separator)
            parts.append(text[unit.start : unit.end])
            pending = []
            leading = False
    pending.append(text[position:])
    tail = _join_gaps(pending, leading=True)
    parts.append(tail if len(pending) == 1 else "\n" * tail.count("\n"))
    return "".join(parts)
