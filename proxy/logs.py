"""Logging: one line per event, ``time level logger message``, on stderr.

Nothing logged by the proxy carries a key or prompt text: requests are named by
their request id, team and route only. uvicorn's access log is off (it would
log every request at info and cost time on the hot path).
"""

from __future__ import annotations

import logging
import sys
import threading
import time

__all__ = ["RateLimitedLog", "setup_logging"]

_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def setup_logging(level: str, *, tag: str | None = None) -> None:
    """``tag`` (a worker's ``w1``) goes before every line's logger name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(_FORMAT.replace("%(name)s", f"[{tag}] %(name)s") if tag else _FORMAT)
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.access").disabled = True
    # asyncio's debug chatter may name peers and URLs; keep it at warning.
    logging.getLogger("asyncio").setLevel(max(logging.WARNING, root.level))


class RateLimitedLog:
    """At most one line per ``interval`` seconds per key (e.g. an upstream and an error kind); the
    next line that passes says how many were held back. For events that can come in floods
    (upstream failures, fail-opens, shed requests), so a bad minute does not flood the log."""

    def __init__(self, logger: logging.Logger, *, interval: float = 1.0, max_keys: int = 1000) -> None:
        self._log = logger
        self._interval = interval
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._last: dict[tuple[str, ...], tuple[float, int]] = {}  # key -> (last emitted, held back)

    def info(self, key: tuple[str, ...], message: str, *args: object) -> None:
        if not self._log.isEnabledFor(logging.INFO):
            return
        now = time.monotonic()
        with self._lock:
            last, held = self._last.get(key, (-self._interval, 0))
            if now - last < self._interval:
                self._last[key] = (last, held + 1)
                return
            if len(self._last) >= self._max_keys and key not in self._last:
                self._last.clear()  # keys come from config names and error kinds: few in practice
            self._last[key] = (now, 0)
        if held:
            self._log.info(message + " (+%d similar in the last %.0fs)", *args, held, now - last)
        else:
            self._log.info(message, *args)
