"""An embedded SQLite index of audit records, so reports stay fast at millions of records.

The JSONL files stay the source of truth. The index knows each file by the
``hash`` of its first record (a rotated file keeps its identity when renamed)
and how many bytes of it were ingested; each report first ingests the lines
appended since, then aggregates with ``GROUP BY``. A file that shrank or
changed its first record is ingested again from the start.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from proxy.report import GROUP_KEYS, Row, usd

__all__ = ["AuditIndex"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    first_hash TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    ingested_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    file_id INTEGER NOT NULL,
    ts TEXT, day TEXT, team TEXT, model TEXT, route TEXT, policy TEXT,
    tokens_before INTEGER, tokens_after INTEGER,
    cost_before REAL, cost_after REAL, saved REAL,
    fail_open INTEGER NOT NULL, price_missing INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS records_file ON records (file_id);
"""
_INSERT = "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_BATCH = 50_000
_READ_CHUNK = 16 << 20


def _first_hash(path: Path) -> str | None:
    with path.open("rb") as f:
        line = f.readline()
    if not line.endswith(b"\n"):
        return None
    value = orjson.loads(line).get("hash")
    return str(value) if value else None


def _row(file_id: int, record: dict[str, Any]) -> tuple[Any, ...]:
    ts = record.get("ts")
    return (
        file_id,
        ts,
        ts[:10] if isinstance(ts, str) else None,
        record.get("team"),
        record.get("model"),
        record.get("route"),
        record.get("policy"),
        record.get("tokens_before"),
        record.get("tokens_after"),
        record.get("cost_before_usd"),
        record.get("cost_after_usd"),
        record.get("saved_usd"),
        record.get("fail_open") is not None,
        record.get("price_missing") is True,
    )


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
        self._db.execute("DELETE FROM records")
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
                self._db.execute("DELETE FROM records WHERE file_id = ?", (file_id,))
                start = 0
        ingested = start
        rows: list[tuple[Any, ...]] = []
        for block, ingested in _complete_lines(path, start):  # noqa: B007 - the last offset is stored
            rows.extend(_row(file_id, orjson.loads(line)) for line in block.splitlines() if line.strip())
            if len(rows) >= _BATCH:
                self._db.executemany(_INSERT, rows)
                rows = []
        self._db.executemany(_INSERT, rows)
        self._db.execute(
            "UPDATE files SET path = ?, ingested_bytes = ? WHERE id = ?", (str(path), ingested, file_id)
        )
        return file_id

    def report(self, file_ids: Sequence[int], *, by: Sequence[str], since: str | None) -> list[Row]:
        """Rows over the records of ``file_ids``, grouped by ``by`` (names from ``GROUP_KEYS``)."""
        if not file_ids:
            return []
        if any(key not in GROUP_KEYS for key in by):  # they become SQL column names
            raise ValueError(f"cannot group by {by}")
        where = f"file_id IN ({','.join('?' * len(file_ids))})"
        params: list[Any] = list(file_ids)
        if since is not None:
            where += " AND ts >= ?"
            params.append(since)
        columns = ", ".join(by)
        group = f"GROUP BY {columns} ORDER BY " + ", ".join(f"{k} IS NULL, {k}" for k in by) if by else ""
        sql = (
            f"SELECT {columns + ', ' if by else ''}count(*), total(tokens_before), total(tokens_after), "
            "total(cost_before), total(cost_after), total(saved), count(cost_after), "
            f"total(fail_open), total(price_missing) FROM records WHERE {where} {group}"
        )
        rows = []
        for found in self._db.execute(sql, params):
            values, sums = found[: len(by)], found[len(by) :]
            if sums[0] == 0:
                continue  # no records at all (an aggregate without GROUP BY still returns a row)
            priced = int(sums[6])
            rows.append(
                Row(
                    keys=tuple(zip(by, values, strict=True)),
                    requests=int(sums[0]),
                    tokens_before=int(sums[1]),
                    tokens_after=int(sums[2]),
                    cost_before_usd=usd(sums[3], priced),
                    cost_after_usd=usd(sums[4], priced),
                    saved_usd=usd(sums[5], priced),
                    fail_open=int(sums[7]),
                    price_missing=int(sums[8]),
                )
            )
        return rows
