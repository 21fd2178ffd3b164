"""Anthropic Messages bodies as parts: what a rule can select, with roles, tool names and ages."""

from __future__ import annotations

from typing import Any

from proxy.apis import CHAT, MESSAGES, breakpoints, rewrite_body

MARK = {"type": "ephemeral", "ttl": "1h"}
BODY = {
    "model": "claude-sonnet-4-5",
    "tools": [{"name": "bash", "input_schema": {"type": "object"}, "cache_control": MARK}],
    "system": [{"type": "text", "text": "You are an agent.", "cache_control": MARK}],
    "messages": [
        {"role": "user", "content": "Fix the bug."},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Let me look.", "signature": "sig"},
                {"type": "tool_use", "id": "t1", "name": "bash", "input": {"cmd": "ls"}},
            ],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "a.py\nb.py"}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "t2", "name": "bash", "input": {"cmd": "cat"}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "t2",
                    "content": [{"type": "text", "text": "print(1)"}, {"type": "image", "source": {}}],
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        },
    ],
}


def test_parts_are_the_text_of_system_messages_and_tool_results_with_ages() -> None:
    parts = MESSAGES.parts(BODY)
    found = [(p.path, p.role, p.tool_name, p.age) for p in parts]
    assert found == [
        (("system", 0, "text"), "system", None, 2),
        (("messages", 0, "content"), "user", None, 2),
        (("messages", 2, "content", 0, "content"), "tool", "bash", 1),  # tool_use-only turns count
        (("messages", 4, "content", 0, "content", 0, "text"), "tool", "bash", 0),
    ]


def test_rewriting_a_part_keeps_every_marker_and_the_other_blocks() -> None:
    path = ("messages", 4, "content", 0, "content", 0, "text")
    new = rewrite_body(BODY, {path: "print()"})
    assert new["messages"][4]["content"][0]["content"][0]["text"] == "print()"
    assert [(b.path, b.ttl) for b in breakpoints(new)] == [(b.path, b.ttl) for b in breakpoints(BODY)]
    assert [(b.path, b.ttl) for b in breakpoints(BODY)] == [
        (("tools", 0), "1h"),
        (("system", 0), "1h"),
        (("messages", 4, "content", 0), "5m"),
    ]
    assert new["messages"][:4] == BODY["messages"][:4] and new["tools"] is BODY["tools"]
    assert [b.kind for b in MESSAGES.walk(BODY)] == [
        "tool",
        "text",
        "text",
        "thinking",
        "tool_use",
        "tool_result",
        "tool_use",
        "tool_result",
    ]


def _marked_body(marks: int, ttl: str | None = None) -> dict[str, Any]:
    control: dict[str, Any] = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    messages: list[dict[str, Any]] = []
    for i in range(6):
        result = {"type": "tool_result", "tool_use_id": f"t{i}", "content": f"output {i}"}
        messages += [
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": f"t{i}", "name": "bash", "input": {}}],
            },
            {"role": "user", "content": [result]},
        ]
    for k in range(marks):  # the newest results first, as a client marks them
        messages[-1 - 2 * k]["content"][0]["cache_control"] = control
    return {"model": "claude-sonnet-4-5", "system": "s", "messages": messages}


def test_a_breakpoint_is_added_on_a_content_block_before_the_last_with_its_ttl() -> None:
    body = _marked_body(1, ttl="1h")
    blocks = MESSAGES.walk(body)
    index = next(k for k, b in enumerate(blocks) if b.path == ("messages", 3, "content", 0))
    assert MESSAGES.breakpoint_at(blocks, index) == (
        ("messages", 3, "content", 0, "cache_control"),
        {"type": "ephemeral", "ttl": "1h"},
    )
    last = next(k for k, b in enumerate(blocks) if b.breakpoint is not None)
    assert MESSAGES.breakpoint_at(blocks, last) is None  # it has one
    assert MESSAGES.breakpoint_at(blocks, len(blocks) - 1) is None  # not before the last


def test_no_breakpoint_is_added_past_anthropics_four_or_without_one_to_follow() -> None:
    blocks = MESSAGES.walk(_marked_body(4))
    assert MESSAGES.breakpoint_at(blocks, 2) is None
    blocks = MESSAGES.walk(_marked_body(0))
    assert MESSAGES.breakpoint_at(blocks, 2) is None
    assert CHAT.breakpoint_at(CHAT.walk({"messages": [{"role": "user", "content": "x"}]}), 0) is None
