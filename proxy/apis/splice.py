"""Encoding a rewritten JSON body by splicing: only the values that changed are re-serialised.

The rewrite hook and the stream-usage injection return a new parsed body that
shares every unchanged value (the same Python object) with the parse of the
client's bytes. Re-serialising the whole body would change what the proxy never
meant to touch: orjson parses integers above 64 bits as floats
(``123456789012345678901234567890`` would be sent as ``1.2345678901234568e+29``),
rewrites number spellings and escapes, and refuses to serialise nesting deeper
than 254 levels that it parsed. So :func:`encode_rewrite` walks the original
bytes alongside both objects: a value that is the same object is copied byte for
byte, and only changed leaves (a compressed string, an added
``stream_options``) are serialised. If the splice cannot be made (e.g. duplicate
keys), the whole new body is serialised; if that fails too, the caller forwards
the original bytes (fail open).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

__all__ = ["encode_rewrite", "past_space", "value_end"]

_WS = re.compile(rb"[ \t\n\r]*")
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_SCALAR = re.compile(rb"-?[0-9][0-9.eE+-]*|true|false|null")
_TOKEN = re.compile(rb'[\[\]{}"]')


class _NoSplice(Exception):
    """The original bytes do not line up with the parsed body."""


def past_space(data: bytes, pos: int) -> int:
    """The index of the first byte at or after ``pos`` that is not JSON whitespace (no copy made)."""
    match = _WS.match(data, pos)
    return match.end() if match else pos


def value_end(data: bytes, pos: int) -> int:
    """The end of the JSON value starting at ``pos`` (no leading whitespace); iterative, any depth."""
    first = data[pos : pos + 1]
    if first == b'"':
        match = _STRING.match(data, pos)
        if match is None:
            raise _NoSplice
        return match.end()
    if first not in (b"{", b"["):
        match = _SCALAR.match(data, pos)
        if match is None:
            raise _NoSplice
        return match.end()
    depth = 0
    while True:
        found = _TOKEN.search(data, pos)
        if found is None:
            raise _NoSplice
        token = found.group()
        if token == b'"':
            string = _STRING.match(data, found.start())
            if string is None:
                raise _NoSplice
            pos = string.end()
            continue
        pos = found.end()
        depth += 1 if token in (b"{", b"[") else -1
        if depth == 0:
            return pos


def _members(data: bytes, start: int) -> list[tuple[bytes, int, int]]:
    """``(key bytes, value start, value end)`` of the object at ``start``."""
    out: list[tuple[bytes, int, int]] = []
    pos = past_space(data, start + 1)
    if data[pos : pos + 1] == b"}":
        return out
    while True:
        key = _STRING.match(data, pos)
        if key is None:
            raise _NoSplice
        pos = past_space(data, key.end())
        if data[pos : pos + 1] != b":":
            raise _NoSplice
        begin = past_space(data, pos + 1)
        end = value_end(data, begin)
        out.append((key.group(), begin, end))
        pos = past_space(data, end)
        if data[pos : pos + 1] == b"}":
            return out
        if data[pos : pos + 1] != b",":
            raise _NoSplice
        pos = past_space(data, pos + 1)


def _items(data: bytes, start: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each element of the array at ``start``."""
    out: list[tuple[int, int]] = []
    pos = past_space(data, start + 1)
    if data[pos : pos + 1] == b"]":
        return out
    while True:
        end = value_end(data, pos)
        out.append((pos, end))
        pos = past_space(data, end)
        if data[pos : pos + 1] == b"]":
            return out
        if data[pos : pos + 1] != b",":
            raise _NoSplice
        pos = past_space(data, pos + 1)


def _object(data: bytes, start: int, old: dict[str, Any], new: dict[str, Any], out: list[bytes]) -> None:
    members = _members(data, start)
    if len(members) != len(old):
        raise _NoSplice  # duplicate keys: which bytes hold the parsed value is ambiguous
    out.append(b"{")
    first = True
    for key_bytes, begin, end in members:
        key = orjson.loads(key_bytes)
        if key not in new:
            continue  # removed by the rewrite
        out.append(b"" if first else b",")
        first = False
        out.append(key_bytes + b":")
        _value(data, begin, end, old[key], new[key], out)
    for key, value in new.items():
        if key not in old:
            out.append(b"" if first else b",")
            first = False
            out.append(orjson.dumps(key) + b":" + orjson.dumps(value))
    out.append(b"}")


def _array(data: bytes, start: int, old: list[Any], new: list[Any], out: list[bytes]) -> None:
    items = _items(data, start)
    if len(items) != len(old):
        raise _NoSplice
    out.append(b"[")
    if len(new) == len(old):
        pairs = list(zip(items, old, new, strict=True))
    else:  # members dropped: the kept ones must be the original objects, in order
        pairs = []
        i = 0
        for value in new:
            while i < len(old) and old[i] is not value:
                i += 1
            if i == len(old):
                raise _NoSplice
            pairs.append((items[i], old[i], value))
            i += 1
    for n, ((begin, end), before, after) in enumerate(pairs):
        if n:
            out.append(b",")
        _value(data, begin, end, before, after, out)
    out.append(b"]")


def _value(data: bytes, begin: int, end: int, old: Any, new: Any, out: list[bytes]) -> None:
    if new is old:
        out.append(data[begin:end])
    elif isinstance(new, dict) and isinstance(old, dict) and data[begin : begin + 1] == b"{":
        _object(data, begin, old, new, out)
    elif isinstance(new, list) and isinstance(old, list) and data[begin : begin + 1] == b"[":
        _array(data, begin, old, new, out)
    elif type(new) is type(old) and new == old and not isinstance(new, (dict, list)):
        out.append(data[begin:end])
    else:
        out.append(orjson.dumps(new))


def splice(data: bytes, old: dict[str, Any], new: dict[str, Any]) -> bytes:
    """``data`` (which parsed to ``old``) with the values that differ in ``new`` replaced."""
    start = past_space(data, 0)
    if data[start : start + 1] != b"{":
        raise _NoSplice
    out: list[bytes] = []
    _object(data, start, old, new, out)
    return b"".join(out)


def encode_rewrite(data: bytes, old: dict[str, Any], new: dict[str, Any]) -> bytes | None:
    """The bytes to forward for ``new``, or None if it cannot be encoded (forward ``data``)."""
    try:
        return splice(data, old, new)
    except (_NoSplice, orjson.JSONEncodeError, orjson.JSONDecodeError, IndexError, TypeError):
        pass
    try:
        return orjson.dumps(new)
    except (orjson.JSONEncodeError, TypeError):
        return None
