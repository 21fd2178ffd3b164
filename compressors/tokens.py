"""The ``tokens`` compressor: word-level pruning by a pluggable scorer.

The text is cut into word units (names, dates, numbers with units and
preserved spans are single units), a scorer rates each unit, and the
highest-rated units that fit the token budget are kept, ties broken by
position. Scorers: ``selfinfo`` (word frequencies, no model), ``llmlingua2``
(a token-classification model) and ``perplexity`` (a causal LM).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Protocol

from compressors.base import Compressed, Compressor, Decision, OptionsError, Target
from compressors.preserve import PreserveSpec, find_spans
from compressors.selfinfo import SelfInfo
from compressors.tokenizer import Tokenizer
from compressors.words import Unit, assemble, atomic_spans, segment

__all__ = ["SCORERS", "Tokens", "UnitScorer"]

SCORERS = ("selfinfo", "llmlingua2", "perplexity")
_DEFAULT_MODELS = {
    "llmlingua2": "microsoft/llmlingua-2-xlm-roberta-large-meetingbank",
    "perplexity": "gpt2",
}
# Tokens after may exceed the budget by this much (merges across dropped units
# make the estimate drift); beyond it the target counts as missed.
_TOLERANCE = 0.05
_MAX_ROUNDS = 4


class UnitScorer(Protocol):
    """Rates units: higher means more worth keeping. One score per unit."""

    def scores(
        self, text: str, units: Sequence[Unit], query: str | None, *, keep_ratio: float
    ) -> list[float]: ...


@dataclass(frozen=True, slots=True)
class _Plan:
    """The units of one input and what selection needs to know about them."""

    text: str
    units: list[Unit]
    forced: list[bool]
    preserved: list[bool]
    costs: list[int]


class Tokens(Compressor):
    name = "tokens"
    option_types: ClassVar[dict[str, tuple[type | tuple[type, ...], Any]]] = {
        "scorer": (str, "selfinfo"),
        "model": (str, None),
        "device": (str, "cpu"),
        "query_boost": ((int, float), 1.0),
        "window": (int, 10),
        "pooling": (str, "mean"),
        "force_tokens": ((list, tuple), ()),
        "chunk_tokens": (int, 510),
        "segment_tokens": (int, 512),
        "batch_size": (int, 8),
        "preserve_boost": ((int, float), 0.0),
    }

    def _validate(self) -> None:
        opts = self.options
        if opts["scorer"] not in SCORERS:
            raise OptionsError(f"tokens: scorer must be one of {', '.join(SCORERS)}, got {opts['scorer']!r}")
        if opts["pooling"] not in ("mean", "max"):
            raise OptionsError(f"tokens: pooling must be mean or max, got {opts['pooling']!r}")
        if not all(isinstance(t, str) and t for t in opts["force_tokens"]):
            raise OptionsError("tokens: force_tokens must be a list of non-empty strings")
        if opts["query_boost"] < 0 or opts["window"] < 0:
            raise OptionsError("tokens: query_boost and window must be >= 0")
        if not 16 <= opts["chunk_tokens"] <= 510:
            raise OptionsError(f"tokens: chunk_tokens must be in [16, 510], got {opts['chunk_tokens']}")
        if not 16 <= opts["segment_tokens"] <= 4096:
            raise OptionsError(f"tokens: segment_tokens must be in [16, 4096], got {opts['segment_tokens']}")
        if not 0 <= opts["preserve_boost"] <= 1:
            raise OptionsError("tokens: preserve_boost must be in [0, 1]")
        if opts["batch_size"] < 1:
            raise OptionsError("tokens: batch_size must be >= 1")
        if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", opts["device"]):
            raise OptionsError(f"tokens: device must be cpu, cuda[:N] or mps, got {opts['device']!r}")
        if opts["scorer"] == "selfinfo" and opts["model"] is not None:
            raise OptionsError("tokens: the selfinfo scorer takes no model")
        self._force_tokens = frozenset(opts["force_tokens"])
        self._scorer = self._build_scorer()

    def _build_scorer(self) -> UnitScorer:
        opts = self.options
        model = opts["model"] or _DEFAULT_MODELS.get(opts["scorer"], "")
        if opts["scorer"] == "llmlingua2":
            from compressors.llmlingua2 import LLMLingua2

            return LLMLingua2(
                model=model,
                device=opts["device"],
                pooling=opts["pooling"],
                chunk_tokens=opts["chunk_tokens"],
                batch_size=opts["batch_size"],
            )
        if opts["scorer"] == "perplexity":
            from compressors.perplexity import Perplexity

            return Perplexity(
                model=model,
                device=opts["device"],
                pooling=opts["pooling"],
                segment_tokens=opts["segment_tokens"],
            )
        return SelfInfo(query_boost=float(opts["query_boost"]), window=opts["window"])

    def _compress(
        self, text: str, *, target: Target, query: str | None, preserve: PreserveSpec, tokenizer: Tokenizer
    ) -> Compressed:
        tokens_before = tokenizer.count(text)
        budget = target.budget(tokens_before)
        if tokens_before <= budget:
            return Compressed(text, tokens_before, tokens_before, self.name, target_tokens=budget)
        plan = self._plan(text, query, preserve, tokenizer)
        raw = self._scorer.scores(plan.text, plan.units, query, keep_ratio=budget / tokens_before)
        scores = _ranked(raw, plan.preserved, float(self.options["preserve_boost"]))
        kept, output, tokens_after = _fit(plan, scores, budget, tokenizer)
        forced_cost = sum(c for c, f in zip(plan.costs, plan.forced, strict=True) if f)
        met = tokens_after <= budget * (1 + _TOLERANCE)
        note = ""
        if not met:
            note = (
                f"kept {tokens_after} tokens for a budget of {budget}: preserved units alone need about "
                f"{forced_cost} tokens and are kept whole"
            )
        decisions = tuple(
            Decision(
                index=i,
                kind=u.kind if not plan.forced[i] else "preserved",
                tokens=plan.costs[i],
                kept=kept[i],
                score=scores[i],
                reason="preserved" if plan.forced[i] else ("score" if kept[i] else "below cut"),
                preview=plan.text[u.start : u.end][:40],
            )
            for i, u in enumerate(plan.units)
        )
        return Compressed(
            output,
            tokens_before,
            tokens_after,
            self.name,
            target_tokens=budget,
            target_met=met,
            note=note,
            decisions=decisions,
        )

    def _plan(self, text: str, query: str | None, preserve: PreserveSpec, tokenizer: Tokenizer) -> _Plan:
        # Inline <keep>/<llmlingua> tags were split off by the base class; this is one plain region.
        forced_spans = _query_line(text, query)
        # Preserved spans stay whole (byte for byte when kept) and rank higher, but may go as a whole.
        preserved_spans = [(s.start, s.end) for s in find_spans(text, preserve)]
        units = segment(text, atomic_spans(text, forced_spans + preserved_spans))
        forced = _covered(units, atomic_spans(text, forced_spans, detect=False))
        forced = [
            f or text[u.start : u.end] in self._force_tokens for f, u in zip(forced, units, strict=True)
        ]
        preserved = _covered(units, atomic_spans(text, preserved_spans, detect=False))
        return _Plan(text, units, forced, preserved, _unit_costs(text, units, tokenizer))


def _ranked(raw: Sequence[float], preserved: Sequence[bool], boost: float) -> list[float]:
    """Scores as rank fractions in [0, 1] (scorer-independent), preserved units lifted by ``boost``."""
    order = sorted(range(len(raw)), key=lambda i: (raw[i], -i))
    ranked = [0.0] * len(raw)
    scale = 1.0 / max(1, len(raw) - 1)
    for rank, index in enumerate(order):
        ranked[index] = rank * scale + (boost if preserved[index] else 0.0)
    return ranked


def _query_line(text: str, query: str | None) -> list[tuple[int, int]]:
    """The whole line(s) holding the query (e.g. a trailing ``Question: ...``), kept verbatim."""
    if not query or not query.strip():
        return []
    wanted = " ".join(query.split()).lower()
    at = text.rfind(query.strip())
    if at < 0:
        offset = len(text)
        for line in reversed(text.splitlines(keepends=True)):
            offset -= len(line)
            if wanted in " ".join(line.split()).lower():
                at = offset
                break
    if at < 0:
        return []
    start = text.rfind("\n", 0, at) + 1
    end = text.find("\n", at + len(query.strip()))
    return [(start, len(text) if end < 0 else end)]


def _covered(units: Sequence[Unit], spans: Sequence[tuple[int, int]]) -> list[bool]:
    """Which units overlap any of ``spans`` (sorted, disjoint)."""
    flags: list[bool] = []
    index = 0
    for unit in units:
        while index < len(spans) and spans[index][1] <= unit.start:
            index += 1
        flags.append(index < len(spans) and spans[index][0] < unit.end)
    return flags


def _unit_costs(text: str, units: Sequence[Unit], tokenizer: Tokenizer) -> list[int]:
    """Target-model tokens per unit, counted once per distinct (separator, unit) string."""
    keys: list[str] = []
    previous_end = 0
    for unit in units:
        gap = text[previous_end : unit.start]
        # A unit after a space costs what " word" costs; newlines are counted as their own tokens.
        lead = " " if gap and "\n" not in gap else ("\n" if "\n" in gap else "")
        keys.append(lead + text[unit.start : unit.end])
        previous_end = unit.end
    return [_cost(tokenizer, key) for key in keys]


@lru_cache(maxsize=100_000)
def _cost(tokenizer: Tokenizer, key: str) -> int:
    # Words repeat across calls: one cached count per (encoding, " word") beats a batch per call.
    return tokenizer.count(key)


def _select(plan: _Plan, order: Sequence[int], budget: float) -> list[bool]:
    """Forced units, then the best-scored units (``order``) that still fit the budget."""
    kept = list(plan.forced)
    room = budget - sum(c for c, f in zip(plan.costs, plan.forced, strict=True) if f)
    for i in order:
        if not kept[i] and plan.costs[i] <= room:
            kept[i] = True
            room -= plan.costs[i]
    return kept


def _fit(
    plan: _Plan, scores: Sequence[float], budget: int, tokenizer: Tokenizer
) -> tuple[list[bool], str, int]:
    """Select, count the real output once, and correct the estimate a few rounds if it drifted."""
    aim = float(budget)
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))  # ties go to the earlier unit
    best: tuple[list[bool], str, int] | None = None
    for _ in range(_MAX_ROUNDS):
        kept = _select(plan, order, aim)
        output = assemble(plan.text, plan.units, kept)
        count = tokenizer.count(output)
        if best is None or _better(count, best[2], budget):
            best = (kept, output, count)
        fits = count <= budget * (1 + _TOLERANCE)
        if fits and count >= budget * (1 - _TOLERANCE):
            break
        aim *= budget / max(count, 1)
    assert best is not None
    if best[2] > budget * (1 + _TOLERANCE):
        # Still over: aim lower until it fits (the units left are forced or the estimate is far off).
        kept = _select(plan, order, aim * 0.9)
        output = assemble(plan.text, plan.units, kept)
        count = tokenizer.count(output)
        if count < best[2]:
            best = (kept, output, count)
    return best


def _better(count: int, than: int, budget: int) -> bool:
    """Fitting beats overshooting; among fits the fuller wins, among overshoots the smaller."""
    limit = budget * (1 + _TOLERANCE)
    if (count <= limit) != (than <= limit):
        return count <= limit
    return count > than if count <= limit else count < than
