"""The counterfactual prompt cache: what the uncompressed request would have had cached.

Per cache scope (team, model and, when the client sets one, OpenAI's ``prompt_cache_key``) two
streams are simulated with the provider's rules (:mod:`proxy.audit.cache_rules`): the requests
as the clients sent them ("before") and as they were forwarded ("after"). The state is digests
of token prefixes in a :class:`~proxy.store.base.SharedStore` (never text), so it is bounded by
the store, survives restarts where the store does, and is shared by workers. The upstream's
reported cached tokens calibrate the "before" estimate (:func:`~proxy.audit.cache_rules.calibrate`).

A block's token ids come from the token memo the policy engine fills as it counts the parts
(:mod:`proxy.store.tokens`): only the text around a block's parts (its role line, a rendered JSON
tail) and texts the engine never saw (the forwarded forms) are tokenized here, once. OpenAI prefixes
are digests chained over 128-token steps of the whole prompt, Anthropic prefixes digests chained
over blocks. See docs/audit.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compressors.tokenizer import Tokenizer, tokenizer_for
from proxy.apis import Block, Dialect, JsonPath
from proxy.apis.items import sorted_json
from proxy.audit import cache_rules as rules
from proxy.store.base import SharedStore, StoreUnavailable
from proxy.store.memory import MemoryStore
from proxy.store.tokens import TokenMemo

__all__ = ["CacheEstimate", "CacheModel", "Simulated"]

log = logging.getLogger("tersegate.audit")

_DIGEST_BYTES = 12  # 96-bit prefix digests: collisions are negligible at any store size
_OFFLOAD_CHARS = 32_768  # prompts above this are tokenized and digested in a thread, off the event loop
# Prefixes are tracked up to this many tokens (above any model's context window): a larger prompt
# is refused upstream anyway, and its digests would only cost the store and the loop.
_MAX_TRACKED_TOKENS = 2_097_152
_PRESENT = b"1"
_WARN_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Simulated:
    """One request under the provider's rules: prompt tokens, cached reads, writes by TTL."""

    prompt: int
    cached: int
    written: dict[str, int] = field(default_factory=dict)

    @property
    def write_total(self) -> int:
        return sum(self.written.values())


@dataclass(frozen=True, slots=True)
class CacheEstimate:
    cached_before: int  # calibrated cached (read) tokens of the uncompressed request
    written_before: dict[str, int]  # Anthropic: calibrated cache writes by TTL
    before: Simulated
    after: Simulated
    prompt_before: int | None = None  # Anthropic: the original's prompt tokens, in the upstream's units


@dataclass(frozen=True, slots=True)
class _Cached:
    """A block as the provider's cache sees it: the text its tokens come from, its breakpoint, and
    the part texts it holds (their ids are the policy engine's, :meth:`TokenMemo.ids_within`)."""

    text: str
    breakpoint: str | None
    pieces: tuple[str, ...] = ()
    framing: str | None = None  # estimated-token dialects: the block's JSON without its texts


def _blank(node: Any, rel: JsonPath) -> Any:
    """``node`` with the value at ``rel`` replaced by ``""`` (copies only along the path)."""
    if not rel:
        return ""
    key, rest = rel[0], rel[1:]
    if isinstance(node, Mapping) and isinstance(key, str) and key in node:
        return {**node, key: _blank(node[key], rest)}
    if isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
        return [*node[:key], _blank(node[key], rest), *node[key + 1 :]]
    return node


def _framing(block: Block) -> str | None:
    """What the upstream receives around a block's texts: its JSON with every text emptied (a
    tool result's type and ``tool_use_id``, ...). It is counted with the block so that the ratio to
    the upstream's units (:func:`_calibrated`) is the texts' ratio, not inflated by framing that
    weighs more in a heavily compressed request than in the original (docs/audit.md, "Anthropic")."""
    node = block.node
    if not block.texts or not isinstance(node, Mapping):
        return None
    skeleton: Any = {k: v for k, v in node.items() if k != "cache_control"}
    depth = len(block.path)
    for path, _ in block.texts:
        skeleton = _blank(skeleton, path[depth:])
    return sorted_json(skeleton)


def _prompt(dialect: Dialect, blocks: Sequence[Block]) -> list[_Cached]:
    """The prompt's blocks in the order the provider caches them, rendered by the dialect; where its
    counts are estimates (Anthropic), with each block's framing (:func:`_framing`)."""
    out = []
    for block in blocks:
        text = dialect.cache_text(block)
        if text is not None:
            framing = _framing(block) if dialect.estimated_tokens else None
            out.append(_Cached(text, block.breakpoint, tuple(t for _, t in block.texts), framing))
    return out


def _chars(blocks: Sequence[Block]) -> int:
    """The characters of the blocks' texts: what rendering them costs, without rendering."""
    return sum(len(text) for block in blocks for _, text in block.texts)


def _surely_shorter(blocks: Sequence[_Cached], tokens: int) -> bool:
    """Whether the blocks have fewer than ``tokens`` tokens: a token is at least one UTF-8 byte."""
    chars = sum(len(b.text) for b in blocks)
    if chars * 4 < tokens:  # a character is at most 4 bytes
        return True
    return chars < tokens and sum(len(b.text.encode("utf-8", "surrogatepass")) for b in blocks) < tokens


def _digest(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=_DIGEST_BYTES).digest()


def _chain(pieces: Sequence[bytes | memoryview]) -> list[str]:
    """Digests of every prefix: each covers the previous digest and its own piece."""
    out: list[str] = []
    previous = b""
    for piece in pieces:
        previous = _digest(previous + bytes(piece))
        out.append(previous.hex())
    return out


class CacheModel:
    """``await model.estimate(...)`` per audited request (see module docs)."""

    def __init__(self, store: SharedStore | None = None, *, tokens: TokenMemo | None = None) -> None:
        """``tokens``: the token memo the policy engine fills (so a part text it counted is not
        tokenized again); by default one of the model's own."""
        self.store: SharedStore = store if store is not None else MemoryStore()
        self.tokens = tokens if tokens is not None else TokenMemo()
        self._warned_at = -_WARN_EVERY_S

    def _ids(self, team: str, tokenizer: Tokenizer, block: _Cached) -> bytes:
        """The block's token ids (uint32 bytes), its part texts' taken from the memo. The memo is
        per team: the audit runs before the client's last byte, so a block another team sent must
        not make this team's request faster."""
        return self.tokens.ids_within(team, tokenizer, block.text, block.pieces)

    def _counts(self, team: str, model: str | None, blocks: Sequence[_Cached]) -> list[int]:
        """Each block's token count, with its framing's (:func:`_framing`)."""
        tokenizer = tokenizer_for(model)
        out = []
        for block in blocks:
            count = len(self._ids(team, tokenizer, block)) // 4
            if block.framing is not None:
                count += self.tokens.count(team, tokenizer, block.framing)
            out.append(count)
        return out

    async def estimate(
        self,
        *,
        team: str,
        model: str | None,
        dialect: Dialect,
        original: Mapping[str, Any],
        forwarded: Mapping[str, Any] | None,
        usage: Mapping[str, int | None] | None,
        prompt_delta: int = 0,
        walked: Sequence[Block] | None = None,
    ) -> CacheEstimate | None:
        """Simulate both streams for this request and calibrate; None if the store failed.

        ``prompt_delta`` (the prompt tokens compression removed) bounds the original's size: a
        request too short to be cached on either side costs nothing to estimate. ``walked``: the
        original's blocks as the rewrite hook walked them (else it is walked here).
        """
        breakpoints = dialect.caching == "breakpoints"
        usage = usage or {}
        prompt = usage.get("prompt_tokens")
        shortest = rules.anthropic_min_tokens(model) if breakpoints else rules.OPENAI_MIN_TOKENS
        if prompt is not None and prompt + max(prompt_delta, 0) < shortest:
            nothing = Simulated(0, 0)
            return CacheEstimate(usage.get("cached_tokens") or 0, {}, nothing, nothing)
        scope = f"cache:{team}:{(model or '-')[:200]}"  # model names come from clients: bounded
        cache_key = dialect.cache_key(original)
        if cache_key is not None:
            scope += ":" + hashlib.sha256(cache_key.encode()).hexdigest()[:16]
        plan = self._anthropic if breakpoints else self._openai
        walked = dialect.walk(original) if walked is None else walked
        walked_after = walked if forwarded is None else dialect.walk(forwarded)

        def build() -> list[_Plan]:
            # Rendering joins every text of the prompt (megabytes for a big tool output): in the
            # thread too when large, with the tokenizing and digesting.
            blocks = _prompt(dialect, walked)
            after_blocks = blocks if forwarded is None else _prompt(dialect, walked_after)
            return [plan("b", team, model, blocks), plan("a", team, model, after_blocks)]

        large = _chars(walked) + (0 if forwarded is None else _chars(walked_after)) > _OFFLOAD_CHARS
        plans = await asyncio.to_thread(build) if large else build()
        try:
            before, after = await self._run(scope, plans)
        except StoreUnavailable as exc:
            if time.monotonic() - self._warned_at >= _WARN_EVERY_S:  # once a minute, not per request
                self._warned_at = time.monotonic()
                log.warning(
                    "audit: cache model store unavailable (%s); cost_before assumes reported cache", exc
                )
            return None
        return _calibrated(before, after, usage, in_upstream_tokens=dialect.estimated_tokens)

    async def _run(self, scope: str, plans: Sequence[_Plan]) -> tuple[Simulated, Simulated]:
        """Both streams in one lookup and one write per TTL (one store round trip each)."""
        keys = [key for plan in plans for key in plan.lookups]
        found = await self.store.get_many(scope, keys) if keys else []
        results: list[Simulated] = []
        writes: dict[float, list[tuple[str, bytes]]] = {}
        start = 0
        for plan in plans:
            simulated, stored = plan.resolve(found[start : start + len(plan.lookups)])
            start += len(plan.lookups)
            results.append(simulated)
            for key, ttl in stored:
                writes.setdefault(ttl, []).append((key, _PRESENT))
        for ttl, items in writes.items():
            await self.store.put(scope, items, ttl_s=ttl)
        return results[0], results[1]

    def _openai(self, side: str, team: str, model: str | None, blocks: Sequence[_Cached]) -> _Plan:
        if _surely_shorter(blocks, rules.OPENAI_MIN_TOKENS):
            return _Plan.nothing()  # too short to be cached: not worth tokenizing
        tokenizer = tokenizer_for(model)
        ids = b"".join(self._ids(team, tokenizer, block) for block in blocks)
        total = len(ids) // 4
        tracked = min(total, _MAX_TRACKED_TOKENS) // rules.OPENAI_STEP
        step = rules.OPENAI_STEP * 4
        view = memoryview(ids)
        keys = [side + d for d in _chain([view[i : i + step] for i in range(0, tracked * step, step)])]

        def resolve(found: Sequence[bytes | None]) -> tuple[Simulated, list[tuple[str, float]]]:
            hits = next((i for i, value in enumerate(found) if value is None), len(found))
            stored = [(k, rules.OPENAI_TTL_S) for k in keys] if total >= rules.OPENAI_MIN_TOKENS else []
            return Simulated(total, rules.openai_cached(hits * rules.OPENAI_STEP)), stored

        return _Plan(keys, resolve)

    def _anthropic(self, side: str, team: str, model: str | None, blocks: Sequence[_Cached]) -> _Plan:
        shortest = rules.anthropic_min_tokens(model)
        breakpoints = [(i, b.breakpoint) for i, b in enumerate(blocks) if b.breakpoint is not None]
        if not breakpoints or _surely_shorter(blocks, shortest):
            return _Plan.nothing()  # nothing the client asked to cache, or too short to be
        counts = self._counts(team, model, blocks)
        ends = np.cumsum(counts).tolist()
        keys = [side + d for d in _chain([b.text.encode("utf-8", "surrogatepass") for b in blocks])]
        candidates = rules.lookback(breakpoints)
        ttls = dict(breakpoints)

        def resolve(found: Sequence[bytes | None]) -> tuple[Simulated, list[tuple[str, float]]]:
            hit = next((i for i, value in zip(candidates, found, strict=True) if value is not None), None)
            use = rules.anthropic_use(ends, breakpoints, hit, min_tokens=shortest)
            stored = [(keys[i], rules.ANTHROPIC_TTL_S[ttls.get(i, "5m")]) for i in use.stored]
            return Simulated(ends[-1], use.read, dict(use.written)), stored

        return _Plan([keys[i] for i in candidates], resolve)


@dataclass(frozen=True, slots=True)
class _Plan:
    """One stream's part of a request: the digests to look up, then what they mean and what to store."""

    lookups: list[str]
    resolve: Callable[[Sequence[bytes | None]], tuple[Simulated, list[tuple[str, float]]]]

    @staticmethod
    def nothing() -> _Plan:
        return _Plan([], lambda found: (Simulated(0, 0), []))


def _calibrated(
    before: Simulated, after: Simulated, usage: Mapping[str, int | None], *, in_upstream_tokens: bool
) -> CacheEstimate:
    """Reads, and writes per TTL, of the original request, calibrated by what the upstream reported.

    ``in_upstream_tokens``: the model counts with o200k, not the upstream's tokenizer (Anthropic's is
    not available offline), so both simulations are first converted to the upstream's units by the
    forwarded request's reported prompt tokens over the model's count of it.
    """
    prompt = usage.get("prompt_tokens")
    prompt_before = None
    if in_upstream_tokens and prompt and after.prompt > 0:
        ratio = prompt / after.prompt
        before, after = _scaled(before, ratio), _scaled(after, ratio)
        prompt_before = before.prompt
    cached = rules.calibrate(before.cached, after.cached, usage.get("cached_tokens") or 0)
    reported_1h = usage.get("cache_write_1h_tokens") or 0
    reported = {"5m": (usage.get("cache_write_tokens") or 0) - reported_1h, "1h": reported_1h}
    written = {
        ttl: rules.calibrate(before.written.get(ttl, 0), after.written.get(ttl, 0), reported[ttl])
        for ttl in ("5m", "1h")
    }
    return CacheEstimate(cached, {k: v for k, v in written.items() if v}, before, after, prompt_before)


def _scaled(simulated: Simulated, ratio: float) -> Simulated:
    return Simulated(
        round(simulated.prompt * ratio),
        round(simulated.cached * ratio),
        {ttl: round(n * ratio) for ttl, n in simulated.written.items()},
    )
