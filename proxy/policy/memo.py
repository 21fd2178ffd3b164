"""A bounded, thread-safe LRU keyed by tuples, sized in bytes.

The policy engine keeps here the form each text part was first forwarded in,
so later turns re-send it byte-identical (provider prompt caches match on
exact prefixes), and token counts of texts it has seen.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Memo"]

V = TypeVar("V")

_ENTRY_OVERHEAD = 200  # bytes of dict/tuple/object bookkeeping per entry, roughly


class Memo(Generic[V]):
    """LRU of at most ``max_bytes``; each entry is charged the size the caller gives."""

    def __init__(self, *, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes_used(self) -> int:
        return self._bytes

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return None
            self._items.move_to_end(key)
            return entry[0]

    def setdefault(self, key: Hashable, value: V, *, size: int) -> V:
        """Store ``value`` unless ``key`` is present; return the stored value.

        First writer wins, so concurrent requests converge on one form."""
        with self._lock:
            entry = self._items.get(key)
            if entry is not None:
                self._items.move_to_end(key)
                return entry[0]
            cost = size + _ENTRY_OVERHEAD
            if cost > self.max_bytes:
                return value  # too big to keep; the caller still uses it
            self._items[key] = (value, cost)
            self._bytes += cost
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted
            return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0
