"""Replay the SWE-agent traces through a real proxy to a prefix-caching upstream: invoice vs audit.

Each trace's history is sent turn by turn (turn k = messages up to the k-th assistant reply), as
the agent sent it, through an in-process proxy (the ``serve`` app) with the JSONL audit on, to
tests/prefix_cache_upstream.py, which reports ``cached_tokens`` as OpenAI's prefix cache would
(>= 1,024 tokens, 128-token steps). One team per policy, one cache scope per team. Three models
give three cached discounts: gpt-4o (50%), gpt-4.1 (75%), gpt-5 (90%). The traces are also sent as
Anthropic Messages the way Claude Code sends them (bench/anthropic_shape.py: tool_use / tool_result
blocks, breakpoints on the system prompt for 1 hour and the newest user block for 5 minutes) to the
same upstream's Anthropic cache rules.

For each policy and discount: the simulated invoice's change (priced from the upstream's usage,
against the passthrough team's invoice), the audit's reported change (its own cost_before_usd and
cost_after_usd sums), their difference, and what the audit reported before the cache model
(cost_before assuming the compressed request's cached tokens). Then the cache model's own cost:
CPU per request and per 1,000 tracked prefixes, and memory per 1,000 tracked prefixes.

    PYTHONPATH=. python bench/replay.py [--keep-audit audit.jsonl]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO))

from anthropic_shape import MODEL as ANTHROPIC_MODEL  # noqa: E402
from anthropic_shape import turns as anthropic_turns  # noqa: E402
from fake_upstream import ServerThread  # noqa: E402
from prefix_cache_upstream import PrefixCacheUpstream  # noqa: E402

import evaldata  # noqa: E402
from evaldata import agent_messages, turns  # noqa: E402
from proxy.apis import CHAT  # noqa: E402
from proxy.audit.cache_model import CacheModel  # noqa: E402
from proxy.audit.pricing import PriceBook, request_cost_usd  # noqa: E402
from proxy.cli.serve import uvicorn_config  # noqa: E402
from proxy.config.model import load_config  # noqa: E402
from proxy.server.app import create_app  # noqa: E402
from proxy.server.services import build_services  # noqa: E402
from proxy.store.memory import MemoryStore  # noqa: E402

TRACES = evaldata.path("swe-agent-traces")
MODELS = {"gpt-4o": "50%", "gpt-4.1": "75%", "gpt-5": "90%"}
ANTHROPIC = ANTHROPIC_MODEL  # /v1/messages with Claude Code's cache_control breakpoints
SHIPPED = ("default", "agents", "support", "rag")
HALVE = evaldata.HALVE_POLICY
STRAWMEN = {"halve-when-first-sent": "", "halve-once-2-turns-old": ", older_than_turns: 2"}


def write_config(folder: Path, upstream_url: str) -> Path:
    (folder / "policies").mkdir()
    for name in SHIPPED:
        text = (REPO / "policies" / f"{name}.yaml").read_text(encoding="utf-8")
        # A generous budget: this measures what a policy saves, not how busy this machine is.
        policy = yaml.safe_load(text)
        policy["latency_budget_ms"] = 60000
        (folder / "policies" / f"{name}.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
    for name, age in STRAWMEN.items():
        (folder / "policies" / f"{name}.yaml").write_text(HALVE.format(name=name, age=age), encoding="utf-8")
    return serve_config(folder, upstream_url, (*SHIPPED, *STRAWMEN))


def serve_config(folder: Path, upstream_url: str, policies: tuple[str, ...]) -> Path:
    """config.yaml for the in-process proxy: team ``none`` passes through, each policy in
    ``folder/policies`` is its own team; the audit goes to ``folder/audit.jsonl``."""
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "auth": "passthrough",
        "default_team": "none",
        "upstreams": {"fake": {"base_url": upstream_url, "api_key_env": "NO_KEY", "timeout_s": 300}},
        "default_upstream": "fake",
        "policies_dir": str(folder / "policies"),
        "teams": {"none": {}, **{name: {"policy": name} for name in policies}},
        "audit": {"path": str(folder / "audit.jsonl")},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def billed(usage: dict[str, Any], price: Any) -> tuple[float, int, int]:
    """``(dollars, prompt tokens, cached tokens)`` the upstream's usage bills (OpenAI or Anthropic)."""
    if "cache_read_input_tokens" in usage:
        written, read = usage["cache_creation_input_tokens"], usage["cache_read_input_tokens"]
        prompt = usage["input_tokens"] + written + read
        dollars = request_cost_usd(
            price,
            prompt_tokens=prompt,
            completion_tokens=usage["output_tokens"],
            cached_tokens=read,
            written_tokens=written,
            written_1h_tokens=usage["cache_creation"]["ephemeral_1h_input_tokens"],
        )
        return dollars, prompt, read
    prompt, cached = usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]
    dollars = request_cost_usd(
        price, prompt_tokens=prompt, completion_tokens=usage["completion_tokens"], cached_tokens=cached
    )
    return dollars, prompt, cached


def requests_of(trace: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(path, body)`` of every turn: once per OpenAI model, then as Claude Code sends it."""
    out = [
        ("/chat/completions", {"model": model, "messages": messages})
        for model in MODELS
        for messages in turns(agent_messages(trace))
    ]
    return out + [("/messages", body) for body in anthropic_turns(trace)]


def replay_all(base_url: str, traces: list[Path]) -> None:
    with httpx.Client(timeout=600) as client:
        for team in ("none", *SHIPPED, *STRAWMEN):
            for trace in traces:
                for path, body in requests_of(trace):
                    response = client.post(
                        base_url + path,
                        content=orjson.dumps(body),
                        headers={"Authorization": f"Bearer sk-{team}", "X-Tersegate-Team": team},
                    )
                    response.raise_for_status()


def tables(upstream: PrefixCacheUpstream, audit: Path) -> None:
    prices = PriceBook()
    invoice: dict[tuple[str, str], float] = {}
    tokens: dict[tuple[str, str], list[int]] = {}
    for _, scope, usage in upstream.served:
        key, model, _ = scope.split("|")
        team = key.removeprefix("Bearer sk-")
        dollars, prompt, cached = billed(usage, prices.price_for(model))
        invoice[(team, model)] = invoice.get((team, model), 0.0) + dollars
        acc = tokens.setdefault((team, model), [0, 0])
        acc[0] += prompt
        acc[1] += cached
    sums: dict[tuple[str, str], list[float]] = {}
    for line in audit.read_bytes().splitlines():
        r = orjson.loads(line)
        acc_f = sums.setdefault((r["team"], r["model"]), [0.0, 0.0, 0.0])
        price = prices.price_for(r["model"])
        assert price is not None
        old_before = request_cost_usd(  # the audit before the cache model: same cache use as sent
            price,
            prompt_tokens=r["prompt_tokens_before_est"],
            completion_tokens=r["usage"]["completion_tokens"],
            cached_tokens=r["cached_tokens"],
            written_tokens=r["usage"].get("cache_write_tokens") or 0,
            written_1h_tokens=r["usage"].get("cache_write_1h_tokens") or 0,
        )
        acc_f[0] += r["cost_before_usd"]
        acc_f[1] += r["cost_after_usd"]
        acc_f[2] += old_before
    print(
        "| policy | input tokens vs none | cached share | discount | invoice change | audit change | difference | audit before | old audit change |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst = 0.0
    for team in (*SHIPPED, *STRAWMEN):
        for model, discount in {**MODELS, ANTHROPIC: "90%, writes 1.25x / 2x"}.items():
            base = invoice[("none", model)]
            bill = invoice[(team, model)] / base - 1
            before, after, old = sums[(team, model)]
            reported, old_reported = after / before - 1, after / old - 1
            worst = max(worst, abs(reported - bill))
            sign = "" if (reported < 0) == (bill < 0) else " SIGN WRONG"
            t, b = tokens[(team, model)], tokens[("none", model)]
            print(
                f"| {team} | {100 * (t[0] / b[0] - 1):+.1f}% | {100 * t[1] / t[0]:.1f}% | {discount} | "
                f"{100 * bill:+.2f}% | {100 * reported:+.2f}% | {100 * (reported - bill):+.2f} pp{sign} | "
                f"{100 * (before / base - 1):+.2f}% | {100 * old_reported:+.1f}% |"
            )
    print(f"\nworst |audit change - invoice change|: {100 * worst:.2f} pp")


async def _run_model(model: CacheModel, bodies: list[dict[str, Any]]) -> tuple[float, int]:
    """``(CPU seconds, prefixes looked up)`` for every body through both streams."""
    usage: dict[str, int | None] = {"cached_tokens": 0}  # no prompt_tokens: never skipped as too short
    looked = 0
    t0 = time.process_time()
    for body in bodies:
        estimate = await model.estimate(
            team="t", model="gpt-5", dialect=CHAT, original=body, forwarded=None, usage=usage
        )
        assert estimate is not None
        looked += estimate.before.prompt // 128 + estimate.after.prompt // 128
    return time.process_time() - t0, looked


async def model_cost(traces: list[Path]) -> None:
    """The cache model alone over every turn of every trace (both streams, as in the proxy)."""
    bodies = [{"model": "gpt-5", "messages": t} for trace in traces for t in turns(agent_messages(trace))]
    model = CacheModel(MemoryStore(max_bytes=1 << 30))
    cold, looked = await _run_model(model, bodies)  # every block tokenized once
    store = MemoryStore(max_bytes=1 << 30)
    model.store = store
    warm, _ = await _run_model(model, bodies)  # token memo filled; a fresh store
    keys = store._lru.keys()
    tracemalloc.start()
    copy = MemoryStore(max_bytes=1 << 30)
    for namespace, key in keys:
        await copy.put(namespace, [(key, b"1")], ttl_s=600)
    store_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    memo_bytes = model.tokens.bytes_used
    n = len(bodies)
    print(
        f"\nCache model alone, {n} requests (both streams), {looked:,} prefix digests looked up, "
        f"{len(keys):,} tracked prefixes at the end:\n"
    )
    print("| token memo | CPU per request | CPU per 1,000 prefixes looked up |")
    print("|---|---:|---:|")
    print(
        f"| cold (tokenizes each block once) | {1000 * cold / n:.2f} ms | {1000 * 1000 * cold / looked:.2f} ms |"
    )
    print(f"| warm | {1000 * warm / n:.2f} ms | {1000 * 1000 * warm / looked:.2f} ms |")
    print(
        f"\nMemory per 1,000 tracked prefixes (MemoryStore, Python objects included): "
        f"{store_bytes / len(keys) * 1000 / 1024:.0f} KiB; token memo: {memo_bytes / 1024:.0f} KiB "
        f"for every block of the {len(traces)} traces (4 bytes a token)."
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep-audit", type=Path, help="copy the run's audit JSONL here (for tersegate report)"
    )
    args = parser.parse_args()
    traces = sorted(TRACES.glob("*.traj"))
    if not traces:
        raise SystemExit(f"no traces in {TRACES}")
    upstream = PrefixCacheUpstream()
    up = ServerThread(upstream).start()
    with tempfile.TemporaryDirectory() as folder:
        path = write_config(Path(folder), up.url + "/v1")
        services = build_services(load_config(path))
        app = create_app(services)
        proxy = ServerThread(app, config=uvicorn_config(app, host="127.0.0.1", port=0, log_level="warning"))
        proxy.start()
        t0 = time.perf_counter()
        await asyncio.to_thread(replay_all, proxy.url + "/v1", traces)
        elapsed = time.perf_counter() - t0
        proxy.stop()
        up.stop()
        print(f"{len(traces)} SWE-agent traces, {len(upstream.served)} requests in {elapsed:.0f} s\n")
        tables(upstream, Path(folder) / "audit.jsonl")
        if args.keep_audit is not None:
            shutil.copyfile(Path(folder) / "audit.jsonl", args.keep_audit)
    await model_cost(traces)


if __name__ == "__main__":
    asyncio.run(main())
