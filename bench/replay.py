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

    python bench/replay.py [--price-per-mtok 2.50] [--repeats 1]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from compressors.tokenizer import tokenizer_for
from proxy.exchange import Exchange
from proxy.policy.engine import PolicyRewriter
from proxy.policy.model import Policy, PolicySet, load_policy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for evaldata/
import evaldata

REPO = Path(__file__).resolve().parents[1]
MODEL = "gpt-4o"
CACHED_FRACTION = 0.10
COUNT = tokenizer_for(MODEL).count
# Observations arrive as tool messages (function calling) or user messages (text agents).
HALVE = """\
name: {name}
latency_budget_ms: 60000
rules:
  - name: halve-observations
    match: {{roles: [tool, user], min_tokens: 100{age}}}
    compressor: truncate
    rate: 0.5
    options: {{mode: middle, unit: line}}
"""


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
    for turn in evaldata.turns(messages):
        body = {"model": MODEL, "messages": turn}
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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--price-per-mtok", type=float, default=2.50, help="input $ per 1M tokens (gpt-4o)")
    args = parser.parse_args()
    traces = evaldata.trace_paths()
    if evaldata.missing(*evaldata.TRACES):
        raise SystemExit(f"no SWE-agent traces in {evaldata.root()} (python -m evaldata.fetch)")
    rows: dict[str, Bill] = {}
    per_trace: dict[tuple[str, str], Bill] = {}
    for name, policy in [("none", None), *load_policies().items()]:
        total = Bill()
        for trace in traces:
            bill = await replay(policy, evaldata.agent_messages(trace), args.price_per_mtok)
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
