"""``tersegate audit verify``: the chain across rotated files, and the first broken line named."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from harness import tersegate_command
from samples import audited_exchange

from proxy.audit.chainfile import GENESIS
from proxy.audit.sink import JsonlAuditSink
from proxy.config.model import AuditConfig
from proxy.metrics import Metrics


def write(path: Path, count: int, *, rotate_bytes: int | None = None) -> None:
    async def run() -> None:
        sink = JsonlAuditSink(AuditConfig(path=path, rotate_bytes=rotate_bytes), metrics=Metrics())
        await asyncio.gather(*(sink.commit(audited_exchange(i)) for i in range(count)))
        await sink.aclose()

    asyncio.run(run())


def verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*tersegate_command(), "audit", "verify", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def audit(tmp_path: Path) -> Path:
    path = tmp_path / "audit.jsonl"
    write(path, 5)
    return path


def test_intact_chain(audit: Path) -> None:
    result = verify(str(audit))
    assert result.returncode == 0
    assert result.stdout.startswith("ok: 5 records in 1 file(s), chain intact")
    first = orjson.loads(audit.read_bytes().splitlines()[0])
    assert first["prev_hash"] == GENESIS


def test_deleted_line_breaks_the_chain_at_the_next_line(audit: Path) -> None:
    lines = audit.read_bytes().splitlines(keepends=True)
    del lines[1]
    audit.write_bytes(b"".join(lines))
    result = verify(str(audit))
    assert result.returncode == 1
    assert f"{audit}:2: prev_hash does not match line 1" in result.stderr


def test_edited_line_is_a_hash_mismatch(audit: Path) -> None:
    lines = audit.read_bytes().splitlines(keepends=True)
    record = orjson.loads(lines[3])
    record["saved_usd"] = 100.0
    lines[3] = orjson.dumps(record) + b"\n"
    audit.write_bytes(b"".join(lines))
    result = verify(str(audit))
    assert result.returncode == 1 and f"{audit}:4: hash mismatch" in result.stderr


def test_rehashed_edit_still_breaks_the_next_link(audit: Path) -> None:
    # Someone who recomputes the edited record's own hash is caught by the next record's prev_hash.
    from proxy.audit.chainfile import record_hash

    lines = audit.read_bytes().splitlines(keepends=True)
    record = orjson.loads(lines[2])
    record["team"] = "someone-else"
    record["hash"] = record_hash(record)
    lines[2] = orjson.dumps(record) + b"\n"
    audit.write_bytes(b"".join(lines))
    result = verify(str(audit))
    assert result.returncode == 1 and f"{audit}:4: prev_hash does not match line 3" in result.stderr


def test_rotated_files_chain_into_each_other(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 9, rotate_bytes=1)
    files = sorted(tmp_path.glob("*.jsonl"))
    assert len(files) == 9 and files[-1] == path
    assert verify(str(tmp_path)).returncode == 0
    assert verify(str(tmp_path / "audit*.jsonl")).returncode == 0
    # Dropping a middle file breaks the chain at the first line of the next one.
    files[4].unlink()
    result = verify(str(tmp_path))
    assert result.returncode == 1
    assert f"{files[5]}:1: prev_hash does not match the last line of {files[3]}" in result.stderr


def test_not_json_and_missing_files(audit: Path) -> None:
    with audit.open("ab") as f:
        f.write(b"garbage\n")
    result = verify(str(audit))
    assert result.returncode == 1 and f"{audit}:6: not a JSON record" in result.stderr
    assert verify(str(audit.parent / "nope.jsonl")).returncode == 1


def test_torn_tail_is_dropped_when_the_sink_reopens(tmp_path: Path) -> None:
    # A crash mid-write leaves half a line; the next start trims it and the chain continues.
    path = tmp_path / "audit.jsonl"
    write(path, 3)
    with path.open("ab") as f:
        f.write(b'{"ts":"2025-01-01T00:00:00.000Z","requ')
    write(path, 2)
    assert len(path.read_bytes().splitlines()) == 5
    assert verify(str(path)).returncode == 0


def test_daily_rotation_starts_a_new_file_on_a_new_utc_day(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write(path, 2)
    yesterday = time.time() - 86_400
    os.utime(path, (yesterday, yesterday))  # the file was last written yesterday
    asyncio.run(_write_daily(path))
    rotated = sorted(tmp_path.glob("audit.*Z.jsonl"))
    assert len(rotated) == 1 and len(rotated[0].read_bytes().splitlines()) == 2
    assert len(path.read_bytes().splitlines()) == 1
    assert verify(str(tmp_path)).returncode == 0


async def _write_daily(path: Path) -> None:
    sink = JsonlAuditSink(AuditConfig(path=path, rotate_daily=True), metrics=Metrics())
    await sink.commit(audited_exchange(99))
    await sink.aclose()
