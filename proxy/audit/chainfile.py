"""This process's audit chain on disk: its active file, opened for append and resumed from its
last record, rotated by size or UTC day, and the hash that links each record to the one before.

Each record carries ``prev_hash`` (the previous record's ``hash``) and ``hash`` (SHA-256 over its
canonical JSON without ``hash``), so editing, dropping or reordering lines breaks the chain
(``tersegate audit verify``). Rotation renames the active file to ``<stem>.<UTC timestamp><suffix>``
and the chain continues into the new file. Which file is this process's chain:
:mod:`proxy.audit.chains`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from proxy.audit.chains import chain_files, claim_chain, rotated_name
from proxy.config.model import AuditConfig

__all__ = ["GENESIS", "ChainFile", "record_hash"]

log = logging.getLogger("tersegate.audit")

GENESIS = "0" * 64  # prev_hash of the first record ever written
_TAIL_BYTES = 1 << 20  # the last record is found within this many bytes of a file's end


def record_hash(record: dict[str, Any]) -> str:
    """SHA-256 hex of the record's canonical JSON (sorted keys, compact), without ``hash``."""
    body = {k: v for k, v in record.items() if k != "hash"} if "hash" in record else record
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def last_line(path: Path) -> tuple[bytes | None, int]:
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
        line, _ = last_line(candidate)
        if line:
            value = orjson.loads(line).get("hash")
            return str(value) if value else None
    return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _utc_day(now: float) -> tuple[str, float]:
    """``(YYYY-MM-DD, when the next UTC day starts)``."""
    day = datetime.fromtimestamp(now, UTC)
    start = day.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    return day.strftime("%Y-%m-%d"), start + 86400


class ChainFile:
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
            line, good = last_line(self.path)
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
