"""A fake OpenAI API for tests and benchmarks: a raw ASGI app, served by uvicorn on loopback.

It answers like OpenAI (shapes from the OpenAPI spec): ``/v1/chat/completions``
(plain and SSE streams, with the usage-only final chunk only when
``stream_options.include_usage`` is set), ``/v1/completions``, ``/v1/responses``
(plain and event streams), ``/v1/embeddings``, ``/v1/models`` and
``DELETE /v1/files/{id}``. Every response carries OpenAI's headers
(``x-request-id``, ``openai-processing-ms``, ``openai-version``,
``x-ratelimit-*``).

Behaviour is chosen by the request's ``model`` (or header ``x-fake-model``):
``error-<status>`` answers that status with an OpenAI error (429 adds
``retry-after``, ``retry-after-ms``, ``x-should-retry``); ``slow`` waits
``x-fake-delay`` seconds (default 2) before answering; ``heartbeat`` streams one
small frame, waits ``x-fake-gap`` seconds (default 1), then the rest;
``forever`` streams a chunk every 50 ms until the client goes away; ``stall``
streams one chunk and then nothing. ``x-fake-cached-tokens`` sets
``prompt_tokens_details.cached_tokens``; ``x-fake-gzip`` gzips JSON bodies;
``x-fake-chunked`` sends them chunked, in two parts.

Every request is recorded (:class:`Recorded`: method, path, query, headers, raw
body bytes, and for streams when the first frame was sent and when the client
went away) unless ``record=False`` (benchmarks).

It also answers Anthropic's Messages API (``/v1/messages``, see :mod:`fake_anthropic`) and
Azure OpenAI's paths (``/openai/deployments/{name}/chat/completions`` and its completions
twin, ``/openai/responses``; ``api-version`` query required; the answer's ``model`` is
``x-fake-azure-model`` or ``gpt-4o-2024-08-06``, as Azure names the deployed model).

Run standalone: ``python tests/fake_upstream.py --port 9000``.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fake_anthropic
import fake_expander
import orjson
import uvicorn

from proxy.server.asgi import Receive, Scope, Send

REPLY = "Hello from the fake upstream."
EMBEDDING_DIM = 8


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-cased names; the last value of repeated headers
    raw_headers: list[tuple[str, str]]
    body: bytes
    received_at: float  # time.monotonic()
    client_port: int  # tells connections apart (keep-alive reuse)
    first_frame_at: float | None = None  # streams: when the first frame was sent
    frames_sent: int = 0
    disconnected_at: float | None = None  # streams and slow answers: when the client went away
    finished: bool = False

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class _Call:
    """One request as the app handles it."""

    scope: Scope
    body: bytes
    parsed: dict[str, Any]
    model: str
    headers: dict[str, str]
    record: Recorded | None
    request_id: str = field(default_factory=lambda: "req_" + os.urandom(12).hex())


def _prompt_words(value: Any) -> int:
    """A deterministic stand-in for prompt tokens: words in every string of the prompt."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_prompt_words(v) for v in value)
    if isinstance(value, dict):
        return sum(_prompt_words(v) for k, v in value.items() if k not in ("role", "type", "name"))
    return 0


def _usage(call: _Call, completion: int) -> dict[str, Any]:
    prompt = _prompt_words(call.parsed.get("messages", call.parsed.get("prompt", call.parsed.get("input"))))
    cached = int(call.headers.get("x-fake-cached-tokens", "0"))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _headers(call: _Call, content_type: bytes) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", content_type),
        (b"x-request-id", call.headers.get("x-request-id", call.request_id).encode()),
        (b"openai-processing-ms", b"42"),
        (b"openai-version", b"2020-10-01"),
        (b"openai-organization", b"fake-org"),
        (b"x-ratelimit-limit-requests", b"10000"),
        (b"x-ratelimit-remaining-requests", b"9999"),
        (b"x-ratelimit-reset-requests", b"6ms"),
        (b"x-ratelimit-limit-tokens", b"2000000"),
        (b"x-ratelimit-remaining-tokens", b"1999000"),
        (b"x-ratelimit-reset-tokens", b"30ms"),
    ]


async def _json(
    send: Send, call: _Call, status: int, payload: Any, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    body = orjson.dumps(payload)
    headers = [*_headers(call, b"application/json"), *extra]
    if call.headers.get("x-fake-gzip"):
        body = gzip.compress(body)
        headers.append((b"content-encoding", b"gzip"))
    if call.headers.get("x-fake-chunked"):  # no content-length: uvicorn sends it chunked
        await send({"type": "http.response.start", "status": status, "headers": headers})
        half = len(body) // 2
        await send({"type": "http.response.body", "body": body[:half], "more_body": True})
        await asyncio.sleep(0.05)
        await send({"type": "http.response.body", "body": body[half:]})
        return
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error(status: int) -> dict[str, Any]:
    kinds = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error"}
    return {
        "error": {
            "message": f"Fake upstream error {status}.",
            "type": kinds.get(status, "rate_limit_exceeded" if status == 429 else "server_error"),
            "param": None,
            "code": "rate_limit_exceeded" if status == 429 else None,
        }
    }


def _invalid_messages(parsed: dict[str, Any]) -> dict[str, Any] | None:
    """The 400 body OpenAI answers for a tool message without ``tool_call_id``, else None."""
    messages = parsed.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "tool" and "tool_call_id" not in message:
            body = _error(400)
            body["error"].update(
                message=f"Missing required parameter: 'messages[{i}].tool_call_id'.",
                param=f"messages.[{i}].tool_call_id",
                code="missing_required_parameter",
            )
            return body
    return None


def chat_completion(call: _Call) -> dict[str, Any]:
    turn = (
        fake_expander.decide(call.parsed, call.headers)
        if fake_expander.wanted(call.model, call.headers)
        else None
    )
    message = {"role": "assistant", "content": REPLY, "refusal": None, "annotations": []}
    return {
        "id": "chatcmpl-" + call.request_id[4:],
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [
            {
                "index": 0,
                "message": fake_expander.chat_message(turn) if turn else message,
                "logprobs": None,
                "finish_reason": "tool_calls" if turn and turn[1] else "stop",
            }
        ],
        "usage": _usage(call, len(REPLY.split())),
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }


def text_completion(call: _Call) -> dict[str, Any]:
    return {
        "id": "cmpl-" + call.request_id[4:],
        "object": "text_completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [{"index": 0, "text": REPLY, "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(call, len(REPLY.split())),
        "system_fingerprint": "fp_fake",
    }


def response_object(call: _Call, *, status: str = "completed") -> dict[str, Any]:
    usage = _usage(call, len(REPLY.split()))
    return {
        "id": "resp_" + call.request_id[4:],
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": call.model,
        "output": [
            {
                "type": "message",
                "id": "msg_" + call.request_id[4:],
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": REPLY, "annotations": [], "logprobs": []}],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": {},
        "temperature": 1.0,
        "top_p": 1.0,
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {
                "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"],
                "cache_write_tokens": 0,
            },
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["total_tokens"],
        },
    }


def _data(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def chat_frames(call: _Call) -> list[bytes]:
    """The SSE frames of a chat stream, exactly as OpenAI frames them."""
    options = call.parsed.get("stream_options") or {}
    with_usage = options.get("include_usage") is True
    base = {
        "id": "chatcmpl-" + call.request_id[4:],
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": call.model,
        "service_tier": "default",
        "system_fingerprint": "fp_fake",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        payload = {
            **base,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if with_usage:
            payload["usage"] = None
        return _data(payload)

    words = REPLY.split(" ")
    frames = [chunk({"role": "assistant", "content": "", "refusal": None})]
    frames += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
    frames.append(chunk({}, "stop"))
    turn = (
        fake_expander.decide(call.parsed, call.headers)
        if fake_expander.wanted(call.model, call.headers)
        else None
    )
    if turn is not None:
        frames = fake_expander.chat_delta_frames(turn, chunk)
    if with_usage:
        frames.append(_data({**base, "choices": [], "usage": _usage(call, len(words))}))
    frames.append(b"data: [DONE]\n\n")
    return frames


def completion_frames(call: _Call) -> list[bytes]:
    options = call.parsed.get("stream_options") or {}
    with_usage = options.get("include_usage") is True
    base = {
        "id": "cmpl-" + call.request_id[4:],
        "object": "text_completion",
        "created": 0,
        "model": call.model,
    }
    frames = []
    for i, word in enumerate(REPLY.split(" ")):
        payload: dict[str, Any] = {
            **base,
            "choices": [
                {"index": 0, "text": word if i == 0 else " " + word, "logprobs": None, "finish_reason": None}
            ],
        }
        if with_usage:
            payload["usage"] = None
        frames.append(_data(payload))
    if with_usage:
        frames.append(_data({**base, "choices": [], "usage": _usage(call, len(REPLY.split()))}))
    frames.append(b"data: [DONE]\n\n")
    return frames


def response_frames(call: _Call) -> list[bytes]:
    def event(name: str, payload: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\n" + _data({"type": name, **payload})

    created = response_object(call, status="in_progress")
    created["usage"] = None
    frames = [event("response.created", {"response": created, "sequence_number": 0})]
    for i, word in enumerate(REPLY.split(" ")):
        frames.append(
            event(
                "response.output_text.delta",
                {
                    "item_id": "msg_" + call.request_id[4:],
                    "output_index": 0,
                    "content_index": 0,
                    "delta": word if i == 0 else " " + word,
                    "sequence_number": i + 1,
                },
            )
        )
    frames.append(event("response.completed", {"response": response_object(call), "sequence_number": 99}))
    return frames


def _embeddings(call: _Call) -> dict[str, Any]:
    inputs = call.parsed.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    prompt = _prompt_words(items)
    return {
        "object": "list",
        "data": [
            {
                "object": "embedding",
                "index": i,
                "embedding": [round(0.1 * (i + j), 3) for j in range(EMBEDDING_DIM)],
            }
            for i in range(len(items))
        ],
        "model": call.model,
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


_MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1700000000, "owned_by": "system"}


class FakeUpstream:
    """The ASGI app. ``requests`` lists every :class:`Recorded` request, oldest first."""

    def __init__(self, *, record: bool = True) -> None:
        self.record = record
        self.requests: list[Recorded] = []

    def clear(self) -> None:
        self.requests.clear()

    def last(self) -> Recorded:
        return self.requests[-1]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        raw_headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        headers = dict(raw_headers)
        record = None
        if self.record:
            record = Recorded(
                method=scope["method"],
                path=scope["path"],
                query=scope["query_string"].decode("latin-1"),
                headers=headers,
                raw_headers=raw_headers,
                body=body,
                received_at=time.monotonic(),
                client_port=scope["client"][1] if scope.get("client") else 0,
            )
            self.requests.append(record)
        try:
            parsed = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            parsed = {}
        if not isinstance(parsed, dict):
            parsed = {}
        model = headers.get("x-fake-model") or str(parsed.get("model", ""))
        call = _Call(scope, body, parsed, model, headers, record)
        await self._route(call, receive, send)
        if record is not None:
            record.finished = True

    async def _route(self, call: _Call, receive: Receive, send: Send) -> None:
        method, path = call.scope["method"], call.scope["path"]
        if path.startswith("/v1/messages") or "anthropic-version" in call.headers:
            await self._anthropic(call, receive, send)
            return
        if path.startswith("/openai/"):
            if "api-version=" not in call.scope["query_string"].decode():
                await _json(send, call, 404, _error(404))
                return
            call.model = call.headers.get("x-fake-azure-model", "gpt-4o-2024-08-06")
            deployed = path.startswith("/openai/deployments/")
            path = "/v1/" + path.split("/", 4 if deployed else 2)[-1]
        if call.model.startswith("error-"):
            await self._error(call, send, int(call.model[6:]))
            return
        if call.model == "slow" and not await self._wait_unless_gone(call, receive):
            return
        stream = call.parsed.get("stream") is True
        if method == "POST" and path == "/v1/chat/completions":
            invalid = _invalid_messages(call.parsed)
            if invalid is not None:
                await _json(send, call, 400, invalid)
            elif stream:
                await self._stream(call, receive, send, chat_frames(call))
            else:
                await _json(send, call, 200, chat_completion(call))
        elif method == "POST" and path == "/v1/completions":
            if stream:
                await self._stream(call, receive, send, completion_frames(call))
            else:
                await _json(send, call, 200, text_completion(call))
        elif method == "POST" and path == "/v1/responses":
            if stream:
                await self._stream(call, receive, send, response_frames(call))
            else:
                await _json(send, call, 200, response_object(call))
        elif method == "POST" and path == "/v1/embeddings":
            await _json(send, call, 200, _embeddings(call))
        elif method == "GET" and path == "/v1/models":
            await _json(send, call, 200, {"object": "list", "data": [_model(m) for m in _MODELS]})
        elif method == "GET" and path.startswith("/v1/models/"):
            await _json(send, call, 200, _model(path.rsplit("/", 1)[1]))
        elif method == "DELETE" and path.startswith("/v1/files/"):
            await _json(send, call, 200, {"id": path.rsplit("/", 1)[1], "object": "file", "deleted": True})
        else:
            await _json(send, call, 404, _error(404))

    async def _anthropic(self, call: _Call, receive: Receive, send: Send) -> None:
        method, path = call.scope["method"], call.scope["path"]
        request_id = call.headers.get("x-request-id", call.request_id)

        async def answer(status: int, payload: Any) -> None:
            body = orjson.dumps(payload)
            head = [*fake_anthropic.headers(request_id, b"application/json")]
            head.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": head})
            await send({"type": "http.response.body", "body": body})

        if call.model.startswith("error-"):
            await answer(int(call.model[6:]), fake_anthropic.error(int(call.model[6:])))
        elif method == "POST" and path == "/v1/messages/count_tokens":
            await answer(200, {"input_tokens": fake_anthropic.prompt_tokens(call.parsed)})
        elif method == "POST" and path == "/v1/messages" and call.parsed.get("stream") is True:
            head = fake_anthropic.headers(request_id, b"text/event-stream; charset=utf-8")
            await self._stream(call, receive, send, fake_anthropic.frames(call.parsed, call.headers), head)
        elif method == "POST" and path == "/v1/messages":
            await answer(200, fake_anthropic.message(call.parsed, call.headers))
        elif method == "GET" and path == "/v1/models":
            models = [
                {"type": "model", "id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5"}
            ]
            await answer(200, {"data": models, "has_more": False, "first_id": None, "last_id": None})
        else:
            await answer(404, {"type": "error", "error": {"type": "not_found_error", "message": "Not found"}})

    async def _error(self, call: _Call, send: Send, status: int) -> None:
        extra: list[tuple[bytes, bytes]] = []
        if status == 429:
            extra = [(b"retry-after", b"2"), (b"retry-after-ms", b"1500"), (b"x-should-retry", b"true")]
        elif status >= 500:
            extra = [(b"x-should-retry", b"false")]
        await _json(send, call, status, _error(status), extra)

    @staticmethod
    async def _wait_unless_gone(call: _Call, receive: Receive) -> bool:
        """Wait ``x-fake-delay`` seconds; False (``disconnected_at`` set) if the client went away first."""
        delay = asyncio.ensure_future(asyncio.sleep(float(call.headers.get("x-fake-delay", "2"))))
        watch = asyncio.ensure_future(_until_disconnect(receive))
        await asyncio.wait((delay, watch), return_when=asyncio.FIRST_COMPLETED)
        gone = watch.done() and not delay.done()
        if gone and call.record is not None:
            call.record.disconnected_at = time.monotonic()
        delay.cancel()
        watch.cancel()
        await asyncio.gather(delay, watch, return_exceptions=True)
        return not gone

    async def _stream(
        self,
        call: _Call,
        receive: Receive,
        send: Send,
        frames: list[bytes],
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = headers or _headers(call, b"text/event-stream; charset=utf-8")
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        emit = asyncio.ensure_future(self._emit(call, send, frames))
        watch = asyncio.ensure_future(_until_disconnect(receive))
        await asyncio.wait((emit, watch), return_when=asyncio.FIRST_COMPLETED)
        if watch.done() and not emit.done():
            if call.record is not None:
                call.record.disconnected_at = time.monotonic()
            emit.cancel()
        watch.cancel()
        await asyncio.gather(emit, watch, return_exceptions=True)

    async def _emit(self, call: _Call, send: Send, frames: list[bytes]) -> None:
        record = call.record

        async def out(frame: bytes) -> None:
            await send({"type": "http.response.body", "body": frame, "more_body": True})
            if record is not None:
                record.frames_sent += 1
                if record.first_frame_at is None:
                    record.first_frame_at = time.monotonic()

        if call.model == "forever":
            while True:
                await out(frames[1])
                await asyncio.sleep(0.05)
        if call.model == "stall":
            await out(frames[0])
            await asyncio.sleep(3600)
        if call.model == "heartbeat":
            await out(b": heartbeat\n\n")
            await asyncio.sleep(float(call.headers.get("x-fake-gap", "1")))
        for frame in frames:
            await out(frame)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class ServerThread:
    """Serves an ASGI app with uvicorn (uvloop + httptools) on a loopback port, in a thread."""

    def __init__(
        self, app: Any, *, port: int = 0, config: uvicorn.Config | None = None, keep_alive_s: float = 5
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = config or uvicorn.Config(
            app,
            loop="uvloop",
            http="httptools",
            ws="none",
            lifespan="on",
            access_log=False,
            log_config=None,
            timeout_keep_alive=keep_alive_s,  # type: ignore[arg-type]
        )
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    uvicorn.run(
        FakeUpstream(record=False),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="none",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
