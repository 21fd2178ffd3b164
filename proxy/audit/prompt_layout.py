"""A request body as the provider's cache sees it: the prompt's blocks in order.

OpenAI renders ``tools`` first, then the messages (chat), ``instructions`` then ``input``
(Responses) or the ``prompt`` (completions); Anthropic caches ``tools``, then ``system``, then
``messages``, block by block (:func:`proxy.anthropic.blocks`), and the client's ``cache_control``
marks the breakpoints. Each block
is the text its tokens come from (role and content; other fields as compact JSON). Pure: no
tokenizer here (see :mod:`proxy.audit.cache_model`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from proxy import anthropic

__all__ = ["ANTHROPIC_ROUTE", "Block", "blocks_of", "cache_key_of"]

ANTHROPIC_ROUTE = "/v1/messages"


@dataclass(frozen=True, slots=True)
class Block:
    text: str
    breakpoint: str | None = None  # Anthropic: the TTL ("5m", "1h") of a cache_control on this block


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return "" if content is None else _json(content)
    out = []
    for part in content:
        text = part.get("text") if isinstance(part, Mapping) else None
        out.append(text if isinstance(text, str) else _json(part))
    return "\n".join(out)


def _message_text(message: Mapping[str, Any]) -> str:
    """Role, content and the other fields (tool calls, ids) of one chat message or Responses item."""
    head = str(message.get("role") or message.get("type") or "")
    text = head + "\n" + _content_text(message.get("content"))
    if len(message) <= 2 and "role" in message and "content" in message:
        return text  # the usual message: no other fields to render
    rest = {k: v for k, v in message.items() if k not in ("role", "content")}
    return text + ("\n" + _json(rest) if rest else "")


def _openai_blocks(route: str, body: Mapping[str, Any]) -> list[Block]:
    blocks = [Block("tools\n" + _json(body["tools"]))] if body.get("tools") else []
    if route == "/v1/completions":
        prompt = body.get("prompt")
        texts = prompt if isinstance(prompt, list) else [prompt]
        return blocks + [Block(t) for t in texts if isinstance(t, str)]
    if route == "/v1/responses":
        if isinstance(body.get("instructions"), str):
            blocks.append(Block("instructions\n" + body["instructions"]))
        items = body.get("input")
        if isinstance(items, str):
            return [*blocks, Block("user\n" + items)]
    else:
        items = body.get("messages")
    if isinstance(items, list):
        blocks += [Block(_message_text(m)) for m in items if isinstance(m, Mapping)]
    return blocks


def _value_at(body: Mapping[str, Any], path: tuple[str | int, ...]) -> Any:
    node: Any = body
    for key in path:
        node = node[key]
    return node


def _anthropic_blocks(body: Mapping[str, Any]) -> list[Block]:
    """:func:`proxy.anthropic.blocks` order; a block without rewritable text counts as its JSON."""
    out = []
    for block in anthropic.blocks(body):
        if block.texts:
            text = "\n".join(t for _, t in block.texts)
        else:
            value = _value_at(body, block.path)
            if isinstance(value, Mapping):
                value = {k: v for k, v in value.items() if k != "cache_control"}
            text = value if isinstance(value, str) else _json(value)
        ttl = (
            None if block.cache_control is None else "1h" if block.cache_control.get("ttl") == "1h" else "5m"
        )
        out.append(Block(block.role + "\n" + text, ttl))
    return out


def blocks_of(route: str, body: Mapping[str, Any]) -> list[Block]:
    """The prompt's blocks in the order the provider caches them."""
    if route == ANTHROPIC_ROUTE:
        return _anthropic_blocks(body)
    return _openai_blocks(route, body)


def cache_key_of(body: Mapping[str, Any]) -> str | None:
    """OpenAI's ``prompt_cache_key``: narrows the cache's scope when the client sets one."""
    key = body.get("prompt_cache_key")
    return key if isinstance(key, str) and key else None
