"""What a running proxy is built from: config, metrics, the rewrite hook and the audit sink.

``build_services`` is the one place that wires the parts together; the server
(`proxy.app`) and the offline ``tersegate compress`` both use it, so they share
one code path. ``Services.config`` is swapped as a whole on hot reload.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.audit import JsonlAuditSink
from proxy.config import Config
from proxy.exchange import AuditSink, Exchange, Rewrite, Rewriter
from proxy.metrics import Metrics

__all__ = ["NoRewrite", "Services", "build_services"]


class NoRewrite:
    """The rewrite hook with no policy: a no-op, so the original bytes are sent."""

    async def __call__(self, exchange: Exchange, body: dict[str, Any], headers: Mapping[str, str]) -> Rewrite:
        return Rewrite()


@dataclass(slots=True)
class Services:
    config: Config
    metrics: Metrics
    rewriter: Rewriter
    audit: AuditSink | None = None

    async def aclose(self) -> None:
        if self.audit is not None:
            await self.audit.aclose()


def build_services(config: Config, *, metrics: Metrics | None = None) -> Services:
    metrics = metrics or Metrics()
    # Policy engine and audit sink are plugged in here as they land.
    audit: AuditSink | None = None
    if config.audit.path is not None:
        audit = JsonlAuditSink(config.audit, metrics=metrics)
    return Services(config=config, metrics=metrics, rewriter=NoRewrite(), audit=audit)
