"""Test runner output (pytest -v/-q, unittest, jest/vitest, go test, cargo test): passed and skipped
tests collapse to counts; every failure, error, traceback or assertion block and the summary lines are
kept verbatim, so a run with failures never reads as clean."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

from compressors.tooloutput.common import query_lines, traceback_blocks
from compressors.tooloutput.lines import Doc, Group, Selection
from compressors.tooloutput.shape import LineShape

__all__ = ["Tests"]

_PASS = re.compile(
    r"(?:::\S*|\.py) PASSED\b|^\S+::\S+ PASSED|\.\.\. ok$|^\s*--- PASS: |^=== (?:RUN|PAUSE|CONT|NAME) "
    r"|^test \S+ \.\.\. ok$|^\s*[\u2713\u2714\u221a] |^ PASS |^PASS "
)
_SKIP = re.compile(
    r" (?:SKIPPED|XFAIL|XPASS|XFAILED)\b|\.\.\. skipped|^\s*--- SKIP: |\.\.\. ignored$|^\s*[\u25cb\u21b7] "
)
_FAIL = re.compile(
    r" (?:FAILED|ERROR)\b|^(?:FAILED|ERROR) |\.\.\. (?:FAIL|ERROR|FAILED)$|^\s*--- FAIL: |^FAIL\b|^ FAIL "
    r"|^\s*[\u2715\u2717\u00d7\u2718] |panicked at |^(?:FAIL|ERROR): |^E\s{3}"
)
_SUMMARY = re.compile(
    r"^=+ .*\b(?:passed|failed|errors?|skipped|xfailed|deselected|no tests ran|warnings?)\b.* =+$"
    r"|^=+ short test summary info =+$|^\d+ (?:passed|failed|errors?|skipped)\b.*\bin [\d.]+m?s"
    r"|^Ran \d+ tests? in |^OK(?: \(.*\))?$|^FAILED \(|^(?:Tests?|Test Suites|Snapshots|Time):\s"
    r"|^test result: |^ok\s+\S+\s+(?:[\d.]+s|\(cached\))|^FAIL\s+\S+\s+[\d.]+s|^(?:PASS|FAIL)$"
    r"|^error: test failed|^failures:$|^\s*(?:\d+ (?:passing|failing|pending))\b"
)
_SCORE = re.compile(
    r"test session starts|^collected \d+ items|^Ran \d+ tests? in |^=== RUN |^--- (?:PASS|FAIL): "
    r"|^running \d+ tests?$|^test result: |^Test Suites: |^Tests:\s+\d|::\S+ (?:PASSED|FAILED)"
    r"|^\d+ (?:passed|failed)\b.* in [\d.]+s|^(?:FAIL|ERROR): test|^ok\s+\S+\s+[\d.]+s"
)
# Where a block of failure detail starts, and what ends it.
_BLOCK_START = re.compile(
    r"^=+ (?:FAILURES|ERRORS) =+$|^(?:FAIL|ERROR): \S|^---- \S.* stdout ----$|^\s*\u25cf |^\s*--- FAIL: "
    r"|^failures:$|^panic: "
)
_BLOCK_END = re.compile(r"^=+ (?!FAILURES|ERRORS)\S.* =+$|^Ran \d+ tests? in |^test result: |^Test Suites: ")


def _blocks(lines: Sequence[str]) -> set[int]:
    """Lines of failure detail: pytest's FAILURES/ERRORS sections, unittest's FAIL/ERROR blocks, cargo's
    ``---- x stdout ----``, jest's ``●`` blocks, go's ``--- FAIL`` with its indented lines."""
    found: set[int] = set()
    i, n = 0, len(lines)
    while i < n:
        if not _BLOCK_START.match(lines[i]):
            i += 1
            continue
        j = i + 1
        go = lines[i].lstrip().startswith("--- FAIL")
        while j < n and not _BLOCK_END.match(lines[j]):
            if go and not lines[j].startswith("    "):
                break  # go's detail is the indented lines under --- FAIL
            if _PASS.search(lines[j]) and not go:
                break  # back to plain results (unittest -v after its detail, cargo's next test)
            j += 1
        found.update(range(i, j))
        i = j
    return found


def _kind(line: str) -> str:
    if _FAIL.search(line):
        return "FAILED"
    if _PASS.search(line):
        return "PASSED"
    if _SKIP.search(line):
        return "SKIPPED"
    return "other"


class Tests(LineShape):
    name = "tests"

    def score(self, doc: Doc) -> float:
        hits = sum(1 for line in doc.sample if _SCORE.search(line))
        return 0.0 if not hits else min(0.95, 0.75 + 0.05 * hits)

    def select(self, doc: Doc) -> Selection:
        lines = doc.lines
        kinds = [_kind(line) for line in lines]
        must = {i for i, kind in enumerate(kinds) if kind == "FAILED"}
        must |= {i for i, line in enumerate(lines) if _SUMMARY.search(line)}
        must |= _blocks(lines) | traceback_blocks(lines)
        others = [i for i, kind in enumerate(kinds) if kind == "other" and i not in must]
        # passed and skipped tests are never ranked: they collapse to counts (the query may name one)
        ranked = others

        def describe(doc: Doc, members: Sequence[int]) -> Group:
            counts = Counter(kinds[i] for i in members)
            summary = ",".join(f"{kind}:{count}" for kind, count in sorted(counts.items()))
            if counts["other"] == 0:
                return Group(len(members), "tests", doc.lines[members[0]], summary)
            return Group(len(members), "lines", doc.lines[members[0]], summary)

        why = "failures, their tracebacks and the summary are never cut"
        pointed = query_lines(doc, [i for i in range(len(lines)) if i not in must])
        return Selection(must, ranked, describe, why=why, pointed=pointed)
