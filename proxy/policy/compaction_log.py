"""Each conversation's compactions, kept in the memo store so every replica replays them.

A conversation (its identity: a digest of the parts sent before the first assistant reply) has
numbered batches, ``<conversation>:b0``, ``:b1``, ...: each maps part keys (path and original
digest) to the stub that replaced it. Batches are written first-writer-wins, so two replicas that
decide batch ``n`` at the same turn converge on one; a later turn replays every batch before
deciding anything new, and so re-sends the compacted history byte-identical, also after a
restart (sqlite, redis). ``<conversation>:seen`` is the time of its last request (last writer
wins): a conversation idle past its cache's lifetime has nothing cached to lose.

When the store is unreachable the process's own LRU answers (its conversations keep their
stubs); no new batch is decided then, since another replica could not replay it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from proxy.policy.memo import Memo
from proxy.store.base import SharedStore, StoreUnavailable
from proxy.store.memory import MemoryStore

__all__ = ["Batch", "CompactionLog", "Record"]

log = logging.getLogger("tersegate.compaction")

_READ_BATCHES = 16  # batches read in the first round trip; a long session reads more in another
_LRU_BYTES = 32 * 1024 * 1024

Batch = dict[str, tuple[str, int]]  # part key -> (stub, its tokens)


@dataclass(slots=True)
class Record:
    batches: list[Batch] = field(default_factory=list)
    last_seen: float | None = None  # wall-clock seconds of the conversation's previous request
    reachable: bool = True  # False: the store failed, only this process's memory answered

    def stubs(self) -> Batch:
        merged: Batch = {}
        for batch in self.batches:
            merged.update(batch)
        return merged


def _encode(batch: Batch) -> bytes:
    return orjson.dumps({key: [stub, tokens] for key, (stub, tokens) in batch.items()})


def _decode(raw: bytes) -> Batch | None:
    try:
        value = orjson.loads(raw)
        return {str(k): (str(v[0]), int(v[1])) for k, v in value.items()}
    except (orjson.JSONDecodeError, TypeError, ValueError, IndexError, AttributeError):
        return None


class CompactionLog:
    """Batches and last-seen times per conversation, under ``compact:<scope>`` in the store."""

    def __init__(self, store: SharedStore | None, *, timeout_s: float = 0.5) -> None:
        self.store: SharedStore = store if store is not None else MemoryStore()
        self.timeout_s = timeout_s
        self._lru: Memo[bytes] = Memo(max_bytes=_LRU_BYTES)

    async def _get(self, namespace: str, keys: Sequence[str]) -> list[bytes | None] | None:
        try:
            return await asyncio.wait_for(self.store.get_many(namespace, keys), self.timeout_s)
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("compaction: store unreachable (%s); replaying from this process", exc)
            return None

    async def load(self, namespace: str, conversation: str) -> Record:
        record = Record()
        start = 0
        while True:
            keys = [f"{conversation}:b{n}" for n in range(start, start + _READ_BATCHES)]
            if start == 0:
                keys.append(f"{conversation}:seen")
            found = await self._get(namespace, keys)
            if found is None:
                record.reachable = False
                found = [self._lru.get((namespace, key)) for key in keys]
            if start == 0:
                seen = found.pop()
                record.last_seen = float(seen) if seen else None
            for key, raw in zip(keys, found, strict=False):
                batch = _decode(raw) if raw is not None else None
                if raw is None or batch is None:
                    return record
                self._lru.setdefault((namespace, key), raw, size=len(raw))
                record.batches.append(batch)
            start += _READ_BATCHES

    async def append(self, namespace: str, conversation: str, index: int, batch: Batch) -> Batch | None:
        """Write batch ``index``; return the batch that won (this one, or a replica's), or None
        when the store is down (then nothing is compacted: other replicas could not replay it)."""
        key = f"{conversation}:b{index}"
        raw = _encode(batch)
        try:
            call = self.store.put_if_absent(namespace, [(key, raw)])
            won = (await asyncio.wait_for(call, self.timeout_s))[0]
        except (StoreUnavailable, TimeoutError) as exc:
            log.warning("compaction: store unreachable (%s); no new batch", exc)
            return None
        self._lru.setdefault((namespace, key), won, size=len(won))
        return _decode(won)

    async def seen(self, namespace: str, conversation: str, now: float | None = None) -> None:
        value = repr(time.time() if now is None else now).encode()
        key = f"{conversation}:seen"
        # An unknown last-seen time only means "not idle": compaction waits for its economics.
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            await asyncio.wait_for(self.store.put(namespace, [(key, value)]), self.timeout_s)
