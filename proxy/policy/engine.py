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
import fnmatch
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from compressors.base import Compressor, CompressorError
from compressors.embedding import cache_scope
from compressors.tokenizer import Tokenizer, tokenizer_for
from proxy.anthropic import other_texts
from proxy.config.model import MemoConfig
from proxy.exchange import Exchange, Rewrite
from proxy.metrics import Metrics
from proxy.policy.forms import Form, FormKeys, FormMemory, form_keys, text_digest, turn_digests
from proxy.policy.memo import Memo
from proxy.policy.model import Policy, PolicySet, Rule
from proxy.policy.parts import Part, extract_parts, rewrite_body
from proxy.policy.query import QueryPlan, compress_around, plan_query
from proxy.store.base import SharedStore

__all__ = ["PolicyRewriter"]

log = logging.getLogger("tersegate.policy")

_MODE_HEADER = "x-tersegate-mode"
_COUNTS_BYTES = 16 * 1024 * 1024
_INLINE_COUNT_CHARS = 4096  # ~1k tokens: cheaper to count than to hop to a thread
# Token counters loaded before /readyz says ready: (encoding, a model that uses it).
_WARM_ENCODINGS = (("o200k_base", "gpt-4o"), ("cl100k_base", "gpt-4"))
_WARM_TEXT = (
    "Document [1](Title: Warm-up) The proxy loads its models before the first request.\n\n"
    "Document [2](Title: Cache) Prompt caches bill a repeated prefix at a fraction of the price.\n\n"
    "Question: what does the proxy load first?"
)


@dataclass(slots=True)
class _Selected:
    part: Part
    rule: Rule
    tokens: int
    keys: FormKeys
    form: Form | None = None
    made: Form | None = None  # what the compressor returned, for a new part
    source: str = "new"  # new | memo | drop | kept (a drop called off)


@dataclass(slots=True)
class _Outcome:
    """The rewrite being built for one request."""

    namespace: str
    selected: list[_Selected] = field(default_factory=list)
    fail_open: str | None = None
    compress_ms: float = 0.0


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
    ) -> None:
        self.policies = policies
        self.metrics = metrics
        memo = memo or MemoConfig()
        self.forms = FormMemory(
            lru_bytes=memo_bytes,
            store=store,
            backend=memo.backend,
            timeout_s=memo.timeout_s,
            shared_across_teams=memo.shared_across_teams,
            metrics=metrics,
        )
        self._counts: Memo[int] = Memo(max_bytes=min(_COUNTS_BYTES, memo_bytes))
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tersegate-compress")
        self._warmed: weakref.WeakSet[Compressor] = weakref.WeakSet()
        self._warming: asyncio.Task[None] | None = None
        self.warmed = threading.Event()  # set once a warm-up pass has finished
        self._pending: set[str] = set()  # "policy/rule (compressor)" whose model is loading
        self._failed: dict[str, str] = {}  # the same, whose warm-up raised: why
        self._warm_done: set[str] = set()  # tokenizers loaded (once per process)
        self.on_warm_change: Callable[[], None] | None = None  # readiness changed (worker board)

    def close(self) -> None:
        if self._warming is not None:
            self._warming.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def start(self) -> None:
        """Load the policies' models in the background (at start and after a reload),
        so the first requests do not spend their latency budget on loading."""
        self.warmed.clear()
        self._failed.clear()
        self._warming = asyncio.get_running_loop().create_task(self.ready(), name="tersegate-warm-up")

    def readiness(self) -> tuple[list[str], dict[str, str]]:
        """``(rules whose model is still loading, rules whose warm-up failed: why)``; both empty
        once every model the loaded policies need is warm (``GET /readyz``)."""
        if not self.warmed.is_set():
            return sorted(self._pending) or ["policies (warm-up starting)"], dict(self._failed)
        return [], dict(self._failed)

    async def ready(self) -> None:
        """Run each rule's compressor once on a small text, in the worker pool; load the
        token counters of OpenAI's current encodings too (every audited request counts)."""
        jobs = []
        for encoding, model in _WARM_ENCODINGS:
            label = f"tokenizer {encoding}"
            if label not in self._warm_done:
                self._pending.add(label)
                jobs.append(self._warm_one(label, _count_once, model))
        for policy in self.policies.policies.values():
            for rule in policy.rules:
                if rule.compressor is not None and rule.compressor not in self._warmed:
                    self._warmed.add(rule.compressor)
                    label = f"{policy.name}/{rule.name} ({rule.compressor_name})"
                    self._pending.add(label)
                    jobs.append(self._warm_one(label, _warm, rule))
        self._changed()
        await asyncio.gather(*jobs)
        self.warmed.set()
        self._changed()

    async def _warm_one(self, label: str, work: Callable[[Any], None], arg: Any) -> None:
        started = time.perf_counter()
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, work, arg)
        except Exception as exc:  # it will fail open, and say why, at first use
            log.warning("warm-up of %s failed: %s", label, exc)
            self._failed[label] = f"{type(exc).__name__}: {exc}"[:300]
        else:
            self._warm_done.add(label)
            log.info("warm: %s in %.1f s", label, time.perf_counter() - started)
        finally:
            self._pending.discard(label)

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
            self._count_fail_open(exchange.team, "internal_error")
            mode = policy.mode if policy else "off"
            return Rewrite(policy=name, mode=mode, fail_open=f"internal_error: {type(exc).__name__}"[:300])

    async def _measured(self, rewrite: Rewrite, exchange: Exchange, body: dict[str, Any]) -> Rewrite:
        """Count the prompt text of a request no rule looks at, so the audit still has
        its tokens (before == after). Small bodies are counted inline, large ones off the loop."""
        model = body.get("model") if isinstance(body.get("model"), str) else exchange.model
        parts = extract_parts(exchange.route, body)
        tokenizer = tokenizer_for(model)
        scope = self.forms.namespace(exchange.team)
        if sum(len(p.text) for p in parts) < _INLINE_COUNT_CHARS:
            counts = self._count_all(tokenizer, parts, scope)
        else:
            counts = await asyncio.to_thread(self._count_all, tokenizer, parts, scope)
        rewrite.tokens_before = rewrite.tokens_after = sum(counts)
        rewrite.tokens_other = await self._count_other(exchange.route, body, tokenizer, scope)
        return rewrite

    async def _count_other(
        self, route: str, body: dict[str, Any], tokenizer: Tokenizer, scope: str
    ) -> int | None:
        """Anthropic routes: tokens of what is sent besides the parts (tools, tool inputs)."""
        if not route.endswith("/messages"):
            return None
        texts = other_texts(body)
        if sum(len(t) for t in texts) < _INLINE_COUNT_CHARS:
            return sum(self._count_texts(tokenizer, texts, scope))
        return sum(await asyncio.to_thread(self._count_texts, tokenizer, texts, scope))

    def _mode(self, policy: Policy, headers: Mapping[str, str]) -> str:
        asked = _header(headers, _MODE_HEADER)
        if policy.allow_client_override and asked in ("off", "shadow"):
            return asked
        return policy.mode

    async def _rewrite(
        self, policy: Policy, exchange: Exchange, body: dict[str, Any], headers: Mapping[str, str]
    ) -> Rewrite:
        model = body.get("model") if isinstance(body.get("model"), str) else exchange.model
        if not policy.applies(exchange.route, model):
            skipped = Rewrite(policy=policy.name, mode="off", skipped="route or model not in policy")
            return await self._measured(skipped, exchange, body)
        mode = self._mode(policy, headers)
        if mode == "off":
            return await self._measured(Rewrite(policy=policy.name, mode="off"), exchange, body)
        parts = extract_parts(exchange.route, body)
        tokenizer = tokenizer_for(model)
        scope = self.forms.namespace(exchange.team)
        counts = await asyncio.to_thread(self._count_all, tokenizer, parts, scope)
        outcome = await self._select(policy, parts, counts, tokenizer, scope)
        await self._compress_new(policy, outcome, parts, model)
        await self._settle(policy, outcome)
        if outcome.fail_open is not None:
            self._count_fail_open(exchange.team, outcome.fail_open.split(":", 1)[0])
        if self.metrics is not None:
            self.metrics.compress_seconds.labels(team=exchange.team).observe(outcome.compress_ms / 1000)
        result = self._result(policy, mode, body, parts, counts, outcome)
        result.tokens_other = await self._count_other(exchange.route, body, tokenizer, scope)
        return result

    def _count_fail_open(self, team: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.fail_open.labels(team=team, reason=reason).inc()

    def _count_all(self, tokenizer: Tokenizer, parts: Sequence[Part], scope: str) -> list[int]:
        return self._count_texts(tokenizer, [part.text for part in parts], scope)

    def _count_texts(self, tokenizer: Tokenizer, texts: Sequence[str], scope: str) -> list[int]:
        counts: list[int] = []  # per scope: a count cached for one team must not speed up another's request
        for text in texts:
            key = (scope, tokenizer.encoding, text_digest(text))
            count = self._counts.get(key)
            if count is None:
                count = self._counts.setdefault(key, tokenizer.count(text), size=100)
            counts.append(count)
        return counts

    async def _select(
        self, policy: Policy, parts: Sequence[Part], counts: Sequence[int], tokenizer: Tokenizer, scope: str
    ) -> _Outcome:
        outcome = _Outcome(namespace=scope)
        digests = [text_digest(part.text) for part in parts]
        turns = turn_digests(parts, digests)
        for i, (part, tokens) in enumerate(zip(parts, counts, strict=True)):
            rule = next((r for r in policy.rules if _matches(r, part, tokens)), None)
            if rule is None:
                continue
            # The kept spans of a part depend on its own text only; the query on the whole request.
            keep = plan_query(policy.query, [part], part).keep if rule.action == "compress" else ()
            keys = form_keys(rule, tokenizer.encoding, part, digests[i], turns[i], keep)
            chosen = _Selected(part, rule, tokens, keys)
            if rule.action == "drop":
                chosen.form, chosen.source = Form(None, 0, note="dropped"), "drop"
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
        self, policy: Policy, outcome: _Outcome, parts: Sequence[Part], model: str | None
    ) -> None:
        jobs: dict[tuple[str, str, QueryPlan], asyncio.Future[Form]] = {}
        wanted: dict[int, tuple[str, str, QueryPlan]] = {}
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        for i, chosen in enumerate(outcome.selected):
            if chosen.form is not None:
                continue
            plan = plan_query(policy.query, parts, chosen.part)
            job = wanted[i] = (chosen.rule.identity, chosen.part.text, plan)  # one job per distinct input
            if job not in jobs:
                jobs[job] = loop.run_in_executor(
                    self._pool,
                    _compress_part,
                    _Job(chosen.rule, chosen.part.text, chosen.tokens, plan, model, outcome.namespace),
                )
        if not jobs:
            return
        _, pending = await asyncio.wait(jobs.values(), timeout=policy.latency_budget_ms / 1000)
        outcome.compress_ms = (time.perf_counter() - started) * 1000
        results: dict[tuple[str, str, QueryPlan], Form] = {}
        for key, future in jobs.items():
            if future in pending:
                outcome.fail_open = outcome.fail_open or "latency_budget"
                future.cancel()  # a queued job never starts; a running one finishes unused
                continue
            error = future.exception()
            if error is not None:
                reason = str(error) if isinstance(error, CompressorError) else repr(error)
                outcome.fail_open = outcome.fail_open or f"compressor_error: {reason}"[:300]
                continue
            results[key] = future.result()
        for i, job in wanted.items():
            outcome.selected[i].made = results.get(job)

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
        won = await self.forms.keep(outcome.namespace, writes)
        for chosen in new:
            key = chosen.keys.conversation if chosen.keys.conversation in won else chosen.keys.shared
            if key is not None and key in won:
                chosen.form = won[key]

    def _result(
        self,
        policy: Policy,
        mode: str,
        body: dict[str, Any],
        parts: Sequence[Part],
        counts: Sequence[int],
        outcome: _Outcome,
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
        details = tuple(
            _detail(p, by_path.get(p.path), b, a) for p, b, a in zip(parts, counts, after, strict=True)
        )
        changed = bool(texts or drops)
        return Rewrite(
            body=rewrite_body(body, texts, drops) if changed and mode == "enforce" else None,
            policy=policy.name,
            mode=mode,
            rules=tuple(dict.fromkeys(c.rule.name for c in outcome.selected)),
            tokens_before=sum(counts),
            tokens_after=sum(after),
            compress_ms=outcome.compress_ms,
            fail_open=outcome.fail_open,
            parts=details,
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


def _detail(part: Part, chosen: _Selected | None, before: int, after: int) -> dict[str, Any]:
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
    }


@dataclass(frozen=True, slots=True)
class _Job:
    rule: Rule
    text: str
    tokens: int
    plan: QueryPlan
    model: str | None
    scope: str  # whose cached vectors the compressor may use


def _compress_part(job: _Job) -> Form:
    """Runs in a worker thread. Raises CompressorError on failure."""
    rule = job.rule
    assert rule.compressor is not None
    started = time.perf_counter()
    with cache_scope(job.scope):
        new_text, note = compress_around(
            rule.compressor,
            job.text,
            target=rule.target,
            plan=job.plan,
            preserve=rule.preserve,
            model=job.model,
        )
    after = tokenizer_for(job.model).count(new_text)
    ms = (time.perf_counter() - started) * 1000
    if after >= job.tokens:
        return Form(None, job.tokens, ms, note or "no saving")
    return Form(new_text, after, ms, note)


def _count_once(model: str) -> None:
    tokenizer_for(model).count("warm-up")


def _warm(rule: Rule) -> None:
    assert rule.compressor is not None
    with cache_scope("warm-up"):
        rule.compressor.compress(_WARM_TEXT, target=rule.target, query="warm-up", preserve=rule.preserve)
