"""A scripted coding model on loopback, for driving the real Claude Code and Codex CLI binaries.

It behaves like a coding model for one task: on the first turn of the agent's conversation it asks
the client to run :attr:`Script.command` with its shell tool; once the client sends that tool's
output back, it answers with text quoting the line of the output that :attr:`Script.fact` matches
(``ANSWER_PREFIX`` + the line), so a test can check the client's final output carries a fact
that only the tool output held. With :attr:`Script.expand_query` and the proxy's ``tersegate_expand``
offered, it first calls that tool for the output's marker id and quotes the returned line holding
the query instead (the proxy answers the call; the client never sees it). A request that is neither
(Claude Code's session-title call, warm-ups without tools) gets a short text answer.

APIs (each the way the client calls it, streamed or not as asked):

- Anthropic Messages: ``POST /v1/messages`` (the shell tool is ``Bash``, a ``tool_use`` block),
  ``POST /v1/messages/count_tokens``.
- OpenAI Responses: ``POST /v1/responses`` (the shell tool is the ``function`` tool Codex CLI
  calls ``exec_command``, older versions ``shell``: a ``function_call`` item), ``GET /v1/models``.

Every request is recorded (:class:`fake_upstream.Recorded`) in ``requests``; other routes are
answered as :class:`fake_upstream.FakeUpstream` answers them.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import fake_anthropic
import orjson
from fake_upstream import FakeUpstream, _Call, _json

from compressors.markers import find_markers
from proxy.server.asgi import Receive, Send

ANSWER_PREFIX = "The tool output says: "
NO_FACT = "The tool output did not contain what I looked for."
SSE = b"text/event-stream; charset=utf-8"
SIDE_REPLY = "Fix failing test"  # what a request without the shell tool gets (titles, topics)
SHELL_NAMES = ("Bash", "exec_command", "shell")
EXPAND_TOOL = "tersegate_expand"  # the proxy's own tool (docs/retrieve.md): the client never sees it


@dataclass(frozen=True)
class Script:
    """The task: the command the model asks for, and the pattern of the line it then quotes."""

    command: str
    fact: re.Pattern[str]
    workdir: str = ""  # Codex's shell tool takes a working directory
    # With the proxy's tersegate_expand offered: ask it for the omitted lines holding this, then quote
    # the one it returns instead of the fact (docs/retrieve.md: the answer is "<line number>: <line>").
    expand_query: str | None = None

    def answer(self, output: str) -> str:
        for line in output.splitlines():
            if self.fact.search(line):
                return ANSWER_PREFIX + line.strip()
        return NO_FACT

    def answer_expanded(self, expanded: str) -> str:
        for line in expanded.splitlines():
            if self.expand_query and self.expand_query in line:
                return ANSWER_PREFIX + re.sub(r"^\d+: ", "", line).strip()
        return NO_FACT


@dataclass
class _Turn:
    """What one request asks of the model: run the tool (``tool`` names it), answer, or chat."""

    tool: str | None = None
    tool_output: str | None = None
    output_of: str | None = None  # the name of the tool whose output came back
    offered: tuple[str, ...] = ()  # the tools' names


def _text_of(content: Any) -> str:
    """The text of a tool result's content: a string, or text blocks / output items."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            _text_of(b.get("text", b.get("content", ""))) for b in content if isinstance(b, dict)
        )
    return ""


def _anthropic_turn(body: Mapping[str, Any]) -> _Turn:
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    names = tuple(str(t.get("name")) for t in body.get("tools") or [] if isinstance(t, dict))
    content = messages[-1].get("content") if messages else None
    if isinstance(content, list):
        results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        if results:
            calls = {
                b.get("id"): b.get("name")
                for m in messages
                if isinstance(m.get("content"), list)
                for b in m["content"]
                if isinstance(b, dict) and b.get("type") == "tool_use"
            }
            output = _text_of(results[-1].get("content"))
            return _Turn(
                tool_output=output, output_of=calls.get(results[-1].get("tool_use_id")), offered=names
            )
    return _Turn(tool="Bash" if "Bash" in names else None, offered=names)


def _openai_tool_name(tools: Any) -> str | None:
    """The shell tool among Responses tools, the first listed."""
    for tool in tools if isinstance(tools, list) else []:
        name = tool.get("name") if isinstance(tool, dict) else None
        if name in SHELL_NAMES:
            return str(name)
    return None


def _responses_turn(body: Mapping[str, Any]) -> _Turn:
    items = body.get("input")
    items = items if isinstance(items, list) else []
    if items and isinstance(items[-1], dict) and items[-1].get("type") == "function_call_output":
        return _Turn(tool_output=_text_of(items[-1].get("output")))
    return _Turn(tool=_openai_tool_name(body.get("tools")))


def _shell_arguments(script: Script, tool: str) -> dict[str, Any]:
    """The arguments each client's shell tool takes (from the tool schemas they send)."""
    if tool == "Bash":
        return {"command": script.command, "description": "Run the test suite"}
    if tool == "exec_command":  # Codex's unified exec: wait for the command, plain pipes, no login shell
        args = {"cmd": script.command, "yield_time_ms": 120_000, "max_output_tokens": 40_000, "tty": False}
        return {**args, "login": False, **({"workdir": script.workdir} if script.workdir else {})}
    args: dict[str, Any] = {"command": ["bash", "-lc", script.command]}
    if script.workdir:
        args["workdir"] = script.workdir
    return args


def side_reply(body: Mapping[str, Any]) -> str:
    """:data:`SIDE_REPLY`, as JSON where the request asks for a JSON schema's object (Claude Code's
    session title call: ``output_config.format`` = ``{"type": "json_schema", ...}`` with a ``title``)."""
    output_format = (body.get("output_config") or {}).get("format") or {}
    if output_format.get("type") != "json_schema":
        return SIDE_REPLY
    properties = (output_format.get("schema") or {}).get("properties") or {}
    return orjson.dumps({name: SIDE_REPLY for name in properties}).decode()


def _sse(name: str | None, payload: Any) -> bytes:
    head = b"event: " + name.encode() + b"\n" if name else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


# --- Anthropic Messages -------------------------------------------------------------------------


def _expand_call(turn: _Turn, script: Script) -> dict[str, Any] | None:
    """A ``tersegate_expand`` call for the shell output's first marker id, when the script wants
    one, the proxy offers the tool and the output has an id; else None."""
    if script.expand_query is None or EXPAND_TOOL not in turn.offered or turn.output_of == EXPAND_TOOL:
        return None
    refs = [marker.ref for _, _, marker in find_markers(turn.tool_output or "") if marker.ref]
    if not refs:
        return None
    arguments = {"hash": refs[0], "query": script.expand_query}
    return {
        "type": "tool_use",
        "id": "toolu_" + os.urandom(12).hex(),
        "name": EXPAND_TOOL,
        "input": arguments,
    }


def anthropic_message(body: Mapping[str, Any], script: Script) -> dict[str, Any]:
    turn = _anthropic_turn(body)
    content: list[dict[str, Any]]
    expand = _expand_call(turn, script)
    if expand is not None:
        content, stop = [{"type": "text", "text": "Let me see the omitted lines."}, expand], "tool_use"
    elif turn.output_of == EXPAND_TOOL:
        content, stop = [{"type": "text", "text": script.answer_expanded(turn.tool_output or "")}], "end_turn"
    elif turn.tool_output is not None:
        content, stop = [{"type": "text", "text": script.answer(turn.tool_output)}], "end_turn"
    elif turn.tool is not None:
        arguments = _shell_arguments(script, turn.tool)
        call = {
            "type": "tool_use",
            "id": "toolu_" + os.urandom(12).hex(),
            "name": turn.tool,
            "input": arguments,
        }
        content, stop = [{"type": "text", "text": "I will run the tests first."}, call], "tool_use"
    else:
        content, stop = [{"type": "text", "text": side_reply(body)}], "end_turn"
    # The fake upstream's message (id, model, usage) with this script's content.
    return {**fake_anthropic.message(body, {}), "content": content, "stop_reason": stop}


def anthropic_frames(message: dict[str, Any]) -> Iterator[bytes]:
    """``message`` as Anthropic's SSE events (tool input sent as two ``input_json_delta`` pieces)."""
    start = {**message, "content": [], "stop_reason": None, "usage": {**message["usage"], "output_tokens": 1}}
    yield _sse("message_start", {"type": "message_start", "message": start})
    for index, block in enumerate(message["content"]):
        empty = {**block, "text": ""} if block["type"] == "text" else {**block, "input": {}}
        yield _sse(
            "content_block_start", {"type": "content_block_start", "index": index, "content_block": empty}
        )
        if block["type"] == "text":
            delta: dict[str, Any] = {"type": "text_delta", "text": block["text"]}
            yield _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        else:
            whole = orjson.dumps(block["input"]).decode()
            for piece in (whole[: len(whole) // 2], whole[len(whole) // 2 :]):
                delta = {"type": "input_json_delta", "partial_json": piece}
                yield _sse(
                    "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
                )
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
    end = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    usage = {"output_tokens": message["usage"]["output_tokens"]}
    yield _sse("message_delta", {"type": "message_delta", "delta": end, "usage": usage})
    yield _sse("message_stop", {"type": "message_stop"})


# --- OpenAI Responses ---------------------------------------------------------------------------


def _response_items(body: Mapping[str, Any], script: Script) -> list[dict[str, Any]]:
    turn = _responses_turn(body)
    suffix = os.urandom(12).hex()
    if turn.tool is not None and turn.tool_output is None:
        arguments = _shell_arguments(script, turn.tool)
        return [
            {
                "type": "function_call",
                "id": "fc_" + suffix,
                "call_id": "call_" + suffix,
                "name": turn.tool,
                "arguments": orjson.dumps(arguments).decode(),
                "status": "completed",
            }
        ]
    text = script.answer(turn.tool_output) if turn.tool_output is not None else SIDE_REPLY
    return [
        {
            "type": "message",
            "id": "msg_" + suffix,
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        }
    ]


def response_object(body: Mapping[str, Any], script: Script) -> dict[str, Any]:
    prompt = len(orjson.dumps(body)) // 4
    return {
        "id": "resp_" + os.urandom(12).hex(),
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed",
        "model": body.get("model"),
        "output": _response_items(body, script),
        "usage": {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 20,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + 20,
        },
    }


def response_frames(whole: dict[str, Any]) -> Iterator[bytes]:
    """``whole`` as Responses stream events: created, each item added/done (text as one delta), completed."""
    seq = iter(range(1, 10_000))
    created = {**whole, "status": "in_progress", "output": [], "usage": None}
    yield _sse("response.created", {"type": "response.created", "response": created, "sequence_number": 0})
    for index, item in enumerate(whole["output"]):
        opened = {**item, "status": "in_progress"}
        if item["type"] == "message":
            opened["content"] = []
        yield _sse(
            "response.output_item.added",
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": opened,
                "sequence_number": next(seq),
            },
        )
        if item["type"] == "message":
            text = item["content"][0]["text"]
            delta = {"type": "response.output_text.delta", "item_id": item["id"], "output_index": index,
                     "content_index": 0, "delta": text, "sequence_number": next(seq)}  # fmt: skip
            yield _sse("response.output_text.delta", delta)
        yield _sse(
            "response.output_item.done",
            {
                "type": "response.output_item.done",
                "output_index": index,
                "item": item,
                "sequence_number": next(seq),
            },
        )
    yield _sse(
        "response.completed", {"type": "response.completed", "response": whole, "sequence_number": next(seq)}
    )


# --- the app ------------------------------------------------------------------------------------


class FakeModel(FakeUpstream):
    """The fake upstream (recording, streaming, every other route) with :attr:`script`'s answers on
    ``/v1/messages``, ``/v1/messages/count_tokens`` and ``/v1/responses``."""

    def __init__(self, script: Script) -> None:
        super().__init__()
        self.script = script

    async def _route(self, call: _Call, receive: Receive, send: Send) -> None:
        route = (call.scope["method"], call.scope["path"])
        stream = call.parsed.get("stream") is True
        if route == ("POST", "/v1/messages"):
            message = anthropic_message(call.parsed, self.script)
            if not stream:
                await _json(send, call, 200, message)
                return
            head = fake_anthropic.headers(call.request_id, SSE)
            await self._stream(call, receive, send, list(anthropic_frames(message)), head)
        elif route == ("POST", "/v1/messages/count_tokens"):
            await _json(send, call, 200, {"input_tokens": fake_anthropic.prompt_tokens(call.parsed)})
        elif route == ("POST", "/v1/responses"):
            whole = response_object(call.parsed, self.script)
            if stream:
                await self._stream(call, receive, send, list(response_frames(whole)))
            else:
                await _json(send, call, 200, whole)
        else:
            await super()._route(call, receive, send)
