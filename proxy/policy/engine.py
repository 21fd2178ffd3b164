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
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from compressors.tokenizer import Tokenizer, encoding_name_for, tokenizer_for
from proxy.apis import Block, Dialect, Part, dialect_for, rewrite_body
from proxy.config.model import MemoConfig
from proxy.exchange import Exchange, Rewrite
from proxy.logs import RateLimitedLog
from proxy.metrics import Metrics
from proxy.policy.compaction_log import CompactionLog
from proxy.policy.compactor import Compacted, Compactor, PriceSource
from proxy.policy.compressor_pool import WARM_MODELS, WARM_TIMEOUT_S, Failed, Job, WorkerPool
from proxy.policy.forms import Form, FormKeys, FormMemory, form_keys, text_digest, turn_digests
from proxy.policy.model import Policy, PolicySet, Rule, Step
from proxy.policy.originals import Originals
from proxy.policy.query import POINTER_SCAN_CHARS, SHAPED, TOOL_ROLES, QueryPlan, plan_query, pointers_of
from proxy.policy.steps import StepTrace
from proxy.store.base import SharedStore
from proxy.store.lru import BytesLRU
from proxy.store.tokens import COUNTS_BYTES, TokenMemo

__all__ = ["PolicyRewriter"]

log = logging.getLogger("tersegate.policy")

_MODE_HEADER = "x-tersegate-mode"
_POINTERS_BYTES = 4 * 1024 * 1024
_INLINE_COUNT_CHARS = 4096  # ~1k tokens: cheaper to count than to hop to a thread
# Forms memoised as they came for a reason that passes (warm-up, a budget overrun, an error):
# a compaction batch compresses them when it changes the history anyway.
_PASSING = ("latency_budget", "compressor_error")
_RETRIEVABLE = re.compile(r"; hash=[0-9a-f]{24}\]")  # a marker whose original can be got back
_QUERY_TAIL_CHARS = 8000  # what query planning reads of a part too large to compress
# Token counters loaded before /readyz says ready: (encoding, a model that uses it).


@dataclass(slots=True)
class _Selected:
    part: Part
    rule: Rule
    tokens: int
    keys: FormKeys
    form: Form | None = None
    made: Form | None = None  # what the compressor returned, for a new part
    source: str = "new"  # new | memo | drop | kept (a drop called off) | too_large (max_part_chars)
    ref: str | None = None  # retrieve policies: the original's id, for hash= in its markers
    steps: tuple[StepTrace, ...] = ()  # what each step did, for a new part (--explain)


@dataclass(slots=True)
class _Outcome:
    """The rewrite being built for one request."""

    namespace: str
    selected: list[_Selected] = field(default_factory=list)
    fail_open: str | None = None
    compress_ms: float = 0.0
    originals_scope: str = ""  # retrieve policies: the scope originals are kept in


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value.strip().lower()
    return None


def _walk(exchange: Exchange, body: dict[str, Any]) -> tuple[Dialect, tuple[Block, ...], list[Part]]:
    """The route's dialect, the body's blocks (walked once: the audit's cache model reuses them) and parts."""
    dialect = dialect_for(exchange.route, exchange.api)
    blocks = dialect.walk(body)
    exchange.blocks = blocks
    return dialect, blocks, dialect.parts(body, blocks)


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
        self._tokenizers: dict[str | None, Tokenizer] = {}
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
        # The lines each earlier tool output points at (tool queries), scanned once per text.
        self._pointers: BytesLRU[tuple[str, ...]] = BytesLRU(max_bytes=_POINTERS_BYTES, entry_overhead=200)
        # History compaction (docs/compaction.md): its batches live in the same store as the forms.
        self.compactor = Compactor(CompactionLog(store, timeout_s=memo.timeout_s), prices)
        self.cache_idle_s = dict(cache_idle_s or {})  # upstream name -> its cache's lifetime
        self._warming: asyncio.Task[None] | None = None
        self.warmed = threading.Event()  # set once a warm-up pass has finished
        self._pending: set[str] = set()  # "policy/rule (compressor)" whose model is loading
        self._failed: dict[str, str] = {}  # the same, whose warm-up raised: why
        self._warm_done: set[str] = set()  # tokenizers loaded (once per process)
        self.on_warm_change: Callable[[], None] | None = None  # readiness changed (worker board)

    def close(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
        self._workers.close()

    def start(self) -> None:
        """Load the policies' models in the background (at start), so the first requests do not
        spend their latency budget on loading."""
        self.warmed.clear()
        self._failed.clear()
        self._warming = asyncio.get_running_loop().create_task(self.ready(), name="tersegate-warm-up")

    async def adopt(self, policies: PolicySet) -> None:
        """A reload: warm ``policies``' compressors in the workers (one at a time; the others go
        on serving the current policies), then swap them in whole. No request meets a cold worker."""
        self._workers.warm(_worker_rules(policies))
        await self._workers.warmed(timeout=WARM_TIMEOUT_S)
        self.policies = policies
        self._report(policies)
        self._changed()

    def readiness(self) -> tuple[list[str], dict[str, str]]:
        """``(rules whose model is still loading, rules whose warm-up failed: why)``; both empty
        once every model the loaded policies need is warm (``GET /readyz``)."""
        if not self.warmed.is_set():
            return sorted(self._pending) or ["policies (warm-up starting)"], dict(self._failed)
        if not self._workers.ready():
            return ["compression workers (starting or replacing one)"], dict(self._failed)
        return [], dict(self._failed)

    def is_ready(self) -> bool:
        """Warmed up, and every worker process is up with the current rules."""
        return self.warmed.is_set() and self._workers.ready()

    async def ready(self) -> None:
        """Load the token counters of OpenAI's current encodings here (every audited request
        counts), and run each rule's compressor once on a small text in every worker process."""
        jobs = []
        for model in WARM_MODELS:
            label = f"tokenizer {encoding_name_for(model)[0]}"
            if label not in self._warm_done:
                self._pending.add(label)
                jobs.append(self._warm_tokenizer(label, model))
        self._pending |= set(_labels(self.policies).values())
        self._changed()
        self._workers.warm(_worker_rules(self.policies))
        await asyncio.gather(*jobs)
        await self._workers.warmed(timeout=WARM_TIMEOUT_S)
        self._report(self.policies)
        self._pending.clear()
        self.warmed.set()
        self._changed()

    async def _warm_tokenizer(self, label: str, model: str) -> None:
        started = time.perf_counter()
        try:
            await asyncio.to_thread(_count_once, model)  # loading it parses a 4 MB file
        except Exception as exc:  # counts fall back, and say why, at first use
            log.warning("warm-up of %s failed: %s", label, exc)
            self._failed[label] = f"{type(exc).__name__}: {exc}"[:300]
        else:
            self._warm_done.add(label)
            log.info("warm: %s in %.1f s", label, time.perf_counter() - started)
        finally:
            self._pending.discard(label)

    def _report(self, policies: PolicySet) -> None:
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

    def _changed(self) -> None:
        if self.on_warm_change is not None:
            self.on_warm_change()

    async def __call__(self, exchange: Exchange, body: dict[str, Any], headers: Mapping[str, str]) -> Rewrite:
        policy = self.policies.for_team(exchange.team)
        try:
            if policy is None:
                return await self._measured(Rewrite(skipped="no policy for team"), exchange, body)
            return await self._rewrite(policy, exchange, body, headers)
        except Exception as exc:  # the hook never raises: forward the original
            name = policy.name if policy else None
            log.exception("policy %s failed on request %s", name, exchange.request_id)
            self._count_fail_open(exchange.team, "internal_error", exchange)
            mode = policy.mode if policy else "off"
            return Rewrite(policy=name, mode=mode, fail_open=f"internal_error: {type(exc).__name__}"[:300])

    async def _measured(self, rewrite: Rewrite, exchange: Exchange, body: dict[str, Any]) -> Rewrite:
        """Count the prompt text of a request no rule looks at, so the audit still has
        its tokens (before == after). Small bodies are counted inline, large ones off the loop."""
        model = body.get("model") if isinstance(body.get("model"), str) else exchange.model
        dialect, blocks, parts = _walk(exchange, body)
        tokenizer = await self._tokenizer(model)
        team = exchange.team
        if sum(len(p.text) for p in parts) < _INLINE_COUNT_CHARS:
            counts = self._count_all(tokenizer, parts, team)
        else:
            counts = await asyncio.to_thread(self._count_all, tokenizer, parts, team)
        rewrite.tokens_before = rewrite.tokens_after = sum(counts)
        rewrite.tokens_other = await self._count_other(dialect, body, blocks, tokenizer, team)
        return rewrite

    async def _count_other(
        self,
        dialect: Dialect,
        body: dict[str, Any],
        blocks: Sequence[Block],
        tokenizer: Tokenizer,
        team: str,
    ) -> int | None:
        """Where the counts are estimates (Anthropic): tokens of what is sent besides the parts
        (tools, tool inputs), so the upstream's exact count can calibrate them."""
        if not dialect.estimated_tokens:
            return None
        texts = dialect.other_texts(body, blocks)
        if sum(len(t) for t in texts) < _INLINE_COUNT_CHARS:
            return sum(self.tokens.counts(team, tokenizer, texts))
        return sum(await asyncio.to_thread(self.tokens.counts, team, tokenizer, texts))

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
            return await self._measured(skipped, exchange, body)
        mode, override = self._mode(policy, headers)
        if mode == "off":
            off = Rewrite(policy=policy.name, mode="off", override=override)
            return await self._measured(off, exchange, body)
        # The budget runs from the request's arrival: reading and counting a large body use it too.
        deadline = exchange.arrived + policy.latency_budget_ms / 1000
        dialect, blocks, parts = _walk(exchange, body)
        tokenizer = await self._tokenizer(model)
        scope = self.forms.namespace(exchange.team)
        counts = await asyncio.to_thread(self._count_all, tokenizer, parts, exchange.team)
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
        result = self._result(policy, mode, body, parts, counts, outcome, compacted, retrieve=retrieve)
        result.tokens_other = await self._count_other(dialect, body, blocks, tokenizer, exchange.team)
        result.override = override
        return result

    async def _tokenizer(self, model: str | None) -> Tokenizer:
        """The model's tokenizer; the first use of an encoding loads it in a thread (a second of
        pure-Python parsing, behind a lock the warm-up may hold, must not stop the event loop)."""
        tokenizer = self._tokenizers.get(model)
        if tokenizer is None:
            tokenizer = await asyncio.to_thread(tokenizer_for, model)
            if len(self._tokenizers) < 256:  # model names come from clients
                self._tokenizers[model] = tokenizer
        return tokenizer

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

    def _count_all(self, tokenizer: Tokenizer, parts: Sequence[Part], team: str) -> list[int]:
        # Through the token memo, per team: the audit's cache model reuses the ids it keeps.
        return self.tokens.counts(team, tokenizer, [part.text for part in parts])

    async def _select(
        self, policy: Policy, parts: Sequence[Part], counts: Sequence[int], tokenizer: Tokenizer, scope: str
    ) -> _Outcome:
        outcome = _Outcome(namespace=scope)
        texts = [part.text for part in parts]
        if sum(len(t) for t in texts) < _INLINE_COUNT_CHARS:
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
            keep = self._plan(policy, self._planning([part]), part, rule).keep if compress else ()
            keys = form_keys(rule, tokenizer.encoding, part, digests[i], turns[i], keep)
            chosen = _Selected(part, rule, tokens, keys)
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
        self, policy: Policy, outcome: _Outcome, parts: Sequence[Part], model: str | None, deadline: float
    ) -> None:
        """Compress the new parts in the worker processes; whatever is not back by ``deadline``
        is forwarded as it came (a job still running then is abandoned, see policy.compressor_pool)."""
        planning = self._planning(parts)
        jobs: dict[tuple[str, str, QueryPlan], Job] = {}
        wanted: dict[int, tuple[str, str, QueryPlan]] = {}
        for i, chosen in enumerate(outcome.selected):
            if chosen.form is not None:
                continue
            rule = chosen.rule
            plan = self._plan(policy, planning, chosen.part, rule)
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

    def _planning(self, parts: Sequence[Part]) -> list[Part]:
        """What query planning reads: only the tail of a part above ``max_part_chars`` (its
        question is there), since planning runs on the event loop."""
        return [p if len(p.text) <= self.max_part_chars else _tail(p, _scan_chars(p)) for p in parts]

    def _plan(self, policy: Policy, planning: Sequence[Part], part: Part, rule: Rule) -> QueryPlan:
        """The query plan of ``part``, its kept spans in the offsets of its whole text."""
        clipped = len(part.text) > self.max_part_chars
        shaped = any(step.compressor_name in SHAPED for step in rule.steps)
        plan = plan_query(
            policy.query,
            planning,
            _tail(part) if clipped else part,
            shaped=shaped,
            pointers=self._pointers_of,
        )
        return plan.shifted(max(0, len(part.text) - _QUERY_TAIL_CHARS) if clipped else 0)

    def _pointers_of(self, text: str) -> tuple[str, ...]:
        key = text_digest(text)
        found = self._pointers.get(key)
        if found is None:
            found = pointers_of(text)
            found = self._pointers.setdefault(key, found, size=200 + sum(len(line) for line in found))
        return found

    async def _reference(self, team: str, outcome: _Outcome) -> None:
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

    async def _keep_originals(self, outcome: _Outcome, new: Sequence[_Selected]) -> None:
        """Keep the original of every new part whose forwarded form points at it (``hash=``)."""
        items = [(c.ref, c.part.text, c.form.text) for c in new if c.ref and c.form and c.form.text]
        if self.originals is not None and items:
            await self.originals.keep_referenced(outcome.originals_scope, items)

    async def _settle(self, policy: Policy, outcome: _Outcome) -> None:
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
        outcome: _Outcome,
        tokenizer: Tokenizer,
        deadline: float,
    ) -> Compacted | None:
        """Replay the conversation's compactions and maybe add a batch (policy.compaction)."""
        if policy.compaction is None:
            return None
        dialect, blocks, parts = walked
        model = body.get("model") if isinstance(body.get("model"), str) else exchange.model
        passing = {
            c.part.path: c
            for c in outcome.selected
            if c.source == "memo"
            and c.form is not None
            and c.form.text is None
            and c.form.note.startswith(_PASSING)
        }

        async def catch_up(
            paths: Sequence[tuple[str | int, ...]],
        ) -> dict[tuple[str | int, ...], tuple[str, int]]:
            again = _Outcome(
                outcome.namespace, [dataclasses.replace(passing[p], form=None) for p in paths if p in passing]
            )
            await self._compress_new(policy, again, parts, model, deadline)
            made = [
                (c.part.path, c.made)
                for c in again.selected
                if c.made is not None and c.made.text is not None
            ]
            return {path: (form.text, form.tokens_after) for path, form in made if form.text is not None}

        forwarded = list(counts)
        index = {p.path: i for i, p in enumerate(parts)}
        for chosen in outcome.selected:
            form = chosen.form
            if chosen.source == "drop":
                forwarded[index[chosen.part.path]] = 0
            elif form is not None and form.text is not None:
                forwarded[index[chosen.part.path]] = form.tokens_after
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
                retrieval=_ScopedOriginals(self.originals, self.originals.scope(exchange.team))
                if policy.retrieve and self.originals is not None
                else None,
                # read only with retrieval on: the scan runs on the event loop, over whole parts
                offered=bool(policy.retrieve and self.originals is not None)
                and _offers(
                    parts, {c.part.path: c.form.text for c in outcome.selected if c.form and c.form.text}
                ),
            )
        except Exception:  # compaction is an optimisation: the request goes on without it
            log.exception("compaction failed")
            return None

    def _result(
        self,
        policy: Policy,
        mode: str,
        body: dict[str, Any],
        parts: Sequence[Part],
        counts: Sequence[int],
        outcome: _Outcome,
        compacted: Compacted | None = None,
        *,
        retrieve: bool = False,
    ) -> Rewrite:
        texts: dict[tuple[str | int, ...], str] = {}
        drops: list[tuple[str | int, ...]] = []
        after = list(counts)
        index = {p.path: i for i, p in enumerate(parts)}
        by_path = {c.part.path: c for c in outcome.selected}
        for chosen in outcome.selected:
            form = chosen.form
            if chosen.source == "drop":
                self._apply_drop(chosen.part, texts, drops)
                after[index[chosen.part.path]] = 0
            elif form is not None and form.text is not None:
                texts[chosen.part.path] = form.text
                after[index[chosen.part.path]] = form.tokens_after
        for path, (stub, tokens) in (compacted.texts if compacted else {}).items():
            if path not in drops:
                texts[path], after[index[path]] = stub, tokens
        stubbed = set(compacted.texts) if compacted else set()
        details = tuple(
            _detail(p, by_path.get(p.path), b, a, p.path in stubbed)
            for p, b, a in zip(parts, counts, after, strict=True)
        )
        changed = bool(texts or drops)
        return Rewrite(
            body=rewrite_body(body, texts, drops, compacted.added if compacted else None)
            if changed and mode == "enforce"
            else None,
            policy=policy.name,
            mode=mode,
            rules=tuple(dict.fromkeys(c.rule.name for c in outcome.selected))
            + (("compaction",) if stubbed else ()),
            tokens_before=sum(counts),
            tokens_after=sum(after),
            compress_ms=outcome.compress_ms,
            fail_open=outcome.fail_open,
            parts=details,
            retrieve=retrieve and mode == "enforce" and _offers(parts, texts, stubbed),
        )

    @staticmethod
    def _apply_drop(
        part: Part, texts: dict[tuple[str | int, ...], str], drops: list[tuple[str | int, ...]]
    ) -> None:
        if part.droppable and part.message_path is not None and isinstance(part.message_path[-1], int):
            if part.message_path not in drops:
                drops.append(part.message_path)
        else:
            texts[part.path] = part.blank  # tool results must stay paired with their call


def _offers(
    parts: Sequence[Part], texts: Mapping[tuple[str | int, ...], str], stubbed: Collection[object] = ()
) -> bool:
    """Whether a retrieve policy's request is offered ``tersegate_expand``: once a marker with
    ``hash=`` (something to get back) is in a part of the first request with a tool output, or in a
    compaction stub. The tool's definition comes first in the prompt, so adding it to a
    conversation re-sends the whole cached prefix: it is added only where that costs next to
    nothing, the first tool output (nothing much cached yet) or a batch (which re-sends from its
    first stub anyway, and counts the rest: proxy/policy/compactor.py). A later output's marker
    waits for the next batch. Before any, the definition would only be tokens billed every turn.
    Markers and stubs are re-sent on every later turn: once offered, it stays offered."""
    return any(
        _RETRIEVABLE.search(texts.get(p.path, p.text)) for p in parts if p.turn <= 1 or p.path in stubbed
    )


@dataclass(frozen=True, slots=True)
class _ScopedOriginals:
    """The originals store bound to one request's scope: compaction's :class:`Retrieval`."""

    originals: Originals
    scope: str

    async def refs(self, texts: Sequence[str]) -> list[str | None]:
        return await self.originals.refs(self.scope, texts)

    async def keep_referenced(self, items: Sequence[tuple[str, str, str]]) -> int:
        return await self.originals.keep_referenced(self.scope, items)


def _detail(part: Part, chosen: _Selected | None, before: int, after: int, stubbed: bool) -> dict[str, Any]:
    if stubbed:
        return {**_detail(part, chosen, before, after, False), "source": "compacted", "tokens_after": after}
    return {
        "message": part.message,
        "role": part.role,
        "tool": part.tool_name,
        "rule": chosen.rule.name if chosen else None,
        "compressor": (chosen.rule.compressor_name if chosen.rule.action == "compress" else "drop")
        if chosen
        else None,
        "tokens_before": before,
        "tokens_after": after,
        "ms": round(chosen.form.ms, 2) if chosen and chosen.form else 0.0,
        "source": chosen.source if chosen else None,
        "note": chosen.form.note if chosen and chosen.form else "",
        "steps": [dataclasses.asdict(trace) for trace in chosen.steps] if chosen else [],
    }


def _all_model(rule: Rule) -> bool:
    """Every step of ``rule`` runs a model (none may run on a part above ``max_part_chars``)."""
    return all(step.compressor.cost_class == "model" for step in rule.steps)


def _tail(part: Part, chars: int = _QUERY_TAIL_CHARS) -> Part:
    return dataclasses.replace(part, text=part.text[-chars:])


def _scan_chars(part: Part) -> int:
    """What planning reads of a big part: a tool output's failures may sit mid-way (``pytest -v``
    without a summary), and scanning its lines for them is cheap; a question is at the end."""
    return POINTER_SCAN_CHARS if part.role in TOOL_ROLES else _QUERY_TAIL_CHARS


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
