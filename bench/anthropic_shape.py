"""SWE-agent traces in Anthropic Messages shape, and Anthropic's prompt-cache bill.

:func:`turns` turns a trace into the requests a Claude Code-like client sends, turn by turn
(turn k = the history up to the k-th assistant reply): the system prompt as a text block with a
1-hour ``cache_control``, assistant tool calls as ``tool_use`` blocks, tool outputs as
``tool_result`` blocks in a user message, consecutive same-role messages merged, and a 5-minute
``cache_control`` on the last block of the newest user message (Claude Code moves it forward
every turn).

:class:`CacheBill` prices a sequence of forwarded requests with Anthropic's rules: the cache
holds the prefixes (tools, system, messages, in that order) that ended at a breakpoint of an
earlier request; a request reads the longest such prefix it starts with (0.1x the input price),
writes each segment up to its own breakpoints at 1.25x (5-minute TTL) or 2x (1-hour TTL), and
pays the input price for what follows its last breakpoint. Every turn is assumed to come
within the TTL of the previous one. Output tokens are the same for every policy and left out.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from compressors.tokenizer import tokenizer_for
from proxy.apis import MESSAGES

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for evaldata/
import evaldata

COUNT = tokenizer_for("claude-sonnet-4-5").count  # o200k: there is no offline Claude tokenizer
READ, WRITE_5M, WRITE_1H = 0.1, 1.25, 2.0
MODEL = "claude-sonnet-4-5-20250929"
SYSTEM_MARK = {"type": "ephemeral", "ttl": "1h"}
NEWEST_MARK = {"type": "ephemeral"}


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    arguments = call["function"].get("arguments") or "{}"
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:
        value = {"raw": arguments}
    return {"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": value}


def _history(path: Path | list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """``(system, messages, tools)`` of a trace (or of chat messages); each message holds a list of blocks."""
    system: list[str] = []
    messages: list[dict[str, Any]] = []
    names: dict[str, None] = {}
    for m in evaldata.agent_messages(path) if isinstance(path, Path) else path:
        role, text = m["role"], m.get("content") or ""
        text = text if isinstance(text, str) else json.dumps(text)
        if role == "system":
            system.append(text)
            continue
        if role == "tool":
            call_id = m.get("tool_call_id") or "toolu_unknown"
            content = [{"type": "tool_result", "tool_use_id": call_id, "content": text}]
            role = "user"
        elif role == "assistant":
            content = [{"type": "text", "text": text}] if text.strip() else []
            for call in m.get("tool_calls") or ():
                content.append(_tool_use(call))
                names[call["function"]["name"]] = None
        else:
            content = [{"type": "text", "text": text}] if text.strip() else []
        if not content:
            continue
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(content)
        else:
            messages.append({"role": role, "content": content})
    tools = [
        {"name": n, "description": f"The agent's {n} command.", "input_schema": {"type": "object"}}
        for n in names
    ]
    return "\n\n".join(system), messages, tools


def turns(path: Path | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request bodies the client sends, one per assistant reply."""
    system, messages, tools = _history(path)
    bodies = []
    for turn in evaldata.turns(messages):
        history = json.loads(json.dumps(turn))  # each turn its own copy, as a client re-sends it
        last = history[-1]
        if last["role"] == "user":
            last["content"][-1]["cache_control"] = dict(NEWEST_MARK)
        body: dict[str, Any] = {
            "model": MODEL,
            "max_tokens": 4096,
            "system": [{"type": "text", "text": system, "cache_control": dict(SYSTEM_MARK)}],
            "messages": history,
        }
        if tools:
            body["tools"] = tools
        bodies.append(body)
    return bodies


def block_values(body: dict[str, Any]) -> list[Any]:
    """Each block of ``body`` in cache-prefix order (tools, system, messages), as a value."""
    return [block.node for block in MESSAGES.walk(body)]


def without_markers(value: Any) -> bytes:
    """A block's bytes without its ``cache_control`` (the client moves markers itself)."""
    if isinstance(value, dict):
        value = {k: v for k, v in value.items() if k != "cache_control"}
    return orjson.dumps(value)


def block_tokens(value: Any) -> int:
    if isinstance(value, str):
        return COUNT(value) + 4
    if value.get("type") == "text":
        return COUNT(value["text"]) + 4
    if value.get("type") == "tool_result" and isinstance(value.get("content"), str):
        return COUNT(value["content"]) + 8
    return COUNT(orjson.dumps({k: v for k, v in value.items() if k != "cache_control"}).decode()) + 4


@dataclass
class CacheBill:
    """Anthropic's prompt-cache bill over a sequence of requests (input side only)."""

    price_per_token: float
    cached: set[str] = field(default_factory=set)
    tokens: int = 0
    read: int = 0
    written_5m: int = 0
    written_1h: int = 0
    dollars: float = 0.0

    def add(self, body: dict[str, Any]) -> None:
        listed = MESSAGES.walk(body)
        values = block_values(body)
        counts = [block_tokens(v) for v in values]
        digests, running = [], hashlib.sha256()
        for value in values:
            running.update(without_markers(value))
            digests.append(running.copy().hexdigest())
        marks = [(k, b.breakpoint) for k, b in enumerate(listed) if b.breakpoint is not None]
        hit = max((k + 1 for k, d in enumerate(digests) if d in self.cached), default=0)
        read = sum(counts[:hit])
        start, w5, w1 = hit, 0, 0
        for k, marker in marks:
            if k + 1 > start:
                segment = sum(counts[start : k + 1])
                if marker == "1h":
                    w1 += segment
                else:
                    w5 += segment
                start = k + 1
            self.cached.add(digests[k])
        fresh = sum(counts) - read - w5 - w1
        self.tokens += sum(counts)
        self.read += read
        self.written_5m += w5
        self.written_1h += w1
        self.dollars += (fresh + READ * read + WRITE_5M * w5 + WRITE_1H * w1) * self.price_per_token
