"""Shrinking a JSON document by its structure: minify, then digest its biggest arrays.

Used where a JSON document must get smaller without being dropped (``truncate`` on a preserved
JSON span, the ``tooloutput`` compressor's JSON shape). The result is always valid JSON: an array
that was digested keeps the items that match the query, its first items and its last one, and a
marker string (docs/markers.md) stands in each gap, e.g.
``"[38 records like \\"{'name': 'aiohttp', 'version': '3.9.5'}\\" omitted]"``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from compressors.markers import format_marker

__all__ = ["JsonShrink", "minify", "shrink"]

_FAR = 64  # characters per budget token beyond which the minified document is estimated, not counted
_GAP_CHARS = 90  # about a marker's length
_MIN_ITEMS = 4  # an array shorter than this is left whole
_PASSES = 8  # arrays digested at most, largest first
_SEPARATORS = (",", ":")
_AIM = 0.97  # aim a little under the budget: tokens per character vary across the document


@dataclass(frozen=True, slots=True)
class JsonShrink:
    """A shrunk document: its text, whether records were dropped, and how many items went."""

    text: str
    digested: bool
    omitted: int


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=_SEPARATORS, ensure_ascii=False)


def minify(text: str) -> tuple[Any, str] | None:
    """``(value, minified text)`` if ``text`` is one JSON object/array that round-trips, else None."""

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate key")  # minifying would lose one of them
        return dict(pairs)

    try:
        value = json.loads(text, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict | list):
        return None
    out = _dumps(value)
    try:
        if json.loads(out) != value:  # e.g. NaN
            return None
    except ValueError:
        return None
    return value, out


def _arrays(value: Any, found: list[list[Any]]) -> None:
    """Every list inside ``value`` with enough items to digest (iterative: deep documents are fine)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            if len(node) >= _MIN_ITEMS:
                found.append(node)
            stack.extend(node)
        elif isinstance(node, dict):
            stack.extend(node.values())


def _matches(item: str, terms: Sequence[str]) -> bool:
    low = item.lower()
    return any(term in low for term in terms)


def _digest(items: list[Any], room_chars: int, terms: Sequence[str], ref: str | None) -> int:
    """Digest ``items`` in place to about ``room_chars`` characters; returns how many went."""
    texts = [_dumps(item) for item in items]
    keep = [False] * len(items)
    keep[0] = keep[-1] = True
    used = len(texts[0]) + len(texts[-1])
    for i, text in enumerate(texts):  # what the query points at first (a gap before it: a marker)
        if not keep[i] and terms and _matches(text, terms):
            cost = len(text) + (0 if keep[i - 1] else _GAP_CHARS)
            if used + cost > room_chars:
                break
            keep[i], used = True, used + cost
    for i, text in enumerate(texts):  # then the first items
        if used + len(text) > room_chars:
            break
        if not keep[i]:
            keep[i], used = True, used + len(text)
    unit = "records" if all(isinstance(item, dict) for item in items) else "items"
    out: list[Any] = []
    gone = 0
    i = 0
    while i < len(items):
        if keep[i]:
            out.append(items[i])
            i += 1
            continue
        j = i
        while j < len(items) and not keep[j]:
            j += 1
        out.append(format_marker(j - i, unit, example=texts[i], ref=ref))
        gone += j - i
        i = j
    items[:] = out
    return gone


def shrink(
    text: str,
    budget: int,
    count: Callable[[str], int],
    *,
    terms: Sequence[str] = (),
    ref: str | None = None,
) -> JsonShrink | None:
    """``text`` minified and, while over ``budget`` tokens, its biggest arrays digested.

    ``terms`` (lowercase) pick the records kept first. None when ``text`` is not a JSON
    object/array. The result may still be over budget (a document of few, big values).
    """
    parsed = minify(text)
    if parsed is None:
        return None
    value, out = parsed
    # a document far over budget is not counted whole: about 3 characters a token (over-estimates
    # minified JSON's tokens, so the first digest cuts a little deeper); what comes out is counted
    tokens = count(out) if len(out) < budget * _FAR else len(out) // 3
    originals: dict[int, tuple[list[Any], int]] = {}  # digested array -> (its items, the room it got)
    gone: dict[int, int] = {}  # digested array -> items it lost

    def size(items: list[Any]) -> int:
        return len(_dumps(originals[id(items)][0] if id(items) in originals else items))

    for _ in range(_PASSES):
        if tokens <= budget:
            break
        arrays: list[list[Any]] = []
        _arrays(value, arrays)
        if not arrays:
            break
        biggest = max(arrays, key=size)
        if id(biggest) in originals:  # digested already: again, with its room scaled down
            items, room = originals[id(biggest)]
            room = int(room * budget * _AIM / max(tokens, 1))
        else:
            items = list(biggest)
            excess_chars = (tokens - budget * _AIM) * len(out) / max(tokens, 1)
            room = max(0, int(size(biggest) - excess_chars))
        originals[id(biggest)] = (items, room)
        biggest[:] = items
        gone[id(biggest)] = _digest(biggest, room, terms, ref)
        if not gone[id(biggest)]:
            break
        out = _dumps(value)
        tokens = count(out)
    omitted = sum(gone.values())
    return JsonShrink(out, omitted > 0, omitted)
