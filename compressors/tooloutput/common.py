"""Line classes several shapes share: error-like lines, tracebacks, masks of similar lines, orders."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence

from compressors.tooloutput.lines import Doc

__all__ = [
    "ERROR_LIKE",
    "head_tail_order",
    "masks",
    "query_lines",
    "rare_first",
    "traceback_blocks",
]

ERROR_LIKE = re.compile(
    r"\b(?:error|errors|exception|traceback|fatal|panic|panicked|failed|failure|critical|segmentation fault"
    r"|warning|warn|denied|refused|timed? ?out|abort(?:ed)?|assert(?:ion)?)\b|\bE\d{3,4}\b|^E   ",
    re.IGNORECASE,
)
# What varies between otherwise equal lines: timestamps, UUIDs, hex, numbers, ports, quoted values.
_MASK = re.compile(
    r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2})?(?:[.,]\d+)?Z?"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|0x[0-9a-fA-F]+|\b[0-9a-f]{7,}\b|\d+"
)
_TRACE_START = re.compile(
    r"^\s*Traceback \(most recent call last\):|^\s*panic: |^goroutine \d+ \[|^Exception in thread "
)
_JAVA_FRAME = re.compile(r"^\s+at \S|^\s*Caused by: |^\s+\.\.\. \d+ more")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Warning)\b|^\w+(?:\.\w+)+:")


def masks(lines: Sequence[str]) -> list[str]:
    """Each line with its varying parts masked: equal masks are similar lines (one pass over the
    joined text: nothing the mask matches spans a newline)."""
    return _MASK.sub("#", "\n".join(lines)).split("\n")


def traceback_blocks(lines: Sequence[str]) -> set[int]:
    """Lines of Python tracebacks, Java/Go stack traces: each block whole, its final message line included."""
    found: set[int] = set()
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        if _TRACE_START.match(line):
            j = i + 1
            while j < n and (
                lines[j][:1] in (" ", "\t") or _TRACE_START.match(lines[j]) or not lines[j].strip()
            ):
                if not lines[j].strip() and j + 1 < n and lines[j + 1][:1] not in (" ", "\t"):
                    break
                j += 1
            while j < n and (
                _EXCEPTION_LINE.match(lines[j]) or lines[j].startswith(("During handling", "The above"))
            ):
                j += 1  # the exception line(s), chained causes' headers
                while j < n and (lines[j][:1] in (" ", "\t") or _TRACE_START.match(lines[j])):
                    j += 1
            found.update(range(i, j))
            i = max(j, i + 1)
        elif _JAVA_FRAME.match(line) and i > 0:
            j = i
            while j < n and _JAVA_FRAME.match(lines[j]):
                j += 1
            found.update(range(i - 1, j))
            i = j
        else:
            i += 1
    return found


def query_lines(doc: Doc, candidates: Iterable[int] | None = None) -> list[int]:
    """Lines the query points at: strong ones first, then weak ones, each in order."""
    if doc.query.strong is None and doc.query.weak is None:
        return []
    strong: list[int] = []
    weak: list[int] = []
    for i in candidates if candidates is not None else range(len(doc.lines)):
        hit = doc.query.strength(doc.lines[i])
        if hit == 2:
            strong.append(i)
        elif hit == 1:
            weak.append(i)
    return strong + weak


def head_tail_order(indices: Sequence[int]) -> list[int]:
    """Two from the head for one from the tail: what a cut keeps first."""
    out: list[int] = []
    lo, hi = 0, len(indices) - 1
    while lo <= hi:
        out.append(indices[lo])
        lo += 1
        if lo <= hi:
            out.append(indices[lo])
            lo += 1
        if lo <= hi:
            out.append(indices[hi])
            hi -= 1
    return out


def rare_first(indices: Sequence[int], line_masks: Sequence[str]) -> list[int]:
    """The first line of each kind, rarest kinds first; then the rest in head/tail order."""
    counts = Counter(line_masks[i] for i in indices)
    seen: set[str] = set()
    firsts: list[int] = []
    rest: list[int] = []
    for i in indices:
        mask = line_masks[i]
        if mask in seen:
            rest.append(i)
        else:
            seen.add(mask)
            firsts.append(i)
    firsts.sort(key=lambda i: (counts[line_masks[i]], i))
    return firsts + head_tail_order(rest)
