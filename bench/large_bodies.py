"""Large non-stream responses through ``tersegate serve``: time and the proxy's peak RSS.

A raw-socket upstream (tests/raw_upstream.py) sends file downloads of each size
given (content-length, 256 KiB writes); the fake OpenAI upstream answers one
audited embeddings batch of 60,000 inputs (6.3 MB). Each case runs against a
fresh proxy process (audit on, all routes) and reports the process's peak RSS
(VmHWM) before and after, so the growth is what one large body in flight costs.

    python bench/large_bodies.py [--sizes-mb 50 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_upstream import FakeUpstream, ServerThread  # noqa: E402
from raw_upstream import Answer, RawUpstream  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def file_answer(payload: bytes) -> Answer:
    async def answer(head: bytes, body: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n"
            % len(payload)
        )
        for i in range(0, len(payload), 256 << 10):
            writer.write(payload[i : i + (256 << 10)])
            await writer.drain()
        return True

    return answer


def serve(base_url: str, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    (folder / "policies").mkdir(parents=True)
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "upstreams": {"fake": {"base_url": base_url, "api_key_env": "BENCH_KEY", "timeout_s": 120}},
        "default_upstream": "fake",
        "teams": {"default": {}},
        "audit": {"path": "audit.jsonl", "all_routes": True},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    exe = shutil.which("tersegate", path=str(Path(sys.executable).parent)) or "tersegate"
    argv = [exe, "serve", "--config", str(folder / "config.yaml"), "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            httpx.get(url + "/healthz")
            break
        except httpx.TransportError:
            time.sleep(0.05)
    else:
        raise RuntimeError("tersegate serve did not start")
    settle(proc.pid)
    return proc, url


def settle(pid: int) -> None:
    """Wait until the proxy's start-up work (background warm-up) stops raising its peak RSS."""
    last, quiet = peak_rss_mb(pid), 0
    while quiet < 3:
        time.sleep(0.5)
        now = peak_rss_mb(pid)
        quiet = quiet + 1 if now == last else 0
        last = now


def download(size_mb: int, folder: Path) -> str:
    payload = os.urandom(1 << 16) * (size_mb * 16)
    with RawUpstream(file_answer(payload)) as raw:
        proc, url = serve(raw.base_url, folder)
        try:
            before = peak_rss_mb(proc.pid)
            started = time.monotonic()
            size = 0
            with httpx.stream("GET", url + "/v1/files/f/content", timeout=120) as reply:
                for piece in reply.iter_raw():
                    size += len(piece)
            took = time.monotonic() - started
            assert size == len(payload)
            return f"| download {size_mb} MB | {took:.2f} | {before:.0f} | {peak_rss_mb(proc.pid):.0f} |"
        finally:
            proc.terminate()
            proc.wait(10)


def embeddings(folder: Path) -> str:
    upstream = ServerThread(FakeUpstream(record=False)).start()
    proc, url = serve(upstream.url + "/v1", folder)
    try:
        before = peak_rss_mb(proc.pid)
        started = time.monotonic()
        body = {"model": "text-embedding-3-small", "input": ["word"] * 60_000, "encoding_format": "float"}
        reply = httpx.post(url + "/v1/embeddings", json=body, timeout=120)
        took = time.monotonic() - started
        assert reply.status_code == 200
        mb = len(reply.content) / 1e6
        return (
            f"| embeddings {mb:.1f} MB, audited | {took:.2f} | {before:.0f} | {peak_rss_mb(proc.pid):.0f} |"
        )
    finally:
        proc.terminate()
        proc.wait(10)
        upstream.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[50, 200])
    args = parser.parse_args()
    os.environ.setdefault("BENCH_KEY", "sk-bench")
    print("| response | seconds | peak RSS before (MB) | peak RSS after (MB) |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="tersegate-bodies-") as tmp:
        for i, size in enumerate(args.sizes_mb):
            print(download(size, Path(tmp) / f"dl{i}"), flush=True)
        print(embeddings(Path(tmp) / "emb"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
