"""The optional access log (``access_log: PATH`` in config.yaml): one JSON line per proxied request.

Fields: ``ts`` (arrival, UTC), ``request_id``, ``method``, ``route`` (normalised), ``team``,
``key_id``, ``upstream``, ``status`` (as in the audit: 499 when the client left, the failure's status
for a stream ended early with ``partial``), ``ms`` (arrival to the end), ``upstream_ms``, ``stream``,
``error``, ``fail_open`` (the reason's kind). Never a key, never prompt text. Lines are written by a
logging thread (a queue in between), so the event loop does not wait on the disk.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from proxy.exchange import Exchange

__all__ = ["AccessLog"]


class _Line(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return str(record.msg)


class AccessLog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8", delay=False)
        handler.setFormatter(_Line())
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self._queue, handler)
        self._handler = handler
        self._listener.start()

    def write(self, exchange: Exchange | None, *, status: int, team: str, route: str) -> None:
        line: dict[str, Any] = {"status": status, "team": team, "route": route}
        if exchange is not None:
            fail_open = exchange.rewrite.fail_open
            line = {
                "ts": datetime.fromtimestamp(exchange.started, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
                + "Z",
                "request_id": exchange.request_id,
                "method": exchange.method,
                "route": exchange.route,
                "team": exchange.team,
                "key_id": exchange.key_id,
                "upstream": exchange.upstream,
                "status": exchange.status if exchange.status is not None else status,
                "ms": round((time.monotonic() - exchange.arrived) * 1000, 3),
                "upstream_ms": round(exchange.upstream_ms, 3) if exchange.upstream_ms is not None else None,
                "stream": exchange.stream,
                "error": exchange.error,
                "fail_open": fail_open.split(":", 1)[0] if fail_open else None,
            }
            if exchange.partial:
                line["partial"] = True
        record = logging.makeLogRecord({"msg": orjson.dumps(line).decode(), "levelno": logging.INFO})
        self._queue.put(record)

    def close(self) -> None:
        self._listener.stop()  # writes what is queued
        self._handler.close()
