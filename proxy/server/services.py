"""What a running proxy is built from: config, metrics, the rewrite hook and the audit sink.

``build_services`` is the one place that wires the parts together; the server
(`proxy.server.app`) and the offline ``tersegate compress`` both use it, so they share
one code path. ``Services.config`` is swapped as a whole on hot reload.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.audit.cache_model import CacheModel
from proxy.audit.pricing import PriceBook
from proxy.audit.sink import JsonlAuditSink
from proxy.config.model import Config
from proxy.exchange import AuditSink, Exchange, Rewrite, Rewriter
from proxy.metrics import Metrics
from proxy.policy.engine import PolicyRewriter
from proxy.policy.model import PolicySet, load_policies
from proxy.policy.originals import Originals
from proxy.server.reload import PolicyReloader
from proxy.server.seats import WorkerSeat
from proxy.store.base import SharedStore
from proxy.store.factory import open_store
from proxy.store.memory import MemoryStore
from proxy.store.tokens import COUNTS_BYTES, IDS_BYTES, TokenMemo

__all__ = ["NoRewrite", "Services", "build_services"]

log = logging.getLogger("tersegate.serve")


class NoRewrite:
    """The rewrite hook with no policy: a no-op, so the original bytes are sent."""

    async def __call__(self, exchange: Exchange, body: dict[str, Any], headers: Mapping[str, str]) -> Rewrite:
        return Rewrite()

    def start(self) -> None:
        pass

    async def ready(self) -> None:
        pass

    def is_ready(self) -> bool:
        return True

    def close(self) -> None:
        pass


@dataclass(slots=True)
class Services:
    config: Config
    metrics: Metrics
    rewriter: Rewriter
    audit: AuditSink | None = None
    reloader: PolicyReloader | None = None
    seat: WorkerSeat | None = None  # one of several worker processes (listen.workers > 1)
    background: list[asyncio.Task[None]] = field(default_factory=list)

    def own_readiness(self) -> tuple[list[str], dict[str, str]]:
        """``(what is still loading, what failed to load: why)`` in this process."""
        pending: list[str] = []
        failed: dict[str, str] = {}
        if isinstance(self.rewriter, PolicyRewriter):
            pending, failed = self.rewriter.readiness()
        if isinstance(self.audit, JsonlAuditSink) and not self.audit.prices_loaded.is_set():
            pending.append("audit price map")
        return pending, failed

    def readiness(self) -> tuple[list[str], dict[str, str]]:
        """The same over every worker (``GET /readyz``)."""
        pending, failed = self.own_readiness()
        if self.seat is not None:
            more, more_failed = self.seat.siblings()
            pending += more
            failed.update(more_failed)
        return pending, failed

    def publish_readiness(self) -> None:
        if self.seat is not None:
            pending, failed = self.own_readiness()
            try:
                self.seat.publish(pending, failed)
            except OSError as exc:
                log.warning("cannot publish readiness to %s: %s", self.seat.run_dir, exc)

    async def _publish_when_priced(self, sink: JsonlAuditSink) -> None:
        await asyncio.to_thread(sink.prices_loaded.wait)
        self.publish_readiness()

    store: SharedStore | None = None  # compression.memo's backend: the memo's shared level
    originals: Originals | None = None  # retrieve policies' originals (tersegate_expand answers from it)

    async def start(self) -> None:
        """Start background work (hot reload, the rewriter's warm-up); the app's lifespan calls it at startup."""
        if self.reloader is not None:
            await self.reloader.start()
        if isinstance(self.audit, JsonlAuditSink):
            await asyncio.to_thread(self.audit.warm)  # the cost map, off the loop
        self.rewriter.start()
        if self.seat is not None and isinstance(self.audit, JsonlAuditSink):
            self.background.append(asyncio.create_task(self._publish_when_priced(self.audit)))

    def compression_state(self) -> str:
        """For /healthz: ``ready`` when every compression worker has its compressors loaded
        (after start, a reload or replacing an abandoned job's worker), else ``warming``."""
        return "ready" if self.rewriter.is_ready() else "warming"

    async def aclose(self) -> None:
        for task in self.background:
            task.cancel()
        if self.reloader is not None:
            await self.reloader.aclose()
        self.rewriter.close()
        if self.audit is not None:
            await self.audit.aclose()
        if self.store is not None:
            await self.store.aclose()


def build_services(
    config: Config, *, metrics: Metrics | None = None, seat: WorkerSeat | None = None
) -> Services:
    metrics = metrics or Metrics()
    policies = load_policies(config)  # raises ConfigErrors: serve and compress refuse to run on them
    audit: AuditSink | None = None
    memo = config.compression.memo
    store = open_store(memo)  # connects on first use
    prices = PriceBook()  # one cost map for the audit and compaction's break-even rule
    originals = _originals(config, store)
    # One token memo for the engine and the audit's cache model: each text of a request is
    # tokenized once. Ids are kept only when an audit reads them; counts always.
    tokens = TokenMemo(
        ids_bytes=IDS_BYTES if config.audit.path is not None else 0,
        counts_bytes=min(COUNTS_BYTES, config.compression.memo_bytes),
        shared_across_teams=memo.shared_across_teams,
    )
    rewriter = PolicyRewriter(
        policies,
        memo_bytes=config.compression.memo_bytes,
        workers=config.compression.workers,
        metrics=metrics,
        max_part_chars=config.compression.max_part_chars,
        store=None if memo.backend == "memory" else store,  # memory: the LRU alone is that level
        memo=memo,
        prices=prices,
        cache_idle_s={u.name: u.cache_idle_s for u in config.upstreams.values() if u.cache_idle_s},
        originals=originals,
        tokens=tokens,
    )
    if config.audit.path is not None:
        # The audit's cache model keeps its digests in the memo's store (restarts and workers share
        # it) and reads the token ids the engine kept as it counted.
        cache_model = CacheModel(store, tokens=tokens)
        audit = JsonlAuditSink(config.audit, metrics=metrics, cache_model=cache_model, prices=prices)
    services = Services(
        config=config,
        metrics=metrics,
        rewriter=rewriter,
        audit=audit,
        store=store,
        seat=seat,
        originals=originals,
    )
    rewriter.on_warm_change = services.publish_readiness

    async def apply(new_config: Config, policies: PolicySet) -> None:
        await rewriter.adopt(policies)  # warm in the workers first; the old set serves meanwhile
        services.config = new_config

    services.reloader = PolicyReloader(config, apply=apply, metrics=metrics)
    return services


def _originals(config: Config, store: SharedStore) -> Originals:
    """Originals live in the memo's backend (any replica answers); with the memory backend in an
    LRU of their own (``compression.retrieve.max_bytes``), so they never evict the memo's forms."""
    memo, retrieve = config.compression.memo, config.compression.retrieve
    return Originals(
        MemoryStore(max_bytes=retrieve.max_bytes) if memo.backend == "memory" else store,
        ttl_s=retrieve.ttl_s,
        seen_ttl_s=memo.max_age_s,
        shared_across_teams=memo.shared_across_teams,
        timeout_s=memo.timeout_s,
        max_return_chars=retrieve.max_return_chars,
    )
