"""The proxy keeps the audit's SQLite index current while it writes (``audit.sqlite``)."""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import openai
import orjson
from harness import MakeProxy, RunningProxy, tersegate_command


def _indexed(index: Path) -> tuple[int, dict[str, int]]:
    """Requests summed in the index, and ingested bytes per file name."""
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=10)
    try:
        total = db.execute("SELECT coalesce(sum(requests), 0) FROM sums").fetchone()[0]
        files = {Path(path).name: size for path, size in db.execute("SELECT path, ingested_bytes FROM files")}
    except sqlite3.OperationalError:  # created, its tables not yet
        return 0, {}
    finally:
        db.close()
    return int(total), files


def _wait_indexed(index: Path, folder: Path, requests: int, timeout: float = 15.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        sizes = {path.name: path.stat().st_size for path in folder.glob("*.jsonl")}
        if index.is_file():
            total, files = _indexed(index)
            if total == requests and files == sizes:
                return files
        if time.monotonic() > deadline:
            raise AssertionError(f"index not current after {timeout} s: {_indexed(index)} vs {sizes}")
        time.sleep(0.1)


def _proxy(make_proxy: MakeProxy, **audit: object) -> RunningProxy:
    return make_proxy({"audit": {"path": "audit/audit.jsonl", "sqlite": "audit/index.sqlite", **audit}})


def test_the_index_follows_the_writes_across_rotation(make_proxy: MakeProxy) -> None:
    proxy = _proxy(make_proxy, rotate_bytes=3000)
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0)
    for i in range(12):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"q {i}"}])
    folder = proxy.config_path.parent / "audit"
    files = _wait_indexed(folder / "index.sqlite", folder, 12)
    assert len(files) >= 3  # rotated files were finished before their rename
    # A report now finds nothing to ingest and agrees with the JSONL.
    report = subprocess.run(
        [*tersegate_command(), "report", "--config", str(proxy.config_path), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stderr
    rows = orjson.loads(report.stdout)
    assert sum(row["requests"] for row in rows) == 12
    assert _indexed(folder / "index.sqlite")[1] == files


def test_a_report_holding_the_index_lock_never_delays_responses(make_proxy: MakeProxy) -> None:
    proxy = _proxy(make_proxy)
    client = openai.OpenAI(base_url=proxy.base_url, api_key="sk-x", max_retries=0, timeout=5)
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "first"}])
    folder = proxy.config_path.parent / "audit"
    index = folder / "index.sqlite"
    _wait_indexed(index, folder, 1)
    holder = sqlite3.connect(index, isolation_level=None, timeout=10)
    holder.execute("BEGIN IMMEDIATE")  # what a long report ingest does
    try:
        for i in range(5):  # each would wait on the lock if the audit writer indexed itself
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": f"n {i}"}])
        assert len((folder / "audit.jsonl").read_bytes().splitlines()) == 6
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _wait_indexed(index, folder, 6)
