"""Relaying a server-sent-events response frame by frame, as it arrives.

Each chunk read from the upstream is split into complete SSE frames, which go
to the client at once; only an incomplete trailing frame waits for more data
(so a small heartbeat frame is never held back). The audit record is committed
before the final ``data: [DONE]`` frame, or at the end of the stream. A client
disconnect cancels the relay and closes the upstream connection.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable

from proxy.exchange import Exchange
from proxy.server.asgi import Receive, Send
from proxy.server.forward import UpstreamResponse
from proxy.usage import UsageTap

__all__ = ["relay_stream", "watch_disconnect", "watched"]

log = logging.getLogger("tersegate.relay")

_FRAME_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_DONE = b"data: [DONE]"

Commit = Callable[[], Awaitable[None]]


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
    response: UpstreamResponse, idle_timeout: float, send: Send, frames: _Frames | None, commit: Commit
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
    pump = _pump(response, idle_timeout, send, frames, commit)
    await watched(pump, response=response, receive=receive, exchange=exchange, commit=commit)


async def watched(
    work: Awaitable[None], *, response: UpstreamResponse, receive: Receive, exchange: Exchange, commit: Commit
) -> None:
    """Run ``work`` (a stream's pump) until it ends or the client goes away; then stop reading,
    drop the upstream connection and commit the audit. Re-raises ``work``'s read errors."""
    pump = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(watch_disconnect(receive))
    try:
        await asyncio.wait((pump, watcher), return_when=asyncio.FIRST_COMPLETED)
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
