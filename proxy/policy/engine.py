"""The policy engine: the proxy's rewrite hook (:class:`PolicyRewriter`).

Per request: pick the team's policy (routes, models, mode, client override),
find the text parts, give each to the first rule that matches it, compress the
selected parts in a worker pool under the policy's latency budget, and return
the body to forward.

Cache stability shapes everything here. Providers bill a cached prompt prefix
at 10-50% of the price, and the cache matches exact bytes, so a part must be
forwarded in the same form on every turn. The form a part is first forwarded
in (compressed, or unchanged after an error, a budget overrun or a too-small
saving) is memoized for the conversation that sent it (:mod:`proxy.policy.forms`:
keys, the in-process LRU and the shared store), without the query: later turns
re-send it byte-identical even after the query changed.

This module keeps the flow; its jobs live beside it: the rewrite being built and
its assembly (:mod:`~proxy.policy.outcome`), token counts (:mod:`~proxy.policy.counting`),
query planning (:mod:`~proxy.policy.planner`), a retrieve policy's glue
(:mod:`~proxy.policy.retrieval`) and the warm-up (:mod:`~proxy.policy.warm_up`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from compressors.tokenizer import Tokenizer
from proxy.apis import Block, Dialect, Part
from proxy.config.model import MemoConfig
from proxy.exchange import Exchange, Rewrite
from proxy.logs import RateLimitedLog
from proxy.metrics import Metrics
from proxy.policy.compaction_log import CompactionLog
from proxy.policy.compactor import Compacted, Compactor, PriceSource
from proxy.policy.compressor_pool import Failed, Job, WorkerPool
from proxy.policy.counting import INLINE_COUNT_CHARS, TokenCounter, walk
from proxy.policy.forms import Form, FormMemory, form_keys, text_digest, turn_digests
from proxy.policy.model import Policy, PolicySet, Rule
from proxy.policy.originals import Originals
from proxy.policy.outcome import Outcome, Selected, assemble
from proxy.policy.planner import QueryPlanner
from proxy.policy.query import QueryPlan
from proxy.policy.retrieval import ScopedOriginals, offers
from proxy.policy.steps import StepTrace
from proxy.policy.warm_up import WarmUp
from proxy.store.base import SharedStore
from proxy.store.tokens import COUNTS_BYTES, TokenMemo

__all__ = ["PolicyRewriter"]

log = logging.getLogger("tersegate.policy")

_MODE_HEADER = "x-tersegate-mode"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value.strip().lower()
    return None


def _matches(rule: Rule, part: Part, tokens: int) -> bool:
    m = rule.match
    if m.roles is not None and not (m.roles & part.roles):
        return False
    if tokens < m.min_tokens or (m.max_tokens is not None and tokens > m.max_tokens):
        return False
    if m.tool_names is not None and not any(
        fnmatch.fnmatchcase(part.tool_name or "", glob) for glob in m.tool_names
    ):
        return False
    if m.skip_last_user and part.last_user:
        return False
    return m.older_than_turns is None or part.age >= m.older_than_turns


class PolicyRewriter:
    """Implements :class:`proxy.exchange.Rewriter`. ``policies`` is swapped whole on reload."""

    def __init__(
        self,
        policies: PolicySet,
        *,
        memo_bytes: int,
        workers: int,
        metrics: Metrics | None = None,
        store: SharedStore | None = None,
        memo: MemoConfig | None = None,
        max_part_chars: int = 50_000,
        prices: PriceSource | None = None,
        cache_idle_s: Mapping[str, float] | None = None,
        originals: Originals | None = None,
        tokens: TokenMemo | None = None,
    ) -> None:
        """``tokens``: the token memo the audit's cache model reads too (each text of a request
        tokenized once); without one, a memo of counts only."""
        self.policies = policies
        self.originals = originals  # where retrieve policies keep originals (None: not kept)
        self.metrics = metrics
        self.max_part_chars = max_part_chars
        self._workers = WorkerPool(workers)  # compression: processes (see proxy.policy.compressor_pool)
        self._fail_open_log = RateLimitedLog(log)  # the reason's kind only: messages may quote text
        memo = memo or MemoConfig()
        self.forms = FormMemory(
            lru_bytes=memo_bytes,
            store=store,
            backend=memo.backend,
            timeout_s=memo.timeout_s,
            shared_across_teams=memo.shared_across_teams,
            metrics=metrics,
        )
        self.tokens = tokens or TokenMemo(
            ids_bytes=0,
            counts_bytes=min(COUNTS_BYTES, memo_bytes),
            shared_across_teams=memo.shared_across_teams,
        )
        self._counter = TokenCounter(self.tokens)
        self._planner = QueryPlanner(max_part_chars)
        # History compaction (docs/compaction.md): its batches live in the same store as the forms.
        self.compactor = Compactor(CompactionLog(store, timeout_s=memo.timeout_s), prices)
        self.cache_idle_s = dict(cache_idle_s or {})  # upstream name -> its cache's lifetime
        self._warm_up = WarmUp(self._workers, self._changed)
        self.warmed = self._warm_up.warmed  # set once a warm-up pass has finished
        self.on_warm_change: Callable[[], None] | None = None  # readiness changed (worker board)

    def close(self) -> None:
        self._warm_up.cancel()
        self._workers.close()

    def start(self) -> None:
        """Load the policies' models in the background (at start), so the first requests do not
        spend their latency budget on loading."""
        self._warm_up.start(lambda: self.policies)

    async def adopt(self, policies: PolicySet) -> None:
        """A reload: warm ``policies``' compressors in the workers (one at a time; the others go
        on serving the current policies), then swap them in whole. No request meets a cold worker."""
        await self._warm_up.workers_for(policies)
        self.policies = policies
        self._warm_up.report(policies)
        self._changed()

    def readiness(self) -> tuple[list[str], dict[str, str]]:
        """``(rules whose model is still loading, rules whose warm-up failed: why)``; both empty
        once every model the loaded policies need is warm (``GET /readyz``)."""
        return self._warm_up.readiness()

    def is_ready(self) -> bool:
        """Warmed up, and every worker process is up with the current rules."""
        return self._warm_up.is_ready()

    async def ready(self) -> None:
        """Load the token counters of OpenAI's current encodings here (every audited request
        counts), and run each rule's compressor once on a small text in every worker process."""
        await self._warm_up.run(lambda: self.policies)

    def _changed(self) -> None:
        if self.on_warm_change is not None:
            self.on_warm_change()

    async def __call__(self, exchange: Exchange, body: dict[str, Any], headers: Mapping[str, str]) -> Rewrite:
        policy = self.policies.for_team(exchange.team)
        try:
            if policy is None:
                return await self._counter.measured(Rewrite(skipped="no policy for team"), exchange, body)
            return await self._rewrite(policy, exchange, body, headers)
        except Exception as exc:  # the hook never raises: forward the original
            name = policy.name if policy else None
            log.exception("policy %s failed on request %s", name, exchange.request_id)
            self._count_fail_open(exchange.team, "internal_error", exchange)
            mode = policy.mode if policy else "off"
            return Rewrite(policy=name, mode=mode, fail_open=f"internal_error: {type(exc).__name__}"[:300])

    def _mode(self, policy: Policy, headers: Mapping[str, str]) -> tuple[str, str | None]:
        """``(mode, override)``: the mode to run and what became of the client's ask, if any."""
        asked = _header(headers, _MODE_HEADER)
        if asked is None:
            return policy.mode, None
        if asked not in ("off", "shadow"):  # the client's value is not echoed
            return policy.mode, "refused: only off or shadow can be asked for"
        if not policy.allow_client_override:
            return policy.mode, f"refused: policy {policy.name} does not allow client overrides"
        return asked, "applied"

    async def _rewrite(
        self, policy: Policy, exchange: Exchange, body: dict[str, Any], headers: Mapping[str, str]
    ) -> Rewrite:
        model = body.get("model") if isinstance(body.get("model"), str) else exchange.model
        if not policy.applies(exchange.route, model):
            skipped = Rewrite(policy=policy.name, mode="off", skipped="route or model not in policy")
            return await self._counter.measured(skipped, exchange, body)
        mode, override = self._mode(policy, headers)
        if mode == "off":
            off = Rewrite(policy=policy.name, mode="off", override=override)
            return await self._counter.measured(off, exchange, body)
        # The budget runs from the request's arrival: reading and counting a large body use it too.
        deadline = exchange.arrived + policy.latency_budget_ms / 1000
        dialect, blocks, parts = walk(exchange, body)
        tokenizer = await self._counter.tokenizer(model)
        scope = self.forms.namespace(exchange.team)
        counts = await asyncio.to_thread(self._counter.parts, tokenizer, parts, exchange.team)
        outcome = await self._select(policy, parts, counts, tokenizer, scope)
        if policy.retrieve and mode == "enforce":
            await self._reference(exchange.team, outcome)
        await self._compress_new(policy, outcome, parts, model, deadline)
        await self._settle(policy, outcome)
        if outcome.fail_open is not None:
            self._count_fail_open(exchange.team, outcome.fail_open.split(":", 1)[0], exchange)
        if self.metrics is not None:
            self.metrics.compress_seconds.labels(team=exchange.team).observe(outcome.compress_ms / 1000)
        walked = (dialect, blocks, parts)
        compacted = await self._compact(policy, exchange, body, walked, counts, outcome, tokenizer, deadline)
        if (
            self.metrics is not None
            and compacted is not None
            and compacted.decision
            and compacted.decision.stubs
        ):
            self.metrics.compaction_batches.labels(team=exchange.team, reason=compacted.reason).inc()
        retrieve = policy.retrieve and mode == "enforce" and self.originals is not None
        result = assemble(policy, mode, body, parts, counts, outcome, compacted, retrieve=retrieve)
        result.tokens_other = await self._counter.other(dialect, body, blocks, tokenizer, exchange.team)
        result.override = override
        return result

    def _count_fail_open(self, team: str, reason: str, exchange: Exchange | None = None) -> None:
        self._fail_open_log.info(
            (team, reason),
            "fail-open: the original request was forwarded request_id=%s team=%s reason=%s",
            exchange.request_id if exchange is not None else "-",
            team,
            reason,
        )
        if self.metrics is not None:
            self.metrics.fail_open.labels(team=team, reason=reason).inc()

    async def _select(
        self, policy: Policy, parts: Sequence[Part], counts: Sequence[int], tokenizer: Tokenizer, scope: str
    ) -> Outcome:
        outcome = Outcome(namespace=scope)
        texts = [part.text for part in parts]
        if sum(len(t) for t in texts) < INLINE_COUNT_CHARS:
            digests = [text_digest(t) for t in texts]
        else:  # hashing a huge body (its encoding step holds the GIL) off the loop
            digests = await asyncio.to_thread(lambda: [text_digest(t) for t in texts])
        turns = turn_digests(parts, digests)
        for i, (part, tokens) in enumerate(zip(parts, counts, strict=True)):
            rule = next((r for r in policy.rules if _matches(r, part, tokens)), None)
            if rule is None:
                continue
            # Bounded work: a part too long for every one of its rule's steps goes as it came.
            too_large = len(part.text) > self.max_part_chars and _all_model(rule)
            # The kept spans of a part depend on its own text only; the query on the whole request.
            compress = rule.action == "compress" and not too_large
            keep = (
                self._planner.plan(policy, self._planner.planning([part]), part, rule).keep
                if compress
                else ()
            )
            keys = form_keys(rule, tokenizer.encoding, part, digests[i], turns[i], keep)
            chosen = Selected(part, rule, tokens, keys)
            if rule.action == "drop":
                chosen.form, chosen.source = Form(None, 0, note="dropped"), "drop"
            elif too_large:
                chosen.form, chosen.source = Form(None, tokens, note="above max_part_chars"), "too_large"
            elif tokens == 0:
                chosen.form, chosen.source = Form(None, 0), "memo"
            outcome.selected.append(chosen)
        lookups = [c for c in outcome.selected if c.source == "new"]
        wanted = [[c.keys.conversation, *([c.keys.shared] if c.keys.shared else [])] for c in lookups]
        for chosen, form in zip(lookups, await self.forms.recall(scope, wanted), strict=True):
            if form is not None:
                chosen.form, chosen.source = form, "memo"
        return outcome

    async def _compress_new(
        self, policy: Policy, outcome: Outcome, parts: Sequence[Part], model: str | None, deadline: float
    ) -> None:
        """Compress the new parts in the worker processes; whatever is not back by ``deadline``
        is forwarded as it came (a job still running then is abandoned, see policy.compressor_pool)."""
        planning = self._planner.planning(parts)
        jobs: dict[tuple[str, str, QueryPlan], Job] = {}
        wanted: dict[int, tuple[str, str, QueryPlan]] = {}
        for i, chosen in enumerate(outcome.selected):
            if chosen.form is not None:
                continue
            rule = chosen.rule
            plan = self._planner.plan(policy, planning, chosen.part, rule)
            key = wanted[i] = (rule.identity, chosen.part.text, plan)  # one job per distinct input
            if key not in jobs:
                jobs[key] = Job(
                    rule.identity,
                    rule.steps,
                    chosen.part.text,
                    chosen.tokens,
                    plan,
                    model,
                    deadline,
                    outcome.namespace,
                    self.max_part_chars,
                    chosen.ref,
                )
        if not jobs:
            return
        started = time.perf_counter()
        if deadline <= time.monotonic():
            outcome.fail_open = "latency_budget"  # spent before compression could start
            return
        futures = {key: self._workers.submit(job) for key, job in jobs.items()}
        _, pending = await asyncio.wait(futures.values(), timeout=deadline - time.monotonic())
        outcome.compress_ms = (time.perf_counter() - started) * 1000
        results: dict[tuple[str, str, QueryPlan], tuple[Form, tuple[StepTrace, ...]]] = {}
        for key, future in futures.items():
            result = None if future in pending else future.result()
            if result is None:
                outcome.fail_open = outcome.fail_open or "latency_budget"
                future.cancel()  # a queued job never starts; a running one is abandoned
            elif isinstance(result, Failed):
                outcome.fail_open = outcome.fail_open or f"compressor_error: {result.reason}"[:300]
            else:
                results[key] = Form(result.text, result.tokens_after, result.ms, result.note), result.steps
        for i, key in wanted.items():
            outcome.selected[i].made, outcome.selected[i].steps = results.get(key, (None, ()))

    async def _reference(self, team: str, outcome: Outcome) -> None:
        """Retrieve policies: each new part's id (its markers carry it as ``hash=``)."""
        new = [c for c in outcome.selected if c.source == "new"]
        if self.originals is None or not new:
            return
        scope = self.originals.scope(team)
        for chosen, ref in zip(
            new, await self.originals.refs(scope, [c.part.text for c in new]), strict=True
        ):
            chosen.ref = ref
        outcome.originals_scope = scope

    async def _keep_originals(self, outcome: Outcome, new: Sequence[Selected]) -> None:
        """Keep the original of every new part whose forwarded form points at it (``hash=``)."""
        items = [(c.ref, c.part.text, c.form.text) for c in new if c.ref and c.form and c.form.text]
        if self.originals is not None and items:
            await self.originals.keep_referenced(outcome.originals_scope, items)

    async def _settle(self, policy: Policy, outcome: Outcome) -> None:
        """Apply fail-open and ``min_saving_tokens`` to new parts, and memoize the form each
        new part is forwarded in (first writer wins, across processes when the store is up)."""
        new = [c for c in outcome.selected if c.source == "new"]
        saving = sum(c.tokens - c.made.tokens_after for c in new if c.made and c.made.text is not None)
        saving += sum(c.tokens for c in outcome.selected if c.source == "drop")
        keep_new = outcome.fail_open is None and saving >= policy.min_saving_tokens
        writes: list[tuple[str, Form]] = []
        for chosen in outcome.selected:
            if chosen.source == "drop" and not keep_new:
                note = outcome.fail_open or "below min_saving_tokens"
                chosen.form, chosen.source = Form(None, chosen.tokens, note=note), "kept"
        for chosen in new:
            made = chosen.made
            form = made if keep_new and made is not None else None
            if form is None:
                own = made.note if made is not None and made.text is None else ""
                # A part that saved nothing says why (the compressor's note), not the request's total.
                note = outcome.fail_open or own or ("below min_saving_tokens" if made else "")
                form = Form(None, chosen.tokens, made.ms if made else 0.0, note)
            chosen.form = form
            if chosen.keys.shared is not None and made is not None:
                writes.append((chosen.keys.shared, made))  # the text's form, for any conversation
                if form == made:
                    continue  # the shared entry is what later turns find
            writes.append((chosen.keys.conversation, form))  # this conversation's form
        if not writes:
            return
        won, _ = await asyncio.gather(
            self.forms.keep(outcome.namespace, writes), self._keep_originals(outcome, new)
        )
        for chosen in new:
            key = chosen.keys.conversation if chosen.keys.conversation in won else chosen.keys.shared
            if key is not None and key in won:
                chosen.form = won[key]

    async def _compact(
        self,
        policy: Policy,
        exchange: Exchange,
        body: dict[str, Any],
        walked: tuple[Dialect, Sequence[Block], Sequence[Part]],
        counts: Sequence[int],
        outcome: Outcome,
        tokenizer: Tokenizer,
        deadline: float,
    ) -> Compacted | None:
        """Replay the conversation's compactions and maybe add a batch (policy.compaction)."""
        if policy.compaction is None:
            return None
        dialect, blocks, parts = walked
        model = body.get("model") if isinstance(body.get("model"), str) else exchange.model
        passing = outcome.passing()

        async def catch_up(
            paths: Sequence[tuple[str | int, ...]],
        ) -> dict[tuple[str | int, ...], tuple[str, int]]:
            again = Outcome(
                outcome.namespace, [dataclasses.replace(passing[p], form=None) for p in paths if p in passing]
            )
            await self._compress_new(policy, again, parts, model, deadline)
            made = [
                (c.part.path, c.made)
                for c in again.selected
                if c.made is not None and c.made.text is not None
            ]
            return {path: (form.text, form.tokens_after) for path, form in made if form.text is not None}

        _, _, forwarded = outcome.forwarded(parts, counts)
        try:
            return await self.compactor(
                policy.compaction,
                scope=outcome.namespace,
                dialect=dialect,
                body=body,
                blocks=blocks,
                model=model,
                parts=parts,
                tokens=forwarded,
                # Stubs are counted through the memo: the audit reads their ids.
                count=functools.partial(self.tokens.count, exchange.team, tokenizer),
                catch_up=catch_up,
                idle_s=self.cache_idle_s.get(exchange.upstream),
                retrieval=ScopedOriginals(self.originals, self.originals.scope(exchange.team))
                if policy.retrieve and self.originals is not None
                else None,
                # read only with retrieval on: the scan runs on the event loop, over whole parts
                offered=bool(policy.retrieve and self.originals is not None)
                and offers(
                    parts, {c.part.path: c.form.text for c in outcome.selected if c.form and c.form.text}
                ),
            )
        except Exception:  # compaction is an optimisation: the request goes on without it
            log.exception("compaction failed")
            return None


def _all_model(rule: Rule) -> bool:
    """Every step of ``rule`` runs a model (none may run on a part above ``max_part_chars``)."""
    return all(step.compressor.cost_class == "model" for step in rule.steps)
