"""The in-process backend: a bounded, age-limited dict. Nothing survives the process; one process only."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence

__all__ = ["MemoryStore"]


class MemoryStore:
    """LRU by total bytes of keys and values, each entry with an optional expiry."""

    def __init__(self, *, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[tuple[str, str], tuple[bytes, float | None]] = OrderedDict()

    def _get(self, slot: tuple[str, str], now: float) -> bytes | None:
        found = self._items.get(slot)
        if found is None:
            return None
        value, expires = found
        if expires is not None and expires <= now:
            self._drop(slot)
            return None
        self._items.move_to_end(slot)
        return value

    def _drop(self, slot: tuple[str, str]) -> None:
        value, _ = self._items.pop(slot)
        self._bytes -= len(slot[0]) + len(slot[1]) + len(value)

    def _set(self, slot: tuple[str, str], value: bytes, ttl_s: float | None, now: float) -> None:
        if slot in self._items:
            self._drop(slot)
        size = len(slot[0]) + len(slot[1]) + len(value)
        if size > self._max_bytes:
            return
        self._items[slot] = (value, None if ttl_s is None else now + ttl_s)
        self._bytes += size
        while self._bytes > self._max_bytes:
            self._drop(next(iter(self._items)))

    async def get_many(self, namespace: str, keys: Sequence[str]) -> list[bytes | None]:
        now = time.monotonic()
        return [self._get((namespace, key), now) for key in keys]

    async def put_if_absent(
        self, namespace: str, items: Sequence[tuple[str, bytes]], *, ttl_s: float | None = None
    ) -> list[bytes]:
        now = time.monotonic()
        won: list[bytes] = []
        for key, value in items:
            existing = self._get((namespace, key), now)
            if existing is None:
                self._set((namespace, key), value, ttl_s, now)
                existing = value
            won.append(existing)
        return won

    async def put(
        self, namespace: str, items: Sequence[tuple[str, bytes]], *, ttl_s: float | None = None
    ) -> None:
        now = time.monotonic()
        for key, value in items:
            self._set((namespace, key), value, ttl_s, now)

    async def aclose(self) -> None:
        self._items.clear()
        self._bytes = 0
