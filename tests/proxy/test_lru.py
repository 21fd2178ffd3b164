"""The one bytes-bounded LRU (proxy/store/lru.py) behind the policy memo, the memory store and the
audit's token memo."""

from __future__ import annotations

import threading

from proxy.store.lru import BytesLRU


def test_lru_is_bounded_in_bytes_and_first_writer_wins() -> None:
    memo: BytesLRU[str] = BytesLRU(max_bytes=10_000, entry_overhead=200)
    for i in range(100):
        memo.setdefault(("k", i), "x" * 500, size=500)
    assert memo.bytes_used <= 10_000
    assert memo.get(("k", 0)) is None and memo.get(("k", 99)) == "x" * 500
    assert memo.setdefault(("k", 99), "other", size=5) == "x" * 500


def test_lru_is_thread_safe() -> None:
    memo: BytesLRU[int] = BytesLRU(
        max_bytes=100_000, entry_overhead=200
    )  # room for all 300 keys: no eviction
    winners: list[int] = []

    def write(n: int) -> None:
        for i in range(2000):
            got = memo.setdefault(("k", i % 300), n, size=10)
            if i % 300 == 7:
                winners.append(got)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(memo) == 300 and memo.bytes_used <= 100_000
    assert len(set(winners)) == 1  # every writer saw the same first value


def test_put_replaces_and_pop_frees_the_bytes() -> None:
    lru: BytesLRU[bytes] = BytesLRU(max_bytes=100)
    lru.put("a", b"x" * 40, size=40)
    lru.put("a", b"y" * 10, size=10)
    assert lru.get("a") == b"y" * 10 and lru.bytes_used == 10
    lru.put("b", b"z" * 200, size=200)  # bigger than the bound: not kept, nothing evicted
    assert lru.get("b") is None and lru.get("a") == b"y" * 10
    lru.pop("a")
    assert len(lru) == 0 and lru.bytes_used == 0
