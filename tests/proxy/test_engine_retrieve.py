"""The engine's retrieve hook: a policy with ``retrieve: true`` gives each new part an id, its
markers carry ``hash=<id>``, and the original is kept where any replica can expand it.

Driven through :class:`PolicyRewriter` with real worker processes and a real sqlite store.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from proxy.apis import dialect_for
from proxy.exchange import Exchange, Rewrite
from proxy.policy.engine import PolicyRewriter
from proxy.policy.model import PolicySet, load_policy
from proxy.policy.originals import Originals
from proxy.server.expand import offer
from proxy.store.sqlite import SqliteStore

POLICY = """\
name: agents
min_saving_tokens: 0
latency_budget_ms: 60000
retrieve: {retrieve}
rules:
  - name: tool-output
    match: {{roles: [tool]}}
    compressor: truncate
    max_tokens: 200
    options: {{mode: middle, unit: line}}
"""

LOG = "\n".join(
    [f"tests/test_app.py::test_case_{i} PASSED" for i in range(1, 400)]
    + ["tests/test_app.py::test_login FAILED - AssertionError: 401 != 200"]
    + [f"tests/test_db.py::test_row_{i} PASSED" for i in range(1, 400)]
)


def policy_set(tmp_path: Path, retrieve: bool) -> PolicySet:
    path = tmp_path / "agents.yaml"
    path.write_text(POLICY.format(retrieve=str(retrieve).lower()), encoding="utf-8")
    policy, _ = load_policy(path)
    return PolicySet(policies={policy.name: policy}, team_policy={"t": policy.name, "u": policy.name})


def exchange(team: str = "t") -> Exchange:
    return Exchange("r", "POST", "/v1/chat/completions", team, None, "u", time.time(), True)


def body(output: str = LOG) -> dict[str, Any]:
    call = {"id": "c1", "type": "function", "function": {"name": "pytest", "arguments": "{}"}}
    return {
        "model": "gpt-4o",
        "messages": [
            {"role": "user", "content": "fix the failing test"},
            {"role": "assistant", "content": None, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "c1", "content": output},
        ],
    }


TOOLS = [{"type": "function", "function": {"name": "pytest", "parameters": {"type": "object"}}}]


def offered(result: Rewrite, sent: dict[str, Any]) -> list[str]:
    """The tools' names of the request the server forwards."""
    offer(result, dialect_for("/v1/chat/completions", "openai"), sent)
    return [t["function"]["name"] for t in (result.body or sent)["tools"]]


async def test_a_retrieve_policy_marks_its_omissions_and_keeps_the_original(tmp_path: Path) -> None:
    pytest.importorskip("compressors.markers", reason="markers with hash= come with helper tooloutput")
    store = SqliteStore(tmp_path / "memo.sqlite", max_bytes=1 << 26)
    one, two = Originals(store), Originals(store)  # two replicas' views of one store
    rewriter = PolicyRewriter(policy_set(tmp_path, True), memo_bytes=1 << 24, workers=1, originals=one)
    try:
        result = await rewriter(exchange(), body(), {})
        assert result.retrieve and result.body is not None
        forwarded = result.body["messages"][2]["content"]
        refs = set(re.findall(r"hash=([0-9a-f]{24})", forwarded))
        assert len(refs) == 1, forwarded[-400:]
        (ref,) = refs
        assert ref == (await one.ids("t", [LOG]))[0]
        got = await two.expand("t", ref, query="FAILED")
        assert got.status == "ok" and "400: tests/test_app.py::test_login FAILED" in got.text
        assert (await two.expand("u", ref)).status == "unknown"  # another team's id
        again = await rewriter(exchange(), body(), {})  # the memo's form, the same id
        assert again.body is not None and again.body["messages"][2]["content"] == forwarded
        # tersegate_expand is offered only once something can be got back (its definition is billed
        # every turn); the marker stays in every later turn, and so does the tool.
        short = {**body("1 passed in 0.02s"), "tools": TOOLS}
        assert offered(await rewriter(exchange(), short, {}), short) == ["pytest"]
        later = {**body(), "tools": TOOLS}
        later["messages"] = [*later["messages"], {"role": "user", "content": "and now?"}]
        assert offered(await rewriter(exchange(), later, {}), later) == ["pytest", "tersegate_expand"]
    finally:
        rewriter.close()
        await store.aclose()


async def test_without_retrieve_nothing_is_kept_and_no_tool_is_offered(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "memo.sqlite", max_bytes=1 << 26)
    originals = Originals(store)
    rewriter = PolicyRewriter(policy_set(tmp_path, False), memo_bytes=1 << 24, workers=1, originals=originals)
    try:
        result = await rewriter(exchange(), body(), {})
        assert not result.retrieve and result.body is not None
        assert "hash=" not in result.body["messages"][2]["content"]
        assert await store.size_bytes() == 0  # not even the secret was written
    finally:
        rewriter.close()
        await store.aclose()


async def test_a_retrieve_policy_in_shadow_mode_changes_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "memo.sqlite", max_bytes=1 << 26)
    policies = policy_set(tmp_path, True)
    shadow = {name: p.__class__(**{**{f: getattr(p, f) for f in p.__slots__}, "mode": "shadow"})
              for name, p in policies.policies.items()}  # fmt: skip
    rewriter = PolicyRewriter(
        PolicySet(policies=shadow, team_policy=policies.team_policy),
        memo_bytes=1 << 24,
        workers=1,
        originals=Originals(store),
    )
    try:
        result = await rewriter(exchange(), body(), {})
        assert not result.retrieve and result.body is None
        assert await store.size_bytes() == 0
    finally:
        rewriter.close()
        await store.aclose()
