"""The cost audit: one tamper-evident JSON line per request, in the OS before the response ends.

Each record carries ``prev_hash`` (the previous record's ``hash``) and ``hash``
(SHA-256 over its canonical JSON without ``hash``), so editing, dropping or
reordering lines breaks the chain (``tersegate audit verify``). Rotation renames
the active file to ``<stem>.<UTC timestamp><suffix>`` and the chain continues
into the new file. Each process writes its own chain (:mod:`proxy.audit.chains`).

:meth:`JsonlAuditSink.commit` returns once its line is in the OS, so a SIGKILL
after that loses nothing. Records go to one writer thread, which writes everything
waiting in one ``write()`` (group commit) under the chain's lock and then resolves
each caller's future. With ``inline_writes`` (the default) a small record is instead
hashed and written right on the event loop, under the same lock, when no record is
waiting for the thread (the record is in the OS before the last byte, without the
thread round trip: at low concurrency that round trip is most of the audit's cost);
under load, when records are already queued, they go to the thread and are written
together. A busy lock, a large record (``include_text``), a due rotation or a failing
file also go to the thread. Figures: bench/audit_inline.py, in bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from proxy.apis import dialect_for
from proxy.audit.cache_model import CacheEstimate, CacheModel
from proxy.audit.chains import audit_files, chain_files, claim_chain, rotated_name
from proxy.audit.index import LiveIndexer
from proxy.audit.pricing import PriceBook, PricingError, costs_for
from proxy.config.model import AuditConfig
from proxy.exchange import AuditLost, Exchange
from proxy.metrics import Metrics

__all__ = [
    "GENESIS",
    "JsonlAuditSink",
    "audit_files",
    "build_record",
    "iter_records",
    "record_hash",
    "rotated_name",
    "token_scale",
]

log = logging.getLogger("tersegate.audit")

GENESIS = "0" * 64  # prev_hash of the first record ever written
_BATCH = 4096  # records per group commit at most
_PROBE_EVERY_S = 1.0  # how often an unhealthy sink retries opening its file
_TAIL_BYTES = 1 << 20  # the last record is found within this many bytes of a file's end
_INLINE_BYTES = 16 * 1024  # records up to this size are written on the event loop
# Inline only while no record waits for the writer thread (False: whenever the lock is free).
_ADAPTIVE = True


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 hex of the record's canonical JSON (sorted keys, compact), without ``hash``."""
    body = {k: v for k, v in record.items() if k != "hash"} if "hash" in record else record
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


@functools.lru_cache(maxsize=8)
def _whole_second(whole: int) -> str:
    return datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _rfc3339(ts: float) -> str:
    """``2025-03-01T12:00:00.123Z`` (milliseconds, truncated), as datetime would print it; the
    whole second is formatted once per second (records come thousands a second)."""
    whole = int(ts)
    micros = round((ts - whole) * 1_000_000)  # datetime rounds to the microsecond, then we truncate
    if micros == 1_000_000:
        whole, micros = whole + 1, 0
    return f"{_whole_second(whole)}.{micros // 1000:03d}Z"


def token_scale(exchange: Exchange, usage: dict[str, int | None] | None) -> float | None:
    """Where the proxy's counts are estimates (Anthropic: tiktoken o200k, there is no offline Claude
    tokenizer): the upstream's exact input count over our estimate of what was sent, by which the
    estimated saving is scaled before it is priced. None when either side is unknown."""
    rw = exchange.rewrite
    if not dialect_for(exchange.route, exchange.api).estimated_tokens or not usage or rw.tokens_after is None:
        return None
    exact = usage.get("prompt_tokens")
    estimate = rw.tokens_after + (rw.tokens_other or 0)
    if not exact or estimate <= 0:
        return None
    return round(exact / estimate, 4)


def build_record(
    exchange: Exchange, *, prices: PriceBook, include_text: bool, cache: CacheEstimate | None = None
) -> dict[str, Any]:
    """The audit record of a finished exchange, without ``prev_hash`` and ``hash``.

    ``cache`` is the cache model's estimate for the uncompressed request; without one,
    ``cost_before_usd`` assumes the cache use the upstream reported.
    """
    rw = exchange.rewrite
    usage = dialect_for(exchange.route, exchange.api).usage(exchange.usage)
    delta, scale = _removed(exchange, usage)
    prompt = usage.get("prompt_tokens") if usage else None
    if cache is not None and cache.prompt_before is not None and prompt is not None:
        # Anthropic: the cache model counted the original and the forwarded prompt whole, in the
        # upstream's units; their difference is what compression removed (framing cancels out).
        delta = cache.prompt_before - prompt
    prompt_before = _prompt_before(usage, delta)
    cached_before = cache.cached_before if cache is not None else None
    if cached_before is not None and prompt_before is not None:
        cached_before = min(cached_before, prompt_before)
    written_before = cache.written_before if cache is not None else None
    tokens = (rw.tokens_before, rw.tokens_after)
    if rw.unparsed and prompt is not None:  # not counted by the proxy, forwarded as sent
        tokens = (prompt, prompt)
    try:
        price = prices.price_for(exchange.model)
        costs = costs_for(
            price, usage, prompt_delta=delta, cached_before=cached_before, written_before=written_before
        )
        source: str | None = prices.source
    except PricingError as exc:
        log.error("audit: %s", exc)
        costs = costs_for(None, usage, prompt_delta=delta)
        source = None
    record: dict[str, Any] = {
        "ts": _rfc3339(exchange.started),
        "request_id": exchange.request_id,
        "upstream_request_id": exchange.upstream_request_id,
        "team": exchange.team,
        "key_id": exchange.key_id,
        "policy": rw.policy,
        "rules": list(rw.rules),
        "mode": rw.mode,
        "route": exchange.route,
        "api": exchange.api,
        "model": exchange.model,
        "stream": exchange.stream,
        "status": exchange.status,
        "tokens_before": tokens[0],
        "tokens_after": tokens[1],
        "tokens_scale": scale,
        "usage": usage,
        "cached_tokens": usage.get("cached_tokens") if usage else None,
        "prompt_tokens_before_est": prompt_before,
        "cached_tokens_before_est": cached_before,
        "cost_before_usd": costs.before_usd,
        "cost_after_usd": costs.after_usd,
        "saved_usd": costs.saved_usd,
        "price_missing": costs.price_missing,
        "price_source": source,
        "compress_ms": round(rw.compress_ms, 3),
        "upstream_ms": round(exchange.upstream_ms, 3) if exchange.upstream_ms is not None else None,
        "fail_open": rw.fail_open,
    }
    _add_expansions(record, exchange, prices)
    if usage is not None and "cache_write_tokens" in usage:
        record["cache_write_tokens_before_est"] = (
            None if written_before is None else sum(written_before.values())
        )
    if exchange.error is not None:
        record["error"] = exchange.error
    if exchange.client_disconnected:
        record["client_disconnected"] = True
    if exchange.partial:
        record["partial"] = True
    if include_text:
        record["text"] = {"request": exchange.request_body, "forwarded": rw.body}
    return record


def _add_expansions(record: dict[str, Any], exchange: Exchange, prices: PriceBook) -> None:
    """The proxy's tool loop (proxy.server.expand): its extra upstream calls are part of what the
    request cost, priced from their own usage (cache reads as the upstream reported them), so
    ``cost_after_usd`` and ``saved_usd`` include them and the uncompressed request never needed them."""
    if not exchange.expansions and not exchange.extra_usage:
        return
    extra, priced = 0.0, True
    dialect = dialect_for(exchange.route, exchange.api)
    try:
        price = prices.price_for(exchange.model)
    except PricingError:
        price = None
    for raw in exchange.extra_usage:
        cost = costs_for(price, dialect.usage(raw), prompt_delta=0).after_usd
        priced = priced and cost is not None
        extra += cost or 0.0
    record["expansions"] = exchange.expansions
    record["expanded_bytes"] = exchange.expanded_bytes
    record["expansion_calls"] = len(exchange.extra_usage)
    record["expansion_cost_usd"] = round(extra, 10) if priced else None
    if priced and record["cost_after_usd"] is not None and record["cost_before_usd"] is not None:
        record["cost_after_usd"] = round(record["cost_after_usd"] + extra, 10)
        record["saved_usd"] = round(record["cost_before_usd"] - record["cost_after_usd"], 10)


def _removed(exchange: Exchange, usage: dict[str, int | None] | None) -> tuple[int, float | None]:
    """``(prompt tokens compression removed from what was forwarded, Anthropic's token scale)``;
    nothing was removed in shadow mode or after a fail-open."""
    rw = exchange.rewrite
    applied = rw.mode == "enforce" and rw.fail_open is None
    counted = rw.tokens_before is not None and rw.tokens_after is not None
    delta = (rw.tokens_before or 0) - (rw.tokens_after or 0) if applied and counted else 0
    scale = token_scale(exchange, usage)
    return (delta if scale is None else round(delta * scale)), scale


def _prompt_before(usage: dict[str, int | None] | None, delta: int) -> int | None:
    prompt = usage.get("prompt_tokens") if usage else None
    return None if prompt is None else prompt + delta


def _last_line(path: Path) -> tuple[bytes | None, int]:
    """``(last complete line, size up to and including it)``; a torn tail after it is not counted."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        window = _TAIL_BYTES
        while True:
            start = max(0, size - window)
            f.seek(start)
            tail = f.read()
            end = tail.rfind(b"\n")
            prev = tail.rfind(b"\n", 0, end) if end >= 0 else -1
            if start == 0 or prev >= 0:
                break
            window *= 4  # a record longer than the window (include_text): look further back
    if end < 0:
        return None, 0
    return tail[prev + 1 : end], start + end + 1


def _last_hash(path: Path) -> str | None:
    for candidate in reversed(chain_files(path)):
        line, _ = _last_line(candidate)
        if line:
            value = orjson.loads(line).get("hash")
            return str(value) if value else None
    return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


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


def _utc_day(now: float) -> tuple[str, float]:
    """``(YYYY-MM-DD, when the next UTC day starts)``."""
    day = datetime.fromtimestamp(now, UTC)
    start = day.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    return day.strftime("%Y-%m-%d"), start + 86400


class _ChainFile:
    """This process's chain: its active file and head. Used under the sink's lock only.

    ``base`` is the configured audit path; the chain slot (and so the file name) is
    claimed on the first open and held until :meth:`release`.
    """

    def __init__(self, config: AuditConfig, base: Path) -> None:
        self.base = base
        self.path = base
        self.rotate_bytes = config.rotate_bytes
        self.rotate_daily = config.rotate_daily
        self.fd: int | None = None
        self.lock_fd: int | None = None
        self.size = 0
        self.day = ""
        self.last_hash = GENESIS
        self._today = ("", 0.0)

    def today(self) -> str:
        now = time.time()
        if now >= self._today[1]:
            self._today = _utc_day(now)
        return self._today[0]

    def open(self) -> None:
        """Claim a chain slot (first time), open for append, resume the chain from disk."""
        if self.lock_fd is None:
            self.path, self.lock_fd = claim_chain(self.base)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            line, good = _last_line(self.path)
            size = os.fstat(fd).st_size
            if good < size:  # a record torn by a crash mid-write: drop the fragment
                log.warning(
                    "audit: dropping %d bytes of a torn record at the end of %s", size - good, self.path
                )
                os.ftruncate(fd, good)
                size = good
            self.last_hash = (
                (_last_hash(self.path) or GENESIS) if line is None else orjson.loads(line)["hash"]
            )
        except BaseException:
            os.close(fd)
            raise
        self.fd, self.size = fd, size
        self.day = datetime.fromtimestamp(os.fstat(fd).st_mtime, UTC).strftime("%Y-%m-%d") if size else ""

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def release(self) -> None:
        """Close, and give the chain slot back (another process may continue the chain)."""
        self.close()
        if self.lock_fd is not None:
            fd, self.lock_fd = self.lock_fd, None
            os.close(fd)

    def needs_rotation(self, pending: int, extra: int, day: str) -> bool:
        """Whether a record of ``extra`` bytes must start a new file, ``pending`` bytes not yet written."""
        current = self.size + pending
        if current == 0:
            return False
        if self.rotate_daily and self.day and day != self.day:
            return True
        return self.rotate_bytes is not None and current + extra > self.rotate_bytes

    def rotate(self) -> None:
        self.close()
        target = rotated_name(self.path, time.time())
        while target.exists():  # two rotations in one microsecond
            time.sleep(1e-6)
            target = rotated_name(self.path, time.time())
        os.rename(self.path, target)
        self.open()

    def write(self, data: bytes, day: str) -> None:
        if self.fd is None:
            raise OSError(f"{self.path} is not open")
        _write_all(self.fd, data)
        self.size += len(data)
        self.day = day


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
        inline_writes: bool = True,
    ) -> None:
        """``inline_writes=False``: every record goes through the writer thread."""
        if config.path is None:
            raise ValueError("JsonlAuditSink needs audit.path")
        self._config = config
        self._cache_model = cache_model
        self._metrics = metrics
        self._prices = prices or PriceBook()
        self._file = _ChainFile(config, config.path)
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._lock = threading.Lock()  # the chain's head and file: one writer at a time
        self._inline = inline_writes
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
        """Load the cost map now (blocking: call it off the event loop), not at the first record."""
        try:
            self._prices.price_for("gpt-4o")
            _ = self._prices.source
        except PricingError as exc:
            log.error("audit: %s", exc)

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
        if (self._queued == 0 or not _ADAPTIVE) and self._write_inline(record):
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
                prompt_delta=_removed(exchange, usage)[0],
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
        if not self._inline or not self._healthy or not self._lock.acquire(blocking=False):
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
        try:
            self._prices.price_for("gpt-4o")  # load the cost map here, not on the first request
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


def iter_records(paths: list[Path]) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """``(file, line number, record)`` for every line of ``paths`` in order."""
    for path in paths:
        with path.open("rb") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    yield path, number, orjson.loads(line)
