"""Claude Code, headless, through ``tersegate serve`` to a scripted model (docs/clients.md).

``claude -p`` asks the model; the model asks for ``Bash`` running the test suite of a real checkout
with a bug; Claude Code runs it and sends the ~15k-character output back as a ``tool_result``; the
agents policy compresses it on the way; the model quotes the FAILED line it received, and Claude Code
prints that answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import agentrun
import orjson
import pytest
import yaml
from agentrun import API_KEY, TEAM
from fake_model import ANSWER_PREFIX, EXPAND_TOOL
from harness import MakeProxy

PROMPT = "Run the test suite and tell me which test fails."


def claude_command(proxy_url: str, home: Path) -> tuple[list[str], dict[str, str]]:
    env = agentrun.client_env(
        home,
        ANTHROPIC_BASE_URL=proxy_url,
        ANTHROPIC_API_KEY=API_KEY,
        ANTHROPIC_CUSTOM_HEADERS=f"X-Tersegate-Team: {TEAM}",
        # No traffic but the model's: no telemetry, error reports or update checks. Not
        # CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: it also drops the session-title call, a side
        # request (no tools, a JSON schema answer) that should pass the proxy too.
        DISABLE_TELEMETRY="1",
        DISABLE_ERROR_REPORTING="1",
        DISABLE_AUTOUPDATER="1",
        # Claude Code cuts a Bash output past ~10k characters itself; let the whole output through.
        BASH_MAX_OUTPUT_LENGTH="200000",
    )
    # --dangerously-skip-permissions is refused under root; allowing Bash is all the task needs.
    claude = agentrun.client_or_skip("claude")
    return [claude, "-p", PROMPT, "--output-format", "json", "--allowedTools", "Bash"], env


def tool_result(body: dict[str, Any]) -> tuple[str, str] | None:
    """(the tool's name, the text) of the newest message's tool_result, if it has one."""
    calls = {b["id"]: b["name"] for m in body["messages"] if isinstance(m["content"], list)
             for b in m["content"] if b.get("type") == "tool_use"}  # fmt: skip
    content = body["messages"][-1]["content"]
    for block in content if isinstance(content, list) else []:
        if block.get("type") == "tool_result":
            inner = block["content"]
            text = inner if isinstance(inner, str) else "\n".join(b.get("text", "") for b in inner)
            return calls.get(block["tool_use_id"], "?"), text
    return None


def tool_result_text(body: dict[str, Any]) -> str | None:
    found = tool_result(body)
    return found[1] if found is not None else None


@pytest.mark.slow
def test_claude_code_runs_a_tool_through_the_agents_policy(tmp_path: Path, spawn_proxy: MakeProxy) -> None:
    task = agentrun.run_task(tmp_path, spawn_proxy, "claude", claude_command)
    run, fact = task.run, task.fact

    # What the user sees: exit 0 and the model's answer, quoting the FAILED line it was sent.
    assert run.returncode == 0, run.describe()
    result = orjson.loads(run.stdout)
    assert result["is_error"] is False and result["result"] == ANSWER_PREFIX + fact, run.describe()

    # The model got the tool output compressed by the agents policy, with the client's own key.
    messages = [r for r in run.requests if r.method == "POST" and r.path == "/v1/messages"]
    outputs = [t for t in (tool_result_text(r.json()) for r in messages) if t is not None]
    assert len(outputs) == 1, [(r.method, r.path) for r in run.requests]
    assert any(not r.json().get("tools") for r in messages)  # the title call went through too
    agentrun.check_forwarded(outputs[0], task.original, fact)
    assert all(r.headers.get("x-api-key") == API_KEY for r in messages)
    agentrun.check_audit(run, "/v1/messages", len(messages))


@pytest.mark.slow
def test_claude_code_gets_an_omitted_line_through_tersegate_expand(
    tmp_path: Path, spawn_proxy: MakeProxy
) -> None:
    """The model needs a line the policy left out: it calls the proxy's tersegate_expand with the
    marker's id, the proxy answers from its store and continues; Claude Code sees only the answer."""
    policy = yaml.safe_load((agentrun.ROOT / "policies" / "agents.yaml").read_text(encoding="utf-8"))
    if policy.get("retrieve") is not True:
        pytest.skip("the shipped agents policy has no `retrieve: true`: the proxy offers no tersegate_expand")
    query = "test_lexicographical_topological_sort"
    task = agentrun.run_task(tmp_path, spawn_proxy, "claude", claude_command, expand_query=query)
    run = task.run
    wanted = next(line for line in task.original.splitlines() if query in line)

    assert run.returncode == 0, run.describe()
    result = orjson.loads(run.stdout)
    assert result["result"] == ANSWER_PREFIX + wanted.strip(), run.describe()
    assert result["num_turns"] == 2  # its Bash call and the answer: the expansion never reached it

    messages = [r for r in run.requests if r.method == "POST" and r.path == "/v1/messages"]
    results = [found for found in (tool_result(r.json()) for r in messages) if found is not None]
    shell = [text for name, text in results if name == "Bash"]
    expanded = [text for name, text in results if name == EXPAND_TOOL]
    assert wanted not in shell[0] and len(expanded) == 1 and query in expanded[0], results
    # One record per request Claude Code made (the proxy's follow-up is part of its request's record).
    agentrun.check_audit(run, "/v1/messages", len(messages) - len(expanded))
