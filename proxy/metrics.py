"""Prometheus metrics, one registry per running app (tests run several apps in one process).

With several worker processes (``listen.workers``), the supervisor gives every worker
``PROMETHEUS_MULTIPROC_DIR`` (a fresh folder per run): prometheus-client then keeps each
process's values in files there, and ``/metrics``, whichever worker answers it, sums
them across all workers (counters and histograms summed; the in-flight gauge summed
over live workers).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Set by the supervisor for its workers only (read by prometheus-client at import, too).
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        r = self.registry
        # Forwarding core.
        self.requests = Counter(
            "tersegate_requests_total",
            "Requests by team, route and status",
            ["team", "route", "status"],
            registry=r,
        )
        self.upstream_latency = Histogram(
            "tersegate_upstream_latency_seconds",
            "Upstream time to response headers",
            ["upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "tersegate_requests_in_flight", "Requests being served", multiprocess_mode="livesum", registry=r
        )
        self.upstream_errors = Counter(
            "tersegate_upstream_errors_total",
            "Proxy-side upstream failures",
            ["upstream", "kind"],
            registry=r,
        )
        # Policy engine.
        self.compress_seconds = Histogram(
            "tersegate_compress_seconds", "Time spent compressing a request", ["team"], registry=r
        )
        self.fail_open = Counter(
            "tersegate_fail_open_total",
            "Requests forwarded uncompressed after an error",
            ["team", "reason"],
            registry=r,
        )
        self.compaction_batches = Counter(
            "tersegate_compaction_batches_total",
            "History compactions: batches of old parts replaced by stubs (docs/compaction.md)",
            ["team", "reason"],
            registry=r,
        )
        self.memo_lookups = Counter(
            "tersegate_memo_lookups_total",
            "Parts looked up in the compress-once memo, by where their form was found (lru, store, miss)",
            ["level"],
            registry=r,
        )
        self.memo_store_errors = Counter(
            "tersegate_memo_store_errors_total",
            "Memo store calls that failed or were skipped while it was down (served from the process's memo)",
            ["backend", "op"],
            registry=r,
        )
        self.expansions = Counter(
            "tersegate_expansions_total",
            "tersegate_expand calls the proxy answered, by status (ok, expired, unknown, unavailable, limit)",
            ["team", "status"],
            registry=r,
        )
        self.policy_reloads = Counter(
            "tersegate_policy_reloads_total", "Policy reloads by outcome", ["outcome"], registry=r
        )
        # Audit.
        self.tokens_before = Counter(
            "tersegate_tokens_before_total", "Prompt tokens before compression", ["team"], registry=r
        )
        self.tokens_after = Counter(
            "tersegate_tokens_after_total", "Prompt tokens after compression", ["team"], registry=r
        )
        # The bill, as the audit prices it (cache reads and writes included): before minus after is
        # the net saving, which is negative where compression raised the bill.
        self.cost_before_usd = Counter(
            "tersegate_cost_before_usd_total",
            "Dollars the requests would have cost as the client sent them",
            ["team"],
            registry=r,
        )
        self.cost_after_usd = Counter(
            "tersegate_cost_after_usd_total", "Dollars the requests cost as forwarded", ["team"], registry=r
        )
        self.saved_usd = Counter(
            "tersegate_saved_usd_total",
            "Dollars saved by the requests where compression lowered the bill (net: cost_before - cost_after)",
            ["team"],
            registry=r,
        )
        self.audit_write_errors = Counter(
            "tersegate_audit_write_errors_total",
            "Audit records that could not be written",
            ["team"],
            registry=r,
        )

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
