"""The one omission marker every compressor writes, and its parser (docs/markers.md).

    [<count> <unit>[ like "<example>"] omitted[; lines=<a>-<b>,...][; kinds=<summary>][; hash=<24 hex>]]

A marker says what was left out and how much; ``lines=`` gives the 1-based line ranges of the
original text it stands for, ``hash=`` the id under which the proxy stored the original
(``Ask.ref``: compressors never compute it). Nothing else in the code base formats or parses
markers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["MARKER_RE", "Marker", "example_of", "find_markers", "format_marker", "line_ranges"]

_EXAMPLE_CHARS = 60
_UNIT = re.compile(r"[a-z]+")
_HASH = re.compile(r"[0-9a-f]{24}")

# An example is written in double quotes; inside a JSON string those quotes arrive escaped (\").
MARKER_RE = re.compile(
    r"\[(?P<count>\d+) (?P<unit>[a-z]+)"
    r"(?: like \\?\"(?P<example>[^\"\n]*?)\\?\")?"
    r" omitted"
    r"(?:; lines=(?P<lines>\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*))?"
    r"(?:; kinds=(?P<kinds>[^;\]\n]*))?"
    r"(?:; hash=(?P<hash>[0-9a-f]{24}))?"
    r"\]"
)

LineRanges = tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Marker:
    """One parsed (or to-be-written) marker; ``lines`` are 1-based inclusive ranges."""

    count: int
    unit: str
    example: str | None = None
    lines: LineRanges = ()
    kinds: str | None = None
    ref: str | None = None

    def __str__(self) -> str:
        return format_marker(
            self.count, self.unit, example=self.example, lines=self.lines, kinds=self.kinds, ref=self.ref
        )


def example_of(text: str) -> str:
    """``text`` as a marker example: quotes and brackets made safe, one line, at most 60 chars."""
    safe = text.replace('"', "'").replace("]", ")").replace("\\", "/")
    safe = " ".join(safe.split())
    if len(safe) > _EXAMPLE_CHARS:
        safe = safe[: _EXAMPLE_CHARS - 3].rstrip() + "..."
    return safe


def _kinds_of(text: str) -> str:
    return " ".join(text.replace(";", ",").replace("]", ")").split())


def format_marker(
    count: int,
    unit: str,
    *,
    example: str | None = None,
    lines: Iterable[tuple[int, int]] = (),
    kinds: str | None = None,
    ref: str | None = None,
) -> str:
    """The marker text (no newline). ``example`` is made safe here; ``ref`` must be 24 lowercase hex."""
    if count < 0 or not _UNIT.fullmatch(unit):
        raise ValueError(f"bad marker count/unit: {count!r} {unit!r}")
    parts = [f"[{count} {unit}"]
    if example:
        parts.append(f' like "{example_of(example)}"')
    parts.append(" omitted")
    ranges = ",".join(f"{a}-{b}" for a, b in lines)
    if ranges:
        parts.append(f"; lines={ranges}")
    if kinds:
        parts.append(f"; kinds={_kinds_of(kinds)}")
    if ref is not None:
        if not _HASH.fullmatch(ref):
            raise ValueError(f"marker hash must be 24 lowercase hex, got {ref!r}")
        parts.append(f"; hash={ref}")
    parts.append("]")
    return "".join(parts)


def _parse_ranges(text: str | None) -> LineRanges:
    if not text:
        return ()
    out: list[tuple[int, int]] = []
    for item in text.split(","):
        a, _, b = item.partition("-")
        out.append((int(a), int(b or a)))
    return tuple(out)


def find_markers(text: str) -> list[tuple[int, int, Marker]]:
    """Every marker in ``text``: ``(start, end, marker)``, in order."""
    found: list[tuple[int, int, Marker]] = []
    if "omitted" not in text:  # cheap guard: most texts have none
        return found
    for match in MARKER_RE.finditer(text):
        marker = Marker(
            int(match["count"]),
            match["unit"],
            match["example"],
            _parse_ranges(match["lines"]),
            match["kinds"],
            match["hash"],
        )
        found.append((match.start(), match.end(), marker))
    return found


def line_ranges(numbers: Sequence[int]) -> LineRanges:
    """Sorted 1-based line numbers as ``((first, last), ...)`` runs."""
    out: list[tuple[int, int]] = []
    for n in numbers:
        if out and n == out[-1][1] + 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return tuple(out)
