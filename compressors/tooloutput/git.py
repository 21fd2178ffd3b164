"""git log (with or without --stat/-p), git show and git diff: commit headers, file headers and hunk
headers kept; the files and hunks the query names first; bulk stats and hunk bodies collapse."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Sequence

from compressors.tooloutput.common import query_lines
from compressors.tooloutput.lines import Doc, Group, Selection
from compressors.tooloutput.shape import LineShape

__all__ = ["Git"]

_COMMIT = re.compile(r"^commit [0-9a-f]{7,40}\b")
_DIFF = re.compile(r"^diff --git |^diff --cc ")
_HUNK = re.compile(r"^@@+ ")
_FILE_META = re.compile(
    r"^(?:index [0-9a-f]+\.\.|--- |\+\+\+ |new file mode|deleted file mode|similarity index|rename (?:from|to) "
    r"|old mode|new mode|Binary files)"
)
_HEADER = re.compile(r"^(?:Author|AuthorDate|Commit|CommitDate|Date|Merge):\s")
_STAT = re.compile(r"^ \S.* \| +(?:\d+ ?[+-]*|Bin\b.*)$")
_STAT_SUM = re.compile(r"^ \d+ files? changed\b")


def _classes(lines: Sequence[str]) -> list[str]:
    """One class per line: commit, subject, header, body, stat, statsum, diff, meta, hunk, change, context."""
    out: list[str] = []
    after_header = False  # the next non-blank indented line is the subject
    for line in lines:
        if _COMMIT.match(line):
            kind, after_header = "commit", False
        elif _HEADER.match(line):
            kind, after_header = "header", True
        elif after_header and line.startswith("    ") and line.strip():
            kind, after_header = "subject", False
        elif _DIFF.match(line):
            kind = "diff"
        elif _FILE_META.match(line):
            kind = "meta"
        elif _HUNK.match(line):
            kind = "hunk"
        elif _STAT_SUM.match(line):
            kind = "statsum"
        elif _STAT.match(line):
            kind = "stat"
        elif line[:1] in ("+", "-"):
            kind = "change"
        elif line.startswith("    "):
            kind = "body"
        else:
            kind = "context"
        out.append(kind)
    return out


def _files(lines: Sequence[str], classes: Sequence[str]) -> list[str]:
    """The file each diff line belongs to ('' outside diffs)."""
    out: list[str] = []
    current = ""
    for line, kind in zip(lines, classes, strict=True):
        if kind == "diff":
            current = line.rsplit(" b/", 1)[-1]
        elif kind == "commit":
            current = ""
        out.append(current)
    return out


class Git(LineShape):
    name = "git"

    def score(self, doc: Doc) -> float:
        sample = doc.sample
        commits = sum(1 for line in sample if _COMMIT.match(line))
        diffs = sum(1 for line in sample if _DIFF.match(line) or _HUNK.match(line))
        if commits and any(_HEADER.match(line) for line in sample):
            return 0.95
        return 0.9 if diffs >= 1 and any(line.startswith(("--- ", "+++ ")) for line in sample) else 0.0

    def select(self, doc: Doc) -> Selection:
        lines = doc.lines
        classes = _classes(lines)
        files = _files(lines, classes)
        must = {i for i, kind in enumerate(classes) if kind in ("commit", "subject", "diff", "hunk")}
        pointed = query_lines(doc)
        named = {files[i] for i in pointed if files[i] and doc.query.strength(lines[i]) == 2}
        named |= {
            f for f in set(files) if f and (f in doc.query.names or f.rsplit("/", 1)[-1] in doc.query.names)
        }
        in_named = [i for i, f in enumerate(files) if f and f in named]
        order = ("header", "statsum", "meta", "body", "change", "context", "stat")
        by_class = {kind: [i for i, k in enumerate(classes) if k == kind] for kind in order}
        ranked = in_named + [i for kind in order for i in by_class[kind]]

        def key(i: int, keep: Sequence[bool]) -> Hashable:
            # a diff's omissions: one marker per file; a log's: one marker (ranges say where)
            return ("file", files[i]) if files[i] else ("log",)

        def describe(doc: Doc, members: Sequence[int]) -> Group:
            counts = Counter(classes[i] for i in members)
            if counts["stat"] == len(members):
                return Group(len(members), "files", doc.lines[members[0]])
            kinds = ",".join(f"{kind}:{n}" for kind, n in sorted(counts.items()))
            return Group(len(members), "lines", doc.lines[members[0]], kinds)

        why = "commit, file and hunk headers are never cut"
        # the files the query names, whole, before its other lines: what the next step reads
        return Selection(must, ranked, describe, key, why=why, pointed=in_named + pointed)
