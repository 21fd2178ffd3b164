"""The one bounded, thread-safe LRU of the package, sized in bytes.

Every in-process cache is one of these: the policy engine's forms, the memory store's entries
(:mod:`proxy.store.memory`) and the token memo's ids and counts (:mod:`proxy.store.tokens`). Each entry is
charged the size its caller gives plus ``entry_overhead`` (the dict/tuple/object bookkeeping the
caller's values carry, roughly); an entry larger than the whole bound is not kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["BytesLRU"]

V = TypeVar("V")


class BytesLRU(Generic[V]):
    """LRU of at most ``max_bytes``; the least recently used entries go first."""

    def __init__(self, *, max_bytes: int, entry_overhead: int = 0) -> None:
        self.max_bytes = max_bytes
        self._overhead = entry_overhead
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[Hashable]:
        """The keys held now, least recently used first (a copy)."""
        with self._lock:
            return list(self._items)

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
            self._add(key, value, size)
            return value

    def put(self, key: Hashable, value: V, *, size: int) -> None:
        """Store ``value`` under ``key``, replacing what was there (last writer wins)."""
        with self._lock:
            self._remove(key)
            self._add(key, value, size)

    def pop(self, key: Hashable) -> None:
        with self._lock:
            self._remove(key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def _add(self, key: Hashable, value: V, size: int) -> None:
        cost = size + self._overhead
        if cost > self.max_bytes:
            return  # too big to keep; the caller still uses it
        self._items[key] = (value, cost)
        self._bytes += cost
        while self._bytes > self.max_bytes:
            _, (_, evicted) = self._items.popitem(last=False)
            self._bytes -= evicted

    def _remove(self, key: Hashable) -> None:
        entry = self._items.pop(key, None)
        if entry is not None:
            self._bytes -= entry[1]
