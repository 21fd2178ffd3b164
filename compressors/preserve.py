"""The preserve engine shared by all compressors: spans that survive byte for byte.

:func:`find_spans` finds the spans a :class:`PreserveSpec` protects (code, JSON,
URLs, numbers...); compressors keep or drop each span as a whole unit.
:func:`split_tags` splits text at inline ``<keep>`` / ``<llmlingua ...>`` tags.
All patterns are compiled once, at import; scanning ~20k tokens takes a few ms.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["CATEGORIES", "PreserveSpec", "Region", "Span", "find_spans", "split_tags"]

# Names are the contract used by policies (`preserve: [code, urls, numbers]`).
CATEGORIES: tuple[str, ...] = (
    "code",  # fenced ``` blocks and `inline` code
    "json",  # JSON / YAML blocks
    "urls",
    "emails",
    "paths",  # file paths
    "numbers",
    "dates",  # dates, times and versions
    "ids",  # UUIDs, hashes, identifiers (snake_case, CamelCase, dotted.names)
    "quotes",  # quoted strings
)


@dataclass(frozen=True, slots=True)
class Span:
    start: int
    end: int
    category: str


@dataclass(frozen=True, slots=True)
class PreserveSpec:
    """Which spans to keep verbatim: built-in categories plus custom regexes."""

    categories: frozenset[str]
    patterns: tuple[re.Pattern[str], ...] = ()

    @classmethod
    def default(cls) -> PreserveSpec:
        return cls(frozenset(CATEGORIES))

    @classmethod
    def none(cls) -> PreserveSpec:
        return cls(frozenset())

    @classmethod
    def parse(cls, items: list[str | dict[str, str]]) -> PreserveSpec:
        """Parse a policy's ``preserve`` list: category names, ``all``, ``none``,
        or ``{regex: "..."}`` items. Raises ValueError naming the bad item."""
        categories: set[str] = set()
        patterns: list[re.Pattern[str]] = []
        for item in items:
            if isinstance(item, dict):
                if set(item) != {"regex"}:
                    raise ValueError(f"preserve item {item!r}: expected {{regex: ...}}")
                try:
                    patterns.append(re.compile(item["regex"]))
                except re.error as exc:
                    raise ValueError(f"preserve regex {item['regex']!r}: {exc}") from exc
            elif item == "all":
                categories.update(CATEGORIES)
            elif item == "none":
                continue
            elif item in CATEGORIES:
                categories.add(item)
            else:
                raise ValueError(
                    f"unknown preserve category {item!r} (known: {', '.join(CATEGORIES)}, all, none)"
                )
        return cls(frozenset(categories), tuple(patterns))


@dataclass(frozen=True, slots=True)
class Region:
    """A stretch of input between inline tags, the tags themselves removed.

    ``mode`` is ``compress`` (normal text), ``keep`` (``<keep>`` or
    ``<llmlingua, compress=False>``: verbatim) or ``rate`` (``<llmlingua, rate=R>``:
    compressed at its own ``rate``).
    """

    text: str
    mode: Literal["compress", "keep", "rate"]
    rate: float | None = None


# --- inline tags -------------------------------------------------------------

_TAG = re.compile(
    r"<keep>|</keep>|</llmlingua>"
    r"|<llmlingua\s*,?\s*(?:compress\s*=\s*(?P<compress>[A-Za-z]+)|rate\s*=\s*(?P<rate>[0-9]*\.?[0-9]+))\s*>",
    re.IGNORECASE,
)
_CLOSE = {tag: re.compile(re.escape(tag), re.IGNORECASE) for tag in ("</keep>", "</llmlingua>")}


def _open_tag(match: re.Match[str]) -> tuple[str, Literal["compress", "keep", "rate"], float | None] | None:
    """``(closing tag, mode, rate)`` for an opening tag, None for a closing or invalid one."""
    tag = match.group(0).lower()
    if tag == "<keep>":
        return "</keep>", "keep", None
    if tag.startswith("</"):
        return None
    if match.group("compress") is not None:
        flag = match.group("compress").lower()
        if flag not in ("false", "true"):
            return None
        return "</llmlingua>", ("keep" if flag == "false" else "compress"), None
    rate = float(match.group("rate"))
    if not 0.0 < rate <= 1.0:
        return None  # an impossible rate is left as literal text, not guessed at
    return "</llmlingua>", "rate", rate


def split_tags(text: str) -> list[Region]:
    """Split ``text`` at inline tags. Text without tags is one ``compress`` region.

    ``<keep>...</keep>`` and ``<llmlingua, compress=False>...</llmlingua>`` give
    ``keep`` regions, ``<llmlingua, rate=0.3>...</llmlingua>`` a ``rate`` region.
    Tags are removed; a tag without its partner (or with a bad value) stays as
    literal text. Regions do not nest: inside a region, text up to the first
    matching closing tag belongs to it. Empty regions are dropped.
    """
    if "<" not in text:
        return [Region(text, "compress")]
    regions: list[Region] = []
    plain: list[str] = []  # pending compress-mode text, joined lazily
    pos = 0
    search_from = 0
    while (match := _TAG.search(text, search_from)) is not None:
        opened = _open_tag(match)
        closed = _CLOSE[opened[0]].search(text, match.end()) if opened is not None else None
        if opened is None or closed is None:
            search_from = match.end()  # literal text: stays in the plain stream
            continue
        _, mode, rate = opened
        close_at = closed.start()
        plain.append(text[pos : match.start()])
        inner = text[match.end() : close_at]
        if mode == "compress":
            plain.append(inner)
        elif inner:
            _flush(plain, regions)
            regions.append(Region(inner, mode, rate))
        pos = search_from = closed.end()
    plain.append(text[pos:])
    _flush(plain, regions)
    return regions or [Region("", "compress")]


def _flush(plain: list[str], regions: list[Region]) -> None:
    joined = "".join(plain)
    plain.clear()
    if joined:
        regions.append(Region(joined, "compress"))


# --- spans ---------------------------------------------------------------------
# Speed: a pattern that starts with a literal or a character class lets `re` skip
# ahead quickly; a leading \b or lookbehind makes it try every position (10x
# slower). So patterns start with a character, and the "what may precede the
# match" check is done in Python on the (few) matches. Rare anchors ("@", "_",
# "/") are found first and the unit around them is matched from there.

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@dataclass(frozen=True, slots=True)
class _Rule:
    """A pattern scanned over the whole text. A match is dropped when the character
    before it is in ``not_after`` (or is a word character and ``word_boundary``),
    or when ``accept`` rejects its text. ``widen`` extends the match to the left
    over a currency sign and a minus (kept out of the pattern for speed)."""

    pattern: re.Pattern[str]
    not_after: str = ""
    word_boundary: bool = True
    accept: Callable[[str], bool] | None = None
    widen: bool = False


@dataclass(frozen=True, slots=True)
class _Anchored:
    """A pattern tried only around a rare ``anchor``: the match starts where the
    characters in ``extend`` (scanned back from the anchor) begin."""

    anchor: re.Pattern[str]
    pattern: re.Pattern[str]
    extend: frozenset[str]
    not_after: str = ""


_Scan = _Rule | _Anchored

_MONTH_NAMES = frozenset(
    [
        "jan",
        "january",
        "feb",
        "february",
        "mar",
        "march",
        "apr",
        "april",
        "may",
        "jun",
        "june",
        "jul",
        "july",
        "aug",
        "august",
        "sep",
        "sept",
        "september",
        "oct",
        "october",
        "nov",
        "november",
        "dec",
        "december",
    ]
)
_HEX_DIGITS = frozenset("0123456789")


def _is_month_date(text: str) -> bool:
    return text.split(" ", 1)[0].rstrip(".").lower() in _MONTH_NAMES


def _is_hex_id(text: str) -> bool:
    if "-" in text:
        return len(text) == 36 and text[8] == "-"  # the pattern already shaped the rest of a UUID
    has_digit = any(c in _HEX_DIGITS for c in text)
    return has_digit and (text.islower() or text.isupper()) and not text.isdigit()


# Month names are matched loosely by a leading character class (fast) and checked in Python.
_MONTH_LOOSE = (
    r"(?:an(?:uary)?|eb(?:ruary)?|ar(?:ch)?|pr(?:il)?|ay|une?|uly?|ug(?:ust)?"
    r"|ep(?:t(?:ember)?)?|ct(?:ober)?|ov(?:ember)?|ec(?:ember)?)"
)
_DATE_DIGIT = re.compile(
    r"\d(?:\d{3}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?(?!\w)"
    r"|\d?[/.]\d{1,2}[/.]\d{2,4}(?!\w)"
    rf"|\d?(?:st|nd|rd|th)? (?:of )?{_MONTH}(?:,? \d{{4}})?(?!\w)"
    r"|\d*\.\d+\.\d+(?:[-+][0-9A-Za-z.]*[0-9A-Za-z])?(?!\w)"
    r"|\d?:\d{2}(?::\d{2}(?:\.\d+)?)?(?:\s?[AaPp]\.?[Mm]\b\.?)?(?!\w))"
)
_IDENT_CHARS = _WORD_CHARS | frozenset(".")
_URL_TAIL = r"[^\s<>\"'`]*[^\s<>\"'`.,;:!?)\]}]"

_SCANS: dict[str, tuple[_Scan, ...]] = {
    "code": (
        _Rule(re.compile(r"```(`*)[^\n]*\n.*?\n[ \t]*```\1[ \t]*(?=\n|\Z)", re.DOTALL), word_boundary=False),
        _Rule(re.compile(r"~~~(~*)[^\n]*\n.*?\n[ \t]*~~~\1[ \t]*(?=\n|\Z)", re.DOTALL), word_boundary=False),
        _Rule(re.compile(r"``?(?!`)[^`\n]+?(?<!`)``?(?!`)"), not_after="`", word_boundary=False),
    ),
    "json": (
        # YAML-looking: a run of `key: value` / `- item` lines after a newline (see _yaml_spans).
        _Rule(
            re.compile(
                r"\n((?:[ \t]*(?:- )?[A-Za-z_][\w.-]*:(?:[ \t]+[^\n]{1,120})?[ \t]*(?:\n|\Z)"
                r"|[ \t]*- [^\n]{1,120}(?:\n|\Z)){2,})"
            ),
            word_boundary=False,
        ),
    ),
    "urls": (
        _Anchored(
            re.compile(r"://|www\."),
            re.compile(rf"(?:https?|ftp|file|wss?)://{_URL_TAIL}|www\.{_URL_TAIL}", re.IGNORECASE),
            frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"),
        ),
    ),
    "emails": (
        _Anchored(
            re.compile("@"),
            re.compile(r"[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?!\w)"),
            _WORD_CHARS | frozenset(".+-"),
        ),
    ),
    "paths": (
        _Anchored(
            re.compile(r"/"),
            # /abs/path, ~/x, ./rel, ../rel; a/b/c.py (two segments with an extension, or three)
            re.compile(
                r"(?:~|\.{1,2})?(?:/[\w.@+-]+)+/?"
                r"|[A-Za-z_.][\w.-]*(?:/[\w.-]+)+(?:\.[A-Za-z0-9]{1,8}(?!\w)|/[\w.-]+)"
            ),
            _WORD_CHARS | frozenset(".~-"),
            not_after="/.~:",
        ),
        _Anchored(
            re.compile(r":\\"),
            re.compile(r"[A-Za-z]:\\(?:[\w .-]+\\)*[\w.-]*"),
            frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"),
        ),
    ),
    "numbers": (
        _Rule(
            re.compile(r"\d(?:\d{0,2}(?:,\d{3})+|\d*)(?:\.\d+)?(?:[eE][-+]?\d+)?%?"),
            not_after=".,",
            widen=True,
        ),
    ),
    "dates": (
        _Rule(_DATE_DIGIT, not_after="."),
        _Rule(
            re.compile(
                rf"[ADFJMNOS]{_MONTH_LOOSE}\.? \d{{1,2}}(?:st|nd|rd|th)?(?:,? \d{{4}})?(?!\w)"
                rf"|[ADFJMNOS]{_MONTH_LOOSE} \d{{4}}(?!\w)"
            ),
            accept=_is_month_date,
        ),
        _Rule(re.compile(r"v\d+(?:\.\d+)*(?!\w)")),
    ),
    "ids": (
        # UUIDs, hex hashes (7+ hex digits, with a digit and a letter), 0x literals
        _Rule(
            re.compile(
                r"[0-9a-fA-F]{7,}(?:(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12})?(?!\w)|0x[0-9a-fA-F]+(?!\w)"
            ),
            accept=_is_hex_id,
        ),
        # CONSTANTS (three capitals or more)
        _Rule(re.compile(r"[A-Z][A-Z0-9]{2,}(?!\w)")),
        # snake_case, __dunder__
        _Anchored(re.compile("_"), re.compile(r"\w*[A-Za-z0-9]\w*_\w*|_+\w+"), _WORD_CHARS),
        # camelCase, CamelCase with an inner capital
        _Anchored(re.compile(r"[a-z0-9][A-Z]"), re.compile(r"\w+"), _WORD_CHARS),
        # dotted.names (segments of 2+ characters, so "e.g." stays prose)
        _Anchored(
            re.compile(r"\.[A-Za-z_]"),
            re.compile(r"[A-Za-z_]\w+(?:\.[A-Za-z_]\w+)+(?:\(\))?"),
            _IDENT_CHARS,
        ),
    ),
    "quotes": (
        _Rule(re.compile(r"\"[^\"\n]{1,300}\"(?![\w\"])"), not_after='"'),
        _Rule(re.compile(r"'(?=\S)[^'\n]{1,80}(?<=\S)'(?!\w)"), not_after="'"),
        _Rule(
            re.compile(r"\u201c[^\u201c\u201d\n]{1,300}\u201d|\u2018[^\u2018\u2019\n]{1,80}\u2019(?!\w)"),
            word_boundary=False,
        ),
    ),
}

# Where a JSON value can start: "{" before a key or "}", "[" before a value or "]".
_JSON_START = re.compile(r"\{\s*[\"}]|\[\s*[-\"\[{0-9tfn\]]")
_CURRENCY = "$\u20ac\u00a3\u00a5"
_MINUS = "-+\u2212"
_DECODER = json.JSONDecoder()
_CATEGORY_ORDER = {name: i for i, name in enumerate((*CATEGORIES, "custom"))}
_Candidate = tuple[int, int, str]


def _preceded_ok(text: str, start: int, not_after: str, word_boundary: bool) -> bool:
    if start == 0:
        return True
    prev = text[start - 1]
    return prev not in not_after and not (word_boundary and (prev.isalnum() or prev == "_"))


def _widen(text: str, start: int) -> int:
    """Extend a number left over a currency sign and a sign: "-$1,234", "+5"."""
    if start > 0 and text[start - 1] in _CURRENCY:
        start -= 1
    elif start > 1 and text[start - 1] == " " and text[start - 2] in _CURRENCY:
        start -= 2
    if start > 0 and text[start - 1] in _MINUS and (start == 1 or not text[start - 2].isalnum()):
        start -= 1
    return start


def _rule_spans(text: str, rule: _Rule, category: str) -> list[_Candidate]:
    found: list[_Candidate] = []
    for match in rule.pattern.finditer(text):
        start, end = match.span(match.lastindex or 0) if category == "json" else match.span()
        if end <= start or not _preceded_ok(text, start, rule.not_after, rule.word_boundary):
            continue
        if rule.accept is not None and not rule.accept(match.group(0)):
            continue
        found.append((_widen(text, start) if rule.widen else start, end, category))
    return found


def _anchored_spans(text: str, rule: _Anchored, category: str) -> list[_Candidate]:
    found: list[_Candidate] = []
    done = 0  # anchors inside an accepted match are skipped
    for hit in rule.anchor.finditer(text):
        at = hit.start()
        if at < done:
            continue
        start = at
        while start > 0 and text[start - 1] in rule.extend:
            start -= 1
        match = rule.pattern.match(text, start)
        if match is None or match.end() <= at or not _preceded_ok(text, start, rule.not_after, True):
            continue
        found.append((start, match.end(), category))
        done = match.end()
    return found


def _json_spans(text: str) -> list[_Candidate]:
    """Balanced ``{...}`` / ``[...]`` that parse as JSON (nested ones are inside the outer span)."""
    spans: list[_Candidate] = []
    pos = 0
    while (match := _JSON_START.search(text, pos)) is not None:
        start = match.start()
        try:
            _, end = _DECODER.raw_decode(text, start)
        except ValueError:
            pos = start + 1
            continue
        # "[1]" citation marks are JSON too; only structures with content inside count.
        if end - start > 2 and (text[start] == "{" or "," in text[start:end] or "\n" in text[start:end]):
            spans.append((start, end, "json"))
        pos = end
    return spans


def _yaml_spans(text: str, rule: _Rule) -> list[_Candidate]:
    """YAML-looking runs that are nested (indented) or three lines or more, with keys."""
    found: list[_Candidate] = []
    # the pattern starts at a newline (fast to find); the text's first line is tried apart
    first = rule.pattern.match("\n" + text)
    matches = [(0, first.group(1))] if first is not None else []
    matches += [(m.start(1), m.group(1)) for m in rule.pattern.finditer(text)]
    for start, block in matches:
        block = block.rstrip("\n")
        lines = block.split("\n")
        keys = sum(1 for line in lines if ":" in line and not line.lstrip().startswith("- "))
        nested = any(line[:1] in (" ", "\t") for line in lines)
        if keys >= 1 and (nested or len(lines) >= 3):
            found.append((start, start + len(block), "json"))
    return found


def _candidates(text: str, spec: PreserveSpec) -> list[_Candidate]:
    found: list[_Candidate] = []
    for category in sorted(spec.categories):
        for scan in _SCANS.get(category, ()):
            if isinstance(scan, _Anchored):
                found.extend(_anchored_spans(text, scan, category))
            elif category == "json":
                found.extend(_yaml_spans(text, scan))
            else:
                found.extend(_rule_spans(text, scan, category))
        if category == "json" and ("{" in text or "[" in text):
            found.extend(_json_spans(text))
    for pattern in spec.patterns:
        found.extend((m.start(), m.end(), "custom") for m in pattern.finditer(text) if m.end() > m.start())
    return found


def find_spans(text: str, spec: PreserveSpec) -> list[Span]:
    """Spans of ``text`` that ``spec`` preserves: sorted, non-overlapping.

    Overlapping candidates merge into one span (their union), named after the
    earliest, longest one; so no candidate is ever split between two spans.
    """
    if not text or (not spec.categories and not spec.patterns):
        return []
    found = _candidates(text, spec)
    # earliest first; at a tie the longest first; then a fixed category order (determinism)
    found.sort(key=lambda c: (c[0], -c[1], _CATEGORY_ORDER[c[2]]))
    spans: list[Span] = []
    cur_start, cur_end, cur_cat = -1, -1, ""
    for start, end, category in found:
        if start < cur_end:
            cur_end = max(cur_end, end)
            continue
        if cur_end > cur_start >= 0:
            spans.append(Span(cur_start, cur_end, cur_cat))
        cur_start, cur_end, cur_cat = start, end, category
    if cur_end > cur_start >= 0:
        spans.append(Span(cur_start, cur_end, cur_cat))
    return spans
