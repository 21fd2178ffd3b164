"""Splitting a prompt into units a selector keeps or drops whole.

A :class:`Layout` is a fixed ``prefix``, a run of units, and a fixed ``suffix``.
Units are character ranges of the text; the gap after each unit (``seps``) is
the original separator to the next one, so re-joining kept units with their own
separators reproduces the original formatting. For JSON that gap holds the
comma, so any subset of members or items re-joined this way stays valid JSON.

Kinds, in auto-detection order: ``documents`` (``Document [i](Title: ...)``
search results, as in lost-in-the-middle's ``qa.prompt``), ``json`` (a JSON
array or object, whole text or one embedded block), ``sections`` (markdown
headings), ``paragraphs`` (blank-line separated), ``lines``; ``sentences`` only
on request.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["KINDS", "Layout", "split_units"]

KINDS: tuple[str, ...] = ("auto", "documents", "json", "sections", "paragraphs", "lines", "sentences")

_DOCUMENT = re.compile(r"^Document \[\d+\]\(Title: ", re.MULTILINE)
_HEADING = re.compile(r"#{1,6}[ \t]")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")
_BLANK_GAP = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
# Auto-detection wants enough units for a selection to mean something.
_MIN_UNITS = 3
_JSON_MIN_SHARE = 0.5  # an embedded JSON block must be most of the text to be "the" structure
_JSON_MAX_TRIES = 16


@dataclass(frozen=True, slots=True)
class Layout:
    """A text as ``prefix + unit0 + sep0 + unit1 + ... + unitN + suffix``."""

    text: str
    kind: str
    prefix_end: int
    suffix_start: int
    spans: tuple[tuple[int, int], ...]

    @property
    def prefix(self) -> str:
        return self.text[: self.prefix_end]

    @property
    def suffix(self) -> str:
        return self.text[self.suffix_start :]

    def unit(self, index: int) -> str:
        start, end = self.spans[index]
        return self.text[start:end]

    def units(self) -> list[str]:
        return [self.text[start:end] for start, end in self.spans]

    def sep(self, index: int) -> str:
        """The original gap after unit ``index`` ('' after the last one)."""
        if index + 1 >= len(self.spans):
            return ""
        return self.text[self.spans[index][1] : self.spans[index + 1][0]]

    def default_sep(self) -> str:
        """The separator used after a unit that had none (the last one, when reordered)."""
        return self.sep(0) if len(self.spans) > 1 else "\n"

    def merged(self, ranges: Sequence[tuple[int, int]]) -> Layout:
        """This layout with units joined wherever one of ``ranges`` crosses a unit boundary.

        Preserved spans must be kept or dropped whole, so a code block that spans
        two paragraphs makes them one unit.
        """
        ordered = sorted(ranges)
        spans: list[tuple[int, int]] = []
        first = 0  # ranges before this one end before the current unit: they can't cross later boundaries
        for start, end in self.spans:
            if spans:
                prev_start, prev_end = spans[-1]
                while first < len(ordered) and ordered[first][1] <= prev_start:
                    first += 1
                index = first
                while index < len(ordered) and ordered[index][0] < prev_end:
                    if ordered[index][1] > start:
                        spans[-1] = (prev_start, end)
                        break
                    index += 1
                else:
                    spans.append((start, end))
                continue
            spans.append((start, end))
        if len(spans) == len(self.spans):
            return self
        return Layout(self.text, self.kind, self.prefix_end, self.suffix_start, tuple(spans))

    def render(self, order: Sequence[int], replaced: Mapping[int, str] | None = None) -> str:
        """The text with only the units in ``order``, in that order, each followed by its own gap;
        a unit in ``replaced`` reads as the text given there (a part of it)."""
        parts = [self.prefix]
        for position, index in enumerate(order):
            parts.append(replaced[index] if replaced and index in replaced else self.unit(index))
            if position + 1 < len(order):
                parts.append(self.sep(index) or self.default_sep())
        parts.append(self.suffix)
        return "".join(parts)


def split_units(text: str, kind: str = "auto") -> Layout:
    """The layout of ``text`` for ``kind`` (one of :data:`KINDS`); may have zero units."""
    if kind not in KINDS:
        raise ValueError(f"unknown unit kind {kind!r} (known: {', '.join(KINDS)})")
    if kind != "auto":
        return _SPLITTERS[kind](text)
    for name in ("documents", "json", "sections"):
        layout = _SPLITTERS[name](text)
        if len(layout.spans) >= 2:
            return layout
    for name in ("paragraphs", "lines"):
        layout = _SPLITTERS[name](text)
        if len(layout.spans) >= _MIN_UNITS:
            return layout
    return _split_sentences(text)


def _layout(text: str, kind: str, spans: list[tuple[int, int]]) -> Layout:
    """Trim whitespace off unit ends (gaps belong to separators) and drop empty units."""
    trimmed: list[tuple[int, int]] = []
    for start, end in spans:
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            trimmed.append((start, end))
    if not trimmed:
        return Layout(text, kind, len(text), len(text), ())
    return Layout(text, kind, trimmed[0][0], trimmed[-1][1], tuple(trimmed))


def _split_documents(text: str) -> Layout:
    starts = [match.start() for match in _DOCUMENT.finditer(text)]
    if not starts:
        return _layout(text, "documents", [])
    spans = list(itertools.pairwise(starts))
    # The last document runs to the next blank line: what follows is the question.
    gap = _BLANK_GAP.search(text, starts[-1])
    spans.append((starts[-1], gap.start() if gap else len(text)))
    return _layout(text, "documents", spans)


def _split_sections(text: str) -> Layout:
    starts: list[int] = []
    in_fence = False
    offset = 0
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and _HEADING.match(line):
            starts.append(offset)
        offset += len(line)
    if not starts:
        return _layout(text, "sections", [])
    ends = [*starts[1:], len(text)]
    return _layout(text, "sections", list(zip(starts, ends, strict=True)))


def _split_paragraphs(text: str) -> Layout:
    spans: list[tuple[int, int]] = []
    start = 0
    in_fence = False
    offset = 0
    # Blank lines inside fenced code do not end a paragraph.
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and not line.strip():
            spans.append((start, offset))
            start = offset + len(line)
        offset += len(line)
    spans.append((start, len(text)))
    return _layout(text, "paragraphs", spans)


def _split_lines(text: str) -> Layout:
    spans: list[tuple[int, int]] = []
    offset = 0
    for line in text.splitlines(keepends=True):
        spans.append((offset, offset + len(line)))
        offset += len(line)
    return _layout(text, "lines", spans)


def _split_sentences(text: str) -> Layout:
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        spans.append((start, match.start()))
        start = match.end()
    spans.append((start, len(text)))
    return _layout(text, "sentences", spans)


def _split_json(text: str) -> Layout:
    """Members of the JSON object (items of the array) that is the text or most of it.

    A container with a single member that is itself a container (``{"data": [...]}``)
    is descended into, so the units are the many things, not the one wrapper.
    """
    block = _json_block(text)
    if block is None:
        return _layout(text, "json", [])
    start, end = block
    elements = _elements(text, start, end)
    while len(elements) == 1:
        inner = _value_start(text, *elements[0])
        if inner is None:
            break
        inner_end = _container_end(text, inner)
        elements = _elements(text, inner, inner_end)
    return _layout(text, "json", elements)


def _json_block(text: str) -> tuple[int, int] | None:
    """The (start, end) of the JSON container that is the text, or most of it."""
    stripped = text.strip()
    if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
        try:
            json.loads(stripped)
        except ValueError:
            pass
        else:
            start = text.index(stripped[0])
            return start, start + len(stripped)
    decoder = json.JSONDecoder()
    tries = 0
    for match in re.finditer(r"^[ \t]*([\[{])", text, re.MULTILINE):
        tries += 1
        if tries > _JSON_MAX_TRIES:
            break
        start = match.start(1)
        try:
            _, end = decoder.raw_decode(text, start)
        except ValueError:
            continue
        if end - start >= _JSON_MIN_SHARE * len(text.strip()):
            return start, end
    return None


def _structure(text: str, start: int, end: int) -> Iterator[tuple[int, str, int]]:
    """``(index, char, depth after it)`` for each bracket and comma of ``text[start:end]``
    outside JSON strings (escapes honoured)."""
    depth = 0
    in_string = False
    index = start
    while index < end:
        char = text[index]
        if in_string:
            if char == "\\":
                index += 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            yield index, char, depth
        elif char in "]}":
            depth -= 1
            yield index, char, depth
        elif char == ",":
            yield index, char, depth
        index += 1


def _container_end(text: str, start: int) -> int:
    """End (exclusive) of the JSON container opening at ``start`` (the text is valid JSON there)."""
    for index, char, depth in _structure(text, start, len(text)):
        if char in "]}" and depth == 0:
            return index + 1
    return len(text)


def _elements(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Top-level elements of the container ``text[start:end]``, split at top-level commas."""
    spans: list[tuple[int, int]] = []
    element_start = start + 1
    for index, char, depth in _structure(text, start, end):
        if char in "]}" and depth == 0:
            spans.append((element_start, index))
        elif char == "," and depth == 1:
            spans.append((element_start, index))
            element_start = index + 1
    return [span for span in spans if text[span[0] : span[1]].strip()]


def _value_start(text: str, start: int, end: int) -> int | None:
    """Where the container value of one element starts (after ``"key":`` for members), if it is one."""
    element = text[start:end]
    stripped = element.lstrip()
    offset = start + len(element) - len(stripped)
    if stripped.startswith('"'):
        try:
            _, key_end = json.JSONDecoder().raw_decode(text, offset)
        except ValueError:
            return None
        rest = text[key_end:end]
        colon = rest.find(":")
        if colon < 0 or rest[:colon].strip():
            return None
        value = rest[colon + 1 :]
        offset = key_end + colon + 1 + len(value) - len(value.lstrip())
    return offset if text[offset : offset + 1] in ("[", "{") else None


_SPLITTERS = {
    "documents": _split_documents,
    "json": _split_json,
    "sections": _split_sections,
    "paragraphs": _split_paragraphs,
    "lines": _split_lines,
    "sentences": _split_sentences,
}
