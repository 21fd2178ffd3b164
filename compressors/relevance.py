"""``relevance``: question-aware coarse selection (LongLLMLingua's coarse step).

The prompt is split into units (:mod:`compressors.units`); the text before the
first unit and after the last (instructions, the question) is fixed and always
kept. Units are scored against the query, kept by rank while they fit the token
budget, and emitted in their original order (or, with ``reorder: ends``, the
most relevant at the beginning and the end, against lost-in-the-middle).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from compressors.base import Ask, Compressed, Compressor, Cost, Decision, OptionsError
from compressors.bm25 import bm25_scores
from compressors.embedding import BACKENDS, DEFAULT_BACKEND, Embedder
from compressors.preserve import find_spans, split_tags
from compressors.question import find_question
from compressors.tokenizer import Tokenizer
from compressors.units import KINDS, Layout, split_units

__all__ = ["SCORERS", "Relevance", "derive_query"]

SCORERS: tuple[str, ...] = ("bm25", "embedding", "hybrid")

# Identifiers (UUIDs, hashes, snake_case, v1.2-style names) and quoted strings in a
# query must match exactly: embeddings and word pieces blur them.
_IDENTIFIER = re.compile(r"[\w][\w.\-/:]{4,}[\w]")
_QUOTED = re.compile(r"[\"'`]([^\"'`\n]{4,200})[\"'`]")
_MAX_REFITS = 8
_DOC_LABEL = re.compile(r"^Document \[\d+\]")
_UNIT_NAMES = {
    "documents": "document",
    "json": "json-element",
    "sections": "section",
    "paragraphs": "paragraph",
    "lines": "line",
    "sentences": "sentence",
}


@dataclass(frozen=True, slots=True)
class QueryMatch:
    """The query and where it was found in the text (None when passed in)."""

    text: str
    start: int | None = None
    end: int | None = None


def derive_query(text: str, layout: Layout) -> QueryMatch | None:
    """The question a prompt asks (:func:`compressors.question.find_question`).

    The fixed parts are searched first (suffix, then prefix), then the whole text, where a
    question may sit anywhere: its unit is kept whole.
    """
    regions = ((layout.suffix_start, len(text), False), (0, layout.prefix_end, False), (0, len(text), True))
    for start, end, anywhere in regions:
        found = find_question(text, start, end, anywhere=anywhere)
        if found is not None:
            return QueryMatch(found.text, found.start, found.end)
    return None


def exact_terms(query: str) -> list[str]:
    """Casefolded identifiers and quoted strings of ``query`` that units should contain verbatim."""
    found = [match.group(1) for match in _QUOTED.finditer(query)]
    for match in _IDENTIFIER.finditer(query):
        word = match.group(0)
        if (any(c.isdigit() for c in word) and any(c.isalpha() for c in word)) or "_" in word:
            found.append(word)
    return list(dict.fromkeys(term.casefold() for term in found))


def _minmax(values: Sequence[float]) -> list[float]:
    low, high = min(values), max(values)
    if high - low <= 1e-12:
        return [0.0 for _ in values]
    return [(value - low) / (high - low) for value in values]


class Relevance(Compressor):
    """Keep the units most relevant to the query, within the token budget."""

    name = "relevance"
    option_types: ClassVar[dict[str, tuple[type | tuple[type, ...], Any]]] = {
        "scorer": (str, "embedding"),  # measured best on NQ (bench/results/quality_relevance.md)
        "units": (str, "auto"),
        "reorder": (str, "none"),
        "model": (str, None),  # HF id or local path; None: bundled all-MiniLM-L6-v2, sha256-verified
        "model_sha256": (str, None),  # expected sha256 of the model's model.safetensors
        "batch_size": (int, 32),
        "alpha": ((int, float), 0.8),  # hybrid: weight of the embedding score (1 - alpha: bm25)
        "exact_boost": (bool, True),  # units holding the query's identifiers verbatim rank first
        "long_units": (str, "max"),  # embedding: max over 256-word-piece windows, or head (the first only)
        "min_units": (int, 1),
        "backend": (str, DEFAULT_BACKEND),  # embedding runtime: torch, onnx or onnx-int8 (fastest)
    }

    @property
    def cost_class(self) -> Cost:
        return "linear" if self.options["scorer"] == "bm25" else "model"

    def _validate(self) -> None:
        opts = self.options
        checks = (
            (opts["scorer"] in SCORERS, f"scorer must be one of {', '.join(SCORERS)}"),
            (opts["units"] in KINDS, f"units must be one of {', '.join(KINDS)}"),
            (opts["reorder"] in ("none", "ends"), "reorder must be none or ends"),
            (opts["long_units"] in ("head", "max"), "long_units must be head or max"),
            (opts["batch_size"] >= 1, "batch_size must be >= 1"),
            (0.0 <= opts["alpha"] <= 1.0, "alpha must be in [0, 1]"),
            (opts["min_units"] >= 0, "min_units must be >= 0"),
            (opts["backend"] in BACKENDS, f"backend must be one of {', '.join(BACKENDS)}"),
        )
        for ok, message in checks:
            if not ok:
                raise OptionsError(f"{self.name}: {message}")
        sha = opts["model_sha256"]
        if sha is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
            raise OptionsError(f"{self.name}: model_sha256 must be 64 hex digits")
        self._embedder: Embedder | None = None
        if opts["scorer"] != "bm25":
            self._embedder = Embedder(
                opts["model"],
                sha256=sha,
                batch_size=opts["batch_size"],
                long_units=opts["long_units"],
                backend=opts["backend"],
            )

    def scores(self, query: str, units: Sequence[str]) -> list[float]:
        """Relevance of each unit to ``query`` with the configured scorer (higher is better).

        With ``exact_boost``, units that hold an identifier or quoted string of the
        query verbatim rank above all others; when any do, the rest are ranked by
        BM25 alone: embeddings cannot tell UUIDs apart, and encoding 75 UUID pairs
        costs seconds on CPU.
        """
        if not units:
            return []
        matches = self._exact_matches(query, units)
        scorer = "bm25" if any(matches) else self.options["scorer"]
        if scorer == "bm25":
            result = bm25_scores(query, units)
        else:
            assert self._embedder is not None
            result = self._embedder.similarities(query, units)
            if scorer == "hybrid":
                alpha = float(self.options["alpha"])
                lexical = _minmax(bm25_scores(query, units))
                result = [
                    alpha * e + (1.0 - alpha) * w for e, w in zip(_minmax(result), lexical, strict=True)
                ]
        if any(matches):
            boost = (max(result) - min(result)) + 1.0
            result = [score + boost * hit for score, hit in zip(result, matches, strict=True)]
        return result

    def _exact_matches(self, query: str, units: Sequence[str]) -> list[bool]:
        wanted = exact_terms(query) if self.options["exact_boost"] else []
        if not wanted:
            return [False] * len(units)
        return [any(term in unit.casefold() for term in wanted) for unit in units]

    def _compress(self, text: str, ask: Ask) -> Compressed:
        target, query, preserve, tokenizer = ask.target, ask.query, ask.preserve, ask.tokenizer
        regions = split_tags(text)
        joined = "".join(region.text for region in regions)
        forced_ranges: list[tuple[int, int]] = []
        offset = 0
        for region in regions:
            if region.mode == "keep":
                forced_ranges.append((offset, offset + len(region.text)))
            offset += len(region.text)
        split = split_units(joined, self.options["units"])
        # Units that are JSON members are kept or dropped whole, each byte for byte, and the
        # container stays valid JSON: that is how a preserved JSON block survives selection.
        # Merging by the json span instead would make the whole block one unit: no selection at all.
        spans = [
            (span.start, span.end)
            for span in find_spans(joined, preserve)
            if not (split.kind == "json" and span.category == "json")
        ]
        layout = split.merged(spans)
        notes: list[str] = []
        if not split.spans:
            notes.append("no units to select from")
        elif len(layout.spans) < len(split.spans):
            notes.append(
                f"preserved spans joined {len(split.spans)} {split.kind} into {len(layout.spans)} units"
            )
        # A preserved span that reaches into the fixed text keeps its unit whole.
        forced_ranges += [(s, e) for s, e in spans if s < layout.prefix_end or e > layout.suffix_start]
        tokens_before = tokenizer.count(text)
        budget = target.budget(tokens_before)
        plan = _Plan.build(self, joined, layout, query, forced_ranges, tokenizer, notes)
        return plan.select(budget, tokens_before, int(self.options["min_units"]), tokenizer)


@dataclass(slots=True)
class _Plan:
    """Scored units of one prompt and the bookkeeping to pick them within a budget."""

    compressor: Relevance
    layout: Layout
    scores: list[float]
    ranking: list[int]
    forced: set[int]
    unit_tokens: list[int]
    sep_tokens: list[int]
    fixed_tokens: int
    note: str

    @classmethod
    def build(
        cls,
        compressor: Relevance,
        text: str,
        layout: Layout,
        query: str | None,
        forced_ranges: list[tuple[int, int]],
        tokenizer: Tokenizer,
        notes: list[str],
    ) -> _Plan:
        units = layout.units()
        found = QueryMatch(query) if query else derive_query(text, layout)
        if found is not None and found.start is not None and found.end is not None:
            forced_ranges = [*forced_ranges, (found.start, found.end)]  # the question itself survives
        if found is None or not found.text.strip():
            scores = [float(len(units) - i) for i in range(len(units))]
            notes = [*notes, "no query given or found in the text; kept the first units"]
        else:
            # "Document [7]" labels carry no relevance; without them a passage seen at another
            # position (the next turn, another request) is an embedding-cache hit.
            texts = (
                [_DOC_LABEL.sub("", unit, count=1) for unit in units] if layout.kind == "documents" else units
            )
            scores = compressor.scores(found.text, texts)
        forced = {
            i for i, (s, e) in enumerate(layout.spans) if any(fs < e and s < fe for fs, fe in forced_ranges)
        }
        seps = [layout.sep(i) or layout.default_sep() for i in range(len(units))]
        distinct = list(dict.fromkeys(seps))
        counts = tokenizer.count_many([layout.prefix, layout.suffix, *units, *distinct])
        sep_count = dict(zip(distinct, counts[2 + len(units) :], strict=True))
        ranking = sorted(range(len(units)), key=lambda i: (-scores[i], i))
        return cls(
            compressor=compressor,
            layout=layout,
            scores=scores,
            ranking=ranking,
            forced=forced,
            unit_tokens=counts[2 : 2 + len(units)],
            sep_tokens=[sep_count[sep] for sep in seps],
            fixed_tokens=counts[0] + counts[1],
            note="; ".join(notes),
        )

    def _greedy(self, budget: int, min_units: int, excluded: set[int]) -> tuple[list[int], bool]:
        """Units to keep by rank while they fit; whether the budget could be respected."""
        kept = [i for i in self.ranking if i in self.forced]
        used = self.fixed_tokens + sum(self.unit_tokens[i] + self.sep_tokens[i] for i in kept)
        fits = used <= budget
        for i in self.ranking:
            if i in self.forced or i in excluded:
                continue
            cost = self.unit_tokens[i] + self.sep_tokens[i]
            if used + cost <= budget:
                kept.append(i)
                used += cost
        if len(kept) < min_units:
            fits = False
            extra = [i for i in self.ranking if i not in kept][: min_units - len(kept)]
            kept += extra
        return kept, fits

    def _order(self, kept: list[int]) -> list[int]:
        if self.compressor.options["reorder"] != "ends":
            return sorted(kept)
        # kept is in rank order: best first, second best last, and so on inwards.
        ranked = sorted(kept, key=lambda i: (-self.scores[i], i))
        return ranked[0::2] + ranked[1::2][::-1]

    def select(self, budget: int, tokens_before: int, min_units: int, tokenizer: Tokenizer) -> Compressed:
        layout = self.layout
        min_units = min(min_units, len(layout.spans))
        excluded: set[int] = set()
        for _ in range(_MAX_REFITS):
            kept, fits = self._greedy(budget, min_units, excluded)
            output = layout.render(self._order(kept))
            tokens_after = tokenizer.count(output)
            # Token counts of parts do not add up exactly (merges across joins): refit if over.
            droppable = [i for i in kept if i not in self.forced]
            if tokens_after <= budget or not fits or len(droppable) <= min_units:
                break
            excluded.add(min(droppable, key=lambda i: (self.scores[i], -i)))
        met = tokens_after <= budget
        note = self.note
        if not met:
            why = (
                f"fixed text, forced units and min_units alone take {tokens_after} tokens,"
                f" over the budget of {budget}"
            )
            note = f"{note}; {why}" if note else why
        kept_set = set(kept)
        rank_of = {unit: rank for rank, unit in enumerate(self.ranking)}
        decisions = tuple(
            Decision(
                index=i,
                kind=_UNIT_NAMES[layout.kind],
                tokens=self.unit_tokens[i],
                kept=i in kept_set,
                score=round(self.scores[i], 6),
                reason=("forced" if i in self.forced else f"rank {rank_of[i] + 1}"),
                preview=layout.unit(i)[:40],
            )
            for i in range(len(layout.spans))
        )
        return Compressed(
            text=output,
            tokens_before=tokens_before,
            tokens_after=tokens_after,
            compressor=self.compressor.name,
            target_tokens=budget,
            target_met=met,
            note=note,
            decisions=decisions,
        )
