"""Relaying an upstream response's body to the client as it arrives, the audit committed before its
last byte.

**Streams** (:func:`relay_stream`). Each chunk read from the upstream is split into complete SSE frames, which go
to the client at once; only an incomplete trailing frame waits for more data
(so a small heartbeat frame is never held back). The audit record is committed
before the final ``data: [DONE]`` frame, or at the end of the stream. A client
disconnect cancels the relay and closes the upstream connection, unless every frame has gone out
and the record is being committed: then the commit finishes (the client had the whole answer).

**Large bodies** (:func:`relay_body`), with bounded memory. A buffered response is read whole when it fits in :data:`BUFFER_BYTES` (usage is
read from the parsed body, the audit committed, then the body sent with its
length). A bigger body (a large embeddings batch, a file download) is not held:
the bytes read so far and then every chunk go to the client as they arrive, and
the upstream is read only as fast as the client takes them (so one response
holds at most the upstream client's pause threshold plus one write). The last
chunk is held back until the audit record is committed, so the order "record
before the client's last byte" still holds. Usage is read from the last
:data:`TAIL_BYTES` of the (decoded) body, where OpenAI puts its ``usage`` object.
If the upstream fails mid-body, the client's connection is closed without ending
the body, so the client sees a truncated response, never a short one that looks
whole. The module also reads usage from a buffered body (:func:`usage_of`) and
keeps audited requests to encodings that can be read (:func:`limit_encodings`).
"""

from __future__ import annotations

import asyncio
import logging
import re
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from proxy.apis.splice import value_end
from proxy.apis.stream_usage import UsageTap
from proxy.exchange import Exchange
from proxy.server.asgi import Receive, Send
from proxy.server.forward import UpstreamResponse

__all__ = [
    "BUFFER_BYTES",
    "TAIL_BYTES",
    "Commit",
    "UsageTail",
    "limit_encodings",
    "relay_body",
    "relay_stream",
    "usage_of",
    "watch_disconnect",
    "watched",
]

log = logging.getLogger("tersegate.relay")

_FRAME_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_DONE = b"data: [DONE]"

Commit = Callable[[], Awaitable[None]]
"""Writes the audit record; a relay awaits it before the client's last byte."""


class _Frames:
    """Splits a byte stream into SSE frames, keeping the incomplete tail."""

    def __init__(self, tap: UsageTap | None) -> None:
        self.tap = tap
        self.tail = b""

    def feed(self, chunk: bytes) -> tuple[bytes, bool]:
        """``(bytes to send now, done_seen)``; a ``[DONE]`` frame is held back for the caller."""
        data = self.tail + chunk if self.tail else chunk
        out: list[bytes] = []
        start = 0
        done = False
        for match in _FRAME_END.finditer(data):
            frame = data[start : match.end()]
            start = match.end()
            if frame.startswith(_DONE):
                done = True
                self.tail = frame + data[start:]
                return b"".join(out), True
            kept = self.tap.frame(frame) if self.tap is not None else frame
            if kept:
                out.append(kept)
        self.tail = data[start:]
        return b"".join(out), done


async def _pump(
    response: UpstreamResponse,
    idle_timeout: float,
    send: Send,
    frames: _Frames | None,
    commit: Commit,
    committing: asyncio.Event,
) -> None:
    """Copy the upstream body to the client; commit the audit before [DONE] / the end."""
    chunks = response.chunks(idle_timeout=idle_timeout)
    async for chunk in chunks:
        if frames is None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            continue
        ready, done = frames.feed(chunk)
        if ready:
            await send({"type": "http.response.body", "body": ready, "more_body": True})
        if done:
            # [DONE] and whatever already arrived after it go out after the commit; nothing follows
            # [DONE], so the client is not kept waiting for the upstream to end its body.
            frames.tail += response.buffered()
            break
    tail = frames.tail if frames is not None else b""
    committing.set()
    await commit()
    await send({"type": "http.response.body", "body": tail, "more_body": False})


async def watch_disconnect(receive: Receive) -> None:
    """Return once the client has gone away (the request body must have been read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def relay_stream(
    response: UpstreamResponse,
    *,
    send: Send,
    receive: Receive,
    exchange: Exchange,
    tap: UsageTap | None,
    idle_timeout: float,
    split_frames: bool,
    commit: Commit,
) -> None:
    """Relay the body of an already-started SSE response (headers were sent by the caller).

    Raises the upstream read error (timeout, reset) after the client got what
    arrived before it; the caller ends the stream with an error frame.
    """
    # An encoded (e.g. gzip) body cannot be split into frames: it is copied as is.
    frames = _Frames(tap) if split_frames else None
    committing = asyncio.Event()
    pump = _pump(response, idle_timeout, send, frames, commit, committing)
    await watched(
        pump, response=response, receive=receive, exchange=exchange, commit=commit, committing=committing
    )


async def watched(
    work: Awaitable[None],
    *,
    response: UpstreamResponse,
    receive: Receive,
    exchange: Exchange,
    commit: Commit,
    committing: asyncio.Event | None = None,
) -> None:
    """Run ``work`` (a stream's pump) until it ends or the client goes away; then stop reading,
    drop the upstream connection and commit the audit. Re-raises ``work``'s read errors. Once
    ``committing`` is set (every frame is out), a client that goes away no longer cancels ``work``."""
    pump = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(watch_disconnect(receive))
    try:
        await asyncio.wait((pump, watcher), return_when=asyncio.FIRST_COMPLETED)
        if not pump.done() and committing is not None and committing.is_set():
            # The client had every event and left while the record was being written (Codex CLI
            # closes as soon as it reads `response.completed`): cancelling now would lose the record.
            await asyncio.gather(pump, return_exceptions=True)
    finally:
        if not pump.done():
            # Client went away (or we are cancelled): stop reading and drop the upstream connection.
            pump.cancel()
            exchange.client_disconnected = watcher.done()
            response.close()
            await asyncio.gather(pump, return_exceptions=True)
        watcher.cancel()
    if exchange.client_disconnected:
        await commit()
        return
    pump.result()  # re-raise read errors


BUFFER_BYTES = 1 << 20  # bodies up to this size are buffered whole: usage parsed exactly, a content-length
TAIL_BYTES = 64 << 10

_USAGE_KEY = re.compile(rb'"usage"\s*:\s*\{')


_DECODABLE = frozenset({b"gzip", b"deflate", b"identity"})


def limit_encodings(headers: list[tuple[bytes, bytes]]) -> None:
    """On audited routes, ask only for encodings the proxy can read usage from (zlib's); the
    client advertised these itself, so it still decodes the response."""
    for i, (name, value) in enumerate(headers):
        if name == b"accept-encoding":
            kept = [p for p in value.split(b",") if p.split(b";")[0].strip().lower() in _DECODABLE]
            headers[i] = (name, b",".join(kept).strip() or b"identity")


def usage_of(body: bytes, encoding: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    """``(usage, model)`` of a JSON response body, if any (decoding gzip/deflate to read it)."""
    if encoding:
        if encoding.strip().lower() not in (b"gzip", b"deflate"):
            return None, None
        try:
            body = zlib.decompress(body, 47)  # 47: gzip or zlib header, auto-detected
        except zlib.error:
            return None, None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None
    if not isinstance(parsed, dict):
        return None, None
    usage, model = parsed.get("usage"), parsed.get("model")
    return (usage if isinstance(usage, dict) else None), (model if isinstance(model, str) else None)


class UsageTail:
    """Keeps the last :data:`TAIL_BYTES` of a body (decoding gzip/deflate) to read ``usage`` from."""

    __slots__ = ("_decoder", "_tail", "broken")

    def __init__(self, encoding: bytes | None) -> None:
        self._tail = b""
        self.broken = False
        self._decoder: Any = None
        if encoding:
            if encoding.strip().lower() in (b"gzip", b"deflate"):
                self._decoder = zlib.decompressobj(47)  # gzip or zlib header, auto-detected
            else:
                self.broken = True

    def feed(self, chunk: bytes) -> None:
        if self.broken:
            return
        if self._decoder is not None:
            try:
                # Bounded output per step: only the tail is kept, whatever the ratio.
                data = self._decoder.decompress(chunk, TAIL_BYTES)
                while self._decoder.unconsumed_tail:
                    self._keep(data)
                    data = self._decoder.decompress(self._decoder.unconsumed_tail, TAIL_BYTES)
                chunk = data
            except zlib.error:
                self.broken = True
                return
        self._keep(chunk)

    def _keep(self, data: bytes) -> None:
        joined = self._tail + data
        self._tail = joined[-TAIL_BYTES:]

    def usage(self) -> dict[str, Any] | None:
        """The last ``"usage": {...}`` object in the tail, if it is whole there."""
        if self.broken:
            return None
        matches = list(_USAGE_KEY.finditer(self._tail))
        if not matches:
            return None
        start = matches[-1].end() - 1
        try:
            parsed = orjson.loads(self._tail[start : value_end(self._tail, start)])
        except Exception:  # a cut or odd tail: no usage, never a failed response
            return None
        return parsed if isinstance(parsed, dict) else None


async def relay_body(
    response: UpstreamResponse,
    *,
    first: bytes,
    timeout: Callable[[], float],
    send: Send,
    tail: UsageTail | None,
    commit: Commit,
) -> None:
    """Send ``first`` and the rest of the body (headers were sent by the caller); commit before the
    last chunk. Raises the upstream's read error; the caller then drops the client connection."""
    held = first
    if tail is not None:
        tail.feed(first)
    while True:
        chunk = await response.next_chunk(timeout())
        if chunk is None:
            break
        if tail is not None:
            tail.feed(chunk)
        await send({"type": "http.response.body", "body": held, "more_body": True})
        held = chunk
    await commit()
    await send({"type": "http.response.body", "body": held, "more_body": False})
