"""Huge batches in the shared stores: wall time, and how long the event loop is held.

The audit's cache model reads and writes one key per 128 tokens of an OpenAI prompt: ~24,000 for
a 6 MB tool output, ~3,000 for a 200k-token agent session, at every turn. Each backend (memory,
SQLite, a real ``redis-server`` on a free port) gets ``get_many`` then ``put`` of N keys, three
times, while a ticker task measures the event loop's longest gap (what another request would
wait). Side by side with another tree (``--baseline``, e.g. a ``git archive`` of an older main),
each tree in its own process.

    python bench/store_batches.py [--keys 3000 24000] [--baseline /tmp/base]

Prints a Markdown table (medians of the three rounds; the loop's longest gap over all three).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from redis_server import REDIS_SERVER, RedisServer  # noqa: E402


async def _measure(backend: str, keys: int, folder: Path, redis_url: str) -> dict[str, float]:
    """In the tree on sys.path: one backend, ``keys`` keys, three rounds."""
    from proxy.store.memory import MemoryStore
    from proxy.store.redis import RedisStore
    from proxy.store.sqlite import SqliteStore

    store: MemoryStore | RedisStore | SqliteStore
    if backend == "memory":
        store = MemoryStore(max_bytes=256 * 1024 * 1024)
    elif backend == "sqlite":
        store = SqliteStore(folder / f"bench{keys}.sqlite3", max_bytes=256 * 1024 * 1024)
    else:
        store = RedisStore(redis_url, timeout_s=5)
    names = [os.urandom(16).hex() for _ in range(keys)]
    items = [(name, b"1") for name in names]
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.05)
    gets, puts = [], []
    for _ in range(3):
        started = time.perf_counter()
        await store.get_many("cache:bench", names)
        middle = time.perf_counter()
        await store.put("cache:bench", items, ttl_s=300)
        gets.append(middle - started)
        puts.append(time.perf_counter() - middle)
        await asyncio.sleep(0.01)  # the ticker wakes: a call that never yielded shows as one long gap
    task.cancel()
    await store.aclose()
    return {
        "get_ms": statistics.median(gets) * 1000,
        "put_ms": statistics.median(puts) * 1000,
        "gap_ms": max(gaps) * 1000,
    }


def _child(args: argparse.Namespace) -> None:
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {
        f"{backend}:{keys}": asyncio.run(_measure(backend, keys, folder, args.redis))
        for backend in ("memory", "sqlite", "redis")
        for keys in args.keys
    }
    print(orjson.dumps(out).decode())


def _run_tree(tree: Path, keys: list[int], folder: Path, redis_url: str) -> dict[str, dict[str, float]]:
    argv = [sys.executable, str(ROOT / "bench" / "store_batches.py"), "--child", "--folder", str(folder)]
    argv += ["--redis", redis_url, "--keys", *map(str, keys)]
    out = subprocess.run(argv, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, check=True)
    result: dict[str, dict[str, float]] = orjson.loads(out.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, nargs="*", default=[3000, 24000])
    parser.add_argument("--baseline", type=Path, help="another tree (e.g. git archive of an older main)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    if REDIS_SERVER is None:
        sys.exit("redis-server not found (apt-get install redis-server)")
    trees = {"this tree": ROOT, **({"baseline": args.baseline} if args.baseline else {})}
    with tempfile.TemporaryDirectory(prefix="tersegate-store-") as tmp:
        redis = RedisServer(Path(tmp)).start()  # the tests' own launcher (tests/redis_server.py)
        try:
            results = {
                name: _run_tree(tree, args.keys, Path(tmp) / name.replace(" ", "-"), redis.url)
                for name, tree in trees.items()
            }
        finally:
            redis.stop()
    print("| backend | keys | tree | get_many ms | put ms | longest event-loop gap ms |")
    print("|---|---:|---|---:|---:|---:|")
    for cell in results["this tree"]:
        backend, keys = cell.split(":")
        for name, result in results.items():
            row = result[cell]
            print(
                f"| {backend} | {int(keys):,} | {name} | {row['get_ms']:.0f} | {row['put_ms']:.0f} | {row['gap_ms']:.0f} |"
            )


if __name__ == "__main__":
    main()
