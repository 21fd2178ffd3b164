"""Originals of compressed parts, so the model can ask for what a marker stands for (issue 21).

One id per original (CONTRACTS.md section 2): the first 24 hex of HMAC-SHA256(secret, scope + "\\0" +
text), scope being the team (``*`` with ``shared_across_teams``). The id is a capability: the secret is
random, written once to the shared store by the first replica that needs it (first writer wins) and
read by the others, never derived from anything a client sees, so nobody computes the id of a text
they guess.

Three records per scope in the memo's store (memory, sqlite or redis, so any replica answers):
- ``orig:<scope>`` / id: the original, zlib-compressed, for ``compression.retrieve.ttl_s``;
- ``seen:<scope>`` / id: a few bytes, kept as long as the memo keeps anything, so that an id whose
  original expired is answered "expired" and an id never issued (or another team's) "unknown";
- ``retrieve`` / ``secret``: the key, touched every few minutes so that no bound evicts it.

A store that fails answers "unavailable"; nothing here raises into a request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import time
import zlib
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from proxy.logs import RateLimitedLog
from proxy.store.base import SharedStore, StoreUnavailable

__all__ = ["ID_PATTERN", "Expansion", "Originals", "keyed_id", "select_lines"]

log = logging.getLogger("tersegate.retrieve")

T = TypeVar("T")

ID_PATTERN = re.compile(r"^[0-9a-f]{24}$")
_SECRET_NAMESPACE = "retrieve"
_SECRET_KEY = "secret"
_SECRET_REFRESH_S = 300.0  # re-read (and touch) the shared secret this often
_OFF_LOOP_CHARS = 16 * 1024  # hashing or zlib of more text than this runs in a thread
_SEEN = b"1"
_RETRY_AFTER_S = 1.0

Status = Literal["ok", "expired", "unknown", "unavailable", "limit"]


@dataclass(frozen=True, slots=True)
class Expansion:
    """What one ``tersegate_expand`` call is answered: ``text`` goes back to the model as the tool result."""

    status: Status
    text: str

    @property
    def returned_bytes(self) -> int:
        """Bytes of original text returned (0 unless ``ok``)."""
        return len(self.text.encode("utf-8", "surrogatepass")) if self.status == "ok" else 0

    @staticmethod
    def refused(status: Status, ref: str, *, ttl_s: float = 0.0, limit: int = 0) -> Expansion:
        shown = ref if ID_PATTERN.match(ref) else "that id"
        texts = {
            "expired": f"The original of hash={shown} has expired (originals are kept {ttl_s / 60:g} minutes); "
            "re-run the command that produced it if you need it.",
            "unknown": f"No original is known for hash={shown}: use a hash= value from an omission marker.",
            "unavailable": "The store of originals is unavailable right now; continue without it, or re-run "
            "the command that produced the output.",
            "limit": f"Limit reached: at most {limit} expansions per request. Continue with what you have.",
        }
        return Expansion(status, texts.get(status, ""))


def keyed_id(secret: bytes, scope: str, text: str) -> str:
    """The id of ``text`` in ``scope``: 24 lowercase hex of HMAC-SHA256 (pure)."""
    message = scope.encode("utf-8", "surrogatepass") + b"\0" + text.encode("utf-8", "surrogatepass")
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:24]


def select_lines(text: str, query: str) -> tuple[str, int, int]:
    """``(lines, matched, total)``: the lines of ``text`` that contain ``query`` (case-insensitive),
    each as ``<1-based number>: <line>``; when none does, the lines containing any of its words
    (3 characters or more)."""
    lines = text.splitlines()
    needle = query.strip().lower()
    hits = [i for i, line in enumerate(lines) if needle and needle in line.lower()]
    if not hits:
        words = [w for w in re.findall(r"[\w./:-]+", needle) if len(w) >= 3]
        hits = [i for i, line in enumerate(lines) if any(w in line.lower() for w in words)]
    return "\n".join(f"{i + 1}: {lines[i]}" for i in hits), len(hits), len(lines)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    rest = text[limit:].count("\n") + 1
    return f"{text[:limit]}\n[{rest} lines omitted; ask again with a query to see them]"


class Originals:
    """Keeps and finds originals in ``store`` (memory, sqlite or redis: see proxy.store)."""

    def __init__(
        self,
        store: SharedStore,
        *,
        ttl_s: float = 7200.0,
        seen_ttl_s: float = 7 * 24 * 3600.0,
        shared_across_teams: bool = False,
        timeout_s: float = 0.5,
        max_return_chars: int = 60_000,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.seen_ttl_s = max(seen_ttl_s, ttl_s)
        self.shared_across_teams = shared_across_teams
        self.timeout_s = timeout_s
        self.max_return_chars = max_return_chars
        self._secret: bytes | None = None
        self._secret_at = float("-inf")
        self._secret_lock = asyncio.Lock()
        self._down_until = 0.0
        self._down_log = RateLimitedLog(log, interval=60.0)  # an outage: one line a minute per kind

    def scope(self, team: str) -> str:
        return "*" if self.shared_across_teams else team

    async def _call(self, call: Awaitable[T]) -> T:
        """The store's answer; raises StoreUnavailable on an error or past ``timeout_s``, and for a
        second after a failure without trying (no request waits out a timeout during an outage)."""
        if time.monotonic() < self._down_until:
            if asyncio.iscoroutine(call):
                call.close()
            raise StoreUnavailable("store down (retrying shortly)")
        try:
            return await asyncio.wait_for(call, self.timeout_s)
        except TimeoutError as exc:
            self._down_until = time.monotonic() + _RETRY_AFTER_S
            raise StoreUnavailable("store call timed out") from exc
        except StoreUnavailable:
            self._down_until = time.monotonic() + _RETRY_AFTER_S
            raise

    async def secret(self) -> bytes:
        """The replicas' shared key (first writer wins); raises StoreUnavailable."""
        if self._secret is not None and time.monotonic() - self._secret_at < _SECRET_REFRESH_S:
            return self._secret
        async with self._secret_lock:
            if self._secret is not None and time.monotonic() - self._secret_at < _SECRET_REFRESH_S:
                return self._secret
            found = (await self._call(self.store.get_many(_SECRET_NAMESPACE, [_SECRET_KEY])))[0]
            if found is None:
                fresh = os.urandom(32)
                found = (
                    await self._call(self.store.put_if_absent(_SECRET_NAMESPACE, [(_SECRET_KEY, fresh)]))
                )[0]
            else:  # touched, so that neither an age bound nor "oldest first" evicts it
                await self._call(self.store.put(_SECRET_NAMESPACE, [(_SECRET_KEY, found)]))
            self._secret, self._secret_at = found, time.monotonic()
            return found

    async def ids(self, scope: str, texts: Sequence[str]) -> list[str]:
        """The id of each text (hashing a large total off the loop); raises StoreUnavailable."""
        secret = await self.secret()
        if sum(len(t) for t in texts) < _OFF_LOOP_CHARS:
            return [keyed_id(secret, scope, t) for t in texts]
        return await asyncio.to_thread(lambda: [keyed_id(secret, scope, t) for t in texts])

    async def keep(self, scope: str, text: str) -> str:
        """Store ``text``; return its id. Raises StoreUnavailable."""
        (ref,) = await self.ids(scope, [text])
        await self.keep_many(scope, [(ref, text)])
        return ref

    async def keep_many(self, scope: str, items: Sequence[tuple[str, str]]) -> None:
        """Store each ``(id, original)`` unless its id holds one (the original and its "seen" record,
        in two concurrent calls). Raises StoreUnavailable."""
        unique = list(dict(items).items())
        if not unique:
            return
        if sum(len(t) for _, t in unique) < _OFF_LOOP_CHARS:
            packed = [(ref, _pack(text)) for ref, text in unique]
        else:
            packed = await asyncio.to_thread(lambda: [(ref, _pack(text)) for ref, text in unique])
        await asyncio.gather(
            self._call(self.store.put_if_absent(f"orig:{scope}", packed, ttl_s=self.ttl_s)),
            self._call(
                self.store.put_if_absent(
                    f"seen:{scope}", [(r, _SEEN) for r, _ in unique], ttl_s=self.seen_ttl_s
                )
            ),
        )

    async def refs(self, scope: str, texts: Sequence[str]) -> list[str | None]:
        """The engine's hook before compressing: each text's id, or None for all when the store
        is down (those parts are compressed without ``hash=``; fail open)."""
        try:
            return list(await self.ids(scope, texts))
        except StoreUnavailable as exc:
            self._down_log.info(
                ("ids",), "originals store unavailable, compressing without hash=: %s", str(exc)[:200]
            )
            return [None] * len(texts)

    async def keep_referenced(self, scope: str, items: Sequence[tuple[str, str, str]]) -> int:
        """The engine's hook after compressing: of ``(id, original, forwarded form)``, keep the
        originals whose form carries ``hash=<id>`` (a marker points at them). Returns how many;
        0 when the store is down (the marker's id is then answered "unknown")."""
        wanted = [(ref, original) for ref, original, form in items if f"hash={ref}" in form]
        if not wanted:
            return 0
        try:
            await self.keep_many(scope, wanted)
        except StoreUnavailable as exc:
            self._down_log.info(
                ("keep",), "originals store unavailable, originals not kept: %s", str(exc)[:200]
            )
            return 0
        return len(wanted)

    async def expand(self, scope: str, ref: str, query: str | None = None) -> Expansion:
        """The original of ``ref`` (or only the lines matching ``query``), else why not. Never raises."""
        if not isinstance(ref, str) or not ID_PATTERN.match(ref):
            return Expansion.refused("unknown", str(ref))
        try:
            original, seen = await asyncio.gather(
                self._call(self.store.get_many(f"orig:{scope}", [ref])),
                self._call(self.store.get_many(f"seen:{scope}", [ref])),
            )
        except StoreUnavailable as exc:
            self._down_log.info(
                ("expand",), "originals store unavailable for an expansion: %s", str(exc)[:200]
            )
            return Expansion.refused("unavailable", ref)
        if original[0] is None:
            return Expansion.refused("expired" if seen[0] is not None else "unknown", ref, ttl_s=self.ttl_s)
        raw = original[0]
        text = _unpack(raw) if len(raw) < _OFF_LOOP_CHARS else await asyncio.to_thread(_unpack, raw)
        if query is None or not query.strip():
            return Expansion("ok", _cut(text, self.max_return_chars))
        lines, matched, total = await asyncio.to_thread(select_lines, text, query)
        note = f"[{matched} of {total} lines match the query; {total - matched} other lines not shown]"
        return Expansion("ok", _cut(lines, self.max_return_chars) + ("\n" if lines else "") + note)


def _pack(text: str) -> bytes:
    return zlib.compress(text.encode("utf-8", "surrogatepass"), 6)


def _unpack(raw: bytes) -> str:
    return zlib.decompress(raw).decode("utf-8", "surrogatepass")
