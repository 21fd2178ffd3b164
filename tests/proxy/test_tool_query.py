"""The query of a tool output: the task, the assistant's words, the call, what recent outputs pointed at.

Driven through the shipped ``agents`` policy file and the public engine on the three APIs that carry
tool outputs (chat ``tool``, Responses ``function_call_output``, Messages ``tool_result``), with a real
file read (bench/cases/tooloutput: ``cat -n httpx/_client.py``, 21,000 tokens).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest

from proxy.apis import CHAT, MESSAGES, RESPONSES, Part
from proxy.exchange import Exchange
from proxy.policy.engine import PolicyRewriter
from proxy.policy.model import PolicySet, QuerySpec, load_policy
from proxy.policy.query import plan_query, pointers_of, tool_query

ROOT = Path(__file__).resolve().parents[2]
READ = (ROOT / "bench/cases/tooloutput/httpx_client_cat_n.txt").read_text()
TASK = "Client.send hangs on a redirect loop, fix it."
WORDS = "The redirect test fails; let me read the client."
# A small earlier output (under 200 tokens: forwarded as it came) pointing at line 1014.
RUN = (
    "....F.\n"
    "FAILED tests/client/test_redirects.py::test_too_many_redirects - httpx.TooManyRedirects\n"
    "httpx/_client.py:1014: TooManyRedirects\n"
    "1 failed, 5 passed in 0.31s"
)
LINE = "  1014\t            response = transport.handle_request(request)"
READ_ARGS = {"path": "httpx/_client.py"}


def chat_body(run: bool = True) -> dict[str, Any]:
    def call(i: str, name: str, args: dict[str, Any], words: str | None) -> dict[str, Any]:
        fn = {"name": name, "arguments": json.dumps(args)}
        return {
            "role": "assistant",
            "content": words,
            "tool_calls": [{"id": i, "type": "function", "function": fn}],
        }

    first = [
        call("c1", "bash", {"command": "pytest -q"}, None),
        {"role": "tool", "tool_call_id": "c1", "content": RUN},
    ]
    return {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You are a coding agent."},
            {"role": "user", "content": TASK},
            *(first if run else []),
            call("c2", "read_file", READ_ARGS, WORDS),
            {"role": "tool", "tool_call_id": "c2", "content": READ},
        ],
    }


def responses_body() -> dict[str, Any]:
    def call(i: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
        return {"type": "function_call", "call_id": i, "name": name, "arguments": json.dumps(args)}

    return {
        "model": "gpt-4o",
        "input": [
            {"role": "user", "content": TASK},
            call("c1", "bash", {"command": "pytest -q"}),
            {"type": "function_call_output", "call_id": "c1", "output": RUN},
            {"role": "assistant", "content": WORDS},
            call("c2", "read_file", READ_ARGS),
            {"type": "function_call_output", "call_id": "c2", "output": READ},
        ],
    }


def messages_body() -> dict[str, Any]:
    def call(i: str, name: str, args: dict[str, Any], *words: str) -> dict[str, Any]:
        text = [{"type": "text", "text": w} for w in words]
        return {
            "role": "assistant",
            "content": [*text, {"type": "tool_use", "id": i, "name": name, "input": args}],
        }

    def result(i: str, text: str) -> dict[str, Any]:
        return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": i, "content": text}]}

    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": "You are a coding agent.",
        "messages": [
            {"role": "user", "content": TASK},
            call("t1", "Bash", {"command": "pytest -q"}),
            result("t1", RUN),
            call("t2", "Read", {"file_path": "httpx/_client.py"}, WORDS),
            result("t2", READ),
        ],
    }


def agents(tmp_path: Path) -> PolicySet:
    policy, _ = load_policy(ROOT / "policies/agents.yaml")
    # The latency budget is measured elsewhere (bench/tooloutput_proxy.py); here a cold worker
    # pool must not make the first request fail open.
    policy = dataclasses.replace(policy, latency_budget_ms=60_000)
    return PolicySet(policies={policy.name: policy}, team_policy={"t": policy.name})


def exchange(route: str) -> Exchange:
    api = "anthropic" if route == "/v1/messages" else "openai"
    return Exchange("r", "POST", route, "t", None, "u", time.time(), True, api=api)


def last(parts: list[Part]) -> Part:
    return parts[-1]


@pytest.mark.parametrize(
    ("dialect", "body", "call"),
    [
        (CHAT, chat_body(), 'read_file {"path": "httpx/_client.py"}'),
        (RESPONSES, responses_body(), 'read_file {"path": "httpx/_client.py"}'),
        (MESSAGES, messages_body(), 'Read {"file_path":"httpx/_client.py"}'),
    ],
    ids=["chat", "responses", "messages"],
)
def test_the_query_of_a_tool_output_on_each_api(dialect: Any, body: dict[str, Any], call: str) -> None:
    parts = dialect.parts(body)
    query = plan_query(QuerySpec(), parts, last(parts)).query
    assert query == (
        f"Task: {TASK}\nAssistant: {WORDS}\nCall: {call}\nRecent:\n"
        "FAILED tests/client/test_redirects.py::test_too_many_redirects - httpx.TooManyRedirects\n"
        "httpx/_client.py:1014: TooManyRedirects"
    )


def test_the_query_reads_only_what_came_before_and_stays_bounded() -> None:
    body = chat_body()
    huge = "E   " + "AssertionError: x\n" * 5000
    body["messages"][1]["content"] = TASK * 400
    body["messages"][3]["content"] = huge + RUN
    parts = CHAT.parts(body)
    query = tool_query(parts, last(parts)) or ""
    assert len(query) < 3000 and "FAILED tests/client/test_redirects.py" in query
    # A later turn (the next user message, another output) leaves an earlier output's query as it was.
    later = chat_body()
    later["messages"] += [{"role": "user", "content": "Now also fix the async client."}]
    before, after = CHAT.parts(chat_body()), CHAT.parts(later)
    assert tool_query(after, after[-2]) == tool_query(before, before[-1])


def test_the_first_output_has_the_task_and_call_and_no_recent_pointers() -> None:
    parts = CHAT.parts(chat_body(run=False))
    assert (
        tool_query(parts, last(parts))
        == f'Task: {TASK}\nAssistant: {WORDS}\nCall: read_file {{"path": "httpx/_client.py"}}'
    )


def test_an_observation_sent_as_a_user_message_takes_the_first_user_message_as_its_task() -> None:
    body = {
        "messages": [
            {"role": "user", "content": TASK},
            {"role": "assistant", "content": "```\npytest -q\n```"},
            {"role": "user", "content": RUN},
            {"role": "assistant", "content": "```\ncat -n httpx/_client.py\n```"},
            {"role": "user", "content": READ},
        ]
    }
    parts = CHAT.parts(body)
    shaped = plan_query(QuerySpec(), parts, last(parts), shaped=True).query or ""
    assert shaped.startswith(f"Task: {TASK}\nAssistant: ```\ncat -n httpx/_client.py\n```")
    assert "httpx/_client.py:1014: TooManyRedirects" in shaped
    # A rule that does not read shapes keeps the question-aware plan of the last user message.
    assert plan_query(QuerySpec(), parts, last(parts)).query != shaped


@pytest.mark.parametrize(
    ("route", "body", "path"),
    [
        ("/v1/chat/completions", chat_body(), ("messages", 5, "content")),
        ("/v1/responses", responses_body(), ("input", 5, "output")),
        ("/v1/messages", messages_body(), ("messages", 4, "content", 0, "content")),
    ],
    ids=["chat", "responses", "messages"],
)
async def test_the_agents_policy_keeps_the_line_an_earlier_failure_points_at(
    tmp_path: Path, route: str, body: dict[str, Any], path: tuple[Any, ...]
) -> None:
    rewriter = PolicyRewriter(agents(tmp_path), memo_bytes=1 << 24, workers=1)
    try:
        done = await rewriter(exchange(route), body, {})
        assert done.body is not None and done.fail_open is None
        node: Any = done.body
        for key in path:
            node = node[key]
        forwarded = str(node)
        assert len(forwarded) < len(READ) // 5 and LINE in forwarded.splitlines()
        assert "omitted; lines=" in forwarded
        # The small earlier run (under 200 tokens) goes as it came.
        assert json.dumps(done.body).count("1 failed, 5 passed in 0.31s") == 1
    finally:
        rewriter.close()


async def test_without_the_earlier_failure_the_line_is_not_kept(tmp_path: Path) -> None:
    rewriter = PolicyRewriter(agents(tmp_path), memo_bytes=1 << 24, workers=1)
    try:
        done = await rewriter(exchange("/v1/chat/completions"), chat_body(run=False), {})
        assert done.body is not None
        assert LINE not in done.body["messages"][3]["content"].splitlines()
    finally:
        rewriter.close()


def test_pointers_are_failures_then_errors_then_locations_and_not_addresses_or_source() -> None:
    text = "\n".join(
        [
            '2026-12-07 07:23:17,029 INFO    uvicorn.access: 127.0.0.1:49522 - "POST /login HTTP/1.1" 500',
            "   284\tclass MalformedRangeHeader(Exception):",
            "    except OSError:",
            "starlette/responses.py:107: in set_cookie",
            "E   http.cookies.CookieError: Invalid attribute 'max_age'",
            "tests/test_responses.py::test_set_cookie[asyncio] FAILED                 [ 56%]",
        ]
    )
    assert pointers_of(text) == (
        "tests/test_responses.py::test_set_cookie[asyncio] FAILED                 [ 56%]",
        "E   http.cookies.CookieError: Invalid attribute 'max_age'",
        "starlette/responses.py:107: in set_cookie",
    )
