"""Compiler, type-checker and linter output (mypy, tsc, ruff, eslint, cargo build, go build).

Diagnostics the query points at (a file, a rule code) and kinds that occur only a few times are kept
verbatim; a kind repeated more often is grouped into one marker per code that lists every file and
line number, so no diagnostic is lost; source excerpts under kept diagnostics collapse into one marker;
summary lines are always kept, so a run with errors never reads as clean.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from compressors.tooloutput.lines import Doc, Group, Selection
from compressors.tooloutput.shape import LineShape

__all__ = ["Diagnostics"]

_RARE = 5  # a kind seen this often or less is kept verbatim
# path:line[:col]: [severity[code]:] message   (mypy, go, gcc, ruff concise, pyright-like)
_COLON = re.compile(
    r"^(?P<file>[^\s:][^:\n]*\.[A-Za-z0-9]+):(?P<line>\d+)(?::(?P<col>\d+))?:?\s+(?:-\s+)?"
    r"(?:(?P<sev>error|warning|note|info|hint)(?:\[(?P<bracket>[^\]]+)\])?\s*(?P<ts>TS\d+)?:?\s+)?"
    r"(?P<msg>.*)$"
)
_TSC = re.compile(
    r"^(?P<file>[^\s(][^(\n]*)\((?P<line>\d+),\d+\): (?P<sev>error|warning) (?P<ts>TS\d+): (?P<msg>.*)$"
)
_RUST_HEAD = re.compile(r"^(?P<sev>error|warning)(?:\[(?P<bracket>[A-Z]?\d+)\])?: (?P<msg>.*)$")
_ARROW = re.compile(r"^\s*--> (?P<file>[^\s:]+):(?P<line>\d+)(?::\d+)?")
_RUFF_HEAD = re.compile(r"^(?P<code>[A-Z]{1,4}\d{2,4}) (?:\[\*\] )?(?P<msg>.*)$")
_ESLINT = re.compile(
    r"^\s+(?P<line>\d+):\d+\s+(?P<sev>error|warning)\s+(?P<msg>.*?)\s{2,}(?P<rule>[\w@/-]+)$"
)
_CODE_TAIL = re.compile(r"\s\[(?P<code>[\w-]+)\]\s*$")
_CODE_LINE = re.compile(r"^\[(?P<code>[\w-]+)\]$")
_LEAD_CODE = re.compile(r"^(?P<code>[A-Z]{1,5}\d{2,5}|[A-Z]+\d+) ")
_QUOTED = re.compile(r"\"[^\"]*\"|'[^']*'|`[^`]*`|\d+")
_SUMMARY = re.compile(
    r"^Found \d+ errors?\b|^Success: no issues|^Found \d+ error|error: could not compile|^error: aborting"
    r"|\b\d+ problems? \(|^\u2716 \d+ problems?|generated \d+ warnings?|^\[\*\] \d+ fixable|^All checks passed"
    r"|^Found \d+ errors? in \d+ files?|^\d+ errors?( and \d+ warnings?)? found|^FAIL\b|^Checked \d+ files?"
)


@dataclass(frozen=True, slots=True)
class _Diag:
    head: int  # first line
    end: int  # one past its last line
    file: str
    line: int
    kind: str  # the rule code, else the message with its varying parts masked
    head_end: int = 0  # one past the head's last line (a wrapped message); 0: the head is one line


def _kind(match: re.Match[str], fallback_msg: str) -> str:
    groups = match.groupdict()
    for name in ("bracket", "ts", "code", "rule"):
        if groups.get(name):
            return str(groups[name])
    code = _CODE_TAIL.search(fallback_msg) or _LEAD_CODE.match(fallback_msg)
    if code:
        return code.group("code")
    return _QUOTED.sub("_", fallback_msg)[:60]


def _head(lines: Sequence[str], i: int, eslint_file: str) -> _Diag | None:
    line = lines[i]
    match = _COLON.match(line) or (_TSC.match(line) if "(" in line else None)
    if match:
        if not (match["sev"] or match.groupdict().get("col")):
            return None  # grep's path:line:text has neither a severity nor a column
        return _colon_diag(lines, i, match)
    if line[:1] in ("e", "w") or line[:1].isupper():
        match = _RUST_HEAD.match(line) or _RUFF_HEAD.match(line)
        if match:
            for j in range(i + 1, min(i + 4, len(lines))):
                if arrow := _ARROW.match(lines[j]):
                    # the location line belongs to the head: without it the head says nothing of where
                    kind = _kind(match, match["msg"])
                    return _Diag(i, i + 1, arrow["file"], int(arrow["line"]), kind, j + 1)
        return None
    if eslint_file and (match := _ESLINT.match(line)):
        return _Diag(i, i + 1, eslint_file, int(match["line"]), match["rule"])
    return None


def _colon_diag(lines: Sequence[str], i: int, match: re.Match[str]) -> _Diag:
    file, number = match["file"], int(match["line"])
    if _CODE_TAIL.search(lines[i]) is None:
        for j in range(i + 1, min(i + 3, len(lines))):  # mypy --pretty wraps the message, its code last
            nxt = lines[j]
            if not nxt or nxt.startswith(" ") or _COLON.match(nxt):
                break
            code = _CODE_LINE.match(nxt) or _CODE_TAIL.search(nxt)
            if code:
                return _Diag(i, i + 1, file, number, code["code"], j + 1)
    return _Diag(i, i + 1, file, number, _kind(match, match["msg"]))


def _is_summary(line: str) -> bool:
    # summaries start at the margin; an indented line (most excerpt lines) skips the slow search
    return bool(line) and line[0] not in " \t" and _SUMMARY.search(line) is not None


def _continues(line: str) -> bool:
    """A line under a diagnostic: its source excerpt, caret, code, note or help."""
    return bool(line) and (
        line[0] in " \t|^=" or bool(_CODE_LINE.match(line)) or line.startswith(("help:", "note:", "  "))
    )


def parse(lines: Sequence[str]) -> list[_Diag]:
    """The diagnostics of an output, each with the lines under it (excerpt, code, notes)."""
    heads: list[_Diag] = []
    eslint_file = ""
    for i, line in enumerate(lines):
        if line and not line[0].isspace() and line.endswith((".js", ".ts", ".tsx", ".jsx", ".vue", ".mjs")):
            eslint_file = line.strip()  # eslint's stylish format: a path line, then its problems
        diag = _head(lines, i, eslint_file)
        if diag is not None:
            heads.append(diag)
    starts = {d.head for d in heads}
    out: list[_Diag] = []
    for diag in heads:
        end = diag.head + 1
        end = max(end, diag.head_end)
        while end < len(lines) and end not in starts and not _is_summary(lines[end]):
            line = lines[end]
            blank_inside = not line.strip() and end + 1 < len(lines) and _continues(lines[end + 1])
            if not (_continues(line) or blank_inside) or (end + 1 in starts and not line.strip()):
                break
            end += 1
        end = max(end, diag.head_end)
        out.append(_Diag(diag.head, end, diag.file, diag.line, diag.kind, diag.head_end))
    return out


class Diagnostics(LineShape):
    name = "diagnostics"

    def score(self, doc: Doc) -> float:
        sample = doc.sample
        diags = parse(sample)
        if len(diags) < 3:
            return 0.0
        covered = sum(d.end - d.head for d in diags)
        summary = any(_SUMMARY.search(line) for line in sample)
        return min(0.95, covered / max(1, len([x for x in sample if x.strip()])) + (0.2 if summary else 0.0))

    def select(self, doc: Doc) -> Selection:
        lines, query = doc.lines, doc.query
        diags = parse(lines)
        counts = Counter(d.kind for d in diags)
        owner = [-1] * len(lines)
        for n, d in enumerate(diags):
            for i in range(d.head, d.end):
                owner[i] = n
        must = {i for i, line in enumerate(lines) if owner[i] < 0 and _SUMMARY.search(line)}
        pointed: list[int] = []
        frequent: list[_Diag] = []
        for d in diags:
            named = query.strength(lines[d.head]) == 2 or d.file in query.names or d.kind in query.names
            if named:  # what the query points at first, excerpts and all (a frequent kind: if it fits)
                pointed.extend(range(d.head, d.end))
            if counts[d.kind] <= _RARE or (named and d.kind in query.names):
                must.update(range(d.head, max(d.head + 1, d.head_end)))
            else:
                frequent.append(d)
        frequent.sort(key=lambda d: (counts[d.kind], d.head))
        others = [i for i in range(len(lines)) if owner[i] < 0 and i not in must]
        ranked = pointed + others + [d.head for d in frequent] + list(range(len(lines)))

        # Outputs are sorted by file: one marker per file keeps its lines= to few ranges; when
        # files hold one or two diagnostics each, one marker per kind is shorter.
        per_file = len({d.file for d in frequent}) * 3 <= len(frequent)

        def key(i: int, keep: Sequence[bool]) -> Hashable | None:
            if owner[i] < 0:
                return None
            d = diags[owner[i]]
            return ("file", d.file) if per_file else ("kind", d.kind)

        def describe(doc: Doc, members: Sequence[int]) -> Group:
            if owner[members[0]] < 0:
                return Group(len(members), "lines", doc.lines[members[0]])
            gone = [diags[owner[i]] for i in members if diags[owner[i]].head == i]
            excerpt = len(members) - len(gone)
            kinds = _listing(gone, per_file) + (f" excerpt-lines:{excerpt}" if excerpt else "")
            if not gone:
                return Group(len(members), "lines", doc.lines[members[0]], kinds.strip())
            return Group(len(gone), "diagnostics", doc.lines[gone[0].head], kinds)

        return Selection(
            must, ranked, describe, key, why="rare or named diagnostics and summary lines are never cut"
        )


def _listing(gone: Sequence[_Diag], per_file: bool) -> str:
    """Every omitted diagnostic's line: ``file kind:1,2 kind:3`` or ``kind at file:1,2 file:3``."""
    if not gone:
        return ""
    groups: dict[str, list[str]] = {}
    for d in gone:
        groups.setdefault(d.kind if per_file else d.file, []).append(str(d.line))
    if per_file:
        return f"{gone[0].file} " + " ".join(f"{kind}:{','.join(n)}" for kind, n in groups.items())
    return f"{gone[0].kind} at " + " ".join(f"{file}:{','.join(n)}" for file, n in groups.items())
