"""The form each part was first forwarded in: who may reuse it (the keys) and where it is kept.

Keys (docs/memo.md has the reasoning):

- ``conversation``: the part, in the request in which it was first sent (a digest of every part
  of its turn and the turns before it: what the provider's prompt cache sees, plus the question
  that followed). A form made for a question, and any form that failed open, lives only here:
  a later turn that re-sends the same history finds it; another conversation sending the same
  text with its own question does not, and is compressed for its own question.
- ``shared``: for compressors that never read the query (``truncate``, ``normalize``), the text
  alone, so every conversation of the scope reuses one form.

Both live in a namespace per team (``memo:<team>``) unless ``shared_across_teams`` is set.

Two levels: the in-process LRU (:class:`proxy.store.lru.BytesLRU`) in front of a shared store
(:mod:`proxy.store`), looked up once per request for every key the LRU missed. When the store
fails, the request is served from the LRU alone (fail-open), the failure is counted in
/metrics, logged at most once a minute, and the store is left alone for a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import orjson

from proxy.apis import Part
from proxy.metrics import Metrics
from proxy.policy.model import Rule
from proxy.store.base import SharedStore, StoreUnavailable
from proxy.store.lru import BytesLRU

__all__ = ["QUERY_FREE", "Form", "FormKeys", "FormMemory", "form_keys", "text_digest", "turn_digests"]

log = logging.getLogger("tersegate.memo")

T = TypeVar("T")

# Compressors whose output never depends on the query: their forms may be shared by conversations.
QUERY_FREE = frozenset({"truncate", "normalize"})
_LOG_EVERY_S = 60.0
_RETRY_AFTER_S = 1.0
_UNSYNCED_BYTES = 32 * 1024 * 1024  # forms decided during an outage, kept to write once the store is back
_FLUSH_BATCH = 500  # after a failure, requests skip the store this long (no per-request timeouts)


@dataclass(frozen=True, slots=True)
class Form:
    """How a part is forwarded: ``text`` None means as it came."""

    text: str | None
    tokens_after: int
    ms: float = 0.0
    note: str = ""

    def encode(self) -> bytes:
        return orjson.dumps([self.text, self.tokens_after, round(self.ms, 3), self.note])

    @staticmethod
    def decode(raw: bytes) -> Form | None:
        try:
            text, tokens_after, ms, note = orjson.loads(raw)
        except (orjson.JSONDecodeError, TypeError, ValueError):
            return None
        if not (text is None or isinstance(text, str)) or not isinstance(tokens_after, int):
            return None
        return Form(text, tokens_after, float(ms), str(note))

    @property
    def size(self) -> int:
        return len(self.text or "") * 2 + len(self.note) + 64


@dataclass(frozen=True, slots=True)
class FormKeys:
    conversation: str
    shared: str | None  # query-free rules only


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _hash(*pieces: str) -> str:
    return hashlib.sha256("\x1f".join(pieces).encode("utf-8", "surrogatepass")).hexdigest()


def turn_digests(parts: Sequence[Part], digests: Sequence[str]) -> list[str]:
    """For each part, a digest of the request it was first sent in: every part (path, role,
    text digest) of its turn and of the turns before it."""
    rolling = hashlib.sha256()
    at_end: dict[int, str] = {}
    for part, digest in zip(parts, digests, strict=True):
        rolling.update(f"{part.path!r}\x1f{part.role}\x1f{digest}\x1e".encode())
        at_end[part.turn] = rolling.hexdigest()  # the turn's last part leaves its digest here
    return [at_end[part.turn] for part in parts]


def form_keys(
    rule: Rule, encoding: str, part: Part, digest: str, turn: str, keep: tuple[tuple[int, int], ...]
) -> FormKeys:
    base = f"{rule.identity}:{encoding}"
    conversation = f"{base}:c:{_hash(turn, repr(part.path), digest)}"
    query_free = all(step.compressor_name in QUERY_FREE for step in rule.steps)
    shared = f"{base}:s:{_hash(digest, repr(keep))}" if query_free else None
    return FormKeys(conversation, shared)


class FormMemory:
    """The LRU in front of an optional shared store. ``backend`` names the store in metrics and logs."""

    def __init__(
        self,
        *,
        lru_bytes: int,
        store: SharedStore | None = None,
        backend: str = "memory",
        timeout_s: float = 0.5,
        shared_across_teams: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self.lru: BytesLRU[Form] = BytesLRU(max_bytes=lru_bytes, entry_overhead=200)
        self.store = store
        self.backend = backend
        self.timeout_s = timeout_s
        self.shared_across_teams = shared_across_teams
        self.metrics = metrics
        self._down_until = 0.0
        self._last_log = float("-inf")
        self._failed_since_log = 0
        self._logged_down = False
        self._unsynced: dict[tuple[str, str], Form] = {}
        self._unsynced_bytes = 0

    def namespace(self, team: str) -> str:
        return "memo:*" if self.shared_across_teams else f"memo:{team}"

    def _count(self, level: str, n: int = 1) -> None:
        if self.metrics is not None and n:
            self.metrics.memo_lookups.labels(level=level).inc(n)

    async def _call(self, op: str, call: Awaitable[T]) -> T | None:
        """The store's answer, or None when it is down (counted, logged at most once a minute)."""
        now = time.monotonic()
        if now < self._down_until:
            if asyncio.iscoroutine(call):
                call.close()
            self._failed(op, None, now)
            return None
        try:
            result = await asyncio.wait_for(call, self.timeout_s)
        except (StoreUnavailable, TimeoutError) as exc:
            self._down_until = time.monotonic() + _RETRY_AFTER_S
            self._failed(op, exc, now)
            return None
        if self._logged_down:
            self._logged_down = False
            log.warning("memo store %s is reachable again", self.backend)
        return result

    def _failed(self, op: str, exc: BaseException | None, now: float) -> None:
        if self.metrics is not None:
            self.metrics.memo_store_errors.labels(backend=self.backend, op=op).inc()
        self._failed_since_log += 1
        if now - self._last_log >= _LOG_EVERY_S and exc is not None:
            reason = str(exc) or type(exc).__name__
            log.warning(
                "memo store %s unreachable (%s); serving from this process's memo (%d failed calls since the "
                "last message)",
                self.backend,
                reason[:200],
                self._failed_since_log,
            )
            self._last_log, self._failed_since_log, self._logged_down = now, 0, True

    async def recall(self, namespace: str, wanted: Sequence[Sequence[str]]) -> list[Form | None]:
        """For each part, the form under the first of its keys that holds one (LRU, then the store)."""
        found: list[Form | None] = []
        missing: list[str] = []
        for keys in wanted:
            hit = next((f for f in (self.lru.get((namespace, k)) for k in keys) if f is not None), None)
            found.append(hit)
            if hit is None:
                missing.extend(keys)
        self._count("lru", sum(f is not None for f in found))
        stored: dict[str, Form] = {}
        if missing and self.store is not None:
            unique = list(dict.fromkeys(missing))
            values = await self._call("get", self.store.get_many(namespace, unique))
            for key, raw in zip(unique, values or (), strict=False):
                form = Form.decode(raw) if raw is not None else None
                if form is not None:
                    stored[key] = self.lru.setdefault((namespace, key), form, size=form.size)
        for i, keys in enumerate(wanted):
            if found[i] is None:
                found[i] = next((stored[k] for k in keys if k in stored), None)
                self._count("store" if found[i] is not None else "miss")
        return found

    async def keep(self, namespace: str, writes: Sequence[tuple[str, Form]]) -> dict[str, Form]:
        """Store each form unless its key holds one; return what won for each key (first writer wins,
        across processes when the store is reachable)."""
        won: dict[str, Form] = {}
        fresh: list[tuple[str, Form]] = []
        for key, form in writes:
            held = self.lru.get((namespace, key))
            if held is not None:
                won[key] = held
            elif key not in won:
                fresh.append((key, form))
                won[key] = form
        if fresh and self.store is not None:
            items = [(key, form.encode()) for key, form in fresh]
            values = await self._call("put", self.store.put_if_absent(namespace, items))
            if values is None:
                self._remember_unsynced(namespace, fresh)
            else:
                for (key, form), raw in zip(fresh, values, strict=True):
                    won[key] = Form.decode(raw) or form
                await self._flush_unsynced()
        for key, _ in fresh:
            won[key] = self.lru.setdefault((namespace, key), won[key], size=won[key].size)
        return won

    def _remember_unsynced(self, namespace: str, fresh: Sequence[tuple[str, Form]]) -> None:
        """Forms decided while the store was down, to be written once it is back (bounded)."""
        for key, form in fresh:
            if self._unsynced_bytes + form.size > _UNSYNCED_BYTES:
                break
            if (namespace, key) in self._unsynced:
                continue
            self._unsynced[(namespace, key)] = form
            self._unsynced_bytes += form.size

    async def _flush_unsynced(self) -> None:
        """Write a batch of the forms decided during an outage, so other replicas find them. This
        process keeps forwarding its own form even where another replica's won meanwhile."""
        if not self._unsynced or self.store is None:
            return
        batch = list(itertools.islice(self._unsynced.items(), _FLUSH_BATCH))
        by_namespace: dict[str, list[tuple[str, bytes]]] = {}
        for (namespace, key), form in batch:
            by_namespace.setdefault(namespace, []).append((key, form.encode()))
        for namespace, items in by_namespace.items():
            if await self._call("put", self.store.put_if_absent(namespace, items)) is None:
                return
        for slot, _ in batch:
            flushed = self._unsynced.pop(slot, None)  # a concurrent flush may have taken it
            self._unsynced_bytes -= flushed.size if flushed is not None else 0

    def clear(self) -> None:
        """Forget this process's level (the store is its owner's to close)."""
        self.lru.clear()
