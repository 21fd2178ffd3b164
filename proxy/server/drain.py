"""Signals for a draining shutdown: SIGTERM or Ctrl-C stops accepting and lets work in flight finish.

uvicorn's own handling re-raises the captured signal once it has shut down, so the process ends
"killed by SIGTERM" (exit -15) or with a KeyboardInterrupt traceback (exit 1). :class:`DrainingServer`
handles both signals the same way and ends normally (exit 0). The drain itself runs inside the serving
process: uvicorn closes the listening socket and waits for connections up to its graceful-shutdown
timeout (``shutdown_grace_s``), then cancels what is left; the app answers each cancelled request
(an SSE error event, or a 503) and writes its audit record, and its lifespan shutdown waits for that
before the audit is closed (see ``ProxyApp``). A second Ctrl-C forces an immediate exit, as in uvicorn.

Once started, the serving process's start-up objects are frozen out of the cyclic collector (see
:meth:`DrainingServer.startup`): ``tersegate serve`` only, not an app embedded in another process.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import socket
import threading
from collections.abc import Iterator
from types import FrameType

import uvicorn

__all__ = ["DrainingServer"]

log = logging.getLogger("tersegate.serve")

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DrainingServer(uvicorn.Server):
    """``uvicorn.Server`` whose SIGTERM/SIGINT start a drain and do not end the process by signal."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        # After the lifespan's start-up: what it built (the cost map, policies, modules) lives as
        # long as the process. Frozen, a full collection walks only what requests made since; it
        # had held the event loop 30-45 ms during a 6 MB request, walking ~65,000 objects.
        gc.collect()
        gc.freeze()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in _SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            if sig == signal.SIGINT:
                self.force_exit = True
            return
        name = signal.Signals(sig).name
        grace = self.config.timeout_graceful_shutdown
        log.info("%s: draining (no new connections; requests in flight get up to %ss)", name, grace)
        self.should_exit = True
