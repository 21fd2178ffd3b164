"""The ``tokens`` compressor: word-level pruning by a pluggable scorer.

The text is cut into word units (names, dates, numbers with units and
preserved spans are single units), a scorer rates each unit, and the
highest-rated units that fit the token budget are kept, ties broken by
position. Scorers: ``selfinfo`` (word frequencies and cheap cues weighed by a tiny
network trained offline and shipped as numbers; no language model), ``llmlingua2``
(a token-classification model)
and ``perplexity`` (a causal LM). The query (given, or the question the text
asks: :mod:`compressors.question`) is kept verbatim where the text holds it (its line's ``Question:``
label is an ordinary unit) and counts against the budget.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Protocol

import numpy as np
import numpy.typing as npt

from compressors.base import Ask, Compressed, Compressor, Decision, OptionsError
from compressors.fewshot import Selection, select_demonstrations
from compressors.preserve import PreserveSpec, find_spans
from compressors.question import query_of
from compressors.selfinfo import SelfInfo
from compressors.templates import template_openings, template_spans
from compressors.tokenizer import Tokenizer
from compressors.words import Unit, Units, assemble, atomic_spans, segment

__all__ = ["SCORERS", "Tokens", "UnitScorer"]

SCORERS = ("selfinfo", "llmlingua2", "perplexity")
_DEFAULT_MODELS = {
    "llmlingua2": "microsoft/llmlingua-2-xlm-roberta-large-meetingbank",
    "perplexity": "gpt2",
}
# Tokens after may exceed the budget by this much (merges across dropped units
# make the estimate drift); beyond it the target counts as missed.
_TOLERANCE = 0.05
# Above this many units, decisions are grouped per line: ``--explain`` stays readable and cheap.
_PER_UNIT_LIMIT = 2000
_GROUP = 64
_NEWLINE = re.compile("\n")
_Bools = npt.NDArray[np.bool_]
_Ints = npt.NDArray[np.int64]
_Floats = npt.NDArray[np.float64]
_Asked = tuple[str | None, frozenset[str]]  # the query, and the template openings to keep


class UnitScorer(Protocol):
    """Rates units: higher means more worth keeping. One score per unit."""

    def scores(
        self, text: str, units: Sequence[Unit], query: str | None, *, keep_ratio: float
    ) -> list[float]: ...


@dataclass(frozen=True, slots=True)
class _Plan:
    """The units of one input and what selection needs to know about them."""

    text: str
    units: Units
    forced: _Bools
    preserved: _Bools
    costs: _Ints
    broken: _Bools  # a newline comes before the unit
    fixed: int  # tokens of the line breaks, which stay whatever is dropped


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
        "bridge": ((int, float), 0.7),
        "templates": (bool, True),  # keep line openings that recur across examples (compressors.templates)
        # select: keep or drop whole demonstrations first, then prune words in the kept ones
        "examples": (str, "prune"),
        "inner": ((int, float), 0.4),  # select: the share of a kept demonstration's tokens planned for
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
        if not 0 <= opts["bridge"] <= 1:
            raise OptionsError("tokens: bridge must be in [0, 1]")
        if opts["examples"] not in ("prune", "select"):
            raise OptionsError(f"tokens: examples must be prune or select, got {opts['examples']!r}")
        if not 0 < opts["inner"] <= 1:
            raise OptionsError("tokens: inner must be in (0, 1]")
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
        return SelfInfo(
            query_boost=float(opts["query_boost"]), window=opts["window"], bridge=float(opts["bridge"])
        )

    def _compress(self, text: str, ask: Ask) -> Compressed:
        target, query, tokenizer = ask.target, ask.query, ask.tokenizer
        tokens_before = tokenizer.count(text)
        budget = target.budget(tokens_before)
        if tokens_before <= budget:
            return Compressed(text, tokens_before, tokens_before, self.name, target_tokens=budget)
        # No query given: the question the text ends with, if any, is the query (and its line is kept).
        query = query if query and query.strip() else query_of(text)
        # Few-shot structure ("Question:", "The answer is 52") is the format to copy: kept. Found
        # on the whole text, before the coarse step leaves too few examples to see it recur.
        openings = template_openings(text) if self.options["templates"] else frozenset()
        selection = None
        if self.options["examples"] == "select":
            selection = select_demonstrations(
                text, query, budget, tokenizer, inner=float(self.options["inner"])
            )
        if selection is not None:
            return self._fine(selection, tokens_before, budget, (query, openings), ask)
        return self._prune(text, tokens_before, budget, (query, openings), ask)

    def _fine(
        self, selection: Selection, tokens_before: int, budget: int, asked: _Asked, ask: Ask
    ) -> Compressed:
        """Words pruned inside the demonstrations the coarse step kept (compressors.fewshot)."""
        left = ask.tokenizer.count(selection.text)
        if left <= budget:
            pruned = Compressed(selection.text, tokens_before, left, self.name, target_tokens=budget)
        else:
            pruned = self._prune(selection.text, tokens_before, budget, asked, ask)
        note = f"kept {selection.kept} of {selection.total} demonstrations whole, then pruned words inside"
        return Compressed(
            pruned.text,
            tokens_before,
            pruned.tokens_after,
            self.name,
            target_tokens=budget,
            target_met=pruned.target_met,
            note=f"{note}; {pruned.note}" if pruned.note else note,
            decisions=selection.decisions + pruned.decisions,
        )

    def _prune(self, text: str, tokens_before: int, budget: int, asked: _Asked, ask: Ask) -> Compressed:
        preserve, tokenizer = ask.preserve, ask.tokenizer
        query, openings = asked
        plan = self._plan(text, query, preserve, tokenizer, openings)
        raw = self._scorer.scores(plan.text, plan.units, query, keep_ratio=budget / tokens_before)
        scores = _ranked(raw, plan.preserved, float(self.options["preserve_boost"]))
        kept, output, tokens_after = _fit(plan, scores, budget, tokenizer)
        met = tokens_after <= budget * (1 + _TOLERANCE)
        note = ""
        if not met:
            forced_cost = int(plan.costs[plan.forced].sum())
            why = (
                f"preserved units alone need about {forced_cost} tokens and are kept whole"
                if forced_cost
                else "line breaks always stay and units are kept or dropped whole"
            )
            note = f"kept {tokens_after} tokens for a budget of {budget}: {why}"
        return Compressed(
            output,
            tokens_before,
            tokens_after,
            self.name,
            target_tokens=budget,
            target_met=met,
            note=note,
            decisions=_decisions(plan, kept, scores),
        )

    def _plan(
        self,
        text: str,
        query: str | None,
        preserve: PreserveSpec,
        tokenizer: Tokenizer,
        openings: frozenset[str] = frozenset(),
    ) -> _Plan:
        # Inline <keep>/<llmlingua> tags were split off by the base class; this is one plain region.
        forced_spans = _query_line(text, query)
        if openings:
            forced_spans = atomic_spans(text, forced_spans + template_spans(text, openings), detect=False)
        # Preserved spans stay whole (byte for byte when kept) and rank higher, but may go as a whole.
        preserved_spans = [(s.start, s.end) for s in find_spans(text, preserve)]
        units = segment(text, atomic_spans(text, forced_spans + preserved_spans))
        starts, ends = units.starts, units.ends
        forced = _covered(starts, ends, forced_spans)
        if self._force_tokens:
            pairs = zip(starts.tolist(), ends.tolist(), strict=True)
            forced |= np.array([text[a:b] in self._force_tokens for a, b in pairs], bool)
        preserved = _covered(starts, ends, atomic_spans(text, preserved_spans, detect=False))
        previous_end = np.concatenate(([0], ends[:-1]))
        newlines = np.fromiter((m.start() for m in _NEWLINE.finditer(text)), np.int64)
        after_newline = np.searchsorted(newlines, starts)
        broken = np.searchsorted(newlines, previous_end) < after_newline
        # A unit after a line break costs only what follows the break: dropping it keeps the break.
        line_start = previous_end.copy()
        line_start[broken] = newlines[after_newline[broken] - 1] + 1
        costs = _unit_costs(text, line_start, ends, tokenizer)
        cost = _cost_function(tokenizer)
        pairs = zip(previous_end[broken].tolist(), line_start[broken].tolist(), strict=True)
        fixed = sum(cost(text[a:b]) for a, b in pairs)
        return _Plan(text, units, forced, preserved, costs, broken, fixed)


def _ranked(raw: Sequence[float], preserved: _Bools, boost: float) -> _Floats:
    """Scores as rank fractions in [0, 1] (scorer-independent), preserved units lifted by ``boost``."""
    values = np.asarray(raw, dtype=np.float64)
    # ascending score; at a tie the later unit ranks lower, so the earlier one is kept first
    order = np.lexsort((-np.arange(len(values)), values))
    ranked = np.empty(len(values))
    ranked[order] = np.arange(len(values)) / max(1, len(values) - 1)
    if boost:
        ranked[preserved] += boost
    return ranked


def _query_line(text: str, query: str | None) -> list[tuple[int, int]]:
    """The query where the text holds it verbatim, else the whole line holding it; kept verbatim."""
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
    if text.startswith(query.strip(), at):
        # Only the question itself is protected: its line's label ("Question:") is a unit like any other.
        return [(at, at + len(query.strip()))]
    start = text.rfind("\n", 0, at) + 1
    end = text.find("\n", at + len(query.strip()))
    return [(start, len(text) if end < 0 else end)]


def _covered(starts: _Ints, ends: _Ints, spans: Sequence[tuple[int, int]]) -> _Bools:
    """Which units overlap any of ``spans`` (sorted, disjoint)."""
    if not spans:
        return np.zeros(len(starts), bool)
    span_starts = np.fromiter((s for s, _ in spans), np.int64, len(spans))
    span_ends = np.fromiter((e for _, e in spans), np.int64, len(spans))
    index = np.searchsorted(span_ends, starts, side="right")  # first span ending after the unit starts
    inside = index < len(spans)
    inside[inside] = span_starts[index[inside]] < ends[inside]
    return inside


def _unit_costs(text: str, previous_end: _Ints, ends: _Ints, tokenizer: Tokenizer) -> _Ints:
    """Target-model tokens per unit with the whitespace before it, counted once per distinct string."""
    cost = _cost_function(tokenizer)
    return np.array(
        [cost(text[a:b]) for a, b in zip(previous_end.tolist(), ends.tolist(), strict=False)], np.int64
    )


@lru_cache(maxsize=16)
def _cost_function(tokenizer: Tokenizer) -> Callable[[str], int]:
    """A cached counter per tokenizer: words repeat across calls, so each is counted once."""
    return lru_cache(maxsize=200_000)(tokenizer.count)


def _select(plan: _Plan, order: list[int], budget: float) -> list[bool]:
    """Forced units, then the best-scored units (``order``) that still fit the budget."""
    kept: list[bool] = plan.forced.tolist()
    costs: list[int] = plan.costs.tolist()
    room = budget - float(plan.costs[plan.forced].sum()) - plan.fixed
    for i in order:
        if room < 1:
            break
        if not kept[i] and costs[i] <= room:
            kept[i] = True
            room -= costs[i]
    return kept


def _fit(plan: _Plan, scores: _Floats, budget: int, tokenizer: Tokenizer) -> tuple[list[bool], str, int]:
    """Select on the unit costs, count the real output once, and correct once if it drifted."""
    order: list[int] = np.argsort(-scores, kind="stable").tolist()  # ties go to the earlier unit
    kept = _select(plan, order, budget)
    output = assemble(plan.text, plan.units, kept)
    best = (kept, output, tokenizer.count(output))
    count = best[2]
    if budget * (1 - _TOLERANCE) <= count <= budget * (1 + _TOLERANCE) or all(kept):
        return best
    # Merges across dropped units made the estimate drift: aim once more, scaled by the error.
    kept = _select(plan, order, budget * budget / max(count, 1) * (0.99 if count > budget else 1.0))
    output = assemble(plan.text, plan.units, kept)
    second = (kept, output, tokenizer.count(output))
    return second if _better(second[2], count, budget) else best


def _better(count: int, than: int, budget: int) -> bool:
    """Fitting beats overshooting; among fits the fuller wins, among overshoots the smaller."""
    limit = budget * (1 + _TOLERANCE)
    if (count <= limit) != (than <= limit):
        return count <= limit
    return count > than if count <= limit else count < than


def _decisions(plan: _Plan, kept: list[bool], scores: _Floats) -> tuple[Decision, ...]:
    """One decision per unit; on long inputs one per line (at most ``_GROUP`` units), to stay cheap."""
    units, text = plan.units, plan.text
    forced: list[bool] = plan.forced.tolist()
    costs: list[int] = plan.costs.tolist()
    values: list[float] = scores.tolist()
    if len(units) <= _PER_UNIT_LIMIT:
        return tuple(
            Decision(
                i,
                "preserved" if forced[i] else u.kind,
                costs[i],
                kept[i],
                values[i],
                "preserved" if forced[i] else ("score" if kept[i] else "below cut"),
                text[u.start : u.end][:40],
            )
            for i, u in enumerate(units)
        )
    # Groups: each line, cut every _GROUP units.
    index = np.arange(len(units))
    line_start = np.maximum.accumulate(np.where(plan.broken, index, 0))
    firsts = np.flatnonzero(plan.broken | ((index - line_start) % _GROUP == 0))
    stops = np.append(firsts[1:], len(units))
    held = np.add.reduceat(np.asarray(kept, np.int64), firsts).tolist()
    tokens = np.add.reduceat(plan.costs, firsts).tolist()
    best = np.maximum.reduceat(scores, firsts).tolist()
    sizes = (stops - firsts).tolist()
    starts = units.starts[firsts].tolist()
    ends = np.minimum(units.ends[stops - 1], units.starts[firsts] + 40).tolist()
    return tuple(
        Decision(number, "words", tokens[number], held[number] > 0, best[number], reason, text[start:end])
        for number, (reason, start, end) in enumerate(
            zip(
                (f"kept {h} of {n} units" for h, n in zip(held, sizes, strict=True)),
                starts,
                ends,
                strict=True,
            )
        )
    )
