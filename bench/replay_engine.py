"""Replay the SWE-agent traces turn by turn through the policy engine and price them.

Each trace's history is sent as the agent sent it (turn k = messages up to the
k-th assistant reply) through :class:`proxy.policy.engine.PolicyRewriter`, the proxy's
rewrite hook, once per policy. The bill uses a prompt-cache model: the longest
prefix of whole messages that is byte-identical to the previous turn's
forwarded request is cached and billed at 10% (a 90% discount); the rest at
the full input price. Output tokens are the same for every policy and left out.

Rows: no compression; each shipped policy; "halve tools when first sent" and
its anti-pattern twin "halve tools once 2 turns old" (the same truncation,
selected by age), which saves tokens but breaks the cache.

    python bench/replay_engine.py [--price-per-mtok 2.50] [--repeats 1]
    python bench/replay_engine.py --api anthropic   # the same traces in Anthropic Messages shape

``--api anthropic`` replays the traces as a Claude Code-like client sends them
(bench/anthropic_shape.py: tool calls as ``tool_use`` blocks, outputs as ``tool_result``
blocks, ``cache_control`` on the system prompt (1 h) and the newest user block (5 min))
through the same rewrite hook on ``/v1/messages``, and bills them with Anthropic's cache
rules (reads 0.1x, 5-minute writes 1.25x, 1-hour writes 2x, at claude-sonnet-4-5's $3/M).
Each shipped policy is shown next to its "compress when 2 turns old" twin (every rule with
``older_than_turns: 2``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: evaldata

import evaldata
from compressors.tokenizer import tokenizer_for
from evaldata import agent_messages
from proxy.exchange import Exchange
from proxy.policy.engine import PolicyRewriter
from proxy.policy.model import Policy, PolicySet, load_policy

try:
    from anthropic_shape import CacheBill, turns  # run as `python bench/replay_engine.py`
except ImportError:  # imported as bench.replay_engine
    from bench.anthropic_shape import CacheBill, turns

REPO = Path(__file__).resolve().parents[1]
TRACES = evaldata.path("swe-agent-traces")
MODEL = "gpt-4o"
CACHED_FRACTION = 0.10
COUNT = tokenizer_for(MODEL).count
HALVE = evaldata.HALVE_POLICY


@dataclass
class Bill:
    tokens: int = 0
    cached: int = 0
    dollars: float = 0.0
    compress_ms: list[float] = field(default_factory=list)
    fail_open: int = 0

    def add(self, other: Bill) -> None:
        self.tokens += other.tokens
        self.cached += other.cached
        self.dollars += other.dollars
        self.compress_ms += other.compress_ms
        self.fail_open += other.fail_open


def message_tokens(message: dict[str, Any]) -> int:
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    calls = orjson.dumps(message["tool_calls"]).decode() if message.get("tool_calls") else ""
    return COUNT(text) + COUNT(calls) + 4  # ~4 tokens of per-message framing


def load_policies() -> dict[str, Policy]:
    policies: dict[str, Policy] = {}
    for name in ("default", "agents", "support", "rag"):
        policy, _ = load_policy(REPO / "policies" / f"{name}.yaml", expected_name=name)
        policies[name] = policy
    with tempfile.TemporaryDirectory() as folder:
        for name, age in (("halve-when-first-sent", ""), ("halve-once-2-turns-old", ", older_than_turns: 2")):
            path = Path(folder) / f"{name}.yaml"
            path.write_text(HALVE.format(name=name, age=age), encoding="utf-8")
            policies[name] = load_policy(path)[0]
    return policies


async def replay(policy: Policy | None, messages: list[dict[str, Any]], price: float) -> Bill:
    rewriter = None
    if policy is not None:
        # A generous budget: this measures what the policy saves, not how fast this machine is.
        generous = Policy(
            **{**{f: getattr(policy, f) for f in policy.__slots__}, "latency_budget_ms": 60000.0}
        )
        rewriter = PolicyRewriter(PolicySet({"p": generous}, {"t": "p"}), memo_bytes=1 << 28, workers=2)
        await rewriter.ready()
    bill = Bill()
    previous: list[bytes] = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant" or k == 0:
            continue
        body = {"model": MODEL, "messages": messages[:k]}
        forwarded = body["messages"]
        if rewriter is not None:
            exchange = Exchange("b", "POST", "/v1/chat/completions", "t", None, "u", time.time(), True)
            rewrite = await rewriter(exchange, body, {})
            forwarded = (rewrite.body or body)["messages"]
            bill.compress_ms.append(rewrite.compress_ms)
            bill.fail_open += rewrite.fail_open is not None
        encoded = [orjson.dumps(m) for m in forwarded]
        same = 0
        while same < min(len(previous), len(encoded)) and previous[same] == encoded[same]:
            same += 1
        counts = [message_tokens(m) for m in forwarded]
        cached, total = sum(counts[:same]), sum(counts)
        bill.tokens += total
        bill.cached += cached
        bill.dollars += (cached * CACHED_FRACTION + (total - cached)) * price / 1e6
        previous = encoded
    if rewriter is not None:
        rewriter.close()
    return bill


def two_turns_old(policy: Policy) -> Policy:
    """The strawman twin: the same rules, each selecting a part only once 2 turns old."""
    rules = tuple(
        dataclasses.replace(r, match=dataclasses.replace(r.match, older_than_turns=2)) for r in policy.rules
    )
    return dataclasses.replace(policy, name=policy.name + "@2-turns-old", rules=rules)


def _rewriter(policy: Policy) -> PolicyRewriter:
    generous = dataclasses.replace(policy, latency_budget_ms=60000.0)
    return PolicyRewriter(PolicySet({"p": generous}, {"t": "p"}), memo_bytes=1 << 28, workers=2)


async def replay_anthropic(
    policy: Policy | None, bodies: list[dict[str, Any]], price: float
) -> tuple[CacheBill, int]:
    """``(bill, fail-open count)`` of one trace's turns forwarded through ``policy``."""
    rewriter = _rewriter(policy) if policy is not None else None
    if rewriter is not None:
        await rewriter.ready()
    bill = CacheBill(price / 1e6)
    fail_open = 0
    for body in bodies:
        forwarded = body
        if rewriter is not None:
            exchange = Exchange(
                "b", "POST", "/v1/messages", "t", None, "u", time.time(), True, api="anthropic"
            )
            rewrite = await rewriter(exchange, body, {})
            forwarded = rewrite.body or body
            fail_open += rewrite.fail_open is not None
        bill.add(forwarded)
    if rewriter is not None:
        rewriter.close()
    return bill, fail_open


async def main_anthropic(price: float, traces: list[Path]) -> None:
    shipped = {n: p for n, p in load_policies().items() if not n.startswith("halve")}
    halves = {n: p for n, p in load_policies().items() if n.startswith("halve")}
    rows: dict[str, tuple[CacheBill, int]] = {}
    per_trace: dict[tuple[str, str], float] = {}
    candidates: list[tuple[str, Policy | None]] = [("none", None)]
    for name, policy in shipped.items():
        candidates += [(name, policy), (name + "@2-turns-old", two_turns_old(policy))]
    candidates += list(halves.items())
    bodies = {trace.stem: turns(trace) for trace in traces}
    for name, candidate in candidates:
        total, fails = CacheBill(price / 1e6), 0
        for stem, trace_bodies in bodies.items():
            bill, failed = await replay_anthropic(candidate, trace_bodies, price)
            per_trace[(name, stem)] = bill.dollars
            for key in ("tokens", "read", "written_5m", "written_1h", "dollars"):
                setattr(total, key, getattr(total, key) + getattr(bill, key))
            fails += failed
        rows[name] = (total, fails)
    base = rows["none"][0]
    print(
        f"{len(traces)} SWE-agent traces in Anthropic shape ({sum(map(len, bodies.values()))} requests), "
        f"o200k token estimate, ${price}/M input; reads 0.1x, 5-minute writes 1.25x, 1-hour writes 2x\n"
    )
    print(
        "| policy | input tokens | vs none | read | written 5m | written 1h | bill $ | bill vs none | "
        "compress when 2 turns old: bill vs none | fail-open |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def pct(a: float, b: float) -> str:
        return f"{100 * (a / b - 1):+.1f}%"

    for name, (bill, fails) in rows.items():
        if name.endswith("@2-turns-old"):
            continue
        twin = rows.get(name + "@2-turns-old")
        side = pct(twin[0].dollars, base.dollars) if twin else "-"
        print(
            f"| {name} | {bill.tokens:,} | {pct(bill.tokens, base.tokens)} | {bill.read:,} | {bill.written_5m:,} | "
            f"{bill.written_1h:,} | {bill.dollars:.4f} | {pct(bill.dollars, base.dollars)} | {side} | {fails} |"
        )
    names = [n for n in rows if n != "none"]
    print("\nPer trace, bill vs none:\n")
    print("| trace | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for stem in bodies:
        none = per_trace[("none", stem)]
        print(f"| {stem} | " + " | ".join(pct(per_trace[(n, stem)], none) for n in names) + " |")
    above = [(n, s) for (n, s), d in per_trace.items() if n in shipped and d > per_trace[("none", s)] + 1e-12]
    print(f"\nShipped policies billed above passthrough on any trace: {above or 'none'}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--price-per-mtok", type=float, default=None, help="input $ per 1M tokens")
    parser.add_argument("--api", choices=("openai", "anthropic"), default="openai")
    args = parser.parse_args()
    traces = sorted(TRACES.glob("*.traj"))
    if not traces:
        raise SystemExit(f"no traces in {TRACES}")
    if args.api == "anthropic":
        await main_anthropic(args.price_per_mtok or 3.00, traces)
        return
    args.price_per_mtok = args.price_per_mtok or 2.50
    rows: dict[str, Bill] = {}
    per_trace: dict[tuple[str, str], Bill] = {}
    for name, policy in [("none", None), *load_policies().items()]:
        total = Bill()
        for trace in traces:
            bill = await replay(policy, agent_messages(trace), args.price_per_mtok)
            per_trace[(name, trace.stem)] = bill
            total.add(bill)
        rows[name] = total
    base = rows["none"]
    print(
        f"{len(traces)} SWE-agent traces, gpt-4o tokenizer, ${args.price_per_mtok}/M input, cached prefix at 10%\n"
    )
    print(
        "| policy | input tokens | tokens vs none | cached share | bill $ | bill vs none | compress ms p50 | fail-open |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, bill in rows.items():
        ms = f"{statistics.median(bill.compress_ms):.1f}" if bill.compress_ms else "-"
        print(
            f"| {name} | {bill.tokens:,} | {100 * (bill.tokens / base.tokens - 1):+.1f}% | "
            f"{100 * bill.cached / bill.tokens:.1f}% | {bill.dollars:.4f} | "
            f"{100 * (bill.dollars / base.dollars - 1):+.1f}% | {ms} | {bill.fail_open} |"
        )
    print("\nPer trace, bill vs none:\n")
    names = list(rows)
    print("| trace | " + " | ".join(names[1:]) + " |")
    print("|---|" + "---:|" * (len(names) - 1))
    for trace in traces:
        none = per_trace[("none", trace.stem)].dollars
        cells = [f"{100 * (per_trace[(n, trace.stem)].dollars / none - 1):+.1f}%" for n in names[1:]]
        print(f"| {trace.stem} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    asyncio.run(main())
