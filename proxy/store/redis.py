"""The Redis (or Valkey) backend: replicas on several machines share one server.

First writer wins across machines: ``SET NX`` for each key, then ``MGET`` of the same keys
in the same pipeline, so what comes back is what won. One round trip per call. Keys are
``<prefix><namespace>:<key>``; every key gets a TTL (the age bound); the size bound is the
server's own (``maxmemory`` with an LRU ``maxmemory-policy``: see docs/memo.md). Any Redis
error becomes :class:`StoreUnavailable`, and the caller serves without the store.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from proxy.store.base import StoreUnavailable

__all__ = ["RedisStore"]


class RedisStore:
    """``url``: redis://host:port/db. ``timeout_s`` bounds connecting and every call."""

    def __init__(
        self, url: str, *, max_age_s: float | None = None, timeout_s: float = 0.25, prefix: str = "tersegate:"
    ) -> None:
        self.max_age_s = max_age_s
        self.prefix = prefix
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry_on_timeout=False,
            retry=Retry(
                NoBackoff(), 1
            ),  # one immediate retry: a pooled connection gone stale after a restart
            health_check_interval=30,
        )

    def _keys(self, namespace: str, keys: Sequence[str]) -> list[str]:
        return [f"{self.prefix}{namespace}:{key}" for key in keys]

    def _ttl_ms(self, ttl_s: float | None) -> int | None:
        ages = [t for t in (ttl_s, self.max_age_s) if t is not None]
        return max(1, math.ceil(min(ages) * 1000)) if ages else None

    async def get_many(self, namespace: str, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            values = await self._client.mget(self._keys(namespace, keys))
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        return [v.encode() if isinstance(v, str) else v for v in values]

    async def put_if_absent(
        self, namespace: str, items: Sequence[tuple[str, bytes]], *, ttl_s: float | None = None
    ) -> list[bytes]:
        if not items:
            return []
        names = self._keys(namespace, [key for key, _ in items])
        ttl = self._ttl_ms(ttl_s)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for name, (_, value) in zip(names, items, strict=True):
                    pipe.set(name, value, nx=True, px=ttl)
                pipe.mget(names)
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        won = replies[-1]
        # A key evicted between SET and MGET (maxmemory) leaves the caller's own value.
        return [
            (w.encode() if isinstance(w, str) else w) if w is not None else value
            for w, (_, value) in zip(won, items, strict=True)
        ]

    async def put(
        self, namespace: str, items: Sequence[tuple[str, bytes]], *, ttl_s: float | None = None
    ) -> None:
        if not items:
            return
        ttl = self._ttl_ms(ttl_s)
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for name, (_, value) in zip(self._keys(namespace, [k for k, _ in items]), items, strict=True):
                    pipe.set(name, value, px=ttl)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()
