"""The Redis (or Valkey) backend: replicas on several machines share one server.

First writer wins across machines: a server-side script runs ``SET NX`` for each key and
``GET`` where the key was there, atomically, so what comes back is what won. Writes go as one
script call per 2,048 keys (:data:`~proxy.store.base.SLICE_KEYS`), reads as one ``MGET`` per
2,048: the audit's cache model writes ~24,000 keys for a 6 MB prompt, and one pipelined ``SET``
each cost ~18 us of the event loop's time to build (450 ms for those 24,000). Keys are
``<prefix><namespace>:<key>``; every key gets a TTL (the age bound); the size bound is the
server's own (``maxmemory`` with an LRU ``maxmemory-policy``: see docs/memo.md). Any Redis
error becomes :class:`StoreUnavailable`, and the caller serves without the store.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from proxy.store.base import SLICE_KEYS, StoreUnavailable

__all__ = ["RedisStore"]

# KEYS: the keys; ARGV[1]: the TTL in ms (0: none); ARGV[i + 1]: the value of KEYS[i].
_PUT = """
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if ttl > 0 then redis.call('SET', key, ARGV[i + 1], 'PX', ttl) else redis.call('SET', key, ARGV[i + 1]) end
end
return #KEYS
"""
_PUT_IF_ABSENT = """
local ttl = tonumber(ARGV[1])
local won = {}
for i, key in ipairs(KEYS) do
  local set
  if ttl > 0 then set = redis.call('SET', key, ARGV[i + 1], 'NX', 'PX', ttl)
  else set = redis.call('SET', key, ARGV[i + 1], 'NX') end
  if set then won[i] = ARGV[i + 1] else won[i] = redis.call('GET', key) end
end
return won
"""


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
        self._put = self._client.register_script(_PUT)
        self._put_if_absent = self._client.register_script(_PUT_IF_ABSENT)

    def _keys(self, namespace: str, keys: Sequence[str]) -> list[str]:
        return [f"{self.prefix}{namespace}:{key}" for key in keys]

    def _ttl_ms(self, ttl_s: float | None) -> int | None:
        ages = [t for t in (ttl_s, self.max_age_s) if t is not None]
        return max(1, math.ceil(min(ages) * 1000)) if ages else None

    async def get_many(self, namespace: str, keys: Sequence[str]) -> list[bytes | None]:
        names = self._keys(namespace, keys)
        found: list[bytes | None] = []
        try:
            for start in range(0, len(names), SLICE_KEYS):
                values = await self._client.mget(names[start : start + SLICE_KEYS])
                found.extend(v.encode() if isinstance(v, str) else v for v in values)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        return found

    async def put_if_absent(
        self, namespace: str, items: Sequence[tuple[str, bytes]], *, ttl_s: float | None = None
    ) -> list[bytes]:
        won: list[bytes] = []
        for names, values, ttl in self._slices(namespace, items, ttl_s):
            replies = await self._call(self._put_if_absent, names, [ttl, *values])
            # The script reads back what won; a None (not expected: the script is atomic) keeps the caller's value.
            won.extend(
                (w.encode() if isinstance(w, str) else w) if w is not None else value
                for w, value in zip(replies, values, strict=True)
            )
        return won

    async def put(
        self, namespace: str, items: Sequence[tuple[str, bytes]], *, ttl_s: float | None = None
    ) -> None:
        for names, values, ttl in self._slices(namespace, items, ttl_s):
            await self._call(self._put, names, [ttl, *values])

    def _slices(
        self, namespace: str, items: Sequence[tuple[str, bytes]], ttl_s: float | None
    ) -> Iterator[tuple[list[str], list[bytes], int]]:
        ttl = self._ttl_ms(ttl_s) or 0
        for start in range(0, len(items), SLICE_KEYS):
            piece = items[start : start + SLICE_KEYS]
            yield self._keys(namespace, [key for key, _ in piece]), [value for _, value in piece], ttl

    async def _call(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        await self._client.aclose()
