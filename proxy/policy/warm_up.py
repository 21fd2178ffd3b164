"""The rewriter's warm-up: models and token counters loaded before ``/readyz`` says ready.

At start every rule's compressor runs once on a small text in each compression worker, and the
serving process loads the token counters of OpenAI's current encodings (every audited request
counts). A reload warms the new rules in the workers before the rewriter swaps its policies in, so
no request meets a cold worker. What is still loading, and what failed and why, is what
``GET /readyz`` reports.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from compressors.tokenizer import encoding_name_for, tokenizer_for
from proxy.policy.compressor_pool import WARM_MODELS, WARM_TIMEOUT_S, WorkerPool
from proxy.policy.model import PolicySet, Step

__all__ = ["WarmUp"]

log = logging.getLogger("tersegate.policy")


class WarmUp:
    """Warms ``workers`` for a policy set; ``changed`` is called whenever readiness changes."""

    def __init__(self, workers: WorkerPool, changed: Callable[[], None]) -> None:
        self._workers = workers
        self._changed = changed
        self._task: asyncio.Task[None] | None = None
        self.warmed = threading.Event()  # set once a warm-up pass has finished
        self._pending: set[str] = set()  # "policy/rule (compressor)" whose model is loading
        self._failed: dict[str, str] = {}  # the same, whose warm-up raised: why
        self._done: set[str] = set()  # tokenizers loaded (once per process)

    def start(self, policies: Callable[[], PolicySet]) -> None:
        """Run :meth:`run` in the background (at start)."""
        self.warmed.clear()
        self._failed.clear()
        self._task = asyncio.get_running_loop().create_task(self.run(policies), name="tersegate-warm-up")

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def run(self, policies: Callable[[], PolicySet]) -> None:
        """Load the token counters here, and warm the current ``policies()``' rules in every worker."""
        jobs = []
        for model in WARM_MODELS:
            label = f"tokenizer {encoding_name_for(model)[0]}"
            if label not in self._done:
                self._pending.add(label)
                jobs.append(self._tokenizer(label, model))
        self._pending |= set(_labels(policies()).values())
        self._changed()
        self._workers.warm(_worker_rules(policies()))
        await asyncio.gather(*jobs)
        await self._workers.warmed(timeout=WARM_TIMEOUT_S)
        self.report(policies())
        self._pending.clear()
        self.warmed.set()
        self._changed()

    async def workers_for(self, policies: PolicySet) -> None:
        """A reload: warm ``policies``' compressors in the workers (one worker at a time; the others
        go on serving the current policies)."""
        self._workers.warm(_worker_rules(policies))
        await self._workers.warmed(timeout=WARM_TIMEOUT_S)

    def readiness(self) -> tuple[list[str], dict[str, str]]:
        """``(rules whose model is still loading, rules whose warm-up failed: why)``."""
        if not self.warmed.is_set():
            return sorted(self._pending) or ["policies (warm-up starting)"], dict(self._failed)
        if not self._workers.ready():
            return ["compression workers (starting or replacing one)"], dict(self._failed)
        return [], dict(self._failed)

    def is_ready(self) -> bool:
        return self.warmed.is_set() and self._workers.ready()

    async def _tokenizer(self, label: str, model: str) -> None:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(_count_once, model)  # loading it parses a 4 MB file
        except Exception as exc:  # counts fall back, and say why, at first use
            log.warning("warm-up of %s failed: %s", label, exc)
            self._failed[label] = f"{type(exc).__name__}: {exc}"[:300]
        else:
            self._done.add(label)
            log.info("warm: %s in %.1f s", label, time.perf_counter() - started)
        finally:
            self._pending.discard(label)

    def report(self, policies: PolicySet) -> None:
        """Log each rule's warm-up as the workers reported it; keep the failures for /readyz."""
        for key in [k for k in self._failed if not k.startswith("tokenizer ")]:
            del self._failed[key]
        for identity, label in _labels(policies).items():
            report = self._workers.report.get(identity)
            if report is None:
                continue
            if report.error is not None:
                log.warning("warm-up of %s failed: %s", label, report.error)
                self._failed[label] = report.error
            else:
                log.info("warm: %s in %.1f s", label, report.seconds)


def _count_once(model: str) -> None:
    tokenizer_for(model).count("warm-up")


def _worker_rules(policies: PolicySet) -> list[tuple[str, tuple[Step, ...]]]:
    """What the compression workers warm: each distinct rule identity once."""
    rules = {
        rule.identity: (rule.identity, rule.steps)
        for policy in policies.policies.values()
        for rule in policy.rules
        if rule.steps
    }
    return list(rules.values())


def _labels(policies: PolicySet) -> dict[str, str]:
    """Rule identity -> ``policy/rule (compressor)``, as /readyz and the log name them."""
    labels: dict[str, str] = {}
    for policy in policies.policies.values():
        for rule in policy.rules:
            if rule.steps:
                labels.setdefault(rule.identity, f"{policy.name}/{rule.name} ({rule.compressor_name})")
    return labels
