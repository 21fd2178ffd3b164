"""The proxy's answer to the model's ``tersegate_expand`` calls (issue 21; docs/retrieve.md)."""

from typing import Any

from proxy.server.expand.loop import ExpandLoop, Upstream, identity_encoding
from proxy.server.expand.wire import TOOL_NAME, Wire, wire_for

__all__ = ["TOOL_NAME", "ExpandLoop", "Upstream", "Wire", "identity_encoding", "offer", "wire_for"]


def offer(route: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """``body`` with ``tersegate_expand`` added, for a route whose loop the proxy runs and a body
    that carries tools; else None."""
    wire = wire_for(route)
    return wire.offer(body) if wire is not None else None
