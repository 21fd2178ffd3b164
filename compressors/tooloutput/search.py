"""Search results (grep -rn, ripgrep): grouped by file; the hits the query points at first, every file's
first hit next, all kept when they fit; each file's omitted hits are one marker."""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence

from compressors.tooloutput.common import query_lines
from compressors.tooloutput.lines import Doc, Group, Selection
from compressors.tooloutput.shape import LineShape

__all__ = ["Search"]

# path:line:text (grep -n, rg --no-heading), path-line-text (context lines), path:text (grep -r)
_HIT = re.compile(r"^(?P<path>[^\s:][^:\n]*?)(?::(?P<line>\d+)[:-]|-(?P<ctx>\d+)-|:(?=\S))")
_HEADING_HIT = re.compile(r"^(?P<line>\d+)[:-]")  # rg --heading: a path line, then numbered hits


def _files(lines: Sequence[str]) -> list[str]:
    """The file each line belongs to (rg's heading style and grep's prefix style both)."""
    out: list[str] = []
    current = ""
    for line in lines:
        hit = _HIT.match(line)
        if hit and not _HEADING_HIT.match(line):
            current = hit["path"]
        elif line.strip() and not _HEADING_HIT.match(line) and line != "--":
            current = line.strip()  # a heading
        out.append(current)
    return out


class Search(LineShape):
    name = "search"

    def score(self, doc: Doc) -> float:
        sample = [line for line in doc.sample if line.strip() and line != "--"]
        if len(sample) < 3:
            return 0.0
        numbered = sum(1 for line in sample if (m := _HIT.match(line)) and (m["line"] or m["ctx"]))
        prefixed = sum(1 for line in sample if _HIT.match(line) or _HEADING_HIT.match(line))
        if numbered >= 0.8 * len(sample):
            return 0.9
        return 0.6 if prefixed >= 0.9 * len(sample) else 0.0

    def select(self, doc: Doc) -> Selection:
        files = _files(doc.lines)
        seen: set[str] = set()
        firsts: list[int] = []
        for i, path in enumerate(files):
            if path not in seen:
                seen.add(path)
                firsts.append(i)
        ranked = firsts + list(range(len(doc.lines)))

        def key(i: int, keep: Sequence[bool]) -> Hashable:
            return files[i]

        def describe(doc: Doc, members: Sequence[int]) -> Group:
            return Group(len(members), "lines", doc.lines[members[0]])

        return Selection(set(), ranked, describe, key, pointed=query_lines(doc))
