"""History compaction in the engine: batches, byte-identical replays, replicas, idle caches, coexistence.

A chat session is built from real files of this repository (each tool output is ``cat <file>``),
sent turn by turn through :class:`PolicyRewriter` as the server calls it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from anthropic_shape import turns as claude_code_turns
from prefix_cache_upstream import ENCODE, PrefixCacheUpstream, _anthropic_blocks

from compressors.markers import find_markers
from proxy.audit.pricing import PriceBook
from proxy.config.model import load_config
from proxy.config.yamlsource import ConfigErrors
from proxy.exchange import Exchange
from proxy.policy.engine import PolicyRewriter
from proxy.policy.model import PolicySet, load_policy
from proxy.policy.originals import Originals
from proxy.store.base import SharedStore
from proxy.store.memory import MemoryStore
from proxy.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[2]
FILES = sorted(str(p.relative_to(REPO)) for p in (REPO / "proxy").rglob("*.py") if p.stat().st_size > 3000)[
    :16
]
POLICY = """\
name: agent
latency_budget_ms: 60000
rules: []
compaction: {{keep_last: 3, keep_tokens: 2000{more}}}
"""


def session(files: list[str] = FILES) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a coding agent. Use bash."},
        {"role": "user", "content": "Find where the memo store is closed and explain it."},
    ]
    for i, name in enumerate(files):
        call = {
            "id": f"c{i}",
            "type": "function",
            "function": {"name": "bash", "arguments": orjson.dumps({"command": f"cat {name}"}).decode()},
        }
        messages.append({"role": "assistant", "content": f"Next I read {name}.", "tool_calls": [call]})
        messages.append(
            {"role": "tool", "tool_call_id": f"c{i}", "content": (REPO / name).read_text(encoding="utf-8")}
        )
    messages.append({"role": "assistant", "content": "Done: aclose() closes it."})
    return messages


def turns(messages: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [messages[:k] for k, m in enumerate(messages) if m["role"] == "assistant" and k > 1]


def rewriter(
    tmp_path: Path, more: str = "", store: SharedStore | None = None, upstream_idle_s: float | None = None
) -> PolicyRewriter:
    path = tmp_path / "agent.yaml"
    path.write_text(POLICY.format(more=more), encoding="utf-8")
    policy, _ = load_policy(path)
    policies = PolicySet(policies={"agent": policy}, team_policy={"t": "agent"})
    idle = {"u": upstream_idle_s} if upstream_idle_s else None  # "u": the upstream of send()'s requests
    return PolicyRewriter(
        policies, memo_bytes=1 << 24, workers=1, store=store, prices=PriceBook(), cache_idle_s=idle
    )


async def send(engine: PolicyRewriter, messages: list[dict[str, Any]], **extra: Any) -> list[dict[str, Any]]:
    body = {"model": "gpt-5", "messages": messages, **extra}
    exchange = Exchange("r", "POST", "/v1/chat/completions", "t", None, "u", time.time(), True)
    rewrite = await engine(exchange, body, {})
    return list((rewrite.body or body)["messages"])


def stubbed(messages: list[dict[str, Any]]) -> list[int]:
    return [i for i, m in enumerate(messages) if m["role"] == "tool" and m["content"].startswith("[")]


async def replay(engines: list[PolicyRewriter]) -> list[list[dict[str, Any]]]:
    """Every turn of the session, turn k through ``engines[k % len(engines)]``."""
    return [await send(engines[k % len(engines)], t) for k, t in enumerate(turns(session()))]


async def test_batches_then_every_later_turn_resends_the_compacted_history_byte_identical(
    tmp_path: Path,
) -> None:
    engine = rewriter(tmp_path)
    try:
        sent = await replay([engine])
    finally:
        engine.close()
    batches = [k for k in range(1, len(sent)) if sent[k][: len(sent[k - 1])] != sent[k - 1]]
    assert 1 <= len(batches) <= len(sent) // 3  # a few batches, not a change every turn
    last = sent[-1]
    assert stubbed(last), "an old output was compacted by the end"
    outputs = [i for i, m in enumerate(last) if m["role"] == "tool"]
    assert not set(stubbed(last)) & set(outputs[-3:])  # the newest outputs stay whole
    for i in stubbed(last):
        original = session()[i]["content"].split("\n")
        assert all(line in original for line in last[i]["content"].split("\n")[1:])
    assert all(m.get("tool_calls") == session()[i].get("tool_calls") for i, m in enumerate(last))


async def test_two_replicas_sharing_sqlite_decide_as_one_process_does(tmp_path: Path) -> None:
    single = rewriter(tmp_path)
    try:
        alone = await replay([single])
    finally:
        single.close()
    stores = [SqliteStore(tmp_path / "memo.sqlite", max_bytes=1 << 28) for _ in range(2)]
    engines = [rewriter(tmp_path, store=s) for s in stores]
    try:
        shared = await replay(engines)
        # a restarted replica (a fresh process on the same file) replays the batches too
        restarted = rewriter(tmp_path, store=SqliteStore(tmp_path / "memo.sqlite", max_bytes=1 << 28))
        again = await send(restarted, turns(session())[-1])
        restarted.close()
    finally:
        for engine in engines:
            engine.close()
        for store in stores:
            await store.aclose()
    assert shared == alone
    assert again == alone[-1]


@pytest.mark.parametrize(
    ("more", "upstream_idle_s"),
    [(", idle_s: 0.5, margin: 1000", None), (", margin: 1000", 0.5)],  # margin: economics alone never pay
    ids=["policy-idle_s", "upstream-cache_idle_s"],
)
async def test_a_conversation_idle_past_its_cache_lifetime_is_compacted_fully_at_its_next_turn(
    tmp_path: Path, more: str, upstream_idle_s: float | None
) -> None:
    engine = rewriter(tmp_path, more=more, upstream_idle_s=upstream_idle_s)
    try:
        history = turns(session())
        warm = [await send(engine, t) for t in history[:8]]
        assert not any(stubbed(m) for m in warm)
        await asyncio.sleep(0.7)
        cold = await send(engine, history[8])
        eligible = [i for i, m in enumerate(cold) if m["role"] == "tool"][:-3]
        assert stubbed(cold) and set(stubbed(cold)) <= set(eligible)
        after = await send(engine, history[9])
        assert after[: len(cold)] == cold  # the next turn re-sends it byte-identical
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("extra", "cleared", "compacted"),
    [
        ({"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}}, False, False),
        ({}, True, False),
        ({}, False, True),  # the same request without the client's own compaction
    ],
    ids=["provider-context-management", "client-cleared-placeholder", "neither"],
)
async def test_a_client_that_compacts_its_own_history_is_left_alone(
    tmp_path: Path, extra: dict[str, Any], cleared: bool, compacted: bool
) -> None:
    engine = rewriter(tmp_path, more=", idle_s: 0.05")  # cold at the second turn: compacts at once
    try:
        history = turns(session())
        messages = [*history[-1]]
        if cleared:
            messages[3] = {**messages[3], "content": "[Old tool result content cleared]"}
        await send(engine, messages[: len(history[-2])], **extra)
        await asyncio.sleep(0.1)
        sent = await send(engine, messages, **extra)
        assert bool([i for i in stubbed(sent) if i != 3]) == compacted
    finally:
        engine.close()


def test_an_upstream_cache_lifetime_must_be_positive(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    upstream = {"base_url": "https://api.openai.com/v1", "cache_idle_s": -1}
    path.write_text(
        yaml.safe_dump({"upstreams": {"openai": upstream}, "teams": {"default": {}}}), encoding="utf-8"
    )
    with pytest.raises(ConfigErrors, match=r"upstreams.openai.cache_idle_s: must be a positive number"):
        load_config(path)
    upstream["cache_idle_s"] = 3600
    path.write_text(
        yaml.safe_dump({"upstreams": {"openai": upstream}, "teams": {"default": {}}}), encoding="utf-8"
    )
    assert load_config(path).upstreams["openai"].cache_idle_s == 3600


def test_bad_compaction_settings_are_reported_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(POLICY.format(more=", margin: -1, roles: [tools], colour: red"), encoding="utf-8")
    with pytest.raises(ConfigErrors) as caught:
        load_policy(path)
    text = str(caught.value)
    assert f"{path}:4: compaction.margin: must be > 0" in text
    assert "unknown role 'tools'" in text and "unknown key 'colour'" in text


async def claude_code_session(
    tmp_path: Path, more: str = "", files: list[str] = FILES
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(bodies sent, bodies as the client made them)``: the session in Claude Code's shape."""
    engine = rewriter(tmp_path, more)
    sent: list[dict[str, Any]] = []
    bodies = claude_code_turns(session(files))
    try:
        for body in bodies:
            exchange = Exchange(
                "r", "POST", "/v1/messages", "t", None, "u", time.time(), True, api="anthropic"
            )
            rewrite = await engine(exchange, {**body, "model": "claude-sonnet-4-5"}, {})
            sent.append(rewrite.body or body)
    finally:
        engine.close()
    return sent, bodies


def marks(body: dict[str, Any]) -> list[tuple[int, int]]:
    return [
        (i, j)
        for i, m in enumerate(body["messages"])
        for j, block in enumerate(m["content"])
        if "cache_control" in block
    ]


def is_stub(block: dict[str, Any]) -> bool:
    return (
        block["type"] == "tool_result"
        and isinstance(block["content"], str)
        and block["content"].startswith("[")
    )


async def test_messages_shape_keeps_the_clients_breakpoints_and_marks_the_last_stub(tmp_path: Path) -> None:
    sent, bodies = await claude_code_session(tmp_path)
    assert any(is_stub(b) for m in sent[-1]["messages"] for b in m["content"]), (
        "old tool results were compacted"
    )
    added_at: list[tuple[int, int] | None] = []
    for body, original in zip(sent, bodies, strict=True):
        assert body["system"] == original["system"]
        uses = [b for m in body["messages"] for b in m["content"] if b["type"] == "tool_use"]
        assert uses == [b for m in original["messages"] for b in m["content"] if b["type"] == "tool_use"]
        added = sorted(set(marks(body)) - set(marks(original)))
        assert set(marks(original)) <= set(marks(body)) and len(added) <= 2
        assert len(marks(body)) + 1 <= 4  # the system prompt's breakpoint is not in marks()
        stubs = [
            (i, j) for i, m in enumerate(body["messages"]) for j, b in enumerate(m["content"]) if is_stub(b)
        ]
        # The proxy's breakpoint sits on the newest stub, before the client's last breakpoint; on a
        # batch's turn the previous turn's one stays too (the batch reads the history up to it).
        assert added[-1:] == stubs[-1:]
        assert added[:-1] == ([added_at[-1]] if added[:-1] else [])
        assert not added or added[-1] < marks(original)[-1]
        added_at.append(added[-1] if added else None)
        for i, j in added:
            assert body["messages"][i]["content"][j]["cache_control"] == {"type": "ephemeral"}
    # It moves only at a batch: the turns between two batches mark the same block.
    moves = [k for k in range(1, len(added_at)) if added_at[k] != added_at[k - 1]]
    assert 1 <= len(moves) < len(added_at) // 2


async def test_a_batch_turn_reads_the_history_up_to_the_previous_batchs_stubs(tmp_path: Path) -> None:
    """The invoice: a later batch re-writes only what follows the previous batch's last stub."""
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "proxy").rglob("*.py"))[:40]
    sent, _ = await claude_code_session(tmp_path, files=files)
    upstream = PrefixCacheUpstream(min_tokens=0)
    usage = [upstream._anthropic_usage("k", body) for body in sent]
    stubs = [sum(is_stub(b) for m in body["messages"] for b in m["content"]) for body in sent]
    batches = [k for k in range(1, len(sent)) if stubs[k] > stubs[k - 1]]
    assert len(batches) >= 2
    for k in batches[1:]:
        i, j = marks(sent[k - 1])[0]  # the previous batch's last stub
        cut = {
            **sent[k],
            "messages": [
                *sent[k]["messages"][:i],
                {"role": "user", "content": sent[k]["messages"][i]["content"][: j + 1]},
            ],
        }
        upto = sum(len(ENCODE(text)) + 1 for text, _ in _anthropic_blocks(cut))
        assert usage[k]["cache_read_input_tokens"] >= upto > 0


async def test_no_breakpoint_is_added_when_the_policy_says_so(tmp_path: Path) -> None:
    sent, bodies = await claude_code_session(tmp_path, more=", breakpoint: false")
    assert any(is_stub(b) for m in sent[-1]["messages"] for b in m["content"])
    assert all(marks(body) == marks(original) for body, original in zip(sent, bodies, strict=True))


SLOW = """\
name: agent
latency_budget_ms: {budget}
min_saving_tokens: 0
rules:
  - name: outputs
    match: {{roles: [tool]}}
    compressor: truncate
    rate: 0.5
    options: {{mode: middle, unit: line}}
compaction: {{keep_last: 3, keep_tokens: 2000, idle_s: 0.3}}
"""


@pytest.mark.slow  # a compression worker process starts
async def test_outputs_that_failed_open_are_compressed_at_the_next_batch(tmp_path: Path) -> None:
    def policies(budget: float) -> PolicySet:
        path = tmp_path / "agent.yaml"
        path.write_text(SLOW.format(budget=budget), encoding="utf-8")
        return PolicySet(policies={"agent": load_policy(path)[0]}, team_policy={"t": "agent"})

    engine = PolicyRewriter(policies(0.001), memo_bytes=1 << 24, workers=1, prices=PriceBook())
    history = turns(session())
    try:
        slow = [await send(engine, t) for t in history[:8]]  # every output went out as it came
        assert slow[-1] == history[7]
        engine.policies = policies(60000)  # warm now: new outputs are compressed
        await asyncio.sleep(0.4)  # idle past the cache's lifetime: the next turn compacts
        caught = await send(engine, history[8])
        outputs = [i for i, m in enumerate(caught) if m["role"] == "tool"]
        assert set(stubbed(caught)) == set(outputs[:-3])
        for i in outputs[-3:-1]:  # sent whole while the budget overran, compressed at the batch
            assert (
                len(caught[i]["content"]) < len(history[8][i]["content"])
                and "omitted" in caught[i]["content"]
            )
        assert (await send(engine, history[9]))[: len(caught)] == caught
    finally:
        engine.close()


async def test_with_retrieval_a_stub_carries_the_id_its_original_is_kept_under(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(POLICY.format(more="") + "retrieve: true\n", encoding="utf-8")
    policies = PolicySet(policies={"agent": load_policy(path)[0]}, team_policy={"t": "agent"})
    originals = Originals(MemoryStore())
    engine = PolicyRewriter(policies, memo_bytes=1 << 24, workers=1, prices=PriceBook(), originals=originals)
    try:
        last = [await send(engine, t) for t in turns(session())][-1]
    finally:
        engine.close()
    assert stubbed(last)
    for i in stubbed(last):
        (found,) = find_markers(last[i]["content"].split("\n")[0])
        assert found[2].ref is not None
        expansion = await originals.expand(originals.scope("t"), found[2].ref)
        assert expansion.status == "ok" and expansion.text == session()[i]["content"]
