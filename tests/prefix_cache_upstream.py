"""A fake upstream whose usage reports what a provider's prompt cache would: the invoice's truth.

Independent of the proxy's cache model (its own rendering, token stream and hashing), it answers

* ``POST /v1/chat/completions`` like OpenAI: the prompt (tools, then each message with framing
  tokens) is tokenized with o200k; a prompt of >= 1,024 tokens is cached in 128-token chunks;
  ``prompt_tokens_details.cached_tokens`` is the longest cached chunk prefix.
* ``POST /v1/messages`` like Anthropic: tools, system, then message content blocks; each
  ``cache_control`` breakpoint writes its prefix (>= 1,024 tokens; 5 minutes or ``ttl: "1h"``);
  a read is the longest written prefix ending at a block boundary up to 20 blocks before a
  breakpoint; usage splits ``input_tokens``, ``cache_creation_input_tokens`` and
  ``cache_read_input_tokens``. A block is counted as the model reads it: a text block's text, a
  tool result's texts as text beside its other fields as JSON.

The cache's scope is the caller's key (``authorization`` / ``x-api-key``), the model and OpenAI's
``prompt_cache_key``. ``flush_every=N`` empties a scope's cache before every N-th request in it
(an expiry or a routing miss, at the same turns in every run). ``served`` lists each request's
``(path, scope key, usage)``, so a test prices the invoice from what the upstream reported.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from compressors.tokenizer import tokenizer_for

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ENCODE = tokenizer_for("gpt-4o").encode
FRAMING = 3  # <|im_start|>role ... <|im_end|> per message
REPLY = "Done."


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _chat_tokens(body: dict[str, Any]) -> list[int]:
    tokens: list[int] = []
    if body.get("tools"):
        tokens += ENCODE(_text(body["tools"]))
    for message in body.get("messages", []):
        tokens += [200264, *ENCODE(str(message.get("role")))]  # <|im_start|>role
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") if isinstance(p, dict) else "" for p in content)
        tokens += ENCODE(_text(content or ""))
        extra = {k: v for k, v in message.items() if k not in ("role", "content")}
        if extra:
            tokens += ENCODE(_text(extra))
        tokens.append(200265)  # <|im_end|>
    return [*tokens, 200264, *ENCODE("assistant")]


def _hollow(node: Any, texts: list[str]) -> Any:
    """``node`` with every ``content``/``text`` string moved out into ``texts``. A real tokenizer reads
    a tool result's text as text: counting it JSON-escaped (every newline and quote of source code
    doubled) made the upstream's count depend on how much code a request carries."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key in ("content", "text") and isinstance(value, str):
                texts.append(value)
                out[key] = ""
            else:
                out[key] = _hollow(value, texts)
        return out
    if isinstance(node, list):
        return [_hollow(value, texts) for value in node]
    return node


def _anthropic_blocks(body: dict[str, Any]) -> list[tuple[str, str | None]]:
    """``(text, ttl of its cache_control or None)`` per cacheable block, in cache order."""
    out: list[tuple[str, str | None]] = []

    def add(block: Any, prefix: str) -> None:
        if isinstance(block, dict):
            control = block.get("cache_control")
            ttl = (control.get("ttl") or "5m") if isinstance(control, dict) else None
            rest = {k: v for k, v in block.items() if k != "cache_control"}
            if "text" in rest:
                out.append((prefix + _text(rest["text"]), ttl))
            else:  # a tool_result: its texts as the model reads them, its other fields as JSON
                texts: list[str] = []
                skeleton = _hollow(rest, texts)
                out.append((prefix + _text(skeleton) + "\n" + "\n".join(texts), ttl))
        else:
            out.append((prefix + _text(block), None))

    for tool in body.get("tools") or []:
        add(tool, "tool:")
    system = body.get("system")
    for block in [system] if isinstance(system, str) else system or []:
        add(block, "system:")
    for message in body.get("messages", []):
        content = message.get("content")
        for block in [content] if isinstance(content, str) else content or []:
            add(block, message.get("role", "") + ":")
    return out


class PrefixCacheUpstream:
    """The ASGI app (see module docs)."""

    def __init__(self, *, flush_every: int | None = None, min_tokens: int = 1024) -> None:
        self.flush_every = flush_every
        self.min_tokens = min_tokens
        self.served: list[tuple[str, str, dict[str, Any]]] = []
        self._cache: dict[str, dict[str, float]] = {}  # scope -> prefix hash -> expiry
        self._seen: dict[str, int] = {}

    def _scope(self, headers: dict[str, str], body: dict[str, Any]) -> str:
        key = headers.get("authorization") or headers.get("x-api-key") or ""
        scope = f"{key}|{body.get('model')}|{body.get('prompt_cache_key') or ''}"
        self._seen[scope] = self._seen.get(scope, 0) + 1
        if self.flush_every and self._seen[scope] % self.flush_every == 0:
            self._cache.pop(scope, None)
        return scope

    def _openai_usage(self, scope: str, body: dict[str, Any]) -> dict[str, Any]:
        tokens = _chat_tokens(body)
        cache = self._cache.setdefault(scope, {})
        now = time.monotonic()
        digest = hashlib.sha256()
        cached, hit = 0, True
        for end in range(128, len(tokens) + 1, 128):
            digest.update(orjson.dumps(tokens[end - 128 : end]))
            key = digest.copy().hexdigest()
            if hit and cache.get(key, 0) > now:
                cached = end
            else:
                hit = False
            if len(tokens) >= 1024:
                cache[key] = now + 600
        cached = cached if cached >= 1024 else 0
        return {
            "prompt_tokens": len(tokens),
            "completion_tokens": 2,
            "total_tokens": len(tokens) + 2,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        }

    def _anthropic_usage(self, scope: str, body: dict[str, Any]) -> dict[str, Any]:
        blocks = _anthropic_blocks(body)
        cache = self._cache.setdefault(scope, {})
        now = time.monotonic()
        ends, keys, digest, total = [], [], hashlib.sha256(), 0
        for text, _ in blocks:
            total += len(ENCODE(text)) + 1
            digest.update(text.encode() + b"\x00")
            ends.append(total)
            keys.append(digest.copy().hexdigest())
        marks = [i for i, (_, ttl) in enumerate(blocks) if ttl is not None]
        looked = {j for i in marks for j in range(max(0, i - 20), i + 1)}
        hit = max((j for j in looked if cache.get(keys[j], 0) > now), default=None)
        read = ends[hit] if hit is not None else 0
        written = {"5m": 0, "1h": 0}
        done = read
        for i in marks:
            ttl = blocks[i][1] or "5m"
            if (hit is None or i > hit) and ends[i] >= self.min_tokens:
                written[ttl] += ends[i] - done
                done = ends[i]
                cache[keys[i]] = now + (3600 if ttl == "1h" else 300)
        if hit is not None:
            cache[keys[hit]] = max(cache[keys[hit]], now + 300)
        return {
            "input_tokens": total - read - written["5m"] - written["1h"],
            "cache_creation_input_tokens": written["5m"] + written["1h"],
            "cache_read_input_tokens": read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": written["5m"],
                "ephemeral_1h_input_tokens": written["1h"],
            },
            "output_tokens": 2,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = orjson.loads(b"".join(chunks))
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        key = self._scope(headers, body)
        if scope["path"].endswith("/messages"):
            usage = self._anthropic_usage(key, body)
            answer: dict[str, Any] = {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": body.get("model"),
                "content": [{"type": "text", "text": REPLY}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": usage,
            }
        else:
            usage = self._openai_usage(key, body)
            answer = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": REPLY},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        self.served.append((scope["path"], key, usage))
        data = orjson.dumps(answer)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})
