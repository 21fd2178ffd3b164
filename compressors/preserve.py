"""The preserve engine shared by all compressors: spans that survive byte for byte.

(Interface placeholder: the engine itself lands with the compressors issue.)
"""

from __future__ import annotations

import re
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
                raise ValueError(f"unknown preserve category {item!r} (known: {', '.join(CATEGORIES)}, all, none)")
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


def split_tags(text: str) -> list[Region]:
    """Split ``text`` at inline tags. Text without tags is one ``compress`` region.

    PLACEHOLDER: the real engine lands with the compressors issue.
    """
    return [Region(text, "compress")]


def find_spans(text: str, spec: PreserveSpec) -> list[Span]:
    """Spans of ``text`` that ``spec`` preserves: sorted, non-overlapping.

    PLACEHOLDER: the real engine lands with the compressors issue.
    """
    return []
