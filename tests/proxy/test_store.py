"""The shared-state backends behind :class:`proxy.store.base.SharedStore`: memory, sqlite, real Redis.

First writer wins (and every caller is told what won), values are kept per namespace, bounded by
age (and for sqlite by size), and a backend that cannot be reached says so with StoreUnavailable.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
from redis_server import RedisServer, redis_server

from proxy.config.model import ConfigErrors, MemoConfig, load_config
from proxy.store.base import SLICE_KEYS, SharedStore, StoreUnavailable
from proxy.store.factory import open_store
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from proxy.store.sqlite import SqliteStore

__all__ = ["redis_server"]

REPO = Path(__file__).resolve().parents[2]


@pytest_asyncio.fixture(params=["memory", "sqlite", "redis"], loop_scope="function")
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SharedStore]:
    made: SharedStore
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SqliteStore(tmp_path / "state" / "memo.sqlite", max_bytes=1 << 20)
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        made = RedisStore(server.url)
    yield made
    await made.aclose()


async def test_first_writer_wins_and_every_writer_learns_what_won(store: SharedStore) -> None:
    assert await store.get_many("memo:a", ["k1", "k2"]) == [None, None]
    assert await store.put_if_absent("memo:a", [("k1", b"first"), ("k2", b"two")]) == [b"first", b"two"]
    assert await store.put_if_absent("memo:a", [("k1", b"second"), ("k3", b"three")]) == [b"first", b"three"]
    assert await store.get_many("memo:a", ["k1", "k2", "k3", "k4"]) == [b"first", b"two", b"three", None]
    # Namespaces do not see each other.
    assert await store.get_many("memo:b", ["k1"]) == [None]
    assert await store.put_if_absent("memo:b", [("k1", b"b's")]) == [b"b's"]
    # put replaces (last writer wins).
    await store.put("memo:a", [("k1", b"replaced")])
    assert await store.get_many("memo:a", ["k1"]) == [b"replaced"]


async def test_entries_expire_and_an_expired_key_can_be_won_again(store: SharedStore) -> None:
    await store.put_if_absent("memo:a", [("short", b"old")], ttl_s=0.3)
    assert await store.get_many("memo:a", ["short"]) == [b"old"]
    await asyncio.sleep(0.5)
    assert await store.get_many("memo:a", ["short"]) == [None]
    assert await store.put_if_absent("memo:a", [("short", b"new")]) == [b"new"]


async def test_large_batches_are_one_call(store: SharedStore) -> None:
    items = [(f"k{i}", f"v{i}".encode()) for i in range(1500)]
    assert await store.put_if_absent("memo:a", items) == [v for _, v in items]
    got = await store.get_many("memo:a", [k for k, _ in items])
    assert got == [v for _, v in items]


async def test_batches_larger_than_a_slice_keep_order_and_first_writer_wins(store: SharedStore) -> None:
    # 5,000 keys cross two slice boundaries (SLICE_KEYS): each slice is its own call or script.
    assert SLICE_KEYS < 5000
    items = [(f"k{i}", f"v{i}".encode()) for i in range(5000)]
    assert await store.put_if_absent("memo:a", items[:2500]) == [v for _, v in items[:2500]]
    later = [(k, b"late") for k, _ in items]
    won = await store.put_if_absent("memo:a", later, ttl_s=60)
    assert won == [v for _, v in items[:2500]] + [b"late"] * 2500
    await store.put("memo:a", [(k, b"new") for k, _ in items[1000:3000]], ttl_s=60)
    got = await store.get_many("memo:a", [k for k, _ in items] + ["absent"])
    expected = [v for _, v in items[:1000]] + [b"new"] * 2000 + [b"late"] * 2000 + [None]
    assert got == expected


async def test_the_memory_store_lets_other_requests_run_during_a_huge_batch() -> None:
    # The cache model of a 6 MB prompt reads and writes ~24,000 keys on the event loop: in
    # slices, so another request's task runs before the batch is done (each call keeps its result).
    store = MemoryStore()
    items = [(f"k{i}", f"v{i}".encode()) for i in range(24_000)]
    progress: list[str] = []

    async def other() -> None:
        progress.append("other")

    async def batch(call: Callable[[], Any]) -> None:
        task = asyncio.create_task(other())
        await call()
        progress.append("batch")
        await task

    await batch(lambda: store.put("memo:a", items[:12_000]))
    await batch(lambda: store.put_if_absent("memo:a", items))
    await batch(lambda: store.get_many("memo:a", [k for k, _ in items]))
    assert progress == ["other", "batch"] * 3
    assert await store.put_if_absent("memo:a", [(k, b"late") for k, _ in items]) == [v for _, v in items]


async def test_sqlite_is_bounded_by_size(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "memo.sqlite", max_bytes=200_000)
    try:
        for batch in range(20):
            await store.put_if_absent("memo:a", [(f"{batch}-{i}", b"x" * 1000) for i in range(50)])
        assert await store.size_bytes() <= 200_000
        # The newest entries are kept, the oldest went first.
        assert (await store.get_many("memo:a", ["19-49"]))[0] == b"x" * 1000
        assert (await store.get_many("memo:a", ["0-0"]))[0] is None
    finally:
        await store.aclose()


RACER = """
import asyncio, sys, time
from pathlib import Path
from proxy.store.sqlite import SqliteStore

async def main() -> None:
    store = SqliteStore(Path(sys.argv[1]), max_bytes=1 << 24)
    while time.time() < float(sys.argv[3]):
        time.sleep(0.001)
    won = await store.put_if_absent("memo:t", [(f"k{i}", sys.argv[2].encode()) for i in range(200)])
    print(",".join(sorted(set(w.decode() for w in won))))
    await store.aclose()

asyncio.run(main())
"""


def test_sqlite_first_writer_wins_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    start = time.time() + 2.0  # every process writes at the same moment
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(RACER), str(path), f"writer{n}", str(start)],
            stdout=subprocess.PIPE,
            env=env,
        )
        for n in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0].decode().strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    # Each process was told the same single winner for every key.
    assert len(set(outputs)) == 1 and outputs[0].startswith("writer") and "," not in outputs[0]


async def test_redis_keys_are_namespaced_and_carry_the_age_bound(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, max_age_s=3600)
    try:
        await store.put_if_absent("memo:team-a", [("abc", b"v")])
    finally:
        await store.aclose()
    client = redis.Redis.from_url(redis_server.url)
    assert client.keys("*") == [b"tersegate:memo:team-a:abc"]
    assert 3500 < client.ttl("tersegate:memo:team-a:abc") <= 3600
    client.close()


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
async def test_an_unreachable_backend_says_so_quickly(
    kind: str, tmp_path: Path, redis_server: RedisServer
) -> None:
    store: SharedStore
    if kind == "redis":
        redis_server.kill()
        store = RedisStore(redis_server.url, timeout_s=0.25)
    else:
        (tmp_path / "file").write_text("not a folder")
        store = SqliteStore(tmp_path / "file" / "memo.sqlite", max_bytes=1 << 20)
    calls: list[Callable[[], object]] = [
        lambda: store.get_many("memo:a", ["k"]),
        lambda: store.put_if_absent("memo:a", [("k", b"v")]),
    ]
    for call in calls:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await call()  # type: ignore[misc]
        assert time.monotonic() - started < 1.0
    await store.aclose()


def test_the_factory_builds_the_configured_backend(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    config = tmp_path / "config.yaml"
    base = "upstreams: {openai: {base_url: 'https://api.openai.com/v1'}}\nteams: {default: {}}\n"
    config.write_text(base + "compression: {memo: {backend: sqlite, path: state/memo.sqlite}}\n")
    memo = load_config(config).compression.memo
    assert memo.path == tmp_path / "state" / "memo.sqlite" and not memo.shared_across_teams
    assert isinstance(open_store(memo), SqliteStore)
    assert isinstance(open_store(MemoConfig(backend="redis", url="redis://127.0.0.1:1/0")), RedisStore)
    assert isinstance(open_store(MemoConfig()), MemoryStore)


@pytest.mark.parametrize(
    ("memo", "message"),
    [
        ("{backend: disk}", "compression.memo.backend: must be one of memory, sqlite, redis"),
        ("{backend: sqlite}", "compression.memo: backend sqlite needs path"),
        ("{backend: redis, url: 'http://x'}", "compression.memo.url: must be a redis:// URL"),
        ("{backend: redis}", "compression.memo: backend redis needs url"),
        ("{max_age_s: 0}", "compression.memo.max_age_s: must be a positive number"),
        ("{shared_across_team: true}", "compression.memo: unknown key 'shared_across_team'"),
    ],
)
def test_bad_memo_settings_are_file_line_errors(tmp_path: Path, memo: str, message: str) -> None:
    config = tmp_path / "config.yaml"
    base = "upstreams: {openai: {base_url: 'https://api.openai.com/v1'}}\nteams: {default: {}}\n"
    config.write_text(base + "compression:\n  memo: " + memo + "\n")
    with pytest.raises(ConfigErrors) as caught:
        load_config(config)
    assert f"{config}:4: {message}" in str(caught.value)
