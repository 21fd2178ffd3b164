"""The recorded agent sessions (bench/sessions/) and the replay harness that bills them.

Each session must be long (40+ tool steps, 100k+ tokens of history), its facts exact substrings of
the real outputs they come from, and both wire shapes must carry the same turns. A passthrough
replay through the proxy's policy engine (a policy without rules) must bill exactly what the
uncompressed replay bills, on both APIs.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from agent_replay import PolicyCompression, bill, price_of, replay  # noqa: E402

from bench.sessions.shapes import anthropic_turns, load, names, newest_output, openai_turns  # noqa: E402
from compressors.tokenizer import tokenizer_for  # noqa: E402

SESSIONS = names()
NO_RULES = "name: nothing\nlatency_budget_ms: 60000\nrules: []\n"


def test_there_are_two_sessions_or_more() -> None:
    assert len(SESSIONS) >= 2, SESSIONS


@pytest.mark.parametrize("name", SESSIONS)
def test_a_session_is_long_and_its_facts_are_real(name: str) -> None:
    session = load(name)
    steps = session["steps"]
    assert len(steps) >= 40
    count = tokenizer_for("gpt-5").count
    assert sum(count(step["output"]) for step in steps) >= 100_000
    assert session["repo"] and len(session["commit"]) == 40
    full_runs = [
        s for s in steps if s["command"].startswith("python -m pytest -") and "collect" not in s["command"]
    ]
    assert len(full_runs) >= 3  # the whole suite, three times
    for step in steps:
        assert step["output"], step["command"]
        for fact in step["facts"]:
            assert fact in step["output"], (step["n"], fact)
    assert sum(bool(step["facts"]) for step in steps) >= len(steps) - 2


@pytest.mark.parametrize("name", SESSIONS)
def test_both_shapes_carry_the_same_turns(name: str) -> None:
    session = load(name)
    chat, messages = openai_turns(session, "gpt-5"), anthropic_turns(session, "claude-sonnet-4-5")
    assert len(chat) == len(messages) == len(session["steps"]) + 1
    for k, (a, b) in enumerate(zip(chat, messages, strict=True)):
        expected = session["steps"][k - 1]["output"] if k else None
        assert newest_output(a) == newest_output(b) == expected
        assert b["system"][0]["cache_control"] == {"type": "ephemeral"}
        assert b["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
        marked = [blk for m in b["messages"] for blk in m["content"] if "cache_control" in blk]
        assert len(marked) == 1  # the breakpoint moves forward: only the newest block carries it


def test_a_passthrough_through_the_policy_engine_bills_what_direct_bills() -> None:
    session = load(SESSIONS[0])

    async def run() -> None:
        for api in ("openai", "anthropic"):
            direct = await replay(session, api, None)
            async with PolicyCompression(NO_RULES) as nothing:
                through = await replay(session, api, nothing)
            assert bill(through, price_of(api)) == bill(direct, price_of(api)) > 0
            assert [t.usage for t in through.turns] == [t.usage for t in direct.turns]
            assert through.facts_kept() == (len(session["steps"]), len(session["steps"]))
            assert nothing.fail_open == {"t": 0}

    asyncio.run(run())
