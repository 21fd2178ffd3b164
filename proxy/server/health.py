"""What ``/healthz`` knows about each upstream: its last success and last failure.

Liveness stays the proxy's own (``/healthz`` answers 200 while the upstream is down): an
orchestrator must not restart the proxy for an upstream outage. The report lets an operator (or a
readiness probe that wants it) see that the upstream is refusing connections or timing out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["UpstreamHealth"]


@dataclass(slots=True)
class _State:
    last_success: float | None = None  # time.time()
    last_failure: float | None = None
    last_error: str | None = None
    failures_in_a_row: int = 0


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class UpstreamHealth:
    """Per upstream name: updated by the event loop only (no lock needed)."""

    def __init__(self) -> None:
        self._states: dict[str, _State] = {}

    def success(self, upstream: str) -> None:
        state = self._states.setdefault(upstream, _State())
        state.last_success = time.time()
        state.failures_in_a_row = 0

    def failure(self, upstream: str, kind: str) -> None:
        state = self._states.setdefault(upstream, _State())
        state.last_failure = time.time()
        state.last_error = kind
        state.failures_in_a_row += 1

    def report(self, names: list[str]) -> dict[str, Any]:
        """``{name: {state, last_success, last_failure, last_error, failures_in_a_row}}``;
        ``state`` is ``ok`` (the last attempt got a response), ``failing`` or ``unknown`` (no traffic yet)."""
        out: dict[str, Any] = {}
        for name in names:
            state = self._states.get(name, _State())
            failing = state.failures_in_a_row > 0
            known = state.last_success is not None or state.last_failure is not None
            out[name] = {
                "state": "failing" if failing else "ok" if known else "unknown",
                "last_success": _iso(state.last_success),
                "last_failure": _iso(state.last_failure),
                "last_error": state.last_error,
                "failures_in_a_row": state.failures_in_a_row,
            }
        return out
