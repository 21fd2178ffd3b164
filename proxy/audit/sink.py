"""The audit writer: one tamper-evident JSON line per request, in the OS before the response ends.

:meth:`JsonlAuditSink.commit` prices the exchange (:mod:`proxy.audit.record`) and returns once its
line is in this process's chain file (:mod:`proxy.audit.chainfile`), so a SIGKILL after that loses
nothing. Records go to one writer thread, which writes everything waiting in one ``write()`` (group
commit) under the chain's lock and then resolves each caller's future. With ``inline="when_idle"``
(the default) a small record is instead hashed and written right on the event loop, under the same
lock, when no record is waiting for the thread (the record is in the OS before the last byte, without
the thread round trip: at low concurrency that round trip is most of the audit's cost); under load,
when records are already queued, they go to the thread and are written together. A busy lock, a large
record (``include_text``), a due rotation or a failing file also go to the thread. Figures:
bench/audit_inline.py, in bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from proxy.apis import dialect_for
from proxy.audit.cache_model import CacheEstimate, CacheModel
from proxy.audit.chainfile import ChainFile, record_hash
from proxy.audit.chains import audit_files
from proxy.audit.index import LiveIndexer
from proxy.audit.pricing import PriceBook, PricingError
from proxy.audit.record import build_record, prompt_removed
from proxy.config.model import AuditConfig, InlineWrites
from proxy.exchange import AuditLost, Exchange
from proxy.metrics import Metrics

__all__ = ["JsonlAuditSink"]

log = logging.getLogger("tersegate.audit")

_BATCH = 4096  # records per group commit at most
_PROBE_EVERY_S = 1.0  # how often an unhealthy sink retries opening its file
_INLINE_BYTES = 16 * 1024  # records up to this size are written on the event loop


@dataclass(slots=True)
class _Item:
    record: dict[str, Any]
    future: asyncio.Future[bool] | None
    loop: asyncio.AbstractEventLoop | None


_PROBE = object()  # queue message: try to reopen the file
_STOP = object()


def _settle(futures: list[asyncio.Future[bool]], ok: bool) -> None:
    for future in futures:
        if not future.done():
            future.set_result(ok)


class _TeamCounters(NamedTuple):
    """One team's audit counters (prometheus children), looked up once per team."""

    tokens_before: Any
    tokens_after: Any
    cost_before: Any
    cost_after: Any
    saved: Any


class JsonlAuditSink:
    """The :class:`~proxy.exchange.AuditSink` writing the JSONL audit file (see module docs)."""

    def __init__(
        self,
        config: AuditConfig,
        *,
        metrics: Metrics,
        prices: PriceBook | None = None,
        cache_model: CacheModel | None = None,
        inline: InlineWrites | None = None,
    ) -> None:
        """``inline`` (default: ``config.inline_writes``): when a record is written on the event
        loop: ``"when_idle"`` while no record waits for the writer thread, ``"always"`` whenever the
        chain's lock is free, ``"never"`` (every record goes through the writer thread)."""
        if config.path is None:
            raise ValueError("JsonlAuditSink needs audit.path")
        self._config = config
        self._cache_model = cache_model
        self._metrics = metrics
        self._prices = prices or PriceBook()
        self._file = ChainFile(config, config.path)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()  # the chain's head and file: one writer at a time
        self._inline = inline if inline is not None else config.inline_writes
        self._queued = 0  # records handed to the writer thread and not yet written (event loop side)
        self._team_counters: dict[str, _TeamCounters] = {}
        self.prices_loaded = threading.Event()  # the writer thread has read the cost map (/readyz)
        self._healthy = True
        self._last_probe = 0.0
        try:
            self._file.open()  # at start-up, so fail-closed refuses from the first request
        except OSError as exc:
            self._fail(f"cannot open {config.path}: {exc}")
        self._indexer: LiveIndexer | None = None
        if config.sqlite is not None:
            path = config.path
            self._indexer = LiveIndexer(config.sqlite, lambda: audit_files(path))
        self._thread = threading.Thread(target=self._run, name="tersegate-audit", daemon=True)
        self._thread.start()

    def warm(self) -> None:
        """Wait until the writer thread has loaded the cost map (blocking: call it off the event loop)."""
        self.prices_loaded.wait()

    # Event-loop side.

    def audits(self, exchange: Exchange) -> bool:
        return self._config.all_routes or exchange.compressible

    async def commit(self, exchange: Exchange) -> None:
        if not self.audits(exchange):
            return
        cache = await self._estimate_cache(exchange)
        record = build_record(
            exchange, prices=self._prices, include_text=self._config.include_text, cache=cache
        )
        self._count(exchange.team, record)
        idle = self._queued == 0 or self._inline == "always"
        if idle and self._write_inline(record):
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._queued += 1
        future.add_done_callback(self._written)
        self._queue.put(_Item(record, future, loop))
        # Shielded: a cancelled request still gets its record, and the future stays valid.
        if not await asyncio.shield(future):
            raise AuditLost(f"{self._file.path} cannot be written")  # the server counts it

    def _written(self, _: asyncio.Future[bool]) -> None:
        self._queued -= 1

    async def _estimate_cache(self, exchange: Exchange) -> CacheEstimate | None:
        """The cache model's estimate, for requests the upstream answered with usage; faults fail open."""
        if self._cache_model is None or exchange.prompt is None or exchange.usage is None:
            return None
        dialect = dialect_for(exchange.route, exchange.api)
        usage = dialect.usage(exchange.usage)
        try:
            return await self._cache_model.estimate(
                team=exchange.team,
                model=exchange.model,
                dialect=dialect,
                original=exchange.prompt,
                forwarded=exchange.rewrite.body,
                usage=usage,
                prompt_delta=prompt_removed(exchange, usage)[0],
                walked=exchange.blocks,
            )
        except Exception as exc:  # the record is written anyway, priced with the reported cache
            log.error("audit: cache model failed error=%s", type(exc).__name__)
            return None

    @property
    def chain(self) -> Path:
        """The file this process's chain is written to."""
        return self._file.path

    def _write_inline(self, record: dict[str, Any]) -> bool:
        """Hash and write ``record`` now if that is quick; False: the writer thread must."""
        if self._inline == "never" or not self._healthy or not self._lock.acquire(blocking=False):
            return False
        try:
            chain = self._file
            if chain.fd is None:
                return False
            record["prev_hash"] = chain.last_hash
            record["hash"] = record_hash(record)
            line = orjson.dumps(record) + b"\n"
            day = chain.today()
            if len(line) > _INLINE_BYTES or chain.needs_rotation(0, len(line), day):
                return False
            try:
                chain.write(line, day)
            except OSError as exc:
                chain.close()  # reopening drops a torn tail and re-reads the head from disk
                self._fail(f"cannot write {chain.path}: {exc}")
                return False
            chain.last_hash = record["hash"]
        finally:
            self._lock.release()
        if self._indexer is not None:
            self._indexer.notify()
        return True

    def healthy(self) -> bool:
        if not self._healthy:
            now = time.monotonic()
            if now - self._last_probe >= _PROBE_EVERY_S:
                self._last_probe = now
                self._queue.put(_PROBE)
        return self._healthy

    async def aclose(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
        if self._indexer is not None:
            await asyncio.to_thread(self._indexer.close)

    def _count(self, team: str, record: dict[str, Any]) -> None:
        counters = self._team_counters.get(team)
        if counters is None:  # teams come from the config: a few, looked up once each
            m = self._metrics
            counters = self._team_counters[team] = _TeamCounters(
                m.tokens_before.labels(team=team),
                m.tokens_after.labels(team=team),
                m.cost_before_usd.labels(team=team),
                m.cost_after_usd.labels(team=team),
                m.saved_usd.labels(team=team),
            )
        before, after = record["tokens_before"], record["tokens_after"]
        if before is not None and after is not None:
            counters.tokens_before.inc(before)
            counters.tokens_after.inc(after)
        cost_before, cost_after = record["cost_before_usd"], record["cost_after_usd"]
        if cost_before is not None and cost_after is not None:
            counters.cost_before.inc(cost_before)
            counters.cost_after.inc(cost_after)
        saved = record["saved_usd"]
        # A counter only goes up: a request whose bill compression raised (a broken cache prefix)
        # shows in cost_after > cost_before, not here.
        if saved is not None and saved > 0:
            counters.saved.inc(saved)

    def _fail(self, why: str) -> None:
        if self._healthy:
            log.error("audit: %s; records are being lost (audit.on_error: %s)", why, self._config.on_error)
        self._healthy = False
        self._last_probe = time.monotonic()

    # Writer thread.

    def _run(self) -> None:
        try:  # the cost map is loaded here, once, not on the first request
            self._prices.price_for("gpt-4o")
            _ = self._prices.source
        except PricingError as exc:
            log.error("audit: %s", exc)
        self.prices_loaded.set()
        stop = False
        while not stop:
            batch: list[_Item] = []
            message = self._queue.get()
            while True:
                if message is _STOP:
                    stop = True
                elif message is _PROBE:
                    self._probe()
                elif isinstance(message, _Item):
                    batch.append(message)
                if len(batch) >= _BATCH:
                    break
                try:
                    message = self._queue.get_nowait()
                except queue.Empty:
                    break
            if batch:
                with self._lock:
                    self._write_batch(batch)
                if self._indexer is not None:
                    self._indexer.notify()
        with self._lock:
            self._file.release()

    def _probe(self) -> None:
        with self._lock:
            if self._file.fd is not None:
                return
            try:
                self._file.open()
            except OSError:
                return
        log.warning("audit: %s is writable again", self._file.path)
        self._healthy = True

    def _write_batch(self, batch: list[_Item]) -> None:
        """Hash and write ``batch`` in order (the caller holds the lock), then resolve its futures."""
        chain = self._file
        day = chain.today()
        written = 0  # batch[:written] are on disk
        pending: list[bytes] = []
        pending_size = 0
        try:
            if chain.fd is None:
                chain.open()  # before hashing: opening resumes the chain from disk
            for i, item in enumerate(batch):
                item.record["prev_hash"] = chain.last_hash
                item.record["hash"] = record_hash(item.record)
                line = orjson.dumps(item.record) + b"\n"
                if chain.needs_rotation(pending_size, len(line), day):
                    if pending:
                        chain.write(b"".join(pending), day)
                        self._resolve(batch[written:i], ok=True)
                        pending, pending_size, written = [], 0, i
                    chain.rotate()
                pending.append(line)
                pending_size += len(line)
                chain.last_hash = item.record["hash"]
            chain.write(b"".join(pending), day)
        except OSError as exc:
            chain.close()  # reopening re-reads the chain head from disk
            self._fail(f"cannot write {chain.path}: {exc}")
            self._resolve(batch[written:], ok=False)
            return
        self._healthy = True
        self._resolve(batch[written:], ok=True)

    @staticmethod
    def _resolve(items: list[_Item], *, ok: bool) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[bool]]] = {}
        for item in items:
            if item.future is not None and item.loop is not None:
                by_loop.setdefault(item.loop, []).append(item.future)
        for loop, futures in by_loop.items():
            # RuntimeError: the loop closed while we wrote; nobody is waiting.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, futures, ok)
