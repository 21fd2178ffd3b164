"""SWE-agent traces in Anthropic shape, turn by turn through a real proxy with the agents policy.

As Claude Code sends them: tool calls as ``tool_use`` blocks, outputs as ``tool_result``
blocks, ``cache_control`` on the system prompt and the newest user block. Every forwarded
request must equal the previous forwarded one, block by block and byte for byte, up to the
previous request's last breakpoint (so that breakpoint's cache entry is read), and carry the
same markers at the same positions as the client sent.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import anthropic
import pytest
from harness import MakeProxy, Upstream
from samples import write_agent_trace
from test_anthropic import anthropic_config

import evaldata
from proxy.apis import breakpoints
from proxy.policy.model import load_policy

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
from anthropic_shape import block_values, turns, without_markers  # noqa: E402

# One function-calling trace (tool_result blocks) and one text agent (observations as user text).
CHOSEN = [
    "swe-agent-traces/marshmallow-1867__function_calling_replace.traj",
    "swe-agent-traces/gpt4__pydicom-1458.traj",
]
BUILT = "built"  # a function-calling trace made here (samples), for runs without the evaluation data
TRACES = [BUILT, *(pytest.param(t, marks=pytest.mark.evaldata(t), id=Path(t).stem) for t in CHOSEN)]


@pytest.fixture(scope="module")
def built_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_agent_trace(tmp_path_factory.mktemp("trace") / "built.traj")


def trace_path(trace: str, built_trace: Path) -> Path:
    return built_trace if trace == BUILT else evaldata.path(trace)


def markers(body: dict[str, Any]) -> list[tuple[tuple[str | int, ...], Any]]:
    listed = block_values(body)
    return [(b.path, listed[b.block]["cache_control"]) for b in breakpoints(body)]


def agents_text() -> str:
    """The shipped agents policy with a small target: a SWE-agent trace's outputs are mostly under
    the shipped 3,000 tokens, and these tests need parts that change."""
    text = (REPO / "policies" / "agents.yaml").read_text(encoding="utf-8")
    return text.replace("latency_budget_ms: 300", "latency_budget_ms: 30000").replace(
        "max_tokens: 3000", "max_tokens: 400"
    )


@pytest.mark.slow
@pytest.mark.parametrize("trace", TRACES)
def test_each_request_repeats_the_previous_up_to_its_last_breakpoint(
    trace: str, built_trace: Path, make_proxy: MakeProxy, upstream: Upstream
) -> None:
    policy = agents_text()
    proxy = make_proxy(
        anthropic_config(teams={"default": {"policy": "agents"}}),
        policies={"agents": policy},
    )
    client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-ant-test", max_retries=0)
    sent = turns(trace_path(trace, built_trace))
    for body in sent:
        client.messages.create(**body)
    forwarded = [r.json() for r in upstream.requests]
    assert len(forwarded) == len(sent) > 4
    shrunk = 0
    for k, (client_body, body) in enumerate(zip(sent, forwarded, strict=True)):
        assert markers(body) == markers(client_body)  # count, positions, TTLs
        # The agents policy keeps originals: tersegate_expand comes after the client's tools, only
        # once something in the request can be got back (a marker with hash=), and then on every
        # later turn (the prefix check below).
        theirs = client_body.get("tools") or []
        assert body.get("tools", [])[: len(theirs)] == theirs
        added = [t["name"] for t in body.get("tools", [])[len(theirs) :]]
        assert added in ([], ["tersegate_expand"]) and not (added and not theirs)
        assert not added or re.search(r"; hash=[0-9a-f]{24}\]", str(body["messages"]))
        shrunk += len(str(body["messages"])) < len(str(client_body["messages"]))
        if k == 0:
            continue
        previous = forwarded[k - 1]
        last = breakpoints(previous)[-1].block
        before = [without_markers(v) for v in block_values(previous)[: last + 1]]
        values = block_values(body)
        if added and len(previous.get("tools", [])) == len(theirs):
            # Offered from the first tool output on (the prefix before it is the task alone).
            assert k == 1, f"turn {k}: tersegate_expand added mid-conversation"
            values = [v for v in values if not (isinstance(v, dict) and v.get("name") == "tersegate_expand")]
        now = [without_markers(v) for v in values[: last + 1]]
        assert now == before, f"turn {k}: the cached prefix changed"
    assert shrunk > 0  # the policy did compress something, so the prefix check means something


@pytest.mark.slow
@pytest.mark.parametrize("trace", TRACES)
def test_the_agents_bill_is_below_passthrough_and_the_two_turns_old_twin_above(
    trace: str, built_trace: Path, tmp_path: Path
) -> None:
    import asyncio

    from replay_engine import replay_anthropic, two_turns_old

    path = tmp_path / "agents.yaml"
    path.write_text(agents_text(), encoding="utf-8")
    agents = load_policy(path, expected_name="agents")[0]
    bodies = turns(trace_path(trace, built_trace))
    none, _ = asyncio.run(replay_anthropic(None, bodies, 3.0))
    once, fails = asyncio.run(replay_anthropic(agents, bodies, 3.0))
    aged, _ = asyncio.run(replay_anthropic(two_turns_old(agents), bodies, 3.0))
    assert fails == 0
    assert once.dollars < none.dollars < aged.dollars
    assert once.tokens < none.tokens and aged.tokens < none.tokens  # the twin saves tokens too
