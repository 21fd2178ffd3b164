"""The engine's compaction step: replay a conversation's batches, then maybe decide a new one.

Runs after every part has its form (compressed once, or as it came). It finds the conversation
(:mod:`proxy.policy.compaction_log`), puts back every stub an earlier batch chose (so the history
is re-sent byte-identical), and asks :func:`proxy.policy.compaction.decide` whether a new batch
pays now, with the model's prices and its provider's cache rules. A request that uses the
provider's own context management, or carries a client's cleared placeholders, is replayed but
never compacted further (docs/compaction.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from proxy.apis import Block, Dialect, Part
from proxy.policy.compaction import (
    CALL_CHARS,
    CachePrices,
    CacheTerms,
    Decision,
    Entry,
    Knobs,
    decide,
    precheck,
)
from proxy.policy.compaction_log import Batch, CompactionLog

__all__ = [
    "CLEARED_PLACEHOLDERS",
    "CatchUp",
    "Compacted",
    "Compactor",
    "PriceSource",
    "Retrieval",
    "conversation_of",
]

Path = tuple[str | int, ...]

log = logging.getLogger("tersegate.compaction")

# What clients leave where they cleared a tool result themselves (Claude Code's microcompact).
CLEARED_PLACEHOLDERS = ("[Old tool result content cleared]",)
_PROVIDER_ITEMS = frozenset({"compaction", "compaction_summary"})  # OpenAI Responses
_IDLE_S = {"5m": 300.0, "1h": 3600.0}
LOOKBACK = 20  # blocks an Anthropic cache read looks back from a breakpoint


# Paths of parts that went out as they came for a passing reason -> their compressed forms.
CatchUp = Callable[[Sequence[Path]], Awaitable[Mapping[Path, tuple[str, int]]]]


class Retrieval(Protocol):
    """The originals store of a ``retrieve: true`` policy, bound to the request's scope
    (proxy/policy/originals.py): ids for texts, and keeping the originals a form points at."""

    async def refs(self, texts: Sequence[str]) -> list[str | None]: ...

    async def keep_referenced(self, items: Sequence[tuple[str, str, str]]) -> int: ...


class PriceSource(Protocol):
    """Prices by model name; :class:`proxy.audit.pricing.PriceBook` is one."""

    def price_for(self, model: str | None) -> CachePrices | None: ...


@dataclass(frozen=True, slots=True)
class Compacted:
    """What the step changed: new texts (and token counts) by part path, and why."""

    texts: dict[Path, tuple[str, int]]
    reason: str
    decision: Decision | None = None
    added: dict[Path, Any] = dataclasses.field(default_factory=dict)  # keys the dialect adds (a breakpoint)


def conversation_of(parts: Sequence[Part], model: str | None = None) -> str:
    """A digest of the model and of what was sent before the first assistant reply: the
    conversation's identity (the provider caches per model, so its batches are per model too)."""
    digest = hashlib.sha256(f"{model}\x1e".encode())
    for part in parts:
        if part.turn > 0:
            break
        digest.update(f"{part.path!r}\x1f{part.role}\x1f".encode())
        digest.update(part.text.encode("utf-8", "surrogatepass") + b"\x1e")
    return digest.hexdigest()[:32]


def _part_key(part: Part) -> str:
    text = hashlib.sha256(part.text.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{hashlib.sha256(repr(part.path).encode()).hexdigest()[:12]}:{text}"


def client_compacts(body: Mapping[str, Any], parts: Sequence[Part]) -> bool:
    """The client or its provider manages the context itself: never compact on top of it."""
    if "context_management" in body:
        return True
    items = body.get("input")
    for item in items if isinstance(items, list) else ():
        if isinstance(item, Mapping) and item.get("type") in _PROVIDER_ITEMS:
            return True
    return any(marker in part.text for part in parts for marker in CLEARED_PLACEHOLDERS)


def _block_index(blocks: Sequence[Block], parts: Sequence[Part]) -> list[int]:
    """The index in ``blocks`` of each part's block."""
    index = {path: k for k, block in enumerate(blocks) for path, _ in block.texts}
    return [index.get(p.path, 0) for p in parts]


def _breakpoint_reach(
    blocks: Sequence[Block], parts: Sequence[Part], anchor: int | None = None
) -> Callable[[int], int]:
    """Breakpoint caches: the first part re-sent (written again) when part ``i`` changes. A read
    hits a written prefix ending at most 20 blocks before one of the request's breakpoints, so a
    change further back than that loses everything after the breakpoint before it. ``anchor``:
    the block the proxy marks (:func:`_anchor`), a breakpoint like the client's."""
    block_of = _block_index(blocks, parts)
    marked = [k for k, block in enumerate(blocks) if block.breakpoint is not None or k == anchor]
    reachable = {k for b in marked for k in range(max(0, b - LOOKBACK), b + 1)}

    def resent_from(first: int) -> int:
        hit = max((k for k in reachable if k < block_of[first]), default=-1)
        return next((i for i, k in enumerate(block_of) if k > hit), first)

    return resent_from


def _anchor(
    dialect: Dialect,
    blocks: Sequence[Block],
    parts: Sequence[Part],
    keys: Sequence[str],
    stubbed: Collection[str],
) -> tuple[int, tuple[Path, Any]] | None:
    """The block of the conversation's last stub, with the key that makes it a cache breakpoint.

    Without it, a batch that changes a part more than 20 blocks before the client's newest
    breakpoint re-writes everything after the system prompt (the only prefix still readable),
    stubs of earlier batches included. Marked, the stubbed history is written once, on the batch's
    turn, and read back by every later turn and by the next batch, which then re-writes only what
    follows it. It moves only when a batch stubs a later part, so every turn between two batches
    sends the same bytes. None where the dialect cannot add one (:meth:`Dialect.breakpoint_at`)."""
    last = max((i for i, k in enumerate(keys) if k in stubbed), default=None)
    if last is None:
        return None
    block = _block_index(blocks, parts)[last]
    mark = dialect.breakpoint_at(blocks, block)
    return None if mark is None else (block, mark)


def _marks(
    dialect: Dialect,
    blocks: Sequence[Block],
    parts: Sequence[Part],
    keys: Sequence[str],
    stubbed: Collection[str],
    kept: Sequence[tuple[int, tuple[Path, Any]]],
) -> dict[Path, Any]:
    """The breakpoints the proxy adds: ``kept`` (the previous batch's anchor, on a batch's turn),
    then the anchor of the conversation's last stub when the request has room for it too."""
    marked = list(blocks)
    for block, (_, value) in kept:
        marked[block] = dataclasses.replace(marked[block], breakpoint=value.get("ttl", "5m"))
    new = _anchor(dialect, marked, parts, keys, stubbed)
    found = [*kept, *([new] if new is not None and new[0] not in {b for b, _ in kept} else [])]
    return dict(mark for _, mark in found)


def _reach(
    dialect: Dialect,
    blocks: Sequence[Block],
    parts: Sequence[Part],
    marked: tuple[int, tuple[Path, Any]] | None,
    *,
    adds_tool: bool,
) -> Callable[[int], int]:
    """The first part re-sent when part ``i`` is the first to change (the decision's ``resent_from``)."""
    if adds_tool:
        return lambda first: 0  # the prompt changes from its tool definitions on
    if dialect.caching == "breakpoints":
        return _breakpoint_reach(blocks, parts, marked[0] if marked else None)
    return lambda first: first


async def _take(
    won: Batch,
    decision: Decision,
    parts: Sequence[Part],
    keys: Sequence[str],
    texts: dict[Path, tuple[str, int]],
    retrieval: Retrieval | None,
) -> None:
    """The stored batch (``won``: ours, or a replica's that came first) into the forwarded texts;
    with retrieval on, the originals its stubs' ``hash=`` point at are kept."""
    for p, k in zip(parts, keys, strict=True):
        if k in won:
            texts[p.path] = won[k]
    if retrieval is not None:
        originals = {k: p.text for p, k in zip(parts, keys, strict=True)}
        await retrieval.keep_referenced(
            [(ref, originals[k], won[k][0]) for k, ref in decision.refs.items() if k in won]
        )


def _log_batch(index: int, conversation: str, reason: str, decision: Decision) -> None:
    log.info(
        "compaction: batch %d of conversation %s, %d parts (%s): one-time $%.6f, $%.6f a turn, %d turns",
        index,
        conversation[:12],
        len(decision.stubs),
        reason,
        decision.cost_usd,
        decision.saving_per_turn_usd,
        decision.horizon,
    )


def _history_ttl(blocks: Sequence[Block]) -> str | None:
    """The TTL of the last breakpoint: the one that writes (and keeps) the history's suffix.
    A 1-hour breakpoint on the system prompt alone does not keep the history cached for an hour."""
    return next((b.breakpoint for b in reversed(blocks) if b.breakpoint is not None), None)


async def _caught_up(
    catch_up: CatchUp | None,
    parts: Sequence[Part],
    keys: Sequence[str],
    stubs: Mapping[str, tuple[str, int]],
    known: Mapping[str, tuple[str, int]],
) -> dict[str, tuple[str, int]]:
    """Forms for the passing failures after the batch's first change (changed there at no extra cost)."""
    if catch_up is None:
        return {}
    first = min(i for i, k in enumerate(keys) if k in stubs)
    later = [
        p.path for p, k in zip(parts[first:], keys[first:], strict=True) if k not in stubs and k not in known
    ]
    forms = await catch_up(later) if later else {}
    return {k: forms[p.path] for p, k in zip(parts, keys, strict=True) if p.path in forms}


async def _decision(
    entries: Sequence[Entry],
    knobs: Knobs,
    terms: CacheTerms | None,
    reach: Callable[[int], int],
    count: Callable[[str], int],
    retrieval: Retrieval | None,
) -> Decision:
    """The cheap bound first; stubs (and, with retrieval, the originals' ids) only when it passes."""
    turns = max((e.turn for e in entries), default=0)
    refused = precheck(entries, knobs, terms, turns=turns, resent_from=reach)
    if refused is not None:
        return refused
    refs: dict[str, str] = {}
    if retrieval is not None:
        wanted = [e for e in entries if e.eligible]
        found = await retrieval.refs([e.text for e in wanted])
        refs = {e.key: ref for e, ref in zip(wanted, found, strict=True) if ref is not None}
    # Building stubs reads every old output line by line: off the event loop.
    build = functools.partial(
        decide,
        entries,
        knobs,
        terms,
        turns=turns,
        count=count,
        resent_from=reach,
        ref=lambda e: refs.get(e.key),
    )
    decision = await asyncio.to_thread(build)
    return dataclasses.replace(decision, refs={k: r for k, r in refs.items() if k in decision.stubs})


def _framing_chars(block: Block) -> int:
    """Characters of ``block``'s JSON besides its rewritable texts (keys, ids, a call's input)."""
    try:
        whole = len(orjson.dumps(block.node))
        return max(0, whole - sum(len(orjson.dumps(text)) - 2 for _, text in block.texts))
    except (orjson.JSONEncodeError, TypeError):
        return 0


def _extras(blocks: Sequence[Block], parts: Sequence[Part]) -> list[int]:
    """Tokens each part re-sends with it besides its text, at 4 characters a token: its block's
    framing and the blocks without rewritable text up to the next part (a tool call, its input).
    Left out, a batch's re-sent suffix looked smaller than the provider bills it: on the
    SWE-agent traces a third of it (their short outputs in many blocks)."""
    owner = {k: i for i, k in reversed(list(enumerate(_block_index(blocks, parts))))}
    out = [0] * len(parts)
    current: int | None = None
    for k, block in enumerate(blocks):
        current = owner.get(k, current)
        if current is not None:
            out[current] += _framing_chars(block) // 4
    return out


def _entries(
    parts: Sequence[Part],
    keys: Sequence[str],
    tokens: Sequence[int],
    known: Mapping[str, tuple[str, int]],
    texts: Mapping[Path, tuple[str, int]],
    roles: frozenset[str],
    extras: Sequence[int],
) -> list[Entry]:
    """The history as the decision reads it: each part with its tokens as forwarded now."""
    last = max((p.turn for p in parts), default=0)
    return [
        Entry(
            key=k,
            role=p.role,
            text=p.text,
            tokens=texts[p.path][1] if p.path in texts else n,
            message=p.message,
            cached=p.turn < last,
            eligible=bool(p.roles & roles) and k not in known and p.turn > 0,
            call=f"{p.tool_name} {p.tool_arguments or ''}"[:CALL_CHARS] if p.tool_name else None,
            turn=p.turn,
            extra=x,
        )
        for p, k, n, x in zip(parts, keys, tokens, extras, strict=True)
    ]


class Compactor:
    """One per engine; ``await compactor(...)`` per request of a policy with ``compaction:``."""

    def __init__(self, batches: CompactionLog, prices: PriceSource | None) -> None:
        self.batches = batches
        self.prices = prices

    def _terms(
        self, dialect: Dialect, blocks: Sequence[Block], model: str | None, warm: bool
    ) -> CacheTerms | None:
        price = self.prices.price_for(model) if self.prices is not None else None
        if price is None:
            # No price: only a cold cache (nothing to lose, whatever the price) justifies a batch.
            return None if warm else CacheTerms(1.0, 1.0, warm=False)
        if dialect.caching == "breakpoints":
            return CacheTerms.breakpoints(price, _history_ttl(blocks), warm=warm)
        return CacheTerms.prefix(price, warm=warm)

    async def __call__(
        self,
        knobs: Knobs,
        *,
        scope: str,
        dialect: Dialect,
        body: Mapping[str, Any],
        blocks: Sequence[Block],
        model: str | None,
        parts: Sequence[Part],
        tokens: Sequence[int],
        count: Callable[[str], int],
        now: float | None = None,
        catch_up: CatchUp | None = None,
        idle_s: float | None = None,
        retrieval: Retrieval | None = None,
        offered: bool = True,
    ) -> Compacted:
        """``tokens``: each part's tokens as it would be forwarded (its memoised form).
        ``catch_up`` compresses, with their rules, the parts that went out as they came for a
        passing reason (warm-up, budget overrun); a batch takes them in when it changes them anyway.
        ``offered``: the request already holds a marker with ``hash=`` (so ``tersegate_expand`` is
        offered); a batch whose stubs bring the first one adds that tool, which changes the prompt
        from its tool definitions on: nothing before the batch is read from the cache then."""
        if not any(p.roles & knobs.roles for p in parts):
            return Compacted({}, "no part to compact")
        now = time.time() if now is None else now
        namespace = "compact:" + scope.removeprefix("memo:")
        conversation = conversation_of(parts, model)
        record = await self.batches.load(namespace, conversation)
        known = record.stubs()
        keys = [_part_key(p) for p in parts]
        texts = {p.path: known[k] for p, k in zip(parts, keys, strict=True) if k in known}
        decision, marked = None, None
        if client_compacts(body, parts):
            reason = "client compacts"
        elif not record.reachable:
            reason = "store unreachable"
        else:
            entries = _entries(parts, keys, tokens, known, texts, knobs.roles, _extras(blocks, parts))
            # The policy's setting, else the upstream's, else the lifetime of the history's breakpoint.
            idle_s = knobs.idle_s or idle_s or _IDLE_S.get(_history_ttl(blocks) or "5m", 300.0)
            warm = record.last_seen is None or now - record.last_seen <= idle_s
            terms = self._terms(dialect, blocks, model, warm)
            marked = _anchor(dialect, blocks, parts, keys, known) if knobs.breakpoint else None
            # A batch bringing the first hash= adds tersegate_expand, which comes first in the prompt.
            adds_tool = retrieval is not None and not offered and not known and bool(body.get("tools"))
            reach = _reach(dialect, blocks, parts, marked, adds_tool=adds_tool)
            decision = await _decision(entries, knobs, terms, reach, count, retrieval)
            reason = decision.reason
            if decision.stubs:
                batch = {**decision.stubs, **await _caught_up(catch_up, parts, keys, decision.stubs, known)}
                won = await self.batches.append(namespace, conversation, len(record.batches), batch)
                if won is None:
                    reason = "store unreachable"
                else:
                    await _take(won, decision, parts, keys, texts, retrieval)
                _log_batch(len(record.batches), conversation, reason, decision)
        await self.batches.seen(namespace, conversation, now)
        stubbed = {k for p, k in zip(parts, keys, strict=True) if p.path in texts}
        if not knobs.breakpoint:
            return Compacted(texts, reason, decision)
        # On a batch's turn the previous anchor stays marked: the batch's cost counted on reading
        # the history up to it (``reach`` above), and a read reaches only 20 blocks back.
        kept = [marked] if marked is not None and decision is not None and decision.stubs else []
        return Compacted(texts, reason, decision, _marks(dialect, blocks, parts, keys, stubbed, kept))
