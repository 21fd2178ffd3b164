"""Compress-once across replicas and restarts: the SWE-agent replay's prefix breaks and bill, and
what the memo's shared level adds per compressible request.

Replay (the bill model of bench/replay_engine.py: the longest byte-identical message prefix of the previous
turn's forwarded request is cached at 10%): each trace turn by turn, turns alternating between
replicas. A replica is a :class:`PolicyRewriter` with its own in-process LRU and its own store client
(its own SQLite connection, its own Redis connection pool), as separate processes would have;
tests/proxy/test_memo_replicas.py does the same with real ``tersegate serve`` processes. "restart"
replaces the last replica by a fresh one (empty LRU) halfway through each trace.

Latency: for each backend, one compressible request's memo work: the lookup of its parts (20 found in
the LRU, the newest one missing it: one store round trip) and the write of the newest part's form
(one more), timed around :class:`proxy.policy.forms.FormMemory` over many requests.

    python bench/replay_replicas.py [--policies support,rag] [--requests 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis
from replay_engine import (
    CACHED_FRACTION,
    MODEL,
    TRACES,
    agent_messages,
    load_policies,
    message_tokens,
    replay,
)

from proxy.config.model import MemoConfig
from proxy.exchange import Exchange
from proxy.metrics import Metrics
from proxy.policy.engine import PolicyRewriter
from proxy.policy.forms import Form, FormMemory
from proxy.policy.model import Policy, PolicySet
from proxy.store.base import SharedStore
from proxy.store.redis import RedisStore
from proxy.store.sqlite import SqliteStore

SCENARIOS = (  # name, replicas, backend, restart halfway
    ("one process", 1, "memory", False),
    ("one process, restarted", 1, "memory", True),
    ("one process, restarted, SQLite", 1, "sqlite", True),
    ("two replicas, own memo", 2, "memory", False),
    ("two replicas, shared SQLite", 2, "sqlite", False),
    ("two replicas, shared SQLite, one restarted", 2, "sqlite", True),
    ("two replicas, shared Redis", 2, "redis", False),
    ("two replicas, shared Redis, one restarted", 2, "redis", True),
)


@dataclass
class Run:
    breaks: int = 0
    pairs: int = 0
    tokens: int = 0
    cached: int = 0
    dollars: float = 0.0
    fail_open: int = 0


class RedisServer:
    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        client = redis.Redis.from_url(self.url)
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        client.close()

    def flush(self) -> None:
        client = redis.Redis.from_url(self.url)
        client.flushdb()
        client.close()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def generous(policy: Policy) -> Policy:
    return Policy(**{**{f: getattr(policy, f) for f in policy.__slots__}, "latency_budget_ms": 60000.0})


async def replay_trace(
    messages: list[dict[str, Any]],
    make: Callable[[], PolicyRewriter],
    replicas: int,
    restart: bool,
    price: float,
    run: Run,
) -> None:
    fleet = [make() for _ in range(replicas)]
    for rewriter in fleet:
        await rewriter.ready()
    turns = [k for k, m in enumerate(messages) if m["role"] == "assistant" and k > 0]
    previous: list[bytes] = []
    for n, k in enumerate(turns):
        if restart and n == len(turns) // 2:
            fleet[-1].close()
            fleet[-1] = make()
        body = {"model": MODEL, "messages": messages[:k]}
        exchange = Exchange("b", "POST", "/v1/chat/completions", "t", None, "u", time.time(), True)
        rewrite = await fleet[n % replicas](exchange, body, {})
        run.fail_open += rewrite.fail_open is not None
        forwarded = (rewrite.body or body)["messages"]
        encoded = [orjson.dumps(m) for m in forwarded]
        same = 0
        while same < min(len(previous), len(encoded)) and previous[same] == encoded[same]:
            same += 1
        if previous:
            run.pairs += 1
            run.breaks += same < len(previous)
        counts = [message_tokens(m) for m in forwarded]
        cached, total = sum(counts[:same]), sum(counts)
        run.tokens, run.cached = run.tokens + total, run.cached + cached
        run.dollars += (cached * CACHED_FRACTION + (total - cached)) * price / 1e6
        previous = encoded
    for rewriter in fleet:
        rewriter.close()


def store_maker(backend: str, folder: Path, server: RedisServer) -> Callable[[], SharedStore | None]:
    if backend == "sqlite":
        return lambda: SqliteStore(folder / "memo.sqlite", max_bytes=1 << 30)
    if backend == "redis":
        return lambda: RedisStore(server.url)
    return lambda: None


async def scenario(
    policy: Policy, replicas: int, backend: str, restart: bool, server: RedisServer, price: float
) -> Run:
    run = Run()
    with tempfile.TemporaryDirectory() as folder:
        server.flush()
        new_store = store_maker(backend, Path(folder), server)
        stores: list[SharedStore] = []

        def make() -> PolicyRewriter:
            store = new_store()
            if store is not None:
                stores.append(store)
            policies = PolicySet({"p": generous(policy)}, {"t": "p"})
            return PolicyRewriter(
                policies, memo_bytes=1 << 28, workers=2, store=store, memo=MemoConfig(backend=backend)
            )  # type: ignore[arg-type]

        for trace in sorted(TRACES.glob("*.traj")):
            await replay_trace(agent_messages(trace), make, replicas, restart, price, run)
        for store in stores:
            await store.aclose()
    return run


async def lookup_latency(backend: str, server: RedisServer, requests: int) -> tuple[float, float]:
    """Median and p99 ms of one request's memo work (lookup + write) with ``backend`` behind the LRU."""
    with tempfile.TemporaryDirectory() as folder:
        server.flush()
        store = store_maker(backend, Path(folder), server)()
        metrics = Metrics()
        # A long timeout: this measures the calls, not the fail-open pause a slow call would start.
        memory = FormMemory(lru_bytes=1 << 28, store=store, backend=backend, timeout_s=10.0, metrics=metrics)
        form = Form("x" * 4000, 1000, 5.0, "")
        old = [f"rule:o200k_base:c:old{i}" for i in range(20)]
        await memory.keep("memo:t", [(key, form) for key in old])
        times: list[float] = []
        for n in range(requests):
            new = f"rule:o200k_base:c:new{n}"
            started = time.perf_counter()
            found = await memory.recall("memo:t", [[key] for key in [*old, new]])
            await memory.keep("memo:t", [(new, form)])
            times.append((time.perf_counter() - started) * 1000)
            assert found[-1] is None and all(found[:-1])
        if store is not None:
            await store.aclose()
    errors = sum(
        metrics.memo_store_errors.labels(backend=backend, op=op)._value.get() for op in ("get", "put")
    )
    assert errors == 0, f"{backend}: {errors} store calls failed during the measurement"
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99)]


async def cross_team(rag: Policy) -> list[tuple[str, float, str]]:
    """Team A then team B send the same 20 NQ documents (as a tool result), each with its own
    question, through one rewriter with the shipped rag policy: B's compression time and whether B
    got A's selection (the issue's timing oracle), against B alone in a fresh process."""
    with gzip.open(TRACES.parent / "lost-in-the-middle" / "nq-open-oracle.jsonl.gz", "rt") as lines:
        rows = [json.loads(line) for _, line in zip(range(20), lines, strict=False)]
    docs = "\n\n".join(
        f"Document [{i + 1}](Title: {r['ctxs'][0]['title']}) {r['ctxs'][0]['text']}"
        for i, r in enumerate(rows)
    )
    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": "{}"}}

    def body(question: str) -> dict[str, Any]:
        return {
            "model": MODEL,
            "messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": docs},
            ],
        }

    def rewriter() -> PolicyRewriter:
        return PolicyRewriter(
            PolicySet({"rag": generous(rag)}, dict.fromkeys(("a", "b", "b-alone", "warm"), "rag")),
            memo_bytes=1 << 26,
            workers=2,
        )

    async def send(r: PolicyRewriter, team: str, question: str) -> tuple[float, str]:
        exchange = Exchange("b", "POST", "/v1/chat/completions", team, None, "u", time.time(), True)
        done = await r(exchange, body(question), {})
        return done.compress_ms, (done.body or body(question))["messages"][2]["content"]

    out: list[tuple[str, float, str]] = []
    alone = rewriter()
    await alone.ready()
    await send(alone, "warm", rows[19]["question"])  # models and code paths warm (its own scope)
    # Its own team name: vectors cached in this process for "b" would serve the later "b".
    ms, b_alone = await send(alone, "b-alone", rows[16]["question"])
    out.append(("team B, nobody sent the documents before", ms, "own"))
    alone.close()
    shared = rewriter()
    await shared.ready()
    await send(shared, "warm", rows[19]["question"])
    await send(shared, "a", rows[6]["question"])
    ms, b_after_a = await send(shared, "b", rows[16]["question"])
    out.append(
        ("team B after team A sent the documents", ms, "own" if b_after_a == b_alone else "not its own")
    )
    ms, _ = await send(shared, "a", rows[6]["question"])
    out.append(("team A again, same request (its memo)", ms, "-"))
    shared.close()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="support,rag")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--price-per-mtok", type=float, default=2.50)
    args = parser.parse_args()
    server = RedisServer()
    try:
        print(
            "Memo work per compressible request (20 parts found in the LRU, 1 new part: one lookup, one write)\n"
        )
        print("| backend | median ms | p99 ms |\n|---|---:|---:|")
        for backend in ("memory", "sqlite", "redis"):
            p50, p99 = await lookup_latency(backend, server, args.requests)
            print(f"| {backend} | {p50:.3f} | {p99:.3f} |")
        everything = load_policies()
        print("\nTeam B after team A, the same 20 NQ documents (2.3k tokens), shipped rag policy\n")
        print("| request | compress ms | B's documents |\n|---|---:|---|")
        for label, ms, whose in await cross_team(everything["rag"]):
            print(f"| {label} | {ms:.0f} | {whose} |")
        traces = sorted(TRACES.glob("*.traj"))
        none = sum([(await replay(None, agent_messages(t), args.price_per_mtok)).dollars for t in traces])
        for name in filter(None, args.policies.split(",")):  # --policies "": the latency table only
            print(
                f"\nPolicy {name}: {len(traces)} SWE-agent traces, ${args.price_per_mtok}/M input, cached prefix at 10%"
            )
            print(f"(no compression: bill ${none:.4f})\n")
            print(
                "| scenario | prefix breaks / turn pairs | input tokens | cached share | bill $ | bill vs none | fail-open |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|")
            for label, replicas, backend, restart in SCENARIOS:
                run = await scenario(
                    everything[name], replicas, backend, restart, server, args.price_per_mtok
                )
                print(
                    f"| {label} | {run.breaks} / {run.pairs} | {run.tokens:,} | {100 * run.cached / run.tokens:.1f}% | "
                    f"{run.dollars:.4f} | {100 * (run.dollars / none - 1):+.1f}% | {run.fail_open} |"
                )
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main())
