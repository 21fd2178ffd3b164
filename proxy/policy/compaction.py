"""History compaction: which old parts become short stubs, decided by the prompt cache's economics.

Pure functions over a request's history as it would be forwarded (docs/compaction.md has the
reasoning and the measurements). A stub keeps the lines of the part that later turns still point
at (paths, identifiers, test names, line numbers found in later assistant text, tool-call
arguments or user text), byte-identical, and one marker in the product's grammar naming what was
omitted: ``[412 lines like "..." omitted; lines=1-40,42-412; kinds=bash {...}, 9120 tokens; hash=...]``.

The break-even rule, per request: changing a part that the provider holds cached makes everything
from it on be re-sent at the full (OpenAI) or cache-write (Anthropic) price once, instead of read
at the cached price; every later turn then reads fewer cached tokens. With ``C`` the cached tokens
from the first changed part on, ``H`` the tokens removed (``H_c`` of them in the cached region,
``H_n`` in this turn's new parts), ``P_r`` the cached-read price and ``P_w`` the re-send price:

    cost now         = (C - H_c) * P_w - C * P_r - H_n * P_w
    saving per turn  = H * P_r
    compact when       R * saving > margin * cost   (or cost <= 0)

``R``, the turns still expected, is "as many turns again as so far", capped (``horizon``). A
conversation idle past its cache's lifetime has nothing cached: ``C = 0`` and every eligible part
is compacted at once.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from compressors.markers import format_marker

__all__ = [
    "CALL_CHARS",
    "CachePrices",
    "CacheTerms",
    "Decision",
    "Entry",
    "Knobs",
    "decide",
    "pointers_in",
    "precheck",
    "stub_for",
]


class CachePrices(Protocol):
    """Dollars per token; :class:`proxy.audit.pricing.Price` is one."""

    @property
    def input(self) -> float: ...

    @property
    def cached_input(self) -> float: ...

    @property
    def cache_write_5m(self) -> float: ...

    @property
    def cache_write_1h(self) -> float: ...


@dataclass(frozen=True, slots=True)
class CacheTerms:
    """What one token costs when read from the cache, and when re-sent instead (after a change)."""

    read: float
    resend: float
    warm: bool  # the previous turn's prefix may still be cached

    @staticmethod
    def prefix(prices: CachePrices, *, warm: bool) -> CacheTerms:
        """OpenAI's automatic prefix cache: a changed suffix is billed at the input price."""
        return CacheTerms(prices.cached_input, prices.input, warm)

    @staticmethod
    def breakpoints(prices: CachePrices, ttl: str | None, *, warm: bool) -> CacheTerms:
        """Anthropic's breakpoints: a changed suffix is written again (1.25x for 5m, 2x for 1h).
        Without any breakpoint nothing is cached: a change costs nothing extra."""
        if ttl is None:
            return CacheTerms(prices.input, prices.input, False)
        write = prices.cache_write_1h if ttl == "1h" else prices.cache_write_5m
        return CacheTerms(prices.cached_input, write, warm)


@dataclass(frozen=True, slots=True)
class Knobs:
    """A policy's ``compaction:`` block (parsed in :mod:`proxy.policy.model`)."""

    roles: frozenset[str] = frozenset({"tool", "function"})  # which parts may become stubs
    idle_s: float | None = None  # the cache's lifetime; None: 5 minutes, 1 hour with a 1h breakpoint
    keep_last: int = 4  # the newest outputs always stay as they are
    keep_tokens: int = 4000  # so do the newest tokens of history
    margin: float = 1.5  # the savings expected must beat the one-time cost by this factor
    min_tokens: int = 200  # a part smaller than this is never worth a stub
    horizon: int = 40  # at most this many more turns are expected
    max_lines: int = 12  # lines a stub keeps verbatim
    breakpoint: bool = (
        True  # Anthropic: mark the last stub a cache breakpoint (the next batch re-writes less)
    )


@dataclass(frozen=True, slots=True)
class Entry:
    """One part of the history, as the engine would forward it now."""

    key: str  # the part's identity in the conversation (path and original digest)
    role: str
    text: str  # the original text
    tokens: int  # tokens of its current form (compressed, as it came, or its recorded stub)
    message: int  # message index: what came after it is what later turns said
    cached: bool  # it was in the previous turn's request
    eligible: bool = False  # a role the policy compacts, and not compacted yet
    call: str | None = None  # "name {arguments}" of the call it answers
    turn: int = 0  # assistant replies before it: how fast old outputs pile up
    extra: int = 0  # tokens re-sent with it besides its text: framing, the next call's input


@dataclass(frozen=True, slots=True)
class Decision:
    """A batch, or why none. A "no" decided before building stubs carries the figures of the
    most a batch could do (every candidate removed whole)."""

    stubs: dict[str, tuple[str, int]]  # key -> (stub, its tokens): the new batch, empty if none
    reason: str
    cost_usd: float = 0.0  # the one-time cost of the batch (negative: it pays at once)
    saving_per_turn_usd: float = 0.0
    horizon: int = 0
    refs: dict[str, str] = field(default_factory=dict)  # key -> the original's id in its stub's hash=


CALL_CHARS = 200  # of a call and its arguments, in an entry (and a stub's marker)

# What later turns point at: paths, dotted or ::-joined names, snake/Camel identifiers, numbers.
_TOKEN = re.compile(r"[A-Za-z0-9_][\w.:/\\-]*[\w]|\d+")
_SPLIT = re.compile(r"::|[/\\:]")
_MAX_LINE_CHARS = 400  # a longer line (minified, a blob) is never kept verbatim


def _distinctive(token: str) -> bool:
    """A token that names something: not an English word nor a short number."""
    if token.isdigit():
        return len(token) >= 2
    if len(token) < 3:
        return False
    if any(c in token for c in "_./:\\") or any(c.isdigit() for c in token):
        return True
    return any(c.isupper() for c in token[1:]) and not token.isupper()


def _tokens(text: str) -> set[str]:
    found: set[str] = set()
    for match in _TOKEN.finditer(text):
        token = match.group().rstrip(".:")
        pieces = [token, *(p for p in _SPLIT.split(token) if p)]
        found.update(p for p in pieces if _distinctive(p))
    return found


def pointers_in(texts: Iterable[str]) -> set[str]:
    """The distinctive tokens of ``texts`` (later assistant text, call arguments, user text)."""
    found: set[str] = set()
    for text in texts:
        found |= _tokens(text)
    return found


def _ranges(numbers: Sequence[int]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for n in numbers:
        if out and out[-1][1] == n - 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def _kept_lines(lines: Sequence[str], pointers: set[str], max_lines: int) -> list[int]:
    """Indexes of the lines to keep: those naming the rarest things later turns point at."""
    per_line = [_tokens(line) & pointers if len(line) <= _MAX_LINE_CHARS else set() for line in lines]
    frequency = Counter(t for found in per_line for t in found)
    common = max(3, len(lines) // 10)  # named on many lines: says nothing about any one of them
    scores = [sum(1.0 / frequency[t] for t in found if frequency[t] <= common) for found in per_line]
    best = sorted((i for i, s in enumerate(scores) if s > 0), key=lambda i: (-scores[i], i))
    return sorted(best[:max_lines])


def stub_for(
    text: str,
    *,
    tokens: int,
    call: str | None,
    pointers: set[str],
    ref: str | None,
    max_lines: int,
    again: bool = False,
) -> str:
    """The part as a stub: one marker, then its lines that ``pointers`` name, byte-identical.
    ``again``: the same call (or the same output) comes later in the history, which carries what
    it said: the stub keeps no line, and its marker says so."""
    lines = text.split("\n")
    kept = [] if again else _kept_lines(lines, pointers, max_lines)
    keep = set(kept)
    omitted = [i + 1 for i in range(len(lines)) if i not in keep]
    example = next((lines[i - 1] for i in omitted if lines[i - 1].strip()), "")
    kinds = f"{call}, {tokens} tokens" if call else f"{tokens} tokens"
    kinds += ", run again later" if again else ""
    marker = format_marker(
        len(omitted), "lines", example=example or None, lines=_ranges(omitted), kinds=kinds, ref=ref
    )
    return "\n".join([marker, *(lines[i] for i in kept)])


def _eligible(entries: Sequence[Entry], knobs: Knobs) -> list[int]:
    """Indexes of the entries a batch may stub: old enough, by count and by tokens."""
    outputs = [i for i, e in enumerate(entries) if e.eligible or e.role in ("tool", "function")]
    newest = set(outputs[-knobs.keep_last :]) if knobs.keep_last else set()
    after = 0
    out: list[int] = []
    for i in range(len(entries) - 1, -1, -1):
        entry = entries[i]
        if (
            entry.eligible
            and i not in newest
            and after >= knobs.keep_tokens
            and entry.tokens >= knobs.min_tokens
        ):
            out.append(i)
        after += entry.tokens
    return out[::-1]


def precheck(
    entries: Sequence[Entry],
    knobs: Knobs,
    terms: CacheTerms | None,
    *,
    turns: int,
    resent_from: Callable[[int], int] = lambda first: first,
) -> Decision | None:
    """The rule with every candidate removed whole (the most a batch could save): a "no" that
    holds whatever the stubs, or None when stubs are worth building. Cheap: most turns stop here."""
    candidates = _eligible(entries, knobs)
    if not candidates:
        return Decision({}, "nothing old enough")
    if terms is None:
        return Decision({}, "no price for the model")
    horizon = max(1, min(turns, knobs.horizon))
    whole = {i: entries[i].tokens for i in candidates}
    bound = _economics(entries, whole, terms, knobs, horizon, resent_from)
    return None if bound.reason in ("break-even", "cache cold") else bound


def decide(
    entries: Sequence[Entry],
    knobs: Knobs,
    terms: CacheTerms | None,
    *,
    turns: int,
    count: Callable[[str], int],
    ref: Callable[[Entry], str | None] = lambda entry: None,
    resent_from: Callable[[int], int] = lambda first: first,
) -> Decision:
    """The next batch for this request, or none (``reason`` says why). ``terms`` None: no price
    known, so only a cold cache (nothing to lose) justifies a batch. ``resent_from(i)``: the
    first entry no longer read from the cache when entry ``i`` is the first to change (Anthropic
    reads only reach 20 blocks back from a breakpoint: a change further back loses more)."""
    refused = precheck(entries, knobs, terms, turns=turns, resent_from=resent_from)
    if refused is not None:
        return refused
    assert terms is not None
    candidates = _eligible(entries, knobs)
    horizon = max(1, min(turns, knobs.horizon))
    later = _later_pointers(entries)
    again = _repeated_later(entries)
    stubs: dict[str, tuple[str, int]] = {}
    removed: dict[int, int] = {}
    for i in candidates:
        entry = entries[i]
        stub = stub_for(
            entry.text,
            tokens=entry.tokens,
            call=entry.call,
            pointers=later[i],
            ref=ref(entry),
            max_lines=knobs.max_lines,
            again=i in again,
        )
        size = count(stub)
        if size * 2 > entry.tokens:
            continue  # the stub would not halve it: not worth a change
        stubs[entry.key] = (stub, size)
        removed[i] = entry.tokens - size
    if not stubs:
        return Decision({}, "no stub halves an old part")
    decision = _economics(entries, removed, terms, knobs, horizon, resent_from)
    return (
        dataclasses.replace(decision, stubs=stubs)
        if decision.reason in ("break-even", "cache cold")
        else decision
    )


def _economics(
    entries: Sequence[Entry],
    removed: Mapping[int, int],
    terms: CacheTerms,
    knobs: Knobs,
    horizon: int,
    resent_from: Callable[[int], int],
) -> Decision:
    """The rule (module docs) for removing ``removed[i]`` tokens from entry ``i``; no stubs yet."""
    removed_cached = sum(n for i, n in removed.items() if entries[i].cached and terms.warm)
    removed_new = sum(removed.values()) - removed_cached
    first = min(removed)
    lost = min(first, resent_from(first))
    cached_after = sum(e.tokens + e.extra for e in entries[lost:] if e.cached) if terms.warm else 0
    cost = (
        (cached_after - removed_cached) * terms.resend
        - cached_after * terms.read
        - removed_new * terms.resend
    )
    saving = (removed_cached + removed_new) * terms.read
    if not terms.warm:
        return Decision({}, "cache cold", cost, saving, horizon)
    if cost <= 0:
        return Decision({}, "break-even", cost, saving, horizon)
    if horizon * saving <= knobs.margin * cost:
        return Decision({}, "below break-even", cost, saving, horizon)
    span = [entries[i].turn for i in sorted(removed)]
    growth = saving / max(1, span[-1] - span[0] + 1)  # $ a turn the waiting saving grows by
    if saving * saving < 2 * cost * growth:
        return Decision({}, "waiting for a bigger batch", cost, saving, horizon)
    return Decision({}, "break-even", cost, saving, horizon)


def _repeated_later(entries: Sequence[Entry]) -> set[int]:
    """Outputs whose call (the same tool, the same arguments: a file read again, a grep re-run) or
    whose text comes again later: the later one carries what it said, so whatever later turns point
    at in this one, its stub need keep no line (the original stays retrievable by its hash=)."""
    seen: set[str] = set()
    out: set[int] = set()
    for i in range(len(entries) - 1, -1, -1):
        entry = entries[i]
        if entry.role not in ("tool", "function"):
            continue
        whole = entry.call is not None and len(entry.call) < CALL_CHARS  # a cut call may differ after
        marks = {"text:" + entry.text, *(("call:" + str(entry.call),) if whole else ())}
        if marks & seen:
            out.add(i)
        seen |= marks
    return out


def _later_pointers(entries: Sequence[Entry]) -> list[set[str]]:
    """For each entry, what the parts of later messages (not other outputs) and calls point at."""
    out: list[set[str]] = [set() for _ in entries]
    running: set[str] = set()
    for i in range(len(entries) - 1, -1, -1):
        out[i] = running
        entry = entries[i]
        said = [entry.call or ""] + ([entry.text] if entry.role in ("user", "assistant") else [])
        if any(said):
            running = running | pointers_in(said)
    return out
