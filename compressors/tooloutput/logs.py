"""Logs: runs of similar lines collapse with a count and an example; every line at error, warning or
fatal level, every traceback and stack trace whole, and the first and last lines are kept."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from compressors.tooloutput.common import masks, query_lines, rare_first, traceback_blocks
from compressors.tooloutput.lines import Doc, Group, Selection
from compressors.tooloutput.shape import LineShape

__all__ = ["Logs"]

_LEVEL = r"(?:TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|ERR|CRITICAL|FATAL|SEVERE|PANIC)"
_LOG_LINE = re.compile(
    rf"^\[?\d{{4}}-\d{{2}}-\d{{2}}[T ]\d{{2}}:\d{{2}}|^\[?{_LEVEL}\b|^\w{{3}} [ \d]\d \d{{2}}:\d{{2}}:\d{{2}}"
    rf"|\blevel=\w+|^[IWEF]\d{{4}} \d{{2}}:|^\d{{2}}:\d{{2}}:\d{{2}}|^\[\d+(?:\.\d+)?\]|^\{{\"(?:time|ts|level)\""
)
_LEVEL_OF = re.compile(rf"\b({_LEVEL})\b|level=(\w+)|\"level\": ?\"(\w+)\"", re.IGNORECASE)
_SEVERE = frozenset({"WARN", "WARNING", "ERROR", "ERR", "CRITICAL", "FATAL", "SEVERE", "PANIC"})
_ENDS = 3
# An access log's server error (`"POST /login HTTP/1.1" 500`) is an error whatever its level says.
_SERVER_ERROR = re.compile(r'HTTP/\d(?:\.\d)?" 5\d\d\b')


def _level(line: str) -> str | None:
    match = _LEVEL_OF.search(line, 0, 120)  # the level sits near the start
    if match is None:
        return None
    return (match.group(1) or match.group(2) or match.group(3)).upper()


class Logs(LineShape):
    name = "logs"

    def score(self, doc: Doc) -> float:
        sample = [line for line in doc.sample if line.strip()]
        if len(sample) < 5:
            return 0.0
        hits = sum(1 for line in sample if _LOG_LINE.search(line))
        return min(0.95, hits / len(sample) * 1.1)

    def select(self, doc: Doc) -> Selection:
        n = len(doc.lines)
        levels = [_level(line) for line in doc.lines]
        severe = {i for i, level in enumerate(levels) if level in _SEVERE}
        severe |= {i for i, line in enumerate(doc.lines) if _SERVER_ERROR.search(line)}
        must = severe | traceback_blocks(doc.lines)
        must |= set(range(min(_ENDS, n))) | set(range(max(0, n - _ENDS), n))
        rest = [i for i in range(n) if i not in must]
        # The line before an error (the job or request that failed) first, while the budget lasts.
        first = {i - 1 for i in severe if i > 0} - must
        ranked = sorted(first) + rare_first([i for i in rest if i not in first], masks(doc.lines))

        def describe(doc: Doc, members: Sequence[int]) -> Group:
            counts = Counter(levels[i] or "other" for i in members)
            kinds = ",".join(f"{level}:{count}" for level, count in sorted(counts.items()))
            return Group(len(members), "lines", doc.lines[members[0]], kinds)

        why = "lines at warning level or above, tracebacks and the ends are never cut"
        return Selection(must, ranked, describe, why=why, pointed=query_lines(doc, rest))
