"""Replay long coding-agent sessions turn by turn through a compression and bill them in dollars.

How to use
----------
    PYTHONPATH=. python bench/agent_replay.py                     # every session, both APIs, in-process
    PYTHONPATH=. python bench/agent_replay.py --serve             # also through `tersegate serve` + audit
    PYTHONPATH=. python bench/agent_replay.py --policy agents --policy my.yaml --out report.md

``--policy`` takes ``passthrough``, a shipped policy's name (``policies/<name>.yaml``), a path to a
policy YAML, or ``first30`` (the strawman: every tool output cut to 30% of its tokens, middle
out, when first seen). Default: passthrough, agents, first30.

From Python, a compression is any callable over the whole request body (``body, route`` ->
forwarded body, sync or async), so a history compaction under development is measured without
the proxy; it may keep state across turns (it sees the turns of one replay in order):

    from bench.agent_replay import bill, price_of, replay
    from bench.sessions.shapes import load
    async def compact(body: dict, route: str) -> dict: ...
    run = await replay(load("starlette_cookie"), "openai", compact)
    print(bill(run, price_of("openai")), run.tokens(), run.facts_kept())   # $, (input, cached), facts
    base = await replay(load("starlette_cookie"), "openai", None)          # passthrough, to compare

``replay_policy(sessions, apis, "agents")`` does the same for a policy (one rewriter, a memo per
replay); ``Turn.lost`` lists the facts a turn's newest output lost.

What it measures
----------------
Turn k sends the history up to and including step k's tool output (bench/sessions/shapes.py), in
the OpenAI chat shape (gpt-5) or the Anthropic Messages shape with Claude Code's breakpoints
(claude-sonnet-4-5). The invoice's truth is tests/prefix_cache_upstream.py, the fake upstream the
cost-truth tests trust: its usage is what an OpenAI prefix cache (>= 1,024 tokens, 128-token
steps) or Anthropic's breakpoints (writes 1.25x for 5 minutes, reads 0.1x) would report, and it is
priced with litellm's bundled map (proxy/audit/pricing.py) exactly as bench/replay.py prices it.
In-process, each turn goes through :class:`proxy.policy.engine.PolicyRewriter` (as
bench/replay_engine.py does) and the upstream's usage function directly; ``--serve`` sends the
same turns through a real ``tersegate serve`` subprocess (JSONL audit on) to that upstream on
loopback, so the audit's before/after dollars can be set beside the invoice. For every turn it
checks that the NEWEST tool output, as forwarded, still contains every fact of its step.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import inspect
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "bench"), str(REPO)]
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import prefix_cache_upstream  # noqa: E402
from prefix_cache_upstream import PrefixCacheUpstream  # noqa: E402
from replay import billed  # noqa: E402  (bench/replay.py: the invoice's pricing)

from bench.sessions.shapes import Session, anthropic_turns, load, names, newest_output, openai_turns  # noqa: E402
from compressors.tokenizer import tokenizer_for  # noqa: E402
from proxy.audit.pricing import Price, PriceBook  # noqa: E402
from proxy.exchange import Exchange  # noqa: E402
from proxy.policy.engine import PolicyRewriter  # noqa: E402
from proxy.policy.model import Policy, PolicySet, load_policy  # noqa: E402
from proxy.policy.originals import Originals  # noqa: E402
from proxy.store.memory import MemoryStore  # noqa: E402

__all__ = ["APIS", "Compression", "PolicyCompression", "Replay", "bill", "policy_yaml", "replay"]

APIS = {"openai": ("gpt-5", "/v1/chat/completions"), "anthropic": ("claude-sonnet-4-5", "/v1/messages")}
DISCOUNTS = (0.5, 0.75, 0.9)
PASSTHROUGH = "passthrough"
DEFAULT_POLICIES = (PASSTHROUGH, "agents", "first30")
GENEROUS_MS = 60_000.0  # measure what a policy saves, not how busy this machine is
FIRST30 = """\
name: first30
latency_budget_ms: 60000
rules:
  - name: tool-output-at-30-percent
    match: {roles: [tool, function], min_tokens: 100}
    compressor: truncate
    rate: 0.3
    options: {mode: middle, unit: line}
"""
# The strawman keeps 30% of EVERY output: the 50,000-character skip of the shipped config would
# leave the biggest outputs whole, so its replays lift it.
STRAWMAN_PART_CHARS = {"first30": 10_000_000}

Body = dict[str, Any]
Compression = Callable[[Body, str], "Awaitable[Body] | Body"]


@dataclass
class Turn:
    usage: dict[str, Any]  # what the upstream (the invoice's truth) reported
    lost: list[str]  # facts of the newest tool output missing from what was forwarded
    step: int  # the step whose output is the newest (0: the task alone, no tool output yet)
    newest_tokens: int  # that output's tokens as forwarded


@dataclass
class Replay:
    session: str
    api: str
    label: str
    turns: list[Turn] = field(default_factory=list)
    fail_open: int = 0
    compress_ms: float = 0.0

    @property
    def model(self) -> str:
        return APIS[self.api][0]

    def tokens(self) -> tuple[int, int]:
        """``(prompt tokens, cached-read tokens)`` over all turns."""
        prompt = cached = 0
        for turn in self.turns:
            p, c = _counts(turn.usage)
            prompt, cached = prompt + p, cached + c
        return prompt, cached

    def written(self) -> int:
        return sum(t.usage.get("cache_creation_input_tokens", 0) for t in self.turns)

    def facts_kept(self) -> tuple[int, int]:
        """``(steps whose newest output kept every fact, steps with facts)``."""
        steps = [turn for turn in self.turns if turn.step]
        return sum(1 for t in steps if not t.lost), len(steps)


def _counts(usage: dict[str, Any]) -> tuple[int, int]:
    """``(prompt tokens, cached-read tokens)`` of one reported usage, either API."""
    if "cache_read_input_tokens" in usage:
        read = usage["cache_read_input_tokens"]
        return usage["input_tokens"] + usage["cache_creation_input_tokens"] + read, read
    return usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]


def bill(run: Replay, price: Price) -> float:
    """The invoice of a replay: each turn's reported usage priced as the provider bills it."""
    return sum(billed(turn.usage, price)[0] for turn in run.turns)


def discounted(price: Price, discount: float) -> Price:
    """The same model with cached input at ``1 - discount`` of the input price."""
    return dataclasses.replace(price, cached_input=price.input * (1 - discount))


def lost_facts(session: Session, k: int, forwarded: Body) -> list[str]:
    if k == 0:
        return []
    newest = newest_output(forwarded) or ""
    return [fact for fact in session["steps"][k - 1]["facts"] if fact not in newest]


def bodies_of(session: Session, api: str) -> list[Body]:
    model = APIS[api][0]
    return openai_turns(session, model) if api == "openai" else anthropic_turns(session, model)


def policy_yaml(name: str) -> str | None:
    """The YAML of a policy by name or path (None: passthrough)."""
    if name == PASSTHROUGH:
        return None
    if name == "first30":
        return FIRST30
    path = Path(name) if name.endswith((".yaml", ".yml")) else REPO / "policies" / f"{name}.yaml"
    return path.read_text(encoding="utf-8")


class _EveryTeam(Mapping[str, str]):
    """Every team -> the one policy: in a replay, a team only scopes the compress-once memo."""

    def __getitem__(self, team: str) -> str:
        return "p"

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


class PolicyCompression:
    """A tersegate policy as a :data:`Compression`: the proxy's rewrite hook, in-process.

    ``async with PolicyCompression(yaml_text) as compress: forwarded = await compress(body, route)``;
    ``compress.for_team(name)`` is the same policy with its own memo (one rewriter, one set of
    worker processes, for many replays). ``fail_open`` and ``compress_ms`` are kept per team.
    """

    def __init__(self, yaml_text: str, *, max_part_chars: int = 50_000) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "policy.yaml"
            path.write_text(yaml_text, encoding="utf-8")
            policy: Policy = load_policy(path)[0]
        policy = dataclasses.replace(policy, latency_budget_ms=GENEROUS_MS)
        self.rewriter = PolicyRewriter(
            PolicySet({"p": policy}, _EveryTeam()),
            memo_bytes=1 << 28,
            workers=2,
            max_part_chars=max_part_chars,
            prices=PriceBook(),  # history compaction prices its batches (docs/compaction.md)
            # as `serve` does for retrieve policies: markers carry hash=, omissions are retrievable
            originals=Originals(MemoryStore(max_bytes=1 << 28)) if policy.retrieve else None,
        )
        self.fail_open: dict[str, int] = {}
        self.compress_ms: dict[str, float] = {}

    async def __aenter__(self) -> PolicyCompression:
        await self.rewriter.ready()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.rewriter.close()

    async def __call__(self, body: Body, route: str) -> Body:
        return await self.compress(body, route, team="t")

    def for_team(self, team: str) -> Callable[[Body, str], Awaitable[Body]]:
        return functools.partial(self.compress, team=team)

    async def compress(self, body: Body, route: str, *, team: str) -> Body:
        api = "anthropic" if route == APIS["anthropic"][1] else "openai"
        exchange = Exchange("b", "POST", route, team, None, "u", time.time(), True, api=api)
        rewrite = await self.rewriter(exchange, body, {})
        self.fail_open[team] = self.fail_open.get(team, 0) + (rewrite.fail_open is not None)
        self.compress_ms[team] = self.compress_ms.get(team, 0.0) + (rewrite.compress_ms or 0.0)
        return rewrite.body or body


def _memoise_upstream_encode() -> None:
    """The upstream tokenizes every message of every turn, and a session re-sends the same texts each
    turn: a memo of its pure encode function makes a replay several times faster, every count the same."""
    encode = prefix_cache_upstream.ENCODE
    if not hasattr(encode, "cache_info"):
        prefix_cache_upstream.ENCODE = functools.lru_cache(maxsize=4096)(encode)


async def replay(session: Session, api: str, compression: Compression | None, *, label: str = "") -> Replay:
    """Every turn of ``session`` through ``compression`` (None: passthrough), billed by a fresh cache."""
    _memoise_upstream_encode()
    upstream = PrefixCacheUpstream()
    usage_of = upstream._anthropic_usage if api == "anthropic" else upstream._openai_usage
    route = APIS[api][1]
    count = tokenizer_for(APIS[api][0]).count
    run = Replay(session["name"], api, label)
    for k, body in enumerate(bodies_of(session, api)):
        forwarded = body
        if compression is not None:
            result = compression(body, route)
            forwarded = await result if inspect.isawaitable(result) else result
        newest = count(newest_output(forwarded) or "")
        run.turns.append(Turn(usage_of("replay", forwarded), lost_facts(session, k, forwarded), k, newest))
    return run


async def replay_policy(sessions: list[Session], apis: list[str], name: str) -> list[Replay]:
    """Every session in every API through a named policy (see :func:`policy_yaml`), in-process."""
    text = policy_yaml(name)
    if text is None:
        return [await replay(s, api, None, label=name) for s in sessions for api in apis]
    runs = []
    async with PolicyCompression(text, max_part_chars=STRAWMAN_PART_CHARS.get(name, 50_000)) as policy:
        for session in sessions:
            for api in apis:
                team = f"{session['name']}-{api}"
                run = await replay(session, api, policy.for_team(team), label=name)
                run.fail_open, run.compress_ms = (
                    policy.fail_open.get(team, 0),
                    policy.compress_ms.get(team, 0.0),
                )
                runs.append(run)
    return runs


def price_of(api: str) -> Price:
    price = PriceBook().price_for(APIS[api][0])
    if price is None:
        raise SystemExit(f"no price for {APIS[api][0]} in litellm's map")
    return price


async def main() -> None:
    from agent_report import report  # bench/agent_report.py: the markdown tables

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--session", action="append", choices=names(), help="default: every session")
    parser.add_argument("--policy", action="append", help="default: passthrough, agents, first30")
    parser.add_argument("--api", action="append", choices=tuple(APIS), help="default: both")
    parser.add_argument("--serve", action="store_true", help="also through a `tersegate serve` subprocess")
    parser.add_argument("--out", type=Path, help="write the markdown report here too")
    args = parser.parse_args()
    policies = list(dict.fromkeys([PASSTHROUGH, *(args.policy or DEFAULT_POLICIES)]))
    sessions = [load(name) for name in args.session or names()]
    apis = args.api or list(APIS)
    t0 = time.perf_counter()
    runs = [run for p in policies for run in await replay_policy(sessions, apis, p)]
    elapsed = time.perf_counter() - t0
    served = None
    if args.serve:
        from agent_serve import serve_replays  # bench/agent_serve.py: the subprocess mode

        served = await asyncio.to_thread(serve_replays, sessions, apis, policies)
    text = report(sessions, runs, served, command=" ".join(["python", *sys.argv]), seconds=elapsed)
    print(text)
    if args.out:
        args.out.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    asyncio.run(main())
