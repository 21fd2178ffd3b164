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
import re
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass
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
NOTES = """The bytes are an upper bound: every part the policy compressed when new is counted, while the
store keeps only those whose forwarded form carries a `hash=` marker (a `normalize` clean-up that omits
nothing keeps none). Held at once = stored bytes per turn x turns per second x `ttl_s`
(docs/operations.md): e.g. 10 agent turns per second across a fleet with the default 2 h TTL hold
stored-per-1,000 / 1,000 x 10 x 7,200 bytes at most; size `maxmemory` / `compression.memo.max_bytes`
or lower `ttl_s` accordingly.

Run on a 2-core machine shared with 5 other jobs (timings are noisy; compare the rows of one run):

    PYTHONPATH=$PWD TERSEGATE_EVALDATA=/work/shared/evaldata python bench/expand.py --requests 40"""
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


@dataclass
class Held:
    """The agents replay: store bytes, and how often a later turn needs an omitted line."""

    turns: int = 0
    originals: int = 0
    raw: int = 0
    stored: int = 0
    lossy: int = 0  # originals whose forwarded form left lines out (the markers a model could expand)
    needed: int = 0  # of those, how many a later assistant turn refers to by what was left out
    saved_tokens: int = 0  # tokens the lossy parts saved when first sent
    needed_tokens: int = 0  # ... of which the parts that would be expanded
    kept: int = 0  # originals the store really holds (ids in hash= markers of forwarded bodies)
    kept_bytes: int = 0  # the sqlite store's bytes (keys and values) after the replay


_WORD = re.compile(r"[A-Za-z_][\w./-]{5,}")


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text))


def _needs_expansion(original: str, forwarded: str, before: str, after: str) -> bool | None:
    """None: nothing was left out. Else whether a later assistant turn names something (an identifier
    or path of 6+ characters) that only the omitted lines held (not the kept ones, not the history)."""
    kept = set(forwarded.splitlines())
    omitted = [line for line in original.splitlines() if line not in kept]
    if not omitted:
        return None
    only_there = _words("\n".join(omitted)) - _words(forwarded) - _words(before)
    return bool(only_there & _words(after))


def _assistant_text(messages: list[dict[str, Any]]) -> str:
    return orjson.dumps([m for m in messages if m.get("role") == "assistant"]).decode()


async def replay_agents(limit: int | None) -> Held:
    """The traces turn by turn through the shipped agents policy (no store: bytes are computed)."""
    policy, _ = load_policy(REPO / "policies" / "agents.yaml")
    store = SqliteStore(
        Path(tempfile.mkdtemp(prefix="tersegate-originals-")) / "memo.sqlite", max_bytes=1 << 30
    )
    rewriter = PolicyRewriter(
        PolicySet(policies={"agents": policy}, team_policy={"agents": "agents"}),
        memo_bytes=1 << 28,
        workers=2,
        originals=Originals(store),
    )
    held, seen, ids = Held(), set(), set()
    try:
        await rewriter.ready()
        for trace in evaldata.TRACES[:limit]:
            history = evaldata.agent_messages(evaldata.path(trace))
            for messages in evaldata.turns(history):
                held.turns += 1
                exchange = Exchange(
                    "b", "POST", "/v1/chat/completions", "agents", None, "u", time.time(), True
                )
                exchange.arrived = time.monotonic() + 60  # the bench measures bytes, not the latency budget
                result = await rewriter(exchange, {"model": "gpt-4o", "messages": messages}, {})
                forwarded = result.body["messages"] if result.body else messages
                ids.update(re.findall(r"hash=([0-9a-f]{24})", orjson.dumps(forwarded).decode()))
                later = _assistant_text(history[len(messages) :])
                for detail in result.parts:
                    i, text = detail["message"], messages[detail["message"]].get("content")
                    new = detail["source"] == "new" and detail["tokens_after"] < detail["tokens_before"]
                    if not new or not isinstance(text, str) or (len(text), text[:200]) in seen:
                        continue
                    seen.add((len(text), text[:200]))
                    held.originals += 1
                    held.raw += len(text.encode())
                    held.stored += len(zlib.compress(text.encode(), 6)) + KEY_BYTES + len("orig:agents") * 2
                    before = orjson.dumps(messages[:i]).decode()
                    need = _needs_expansion(text, str(forwarded[i].get("content")), before, later)
                    if need is None:
                        continue
                    saved = detail["tokens_before"] - detail["tokens_after"]
                    held.lossy += 1
                    held.saved_tokens += saved
                    held.needed += need
                    held.needed_tokens += saved if need else 0
        held.kept, held.kept_bytes = len(ids), await store.size_bytes()
    finally:
        rewriter.close()
        await store.aclose()
    return held


def _row(name: str, values: list[float], base: list[float] | None) -> str:
    med, p90 = statistics.median(values), statistics.quantiles(values, n=10)[8]
    added = f"{statistics.median(values) - statistics.median(base):+.1f}" if base else ""
    return f"| {name} | {med:.1f} | {p90:.1f} | {added} |"


def render(lat: dict[str, dict[str, list[float]]], held: Held, requests: int) -> str:
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
    per = 1000 / held.turns if held.turns else 0.0
    lines += [
        "## Bytes held by the originals store",
        "",
        f"SWE-agent traces through the shipped `agents` policy: {held.turns} turns, {held.originals} originals "
        "(parts compressed when new).",
        "",
        "| per 1,000 agent turns | originals | raw bytes | stored bytes (zlib + keys) |",
        "|---|---:|---:|---:|",
        f"| parts compressed when new (upper bound) | {held.originals * per:,.0f} | {held.raw * per:,.0f} "
        f"| {held.stored * per:,.0f} |",
        f"| originals the store holds (a `hash=` marker points at them) | {held.kept * per:,.0f} | | "
        f"{held.kept_bytes * per:,.0f} |",
        "",
        "## How many expansions a model would need",
        "",
        f"Of the {held.lossy} parts whose forwarded form left lines out, {held.needed} are referred to by a",
        "later assistant turn through an identifier or path (6+ characters) that only the omitted lines held",
        "(not the kept lines, not the history before): the markers a model would expand. Those parts saved",
        f"{held.needed_tokens:,} of the {held.saved_tokens:,} tokens the lossy parts saved when first sent.",
        "(A line `normalize` rewrote counts as left out, so 'lossy' is an upper bound.)",
        "",
        NOTES,
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
    held = asyncio.run(replay_agents(args.traces))
    text = render(lat, held, args.requests)
    args.out.write_text(text)
    print(text)
    print(orjson.dumps(asdict(held)).decode())


if __name__ == "__main__":
    main()
