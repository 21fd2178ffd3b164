"""What retrieval costs: one expansion round trip's latency, and the bytes the originals store holds.

1. Latency at c=1 (real processes on loopback: the fake upstream, ``tersegate serve`` with a sqlite
   memo): the same chat request sent (a) straight to the fake upstream, (b) through the proxy with no
   expansion, (c) through the proxy when the model calls ``tersegate_expand`` (the proxy reads the
   original from the store and makes a second upstream call). Interleaved, so the three see the same
   machine load; medians and p90 side by side, JSON and SSE (time to the last byte).
2. Bytes held per 1,000 agent turns: the SWE-agent traces (evaldata) replayed turn by turn through the
   shipped ``agents`` policy; every part compressed when new is an original the store keeps for
   ``compression.retrieve.ttl_s``: its zlib size plus the key and the "seen" record.

    python bench/expand.py [--requests 60] [--out bench/results/expand.md]
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
import zlib
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # evaldata

import evaldata  # noqa: E402
from proxy.exchange import Exchange  # noqa: E402
from proxy.policy.engine import PolicyRewriter  # noqa: E402
from proxy.policy.model import PolicySet, load_policy  # noqa: E402
from proxy.policy.originals import Originals  # noqa: E402
from proxy.store.sqlite import SqliteStore  # noqa: E402

LOG = "\n".join(
    [f"tests/test_app.py::test_case_{i} PASSED" for i in range(1, 500)]
    + ["tests/test_app.py::test_login FAILED - AssertionError: 401 != 200"]
    + [f"tests/test_db.py::test_row_{i} PASSED" for i in range(1, 500)]
)
POLICY = """\
name: agents
retrieve: true
rules:
  - name: tool-output
    match: {roles: [tool], min_tokens: 100000}
    compressor: normalize
"""
KEY_BYTES = 24 + 24 + 1  # the id under orig: and under seen:, and the seen record's byte


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{url}: exited"
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def body(ref: str, model: str, stream: bool) -> dict[str, Any]:
    call = {"id": "c1", "type": "function", "function": {"name": "pytest", "arguments": "{}"}}
    marker = f"[996 lines omitted; lines=4-999; hash={ref}]"
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    return {
        "model": model,
        "stream": stream,
        "tools": [weather],
        "messages": [
            {"role": "user", "content": "fix the failing test"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": marker},
        ],
    }


def _timed(client: httpx.Client, url: str, payload: dict[str, Any], headers: dict[str, str]) -> float:
    started = time.perf_counter()
    with client.stream("POST", url, json=payload, headers=headers) as response:
        for _ in response.iter_bytes():
            pass
        assert response.status_code == 200, response.status_code
    return (time.perf_counter() - started) * 1000


def latency(requests: int) -> dict[str, dict[str, list[float]]]:
    folder = Path(tempfile.mkdtemp(prefix="tersegate-expand-bench-"))
    up_port, proxy_port = _free_port(), _free_port()
    (folder / "policies").mkdir()
    (folder / "policies" / "agents.yaml").write_text(POLICY)
    config = {
        "listen": {"host": "127.0.0.1", "port": proxy_port},
        "upstreams": {"fake": {"base_url": f"http://127.0.0.1:{up_port}/v1", "api_key_env": "FAKE_KEY"}},
        "default_upstream": "fake",
        "teams": {"default": {"policy": "agents"}},
        "compression": {"workers": 1, "memo": {"backend": "sqlite", "path": "state/memo.sqlite"}},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "FAKE_KEY": "sk", "PYTHONPATH": str(REPO)}
    python = sys.executable
    tersegate = [python, "-m", "proxy.cli", "serve", "--config", str(folder / "config.yaml")]
    upstream = subprocess.Popen(
        [python, str(REPO / "tests" / "fake_upstream.py"), "--port", str(up_port)],
        env={**env, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proxy = subprocess.Popen(
        tersegate, env=env, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait(f"http://127.0.0.1:{up_port}/v1/models", upstream)
        _wait(f"http://127.0.0.1:{proxy_port}/readyz", proxy)
        ref = asyncio.run(_keep(folder / "state" / "memo.sqlite"))
        return _measure(up_port, proxy_port, ref, requests)
    finally:
        for proc in (proxy, upstream):
            proc.terminate()
            proc.wait(20)


async def _keep(path: Path) -> str:
    store = SqliteStore(path, max_bytes=1 << 26)
    try:
        return await Originals(store).keep("default", LOG)
    finally:
        await store.aclose()


def _measure(up_port: int, proxy_port: int, ref: str, requests: int) -> dict[str, dict[str, list[float]]]:
    direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
    proxied = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
    query = {"x-fake-expand-query": "FAILED"}
    cells = {
        "direct to the upstream": (direct, "gpt-4o", {}),
        "through the proxy, no expansion": (proxied, "gpt-4o", {}),
        "through the proxy, one expansion": (proxied, "gpt-4o", {"x-fake-expander": "1", **query}),
    }
    out: dict[str, dict[str, list[float]]] = {}
    with httpx.Client(timeout=30) as client:
        for stream in (False, True):
            kind = "SSE" if stream else "JSON"
            for url, model, headers in cells.values():  # warm each path
                _timed(client, url, body(ref, model, stream), headers)
            for _ in range(requests):
                for name, (url, model, headers) in cells.items():
                    ms = _timed(client, url, body(ref, model, stream), headers)
                    out.setdefault(kind, {}).setdefault(name, []).append(ms)
    return out


async def held_bytes(limit: int | None) -> tuple[int, int, int, int]:
    """``(turns, originals, raw bytes, stored bytes)`` of the traces through the agents policy."""
    policy, _ = load_policy(REPO / "policies" / "agents.yaml")
    rewriter = PolicyRewriter(
        PolicySet(policies={"agents": policy}, team_policy={"agents": "agents"}),
        memo_bytes=1 << 28,
        workers=2,
    )
    seen: set[bytes] = set()
    turns = originals = raw = stored = 0
    try:
        await rewriter.ready()
        for trace in evaldata.TRACES[:limit]:
            for messages in evaldata.turns(evaldata.agent_messages(evaldata.path(trace))):
                turns += 1
                request = {"model": "gpt-4o", "messages": messages}
                exchange = Exchange(
                    "b", "POST", "/v1/chat/completions", "agents", None, "u", time.time(), True
                )
                exchange.arrived = time.monotonic() + 60  # the bench measures bytes, not the latency budget
                result = await rewriter(exchange, request, {})
                for detail in result.parts:
                    text = messages[detail["message"]].get("content")
                    new = detail["source"] == "new" and detail["tokens_after"] < detail["tokens_before"]
                    if not new or not isinstance(text, str):
                        continue
                    digest = zlib.crc32(text.encode()).to_bytes(4, "big") + len(text).to_bytes(8, "big")
                    if digest in seen:
                        continue
                    seen.add(digest)
                    originals += 1
                    raw += len(text.encode())
                    stored += len(zlib.compress(text.encode(), 6)) + KEY_BYTES + len("orig:agents") * 2
    finally:
        rewriter.close()
    return turns, originals, raw, stored


def _row(name: str, values: list[float], base: list[float] | None) -> str:
    med, p90 = statistics.median(values), statistics.quantiles(values, n=10)[8]
    added = f"{statistics.median(values) - statistics.median(base):+.1f}" if base else ""
    return f"| {name} | {med:.1f} | {p90:.1f} | {added} |"


def render(lat: dict[str, dict[str, list[float]]], held: tuple[int, int, int, int], requests: int) -> str:
    turns, originals, raw, stored = held
    lines = [
        "# Retrieval: latency of one expansion, bytes held (bench/expand.py)",
        "",
        f"Latency at c=1, {requests} requests per cell, the three cells interleaved (same machine load);",
        "ms to the last byte. 'added' = median minus the proxy's median without an expansion.",
        "",
    ]
    for kind, cells in lat.items():
        base = cells["through the proxy, no expansion"]
        lines += [f"## {kind}", "", "| path | median ms | p90 ms | added ms |", "|---|---:|---:|---:|"]
        lines += [
            _row(name, values, base if "one expansion" in name else None) for name, values in cells.items()
        ]
        lines.append("")
    per = 1000 / turns if turns else 0.0
    lines += [
        "## Bytes held by the originals store",
        "",
        f"SWE-agent traces through the shipped `agents` policy: {turns} turns, {originals} originals kept "
        f"(parts compressed when new).",
        "",
        "| per 1,000 agent turns | originals | raw bytes | stored bytes (zlib + keys) |",
        "|---|---:|---:|---:|",
        f"| | {originals * per:,.0f} | {raw * per:,.0f} | {stored * per:,.0f} |",
        "",
        "Held at once = stored bytes per turn x turns per second x `ttl_s` (docs/operations.md).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--traces", type=int, default=None, help="replay only the first N traces")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "expand.md")
    args = parser.parse_args()
    lat = latency(args.requests)
    held = asyncio.run(held_bytes(args.traces))
    text = render(lat, held, args.requests)
    args.out.write_text(text)
    print(text)
    print(orjson.dumps({"held": held}).decode())


if __name__ == "__main__":
    main()
