"""A hostile upstream: a raw-socket HTTP/1.1 server on loopback whose answers a test writes byte for byte.

``RawUpstream(answer)`` listens on a free port (``.port``, ``.base_url`` with ``/v1``)
in a thread of its own. For every request it reads the head and the content-length
body, records them (``.requests``: ``(head bytes, body bytes)``), and awaits
``answer(head, body, writer)``, which writes whatever it likes (a malformed, huge,
slow or cut response) and returns True to keep the connection for another request.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable

__all__ = ["Answer", "RawUpstream", "header_value"]

Answer = Callable[[bytes, bytes, asyncio.StreamWriter], Awaitable[bool]]


def header_value(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


class RawUpstream:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[tuple[bytes, bytes]] = []
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20)
        )
        self.port: int = self.server.sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = int(header_value(head, b"content-length") or 0)
                    body = await reader.readexactly(length)
                    self.requests.append((head, body))
                    if not await self.answer(head, body, writer):
                        break
        finally:  # also when stop() cancels a connection still waiting for a request
            writer.close()

    async def _shutdown(self) -> None:
        self.server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def __enter__(self) -> RawUpstream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
