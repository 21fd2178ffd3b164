"""The proxy's answer to the model's ``tersegate_expand`` calls (issue 21; docs/retrieve.md)."""

from typing import Any

from proxy.apis import Dialect
from proxy.apis.wire import TOOL_NAME, Wire, wire_for
from proxy.exchange import Rewrite
from proxy.server.expand.loop import ExpandLoop, Upstream, identity_encoding

__all__ = ["TOOL_NAME", "ExpandLoop", "Upstream", "Wire", "identity_encoding", "offer", "wire_for"]


def offer(rewrite: Rewrite, dialect: Dialect, body: dict[str, Any]) -> None:
    """A retrieve policy's request that carries tools is forwarded with ``tersegate_expand`` added
    (always, not only when a marker is in it: the tools prefix stays cache-stable). The server and
    ``tersegate compress`` both call this, so both forward the same body."""
    wire = wire_for(dialect)
    if rewrite.retrieve and wire is not None:
        rewrite.body = wire.offer(rewrite.body or body) or rewrite.body
