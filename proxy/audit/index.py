"""An embedded SQLite index of audit records, so reports stay fast at millions of records.

The JSONL files stay the source of truth. The index knows each file by the
``hash`` of its first record (a rotated file keeps its identity when renamed)
and how many bytes of it were ingested; each report first ingests the lines
appended since, then aggregates with ``GROUP BY``. A file that shrank is
ingested again from the start.

Records are stored summed per file, hour, team, model, route and policy: every
report grouping (and ``--since`` to the hour) is answered from those sums, so a
report over millions of records reads thousands of rows.

With ``audit.sqlite`` set, the proxy keeps the index current itself
(:class:`LiveIndexer`: a thread ingesting what the audit writer appended, at most
once a second), so no report pays for a backlog.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from proxy.audit.rows import GROUP_KEYS, Row, Sums, row_of

__all__ = ["AuditIndex", "LiveIndexer", "covers"]

log = logging.getLogger(__name__)
_LIVE_EVERY_S = 1.0  # at most one live ingest per second: one sums row per key and second at most

_VERSION = 4  # PRAGMA user_version: an index of another layout is rebuilt
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    first_hash TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    ingested_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sums (
    file_id INTEGER NOT NULL,
    hour TEXT, team TEXT, model TEXT, route TEXT, policy TEXT,
    requests INTEGER NOT NULL, tokens_before INTEGER NOT NULL, tokens_after INTEGER NOT NULL,
    cost_before REAL NOT NULL, cost_after REAL NOT NULL, saved REAL NOT NULL, priced INTEGER NOT NULL,
    fail_open INTEGER NOT NULL, price_missing INTEGER NOT NULL,
    prompt_before INTEGER NOT NULL, prompt_after INTEGER NOT NULL,
    cached_before INTEGER NOT NULL, cached_after INTEGER NOT NULL,
    expansions INTEGER NOT NULL, expanded_bytes INTEGER NOT NULL, expansion_cost REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sums_file ON sums (file_id);
"""
_INSERT = f"INSERT INTO sums VALUES ({', '.join('?' * 22)})"
_READ_CHUNK = 16 << 20
# How report groupings map onto the stored columns (all but the day are stored as they are).
_COLUMNS = {key: "substr(hour, 1, 10)" if key == "day" else key for key in GROUP_KEYS}

Key = tuple[str | None, str | None, str | None, str | None, str | None]


def _first_hash(path: Path) -> str | None:
    with path.open("rb") as f:
        line = f.readline()
    if not line.endswith(b"\n"):
        return None
    value = orjson.loads(line).get("hash")
    return str(value) if value else None


def _add(sums: dict[Key, Sums], record: dict[str, Any]) -> None:
    ts = record.get("ts")
    key = (
        ts[:13] if isinstance(ts, str) else None,
        record.get("team"),
        record.get("model"),
        record.get("route"),
        record.get("policy"),
    )
    acc = sums.get(key)
    if acc is None:
        acc = sums[key] = Sums()
    acc.add(record)


def _complete_lines(path: Path, start: int) -> Iterator[tuple[bytes, int]]:
    """Blocks of whole lines from byte ``start`` on, each with the offset just after it."""
    with path.open("rb") as f:
        f.seek(start)
        carry = b""
        offset = start
        while chunk := f.read(_READ_CHUNK):
            data = carry + chunk
            end = data.rfind(b"\n") + 1
            carry = data[end:]
            if end:
                offset += end
                yield data[:end], offset


class AuditIndex:
    """``with AuditIndex(path) as index: rows = index.report(files, by=..., since=...)``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # isolation_level=None: transactions are explicit, so concurrent reports ingest one at a time.
        self._db = sqlite3.connect(path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        if self._db.execute("PRAGMA user_version").fetchone()[0] != _VERSION:
            self._db.executescript(
                "DROP TABLE IF EXISTS records; DROP TABLE IF EXISTS sums; DROP TABLE IF EXISTS files;"
            )
            self._db.execute(f"PRAGMA user_version = {_VERSION}")
        self._db.executescript(_SCHEMA)

    def __enter__(self) -> AuditIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def reset(self) -> None:
        """Forget everything (``tersegate report --reindex``)."""
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("DELETE FROM sums")
        self._db.execute("DELETE FROM files")
        self._db.execute("COMMIT")
        self._db.execute("VACUUM")

    def ingest(self, paths: Sequence[Path]) -> list[int]:
        """Bring the index up to date with ``paths``; their file ids, for :meth:`report`."""
        ids: list[int] = []
        for path in paths:
            first = _first_hash(path)
            if first is None:
                continue  # empty, or its first record is still being written
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ids.append(self._ingest_file(path, first))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return ids

    def _ingest_file(self, path: Path, first: str) -> int:
        size = path.stat().st_size
        found = self._db.execute(
            "SELECT id, ingested_bytes FROM files WHERE first_hash = ?", (first,)
        ).fetchone()
        if found is None:
            cursor = self._db.execute(
                "INSERT INTO files (first_hash, path, ingested_bytes) VALUES (?, ?, 0)", (first, str(path))
            )
            file_id, start = int(cursor.lastrowid or 0), 0
        else:
            file_id, start = int(found[0]), int(found[1])
            if size < start:  # rewritten in place: start over
                self._db.execute("DELETE FROM sums WHERE file_id = ?", (file_id,))
                start = 0
        ingested = start
        sums: dict[Key, Sums] = {}
        for block, ingested in _complete_lines(path, start):  # noqa: B007 - the last offset is stored
            for line in block.splitlines():
                if line:
                    _add(sums, orjson.loads(line))
        self._db.executemany(_INSERT, [(file_id, *key, *acc.totals()) for key, acc in sums.items()])
        self._db.execute(
            "UPDATE files SET path = ?, ingested_bytes = ? WHERE id = ?", (str(path), ingested, file_id)
        )
        return file_id

    def report(self, file_ids: Sequence[int], *, by: Sequence[str], since: str | None) -> list[Row]:
        """Rows over the records of ``file_ids``, grouped by ``by`` (names from :data:`~proxy.audit.rows.GROUP_KEYS`).

        ``since`` is compared by hour: pass whole hours (see :func:`covers`).
        """
        if not file_ids:
            return []
        if any(key not in _COLUMNS for key in by):  # they become SQL expressions
            raise ValueError(f"cannot group by {by}")
        where = f"file_id IN ({','.join('?' * len(file_ids))})"
        params: list[Any] = list(file_ids)
        if since is not None:
            where += " AND hour >= ?"
            params.append(since[:13])
        columns = [_COLUMNS[key] for key in by]
        group = ""
        if by:
            group = f"GROUP BY {', '.join(columns)} ORDER BY " + ", ".join(
                f"{c} IS NULL, {c}" for c in columns
            )
        sql = (
            f"SELECT {''.join(c + ', ' for c in columns)}sum(requests), sum(tokens_before), sum(tokens_after), "
            "total(cost_before), total(cost_after), total(saved), sum(priced), sum(fail_open), "
            "sum(price_missing), sum(prompt_before), sum(prompt_after), sum(cached_before), sum(cached_after), "
            "sum(expansions), sum(expanded_bytes), total(expansion_cost) "
            f"FROM sums WHERE {where} {group}"
        )
        rows = []
        for found in self._db.execute(sql, params):
            values, totals = found[: len(by)], found[len(by) :]
            if totals[0]:  # an aggregate without GROUP BY returns a row even over no records
                rows.append(row_of(tuple(zip(by, values, strict=True)), totals))
        return rows


def covers(since: str | None) -> bool:
    """Whether the index can answer ``--since`` exactly: its sums are per hour."""
    return since is None or since[13:] in ("", ":00:00.000Z")


class LiveIndexer:
    """Keeps an index current while the proxy writes: ``notify()`` after each write.

    Ingesting runs on its own thread, never the audit writer's: a report holding
    the index's lock delays indexing, never a response. Failures are logged once
    and retried on the next write; reports ingest whatever is left anyway.
    """

    def __init__(self, index_path: Path, files: Callable[[], list[Path]]) -> None:
        self._index_path = index_path
        self._files = files
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="tersegate-audit-index", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def close(self, timeout: float = 10.0) -> None:
        """Ingest what is left, then stop."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        index: AuditIndex | None = None
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                index = self._ingest(index)
                if self._stopping.is_set() or self._stopping.wait(_LIVE_EVERY_S):
                    self._ingest(index)
                    return
        finally:
            if index is not None:
                index.close()

    def _ingest(self, index: AuditIndex | None) -> AuditIndex | None:
        try:
            index = index or AuditIndex(self._index_path)
            index.ingest(self._files())
        except (sqlite3.Error, OSError, ValueError) as exc:  # ValueError: a line orjson cannot read
            if not self._failing:
                log.warning(
                    "audit index %s: cannot ingest (%s); reports will catch up", self._index_path, exc
                )
            self._failing = True
            return index
        if self._failing:
            log.warning("audit index %s: ingesting again", self._index_path)
        self._failing = False
        return index
