"""The one state of a request in progress, shared by the entry (:mod:`proxy.server.app`), its
preparation (:mod:`proxy.server.preparing`) and the response paths (:mod:`proxy.server.responses`)."""

from __future__ import annotations

import asyncio

from proxy.apis import Route
from proxy.apis.stream_usage import UsageTap
from proxy.config.model import UpstreamConfig
from proxy.exchange import Exchange
from proxy.server.expand import ExpandLoop

__all__ = ["InFlight"]

_NOT_FORWARDED = UpstreamConfig("-", "")  # a request's upstream until it is chosen


class InFlight:
    """The one state of a request in progress: its route, team, exchange (once there is one),
    status and whether its response has started and its record been committed; once forwarded,
    its upstream, when it was sent and its stream's usage tap."""

    __slots__ = (
        "audited",
        "committed",
        "exchange",
        "expand",
        "route",
        "sent_at",
        "started",
        "status",
        "tap",
        "team",
        "upstream",
    )

    def __init__(self, route: Route) -> None:
        self.route = route
        self.exchange: Exchange | None = None
        self.started = False
        self.status = 0
        self.team = "-"
        self.audited = False
        self.committed: asyncio.Future[bool] | None = None  # the audit write, once started
        self.expand: ExpandLoop | None = None  # the proxy answers tersegate_expand calls
        self.upstream = _NOT_FORWARDED
        self.sent_at = 0.0  # time.perf_counter() when it was sent upstream
        self.tap: UsageTap | None = None

    def gone(self) -> None:
        """The client went away: 499 for the metrics, the access log and the audit record alike
        (the one place a request becomes 499)."""
        self.status = 499
        if self.exchange is not None:
            self.exchange.client_disconnected = True
            self.exchange.status = 499
