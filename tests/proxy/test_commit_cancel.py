"""A client that leaves while its request's audit record is being written still gets its record.

Codex CLI closes its connection the moment it reads ``response.completed``, which is while the proxy
commits the audit record (the upstream's body has just ended). Cancelling the relay then lost the
record (tests/clients/test_codex.py found it); a client leaving mid-stream still cancels it. The same
held for any request cancelled mid-write: the 499 path's second commit skipped the lost first one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from harness import MakeProxy

from proxy.exchange import Exchange
from proxy.server.relay import relay_stream

LAST_EVENT = b'event: response.completed\ndata: {"type": "response.completed"}\n\n'


class Upstream:
    """An upstream body of ``events``, the last one after ``delay`` seconds."""

    def __init__(self, *events: bytes, delay: float = 0.0) -> None:
        self.events = events
        self.delay = delay
        self.closed = False

    async def chunks(self, idle_timeout: float) -> AsyncIterator[bytes]:
        for i, event in enumerate(self.events):
            if i == len(self.events) - 1:
                await asyncio.sleep(self.delay)
            yield event

    def buffered(self) -> bytes:
        return b""

    def close(self) -> None:
        self.closed = True


def exchange() -> Exchange:
    return Exchange(request_id="r1", method="POST", route="/v1/responses", team="t", key_id=None,
                    upstream="u", started=time.time(), compressible=True, stream=True)  # fmt: skip


async def relay(upstream: Upstream, left: asyncio.Event, commit_s: float) -> tuple[Exchange, list[str]]:
    done = exchange()
    committed: list[str] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if LAST_EVENT in message.get("body", b""):
            left.set()  # the client reads the last event and closes at once

    async def commit() -> None:
        await asyncio.sleep(commit_s)  # pricing and writing the record takes a moment
        committed.append("499" if done.client_disconnected else "ok")

    await relay_stream(upstream, send=send, receive=receive, exchange=done, tap=None,  # type: ignore[arg-type]
                       idle_timeout=5, split_frames=True, commit=commit)  # fmt: skip
    return done, committed


async def test_the_record_of_a_finished_stream_is_written_when_the_client_leaves_during_the_commit() -> None:
    done, committed = await relay(Upstream(b"data: {}\n\n", LAST_EVENT), asyncio.Event(), commit_s=0.2)
    assert committed == ["ok"]
    assert not done.client_disconnected  # it had every event: not counted as 499


async def test_a_client_that_leaves_mid_stream_still_cancels_the_relay() -> None:
    left = asyncio.Event()
    upstream = Upstream(b"data: {}\n\n", LAST_EVENT, delay=5)
    asyncio.get_running_loop().call_later(0.1, left.set)
    done, committed = await relay(upstream, left, commit_s=0)
    assert committed == ["499"] and done.client_disconnected and upstream.closed


def test_a_request_cancelled_while_its_record_is_written_keeps_it(
    make_proxy: MakeProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = make_proxy({"audit": {"path": "audit.jsonl"}})
    sink = proxy.services.audit if proxy.services else None
    assert sink is not None
    write = sink.commit

    async def slow(exchange: Exchange) -> None:
        await asyncio.sleep(1.0)  # a record that takes a while (pricing, cache model, a busy disk)
        await write(exchange)

    monkeypatch.setattr(sink, "commit", slow)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    # The client gives up while the record is being written.
    with httpx.Client(timeout=0.3) as client, contextlib.suppress(httpx.ReadTimeout):
        client.post(proxy.base_url + "/chat/completions", json=body, headers={"authorization": "Bearer sk-x"})
    path = proxy.config_path.parent / "audit.jsonl"
    deadline = time.monotonic() + 5
    while not path.read_bytes().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    records = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    # One record: the client left, so 499 (docs/audit.md), with the upstream's usage still billed in it.
    assert [(r["status"], r.get("client_disconnected")) for r in records] == [(499, True)]
    assert records[0]["usage"] is not None
