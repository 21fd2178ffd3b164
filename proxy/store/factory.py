"""The shared store named by ``compression.memo`` in config.yaml."""

from __future__ import annotations

from proxy.config.model import MemoConfig
from proxy.store.base import SharedStore
from proxy.store.memory import MemoryStore

__all__ = ["open_store"]

_SQLITE_BYTES = 1024 * 1024 * 1024
_MEMORY_BYTES = 64 * 1024 * 1024


def open_store(memo: MemoConfig) -> SharedStore:
    """A store for ``memo.backend``; nothing is connected until the first call."""
    if memo.backend == "sqlite":
        from proxy.store.sqlite import SqliteStore

        assert memo.path is not None  # config parsing requires it
        return SqliteStore(memo.path, max_bytes=memo.max_bytes or _SQLITE_BYTES, max_age_s=memo.max_age_s)
    if memo.backend == "redis":
        from proxy.store.redis import RedisStore  # redis-py is imported only where it is used

        assert memo.url is not None
        return RedisStore(memo.url, max_age_s=memo.max_age_s, timeout_s=memo.timeout_s)
    return MemoryStore(max_bytes=memo.max_bytes or _MEMORY_BYTES)
