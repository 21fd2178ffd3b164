"""File reads: with line numbers (``cat -n``, Claude Code's Read ``     1→``) or without (``cat``,
``sed -n``, what Codex-style agents run) when the text is source code. The regions the query points
at are kept (a definition it names: the whole body; with numbers, the lines around a named line), the
rest is outlined: class and function signatures kept, the lines between them markers whose ``lines=``
ranges say where they were."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Sequence

from compressors.markers import format_marker
from compressors.tooloutput.diagnostics import Diagnostics
from compressors.tooloutput.git import Git
from compressors.tooloutput.lines import Doc, Group, Selection, fit
from compressors.tooloutput.logs import Logs
from compressors.tooloutput.query import Query
from compressors.tooloutput.shape import Cut, LineShape
from compressors.tooloutput.tests import Tests

__all__ = ["FileRead"]

_NUMBERED = re.compile(r"^ *(\d+)(?:\t|\u2192)")
_DEF = re.compile(
    r"^(?P<indent>\s*)(?:@|(?:export\s+)?(?:default\s+)?(?:pub(?:\(\w+\))?\s+)?(?:async\s+)?"
    r"(?:def|class|function|func|fn|struct|interface|trait|impl|enum|type|module|namespace)\s+"
    r"(?:\([^)]*\)\s*)?(?P<name>[A-Za-z_$][\w$]*))"
)
_CONTEXT = 4  # lines kept around a line the query names
_BODY_CAP = 200  # a named definition's body is kept up to this many lines
_NEAR = 12  # lines kept around a line number the query names
_INNER: tuple[LineShape, ...] = (Tests(), Diagnostics(), Git(), Logs())  # what a read file may hold
_INNER_THRESHOLD = 0.6
_CALL = re.compile(r"^Call: (.*)$", re.M)  # the proxy's query line of the call and its arguments
_RECENT = "\nRecent:\n"  # where the proxy's query turns from what the agent said to other outputs' lines
# A 24-hex id of average token count (o200k: 25-34 tokens a marker, 30 on average): the outline's
# budget is then the same whatever the read's real id, so the same read gets the same budget.
_TYPICAL_REF = "f45d5cdaac7fad4b4ccb5eba"
_OUTLINE_SLACK = 1.1  # the outline's estimate, rounded up: a budget it fits in, not one it misses
# Source read without line numbers: below the content shapes' confident scores (a test run's
# traceback quotes ``def`` lines too), above search (0.6) and the fallback.
_SOURCE_SCORE = 0.7
_SOURCE_DEFS = 3  # definitions a sample needs, at least, and 1 per 80 lines
# A line a source file starts with at column 0 (imports, package lines, comments, docstrings).
_SOURCE_LINE = re.compile(
    r"^(?:import |from \S+ import |#|\"\"\"|'''|package |use |const |let |var |//|/\*|export |module )"
)


def _content(line: str) -> str:
    match = _NUMBERED.match(line)
    return line[match.end() :] if match else line


def _indent(text: str) -> int:
    return len(text) - len(text.lstrip(" \t"))


class FileRead(LineShape):
    name = "fileread"

    def compress(self, doc: Doc, budget: int) -> Cut:
        """A read of a test log, a server log or linter output is that shape under line numbers: its
        selection is made on the lines' contents (same indices), its lines kept with their numbers."""
        content = [_content(line) for line in doc.lines]
        inner = Doc(doc.text, content, doc.query, doc.ref, doc.tokenizer, doc.tokens)
        scored = [(shape.score(inner), n, shape) for n, shape in enumerate(_INNER)]
        score, _, shape = max(scored, key=lambda item: (item[0], -item[1]))
        sel = shape.select(inner) if score > _INNER_THRESHOLD else self.select(doc)
        fitted = fit(doc, sel, budget)
        return Cut(fitted.text, fitted.tokens, fitted.met, fitted.note)

    def score(self, doc: Doc) -> float:
        sample = doc.sample
        numbered = [m for m in map(_NUMBERED.match, sample) if m]
        if len(sample) < 5:
            return 0.0
        if len(numbered) < 0.9 * len(sample):
            return _SOURCE_SCORE if _source(sample) else 0.0
        numbers = [int(m.group(1)) for m in numbered]
        rising = sum(1 for a, b in itertools.pairwise(numbers) if b == a + 1)
        return 0.97 if rising >= 0.8 * (len(numbers) - 1) else 0.0

    def unpointed_budget(self, doc: Doc, lower: int) -> int | None:
        """None when the query points into the read (:func:`_points_into`) or the read has no
        definitions (a changelog has no outline to fall back on). Else the read's outline, at
        least ``lower``: every definition line and a marker per gap, what a next step names and
        gets back by ``lines=`` and ``hash=``."""
        content = [_content(line) for line in doc.lines]
        defs = [i for i, text in enumerate(content) if _DEF.match(text)]
        if not defs or _points_into(doc, content):
            return None
        costs = doc.costs()
        gaps = sum(1 for a, b in itertools.pairwise([-1, *defs, len(content)]) if b > a + 1)
        marker = doc.tokenizer.count(format_marker(999, "lines", lines=[(1000, 1999)], ref=_TYPICAL_REF))
        outline = sum(costs[i] for i in defs) + marker * gaps
        return max(lower, round(outline * _OUTLINE_SLACK))

    def select(self, doc: Doc) -> Selection:
        content = [_content(line) for line in doc.lines]
        defs = [
            (i, m) for i, m in ((i, _DEF.match(text)) for i, text in enumerate(content)) if m and m["name"]
        ]
        must: set[int] = set()
        first: list[int] = []  # bodies of what the query names, then lines around its other hits
        for i, name, owner in _named_defs(content, defs):
            if name in doc.query.names:
                qualified = owner is not None and f"{owner}.{name}" in doc.query.names
                must.add(i)
                body = _body(content, i)
                first = body + first if qualified else first + body  # the qualified match first
        numbered = {
            int(m.group(1)): i for i, m in ((i, _NUMBERED.match(x)) for i, x in enumerate(doc.lines)) if m
        }
        for number in sorted(doc.query.numbers):
            if number in numbered:
                at = numbered[number]
                must.add(at)
                first.extend(_around(at, _NEAR, len(content)))
        strengths = [doc.query.strength(text) for text in content]
        hits: list[int] = []
        for _, i in sorted((-strength, i) for i, strength in enumerate(strengths) if strength):
            hits.extend(_around(i, _CONTEXT, len(content)))
        outline = sorted((_indent(m["indent"]), i) for i, m in defs)
        # The file's top-level outline (its classes and functions) comes before the lines around query
        # words: a few dozen lines that say where everything is, which the next step reads by number.
        top = [i for indent, i in outline if indent == 0]
        nested = [i for indent, i in outline if indent > 0]
        # A read the agent points nowhere into keeps its whole outline first (its budget is sized
        # for it): what other outputs' lines name says less about it than where things are. A read
        # without definitions has no outline: its lines rank as in a pointed one.
        pointed = not defs or _points_into(doc, content)
        ranked = (first + top + hits + nested) if pointed else (top + nested + first + hits)
        ranked += list(range(len(content)))  # then from the top

        def describe(doc: Doc, members: Sequence[int]) -> Group:
            return Group(len(members), "lines")  # the kept numbers and lines= say where: no example

        return Selection(
            must,
            ranked,
            describe,
            why="the definitions the query names are never cut",
            charge_markers=not pointed,  # an outline: a marker between every two kept lines
        )


def _points_into(doc: Doc, content: Sequence[str]) -> bool:
    """The query points into the read: a line number of a numbered read (a traceback's, a grep
    hit's), or a path or name the agent said or called with (the query before its ``Recent:``
    lines, docs/tooloutput.md) found on one of its lines, other than a name defined there several
    times (``__init__`` points at no one of them). A call that names a range (``offset``/``limit``,
    ``sed -n '120,180p'``, ``head -n 50``: any number in it) chose its lines: it points in too."""
    numbers = {int(m.group(1)) for m in map(_NUMBERED.match, doc.lines) if m}
    if numbers & doc.query.numbers:
        return True
    said_text = doc.query.text.split(_RECENT, 1)[0]
    call = _CALL.search(said_text)
    if call is not None and re.search(r"\d", call.group(1)):
        return True
    made = Counter(m["name"] for m in map(_DEF.match, content) if m and m["name"])
    said = Query.parse(said_text, doc.text)
    query = said.without({name for name, n in made.items() if n > 1})
    return any(query.strength(text) == 2 for text in content)


def _source(sample: Sequence[str]) -> bool:
    """Unnumbered lines that read as a source file: definitions at a steady rate, and a line at
    column 0 that only source starts with (an import, a comment, a docstring)."""
    defs = sum(1 for line in sample if _DEF.match(line))
    return defs >= max(_SOURCE_DEFS, len(sample) // 80) and any(_SOURCE_LINE.match(x) for x in sample)


def _named_defs(
    content: Sequence[str], defs: Sequence[tuple[int, re.Match[str]]]
) -> list[tuple[int, str, str | None]]:
    """``(line, name, enclosing class)`` of each definition (decorators skipped)."""
    out: list[tuple[int, str, str | None]] = []
    classes: list[tuple[int, str]] = []  # (indent, name) of the open classes
    for i, match in defs:
        indent = _indent(match["indent"])
        while classes and classes[-1][0] >= indent:
            classes.pop()
        owner = classes[-1][1] if classes else None
        out.append((i, match["name"], owner))
        if re.match(r"\s*(?:export\s+)?class\b", content[i]):
            classes.append((indent, match["name"]))
    return out


def _around(at: int, reach: int, n: int) -> list[int]:
    """Lines around ``at``, nearest first."""
    out = [at]
    for d in range(1, reach + 1):
        out.extend(i for i in (at - d, at + d) if 0 <= i < n)
    return out


def _body(content: Sequence[str], start: int) -> list[int]:
    """The definition at ``start``: until a non-blank line indented no deeper, capped."""
    indent = _indent(content[start])
    end = start + 1
    while end < len(content) and end - start < _BODY_CAP:
        text = content[end]
        if text.strip() and _indent(text) <= indent and not text.lstrip().startswith((")", "]", "}")):
            break
        end += 1
    while start > 0 and content[start - 1].lstrip().startswith("@"):
        start -= 1  # its decorators
    return list(range(start, end))
