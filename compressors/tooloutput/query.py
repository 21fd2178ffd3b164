"""What an agent is after, pulled out of ``Ask.query``: paths, names, line numbers, rule codes, words.

The proxy builds the query from the task, the assistant's words before the call, the call's name and
arguments, and what recent outputs pointed at. Shapes keep first the lines it points at: a line that
holds a path, a name or a code of the query is *strong*; one that holds only a rare query word is weak.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Query"]

_PATH = re.compile(
    r"[\w.-]*/[\w./-]+|[\w-]+\.(?:py|pyi|js|jsx|ts|tsx|go|rs|java|c|h|cc|cpp|rb|json|yaml|yml|toml|md|txt|cfg|ini|log|sh)\b"
)
# identifiers that name something: snake_case, dotted.names, CamelCase, test ids, rule codes
_NAME = re.compile(
    r"[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)+|\w*_\w+|[A-Z][a-z0-9]+[A-Z]\w*|[a-z]+[A-Z]\w*"
    r"|\b[A-Z]{1,5}\d{2,5}\b|\b[a-z]+(?:-[a-z]+){1,4}\b"
)
_LINE_NO = re.compile(r"(?:\blines?\s+|:|\bL)(\d{1,6})\b")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]{3,}")
# words of every call and every task: they point at nothing in particular
_STOP = frozenset(
    [
        "task",
        "call",
        "bash",
        "command",
        "read",
        "file",
        "path",
        "pattern",
        "grep",
        "find",
        "check",
        "look",
        "this",
        "that",
        "with",
        "from",
        "into",
        "what",
        "which",
        "where",
        "when",
        "there",
        "their",
        "them",
        "they",
        "have",
        "been",
        "were",
        "will",
        "would",
        "should",
        "could",
        "about",
        "after",
        "before",
        "fix",
        "make",
        "made",
        "change",
        "changed",
        "since",
        "does",
        "doing",
        "done",
        "json",
        "python",
        "pytest",
        "tests",
        "test",
        "true",
        "false",
        "none",
        "null",
        "args",
        "arguments",
        "output",
        "outputs",
        "input",
        "show",
        "shows",
        "shown",
        "file_path",
        "tool",
        "result",
        "results",
        "error",
        "errors",
        "also",
        "line",
        "lines",
        "than",
        "then",
        "just",
        "only",
        "some",
        "more",
        "most",
        "other",
        "again",
        "failing",
        "fails",
        "fail",
        "diff",
        "status",
        "head",
        "cat",
        "git",
        "list",
        "format",
    ]
)


@dataclass(frozen=True, slots=True)
class Query:
    """The identifiers of a query; ``strong`` and ``weak`` are compiled alternations (or None)."""

    text: str
    names: frozenset[str]
    numbers: frozenset[int]
    words: frozenset[str]
    strong: re.Pattern[str] | None
    weak: re.Pattern[str] | None

    @classmethod
    def parse(cls, text: str | None, document: str = "") -> Query:
        """The query's identifiers; weak words are kept only when rare in ``document``."""
        text = text or ""
        names: set[str] = set()
        for match in _PATH.finditer(text):
            path = match.group(0).strip("./-")
            if len(path) >= 3:
                names.add(path)
                names.add(path.rsplit("/", 1)[-1])
        for match in _NAME.finditer(text):
            name = match.group(0)
            if len(name) >= 3 and name.lower() not in _STOP:
                names.add(name)
                if not _PATH.fullmatch(name):  # Context.invoke names invoke too; responses.py is a file
                    names.update(part for part in name.split(".") if len(part) >= 3)
        numbers = frozenset(int(m.group(1)) for m in _LINE_NO.finditer(text))
        low = document.lower()
        limit = max(3, document.count("\n") // 50)
        if document:
            # A name on most lines (the test file a whole run is of, the folder every grep hit is in)
            # points at nothing in particular: keeping what it matches would keep everything.
            common = max(20, document.count("\n") // 4)
            names = {name for name in names if document.count(name) <= common}
        words = {w.lower() for w in _WORD.findall(text)} - _STOP - {n.lower() for n in names}
        rare = frozenset(w for w in words if 0 < low.count(w) <= limit) if document else frozenset(words)
        return cls(text, frozenset(names), numbers, rare, _alternation(names, 0), _alternation(rare, re.I))

    def without(self, names: frozenset[str] | set[str]) -> Query:
        """The same query, pointing at none of ``names``."""
        kept = self.names - names
        return Query(self.text, kept, self.numbers, self.words, _alternation(kept, 0), self.weak)

    def strength(self, line: str) -> int:
        """2 if ``line`` holds a name or path of the query, 1 if only a rare query word, else 0."""
        if self.strong is not None and self.strong.search(line):
            return 2
        if self.weak is not None and self.weak.search(line):
            return 1
        return 0


def _alternation(items: set[str] | frozenset[str], flags: int) -> re.Pattern[str] | None:
    if not items:
        return None
    ordered = sorted(items, key=lambda item: (-len(item), item))  # longest first: deterministic
    return re.compile("|".join(re.escape(item) for item in ordered), flags)
