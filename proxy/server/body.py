"""Relaying a large non-stream response body as it arrives, with bounded memory.

A buffered response is read whole when it fits in :data:`BUFFER_BYTES` (usage is
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

import re
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from proxy.server.asgi import Send
from proxy.server.forward import UpstreamResponse
from proxy.splice import value_end

__all__ = ["BUFFER_BYTES", "TAIL_BYTES", "UsageTail", "limit_encodings", "relay_body", "usage_of"]

BUFFER_BYTES = 1 << 20  # bodies up to this size are buffered whole: usage parsed exactly, a content-length
TAIL_BYTES = 64 << 10

Commit = Callable[[], Awaitable[None]]

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
