"""The SQLite backend: one file shared by every process on a machine, kept across restarts.

First writer wins across processes: ``INSERT OR IGNORE`` then read back what won, in one
``BEGIN IMMEDIATE`` transaction (SQLite's write lock orders the processes). WAL mode lets
readers run beside a writer. Every call runs on the store's own thread (one connection),
never on the event loop. Bounded by age (``expires``, wall-clock, so every process agrees)
and by size: every few hundred writes the expired rows go, then the oldest until the data
is under ``max_bytes``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from proxy.store.base import StoreUnavailable

__all__ = ["SqliteStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    size INTEGER NOT NULL,
    written REAL NOT NULL,
    expires REAL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_written ON entries (written);
"""
_PRUNE_EVERY = 256  # writes between size checks
_BATCH = 400  # keys per statement (SQLite's variable limit is 32766 today, 999 on old builds)


class SqliteStore:
    """``path``: the database file (its folder is created). ``max_bytes``: keys and values, summed."""

    def __init__(self, path: Path, *, max_bytes: int, max_age_s: float | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tersegate-sqlite-store")
        self._db: sqlite3.Connection | None = None
        self._writes = 0
        self._estimate: int | None = None  # bytes stored, as this process last counted plus its writes
        self._lock = threading.Lock()  # the connection is used by the store's thread only; this guards close

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
            for attempt in range(50):  # switching to WAL takes a lock that busy_timeout does not wait for
                try:
                    db.execute("PRAGMA journal_mode=WAL")
                    db.executescript(_SCHEMA)
                    break
                except sqlite3.OperationalError:
                    if attempt == 49:
                        db.close()
                        raise
                    time.sleep(0.02)
            db.execute(
                "PRAGMA synchronous=NORMAL"
            )  # WAL + NORMAL: a power loss may drop the newest entries only
            self._db = db
        return self._db

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            with self._lock:
                try:
                    return work(self._connect())
                except (sqlite3.Error, OSError) as exc:
                    if self._db is not None:
                        self._db.close()
                        self._db = None
                    raise StoreUnavailable(f"sqlite {self.path.name}: {type(exc).__name__}: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    @staticmethod
    def _select(db: sqlite3.Connection, namespace: str, keys: Sequence[str], now: float) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _BATCH):
            chunk = unique[start : start + _BATCH]
            marks = ",".join("?" * len(chunk))
            rows = db.execute(
                f"SELECT key, value FROM entries WHERE namespace = ? AND key IN ({marks})"
                " AND (expires IS NULL OR expires > ?)",
                (namespace, *chunk, now),
            )
            found.update((key, bytes(value)) for key, value in rows)
        return found

    async def get_many(self, namespace: str, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        found = await self._run(lambda db: self._select(db, namespace, keys, time.time()))
        return [found.get(key) for key in keys]

    def _expires(self, ttl_s: float | None, now: float) -> float | None:
        ages = [t for t in (ttl_s, self.max_age_s) if t is not None]
        return now + min(ages) if ages else None

    def _write(
        self,
        db: sqlite3.Connection,
        namespace: str,
        items: Sequence[tuple[str, bytes]],
        ttl_s: float | None,
        *,
        replace: bool,
    ) -> dict[str, bytes]:
        now = time.time()
        expires = self._expires(ttl_s, now)
        rows = [(namespace, k, v, len(namespace) + len(k) + len(v), now, expires) for k, v in items]
        db.execute("BEGIN IMMEDIATE")
        try:
            if replace:
                db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?)", rows)
                won: dict[str, bytes] = {}
            else:
                # An expired row does not hold its key: drop it first, then the first writer wins.
                db.executemany(
                    "DELETE FROM entries WHERE namespace = ? AND key = ? AND expires <= ?",
                    [(namespace, k, now) for k, _ in items],
                )
                db.executemany("INSERT OR IGNORE INTO entries VALUES (?, ?, ?, ?, ?, ?)", rows)
                won = self._select(db, namespace, [k for k, _ in items], now)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._writes += len(items)
        if self._estimate is None:
            self._estimate = self._total(db)
        self._estimate += sum(row[3] for row in rows)
        # Other processes' writes are seen at the periodic check; this process's at once.
        if self._writes >= _PRUNE_EVERY or self._estimate > self.max_bytes:
            self._writes = 0
            self._prune(db, now)
        return won

    @staticmethod
    def _total(db: sqlite3.Connection) -> int:
        return int(db.execute("SELECT COALESCE(SUM(size), 0) FROM entries").fetchone()[0])

    def _prune(self, db: sqlite3.Connection, now: float) -> None:
        """Expired rows first, then the oldest until the data is under 90% of ``max_bytes``."""
        db.execute("DELETE FROM entries WHERE expires <= ?", (now,))
        total = self._estimate = self._total(db)
        if total <= self.max_bytes:
            return
        excess = total - self.max_bytes * 9 // 10
        cut = db.execute(
            "SELECT written FROM (SELECT written, SUM(size) OVER (ORDER BY written) AS running FROM entries)"
            " WHERE running >= ? LIMIT 1",
            (excess,),
        ).fetchone()
        if cut is not None:
            db.execute("DELETE FROM entries WHERE written <= ?", (cut[0],))
            self._estimate = self._total(db)

    async def put_if_absent(
        self, namespace: str, items: Sequence[tuple[str, bytes]], *, ttl_s: float | None = None
    ) -> list[bytes]:
        if not items:
            return []
        won = await self._run(lambda db: self._write(db, namespace, items, ttl_s, replace=False))
        # A row pruned between insert and read-back (size bound) leaves the caller's own value.
        return [won.get(key, value) for key, value in items]

    async def put(
        self, namespace: str, items: Sequence[tuple[str, bytes]], *, ttl_s: float | None = None
    ) -> None:
        if items:
            await self._run(lambda db: self._write(db, namespace, items, ttl_s, replace=True))

    async def size_bytes(self) -> int:
        """Keys and values stored, summed (expired rows included until the next prune)."""

        return await self._run(self._total)

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                if self._db is not None:
                    self._db.close()
                    self._db = None

        await asyncio.get_running_loop().run_in_executor(self._pool, close)
        self._pool.shutdown(wait=True)
