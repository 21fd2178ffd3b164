"""Few-shot structure: the line openings that recur across a prompt's examples, and the examples.

A few-shot prompt repeats its format in every demonstration ("Question:", "Let's think
step by step", "The answer is 52", a JSON skeleton): that is what the model is meant to
copy, and a word scorer trained on prose drops it as filler. :func:`template_spans` finds
line openings (up to :data:`_MAX_WORDS` words) shared by lines in at least half of the
text's blank-line separated blocks (and three at least), and the whole line when only a
short value follows the opening (the answer's number). :func:`demonstrations` cuts the text
into the blocks that open with such a template line: the examples a coarse step keeps or
drops whole.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

__all__ = ["Demonstration", "demonstrations", "template_openings", "template_spans"]

_MAX_WORDS = 6
_MIN_BLOCKS = 3
_SHORT_REST = 16  # characters after an opening that still belong to it ("115", "$3.50")
_WORD = re.compile(r"\S+")
_BLOCK_GAP = re.compile(r"\n[ \t]*\n")


def _blocks(text: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    start = 0
    for gap in _BLOCK_GAP.finditer(text):
        if text[start : gap.start()].strip():
            spans.append((start, gap.start()))
        start = gap.end()
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def _openings(text: str) -> dict[str, list[tuple[int, int, int]]]:
    """Each line opening (its first k words, as text) -> (block, start, end) of the lines it opens."""
    found: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for block, (start, end) in enumerate(_blocks(text)):
        for line in re.finditer(r"[^\n]+", text[start:end]):
            words = list(_WORD.finditer(line.group()))[:_MAX_WORDS]
            base = start + line.start()
            for word in words:
                found[line.group()[: word.end()]].append((block, base, base + word.end()))
    return found


def _wanted(opening: str) -> bool:
    """An opening is structure when it is a label ("Question:") or several words, and not a number."""
    return (opening.endswith(":") or " " in opening) and not any(c.isdigit() for c in opening)


def template_openings(text: str) -> frozenset[str]:
    """The line openings that recur in at least half of the text's blocks (three at least)."""
    need = max(_MIN_BLOCKS, (len(_blocks(text)) + 1) // 2)
    return frozenset(
        opening
        for opening, places in _openings(text).items()
        if _wanted(opening) and len({block for block, _, _ in places}) >= need
    )


def template_spans(text: str, openings: frozenset[str] | None = None) -> list[tuple[int, int]]:
    """Sorted, disjoint spans of the lines' longest recurring openings (with a short value after
    them); ``openings`` as found in a larger text this one was cut from, else this text's own."""
    wanted = template_openings(text) if openings is None else openings
    if not wanted:
        return []
    longest = max(len(opening) for opening in wanted)
    spans: list[tuple[int, int]] = []
    for line in re.finditer(r"[^\n]+", text):
        head = line.group()[:longest]
        match = max((o for o in wanted if head.startswith(o)), key=len, default=None)
        if match is None:
            continue
        start, end = line.start(), line.start() + len(match)
        if len(text[end : line.end()].strip()) <= _SHORT_REST:
            end = line.end()
        spans.append((start, end))
    return spans


@dataclass(frozen=True, slots=True)
class Demonstration:
    """One example of a few-shot prompt: ``text[start:end]`` (a block opening with a template line)."""

    start: int
    end: int


def demonstrations(text: str) -> list[Demonstration]:
    """The blocks that open with the same template line as most blocks do (three at least)."""
    spans = template_spans(text)
    starts = {start for start, _ in spans}
    openers: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for start, end in _blocks(text):
        first = len(text[start:end]) - len(text[start:end].lstrip())
        if start + first in starts:
            head = next(text[s:e] for s, e in spans if s == start + first)
            openers[head.split(maxsplit=1)[0] if head.strip() else head].append((start, end))
    if not openers:
        return []
    chosen = max(openers.values(), key=len)
    return [Demonstration(start, end) for start, end in chosen] if len(chosen) >= _MIN_BLOCKS else []
