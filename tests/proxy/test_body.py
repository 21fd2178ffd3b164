"""Large non-stream responses come through promptly, with bounded memory (proxy/server/relay.py)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from harness import MakeProxy, RunningProxy
from raw_upstream import RawUpstream

MB = 1 << 20


def records(proxy: RunningProxy) -> list[dict[str, Any]]:
    path = proxy.config_path.parent / "audit/audit.jsonl"
    deadline = time.monotonic() + 5
    while not path.is_file() or not path.read_bytes().endswith(b"\n"):
        assert time.monotonic() < deadline, "no audit record"
        time.sleep(0.02)
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_a_6_mb_embeddings_batch_is_answered_promptly_and_audited_with_usage(make_proxy: MakeProxy) -> None:
    proxy = make_proxy({"audit": {"path": "audit/audit.jsonl", "all_routes": True}})
    started = time.monotonic()
    # (httpx, not the SDK: the SDK spends ~20 s building 60,000 pydantic objects)
    reply = httpx.post(
        proxy.base_url + "/embeddings",
        json={"model": "text-embedding-3-small", "input": ["word"] * 60_000, "encoding_format": "float"},
        timeout=30,
    )
    elapsed = time.monotonic() - started
    assert reply.status_code == 200 and len(reply.content) > 6_000_000
    parsed = reply.json()
    assert len(parsed["data"]) == 60_000 and parsed["usage"]["prompt_tokens"] == 60_000
    assert elapsed < 10, f"took {elapsed:.1f}s"  # was: a 504 after timeout_s (30 s here)
    [record] = records(proxy)
    assert record["status"] == 200 and record["usage"]["prompt_tokens"] == 60_000


def _file_answer(payload: bytes, *, chunked: bool = False, cut_at: int | None = None) -> Any:
    async def answer(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        framing = b"transfer-encoding: chunked" if chunked else b"content-length: %d" % len(payload)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n" + framing + b"\r\n\r\n")
        end = len(payload) if cut_at is None else cut_at
        for i in range(0, end, 256 << 10):
            piece = payload[i : min(i + (256 << 10), end)]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            await writer.drain()
        if cut_at is not None:
            return False  # the connection closes mid-body
        if chunked:
            writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    return answer


@pytest.mark.parametrize("chunked", [False, True])
def test_a_50_mb_download_streams_through(make_proxy: MakeProxy, chunked: bool) -> None:
    payload = os.urandom(1 << 16) * 800  # 50 MiB
    with RawUpstream(_file_answer(payload, chunked=chunked)) as raw:
        proxy = make_proxy({"upstreams": {"fake": {"base_url": raw.base_url, "timeout_s": 30}}})
        digest = hashlib.sha256()
        started = time.monotonic()
        with httpx.stream("GET", proxy.base_url + "/files/file-1/content", timeout=30) as r:
            assert r.status_code == 200
            if not chunked:
                assert r.headers["content-length"] == str(len(payload))
            first_at = None
            for piece in r.iter_raw():
                first_at = first_at or time.monotonic()
                digest.update(piece)
        assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()
        assert first_at is not None and first_at - started < 3  # bytes flowed before the body ended
        assert time.monotonic() - started < 20


def test_a_large_body_cut_by_the_upstream_is_a_cut_response_and_audited(make_proxy: MakeProxy) -> None:
    payload = b"x" * (20 * MB)
    with RawUpstream(_file_answer(payload, cut_at=12 * MB)) as raw:
        proxy = make_proxy(
            {
                "upstreams": {"fake": {"base_url": raw.base_url, "timeout_s": 30}},
                "audit": {"path": "audit/audit.jsonl", "all_routes": True},
            }
        )
        with pytest.raises(httpx.RemoteProtocolError):  # never a short body that looks whole
            httpx.get(proxy.base_url + "/files/file-1/content", timeout=30)
        [record] = records(proxy)
        assert record["error"] == "upstream_unreachable"
        # The proxy keeps serving.
        raw.answer = _file_answer(b"small")
        assert httpx.get(proxy.base_url + "/files/file-2/content", timeout=10).content == b"small"


def _rss_peak_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))


@pytest.mark.slow
def test_memory_stays_bounded_for_a_200_mb_download(spawn_proxy: Any) -> None:
    payload = os.urandom(1 << 16) * 3200  # 200 MiB
    with RawUpstream(_file_answer(payload)) as raw:
        proxy = spawn_proxy({"upstreams": {"fake": {"base_url": raw.base_url, "timeout_s": 60}}})
        assert proxy.proc is not None
        httpx.get(proxy.url + "/healthz")
        before, quiet = _rss_peak_kb(proxy.proc.pid), 0
        while quiet < 3:  # the start-up warm-up (models, memo) runs in the background: let it finish
            time.sleep(0.5)
            now = _rss_peak_kb(proxy.proc.pid)
            before, quiet = now, quiet + 1 if now == before else 0
        size = 0
        with httpx.stream("GET", proxy.base_url + "/files/file-1/content", timeout=60) as r:
            for piece in r.iter_raw():
                size += len(piece)
        assert size == len(payload)
        grown_mb = (_rss_peak_kb(proxy.proc.pid) - before) / 1024
        assert grown_mb < 16, f"peak RSS grew by {grown_mb:.0f} MB for a 200 MB body"


def test_usage_tail_reads_the_last_usage_object_through_gzip() -> None:
    from proxy.server.relay import TAIL_BYTES, UsageTail  # here: the file also runs against main

    body = orjson.dumps(
        {
            "data": [{"embedding": [0.5] * 8, "note": '"usage": {"prompt_tokens": 1}'}] * 50_000,
            "usage": {"prompt_tokens": 7, "total_tokens": 7},
        }
    )
    assert len(body) > 4 * TAIL_BYTES
    for encoding, data in ((None, body), (b"gzip", gzip.compress(body))):
        tail = UsageTail(encoding)
        for i in range(0, len(data), 10_000):
            tail.feed(data[i : i + 10_000])
        assert tail.usage() == {"prompt_tokens": 7, "total_tokens": 7}
    tail = UsageTail(b"br")  # an encoding the proxy cannot read: no usage, no failure
    tail.feed(b"\x00\x01")
    assert tail.usage() is None
    assert json.loads(body)["usage"]["prompt_tokens"] == 7


def test_a_client_leaving_a_large_download_drops_the_upstream_and_is_audited(make_proxy: MakeProxy) -> None:
    closed = threading.Event()  # set on the upstream's loop thread, read here
    payload = b"y" * (256 << 10)

    async def endless(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n"
            % (1 << 34)
        )
        try:
            while True:  # 16 GiB announced: only a client that stays would get it
                writer.write(payload)
                await writer.drain()
        except ConnectionError:
            closed.set()
            return False

    with RawUpstream(endless) as raw:
        proxy = make_proxy(
            {
                "upstreams": {"fake": {"base_url": raw.base_url, "timeout_s": 30}},
                "audit": {"path": "audit/audit.jsonl", "all_routes": True},
            }
        )
        with httpx.stream("GET", proxy.base_url + "/files/big/content", timeout=10) as r:
            got = 0
            for piece in r.iter_raw():
                got += len(piece)
                if got > 8 * MB:
                    break
        left = time.monotonic()
        while not closed.is_set():
            assert time.monotonic() - left < 3, "the upstream kept sending to a client that left"
            time.sleep(0.02)
        [record] = records(proxy)
        assert record["client_disconnected"] is True
