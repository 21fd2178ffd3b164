"""A recorded session (bench/sessions/<name>.json.gz) as the requests an agent sends, turn by turn.

Turn k (k = 0 .. steps) is the history up to and including the output of step k: turn 0 is the
system prompt and the task; the model's reply to turn k is step k+1's tool call (the reply to the
last turn is the session's final words). Both wire shapes carry the same text:

* OpenAI chat: ``system`` and ``user`` messages, the assistant's words with one ``tool_calls``
  function call per step, the output as a ``tool`` message; ``tools`` as function definitions.
* Anthropic Messages: ``system`` as a text block, ``tool_use`` blocks in assistant messages,
  ``tool_result`` blocks in user messages, ``tools`` with ``input_schema``; ``cache_control`` as
  Claude Code places it: on the system prompt, and on the last block of the last message, so
  the second breakpoint moves forward every turn.

    from bench.sessions.shapes import load, openai_turns, anthropic_turns
    session = load("starlette_cookie")
    bodies = openai_turns(session, "gpt-5")   # one request body per turn

    python -m bench.sessions.shapes starlette_cookie --api anthropic --turn 12 > body.json
"""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MARK = {"type": "ephemeral"}  # Claude Code's breakpoints: the default 5-minute TTL

Session = dict[str, Any]


def names() -> list[str]:
    return sorted(p.name.removesuffix(".json.gz") for p in HERE.glob("*.json.gz"))


def load(name: str | Path) -> Session:
    """A session by name (``starlette_cookie``) or path."""
    path = Path(name) if isinstance(name, Path) or "/" in str(name) else HERE / f"{name}.json.gz"
    data: Session = json.loads(gzip.decompress(path.read_bytes()))
    return data


def call_id(n: int) -> str:
    return f"call_{n:03d}"


def openai_messages(session: Session) -> list[dict[str, Any]]:
    """The whole conversation in chat shape, the final assistant reply included."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": session["system"]},
        {"role": "user", "content": session["task"]},
    ]
    for step in session["steps"]:
        call = {
            "id": call_id(step["n"]),
            "type": "function",
            "function": {"name": step["tool"], "arguments": json.dumps(step["args"])},
        }
        messages.append({"role": "assistant", "content": step["say"], "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": step["output"]})
    messages.append({"role": "assistant", "content": session["final"]})
    return messages


def openai_tools(session: Session) -> list[dict[str, Any]]:
    return [{"type": "function", "function": tool} for tool in session["tools"]]


def openai_turns(session: Session, model: str) -> list[dict[str, Any]]:
    """One ``/v1/chat/completions`` body per turn (each its own copy)."""
    messages = openai_messages(session)
    tools = openai_tools(session)
    ends = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    return [
        {"model": model, "messages": copy.deepcopy(messages[:end]), "tools": copy.deepcopy(tools)}
        for end in ends
    ]


def anthropic_messages(session: Session) -> list[dict[str, Any]]:
    """The whole conversation in Messages shape (no breakpoints), the final reply included."""
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": [{"type": "text", "text": session["task"]}]}
    ]
    for step in session["steps"]:
        use = {"type": "tool_use", "id": call_id(step["n"]), "name": step["tool"], "input": step["args"]}
        messages.append({"role": "assistant", "content": [{"type": "text", "text": step["say"]}, use]})
        result = {"type": "tool_result", "tool_use_id": use["id"], "content": step["output"]}
        if step["exit_code"]:
            result["is_error"] = True
        messages.append({"role": "user", "content": [result]})
    messages.append({"role": "assistant", "content": [{"type": "text", "text": session["final"]}]})
    return messages


def anthropic_tools(session: Session) -> list[dict[str, Any]]:
    return [
        {"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}
        for t in session["tools"]
    ]


def anthropic_turns(session: Session, model: str, *, max_tokens: int = 8192) -> list[dict[str, Any]]:
    """One ``/v1/messages`` body per turn, breakpoints placed as Claude Code places them."""
    messages = anthropic_messages(session)
    tools = anthropic_tools(session)
    bodies = []
    for end in [k for k, m in enumerate(messages) if m["role"] == "assistant"]:
        history = copy.deepcopy(messages[:end])
        history[-1]["content"][-1]["cache_control"] = dict(MARK)
        bodies.append(
            {
                "model": model,
                "max_tokens": max_tokens,
                "system": [{"type": "text", "text": session["system"], "cache_control": dict(MARK)}],
                "messages": history,
                "tools": copy.deepcopy(tools),
            }
        )
    return bodies


def newest_output(body: dict[str, Any]) -> str | None:
    """The newest tool output of a request body in either shape (None at turn 0)."""
    last = body["messages"][-1]
    if last.get("role") == "tool":
        content = last.get("content")
        if isinstance(content, list):  # chat content parts
            return "".join(p.get("text", "") for p in content if isinstance(p, dict))
        return content if isinstance(content, str) else None
    blocks = last.get("content")
    if last.get("role") != "user" or not isinstance(blocks, list):
        return None
    for block in reversed(blocks):
        if isinstance(block, dict) and block.get("type") == "tool_result":
            content = block.get("content")
            if isinstance(content, list):
                return "".join(b.get("text", "") for b in content if isinstance(b, dict))
            return content if isinstance(content, str) else ""
    return None


def main() -> None:
    """``python -m bench.sessions.shapes NAME [--api anthropic] [--turn K]``: one request body as JSON."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("name", choices=names())
    parser.add_argument("--api", choices=("openai", "anthropic"), default="openai")
    parser.add_argument("--model", help="default: gpt-5 / claude-sonnet-4-5")
    parser.add_argument("--turn", type=int, default=-1, help="0 .. steps; default: the last")
    args = parser.parse_args()
    session = load(args.name)
    if args.api == "openai":
        bodies = openai_turns(session, args.model or "gpt-5")
    else:
        bodies = anthropic_turns(session, args.model or "claude-sonnet-4-5")
    json.dump(bodies[args.turn], sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
