"""Coding-agent traces replayed turn by turn through a real proxy with the shipped policies: one made
here (:mod:`samples`) and the SWE-agent traces of the evaluation data.

Cache stability: each forwarded request must start with the previous forwarded
request's messages, byte for byte, so the provider's prompt cache keeps
hitting. And the selected parts must shrink as the policy says.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from harness import RunningProxy, Upstream, shared_proxy
from samples import write_agent_trace

import evaldata
from compressors.markers import find_markers
from compressors.tokenizer import tokenizer_for

REPO = Path(__file__).resolve().parents[2]
COUNT = tokenizer_for("gpt-4o").count
STUB = re.compile(r"\[\d+ lines( like \"[^\"\n]*\")? omitted; lines=")


BUILT = "built"
# The made-up trace, then each trace of the evaluation data (skipped where it is absent).
TRACES = [BUILT, *(pytest.param(t, marks=pytest.mark.evaldata(t), id=Path(t).stem) for t in evaldata.TRACES)]


@pytest.fixture(scope="module")
def built_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_agent_trace(tmp_path_factory.mktemp("trace") / "built.traj")


def replay(proxy: Any, upstream: Upstream, trace: str | Path, team: str) -> list[tuple[list[Any], list[Any]]]:
    """``(sent messages, forwarded messages)`` per turn."""
    out = []
    with httpx.Client(timeout=120) as client:
        for messages in evaldata.turns(evaldata.agent_messages(trace)):
            response = client.post(
                proxy.base_url + "/chat/completions",
                content=orjson.dumps({"model": "gpt-4o", "messages": messages}),
                headers={"Authorization": "Bearer sk-client", "X-Tersegate-Team": team},
            )
            assert response.status_code == 200, response.text
            out.append((messages, upstream.last().json()["messages"]))
    return out


def shipped(*names: str) -> dict[str, str]:
    return {n: (REPO / "policies" / f"{n}.yaml").read_text(encoding="utf-8") for n in names}


@pytest.fixture(scope="module")
def shipped_proxy(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    """One proxy for the module (a start with three policies warms their models in worker processes)."""
    teams = {name: {"policy": name} for name in ("default", "agents", "support")}
    policies = shipped("default", "agents", "support")
    # A SWE-agent trace's outputs are mostly under the shipped 3,000-token target: a smaller one.
    policies["agents"] = policies["agents"].replace("max_tokens: 3000", "max_tokens: 400")
    with shared_proxy(tmp_path_factory.mktemp("proxy"), {"teams": teams}, upstream, policies) as running:
        assert running.services is not None
        assert running.services.rewriter.warmed.wait(120)  # type: ignore[attr-defined]
        yield running


@pytest.fixture
def proxy(shipped_proxy: RunningProxy, upstream: Upstream) -> RunningProxy:
    upstream.clear()
    return shipped_proxy


@pytest.mark.parametrize("team", ["agents", "default", "support"])
@pytest.mark.parametrize("trace", TRACES)
def test_each_turn_resends_the_previous_turn_byte_identical(
    proxy: Any, upstream: Upstream, built_trace: Path, trace: str, team: str
) -> None:
    previous: list[bytes] = []
    turns = replay(proxy, upstream, built_trace if trace == BUILT else trace, team)
    batches = 0
    for sent, forwarded in turns:
        assert len(forwarded) == len(sent)  # nothing dropped or reordered
        encoded = [orjson.dumps(m) for m in forwarded]
        if encoded[: len(previous)] != previous:
            # Only agents' history compaction changes an earlier message: old tool outputs become
            # stubs (a marker first), in a few batches (docs/compaction.md).
            assert team == "agents"
            batches += 1
            for old, new in zip(previous, encoded, strict=False):
                if old != new:
                    stub = orjson.loads(new)
                    assert stub["role"] == "tool" and STUB.match(stub["content"]), stub
        previous = encoded
    # A few batches, never one a turn (gpt-4o: cached reads at 50%, so a batch pays back quickly;
    # the built trace's 7 turns see 2 with the shipped window of 2 outputs).
    assert batches <= max(2, len(turns) // 3)


@pytest.mark.parametrize(
    "source", [BUILT, pytest.param("evaldata", marks=pytest.mark.evaldata(*evaldata.TRACES))]
)
def test_agents_policy_shrinks_tool_outputs_and_nothing_else(
    proxy: Any, upstream: Upstream, built_trace: Path, source: str
) -> None:
    saved = 0
    for trace in [built_trace] if source == BUILT else evaldata.TRACES:
        sent, forwarded = replay(proxy, upstream, trace, "agents")[-1]
        for original, out in zip(sent, forwarded, strict=True):
            selected = original["role"] in ("tool", "function") or (
                original["role"] == "user" and COUNT(original["content"]) >= 200
            )
            if not selected:  # system prompt, assistant turns and their tool calls
                assert orjson.dumps(out) == orjson.dumps(original)
                continue
            assert {k: v for k, v in out.items() if k != "content"} == {
                k: v for k, v in original.items() if k != "content"
            }
            before, after = COUNT(original["content"]), COUNT(out["content"])
            assert after <= before
            # tooloutput removes and marks: every line it keeps is a line of the original.
            lines = set(original["content"].splitlines())
            kept = [line for line in out["content"].splitlines() if not find_markers(line)]
            assert all(line in lines for line in kept)
            saved += before - after
    assert saved > 1000
