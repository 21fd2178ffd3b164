"""``relevance``: question-aware coarse selection (LongLLMLingua's coarse step).

The prompt is split into units (:mod:`compressors.units`); the text before the
first unit and after the last (instructions, the question) is fixed and always
kept. Units are scored against the query, kept by rank while they fit the token
budget, and emitted in their original order (or, with ``reorder: ends``, the
most relevant at the beginning and the end, against lost-in-the-middle).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from compressors.base import Ask, Compressed, Compressor, Cost, Decision, OptionsError
from compressors.embedding import BACKENDS, DEFAULT_BACKEND, Embedder
from compressors.models import load_once
from compressors.preserve import find_spans, split_tags
from compressors.question import find_question
from compressors.rerank import Scored, StageOptions, aligned, score_layout
from compressors.tokenizer import Tokenizer
from compressors.units import KINDS, Layout, split_units
from compressors.windowhead import WEIGHTS_FILE, WindowHead
from compressors.windows import Window, header_end

__all__ = ["SCORERS", "Relevance", "derive_query", "unit_texts"]

SCORERS: tuple[str, ...] = ("bm25", "embedding", "hybrid")

# Identifiers (UUIDs, hashes, snake_case, v1.2-style names) and quoted strings in a
# query must match exactly: embeddings and word pieces blur them.
_IDENTIFIER = re.compile(r"[\w][\w.\-/:]{4,}[\w]")
_QUOTED = re.compile(r"[\"'`]([^\"'`\n]{4,200})[\"'`]")
_MAX_REFITS = 8
_DOC_LABEL = re.compile(r"^Document \[\d+\]")
_PROSE = frozenset({"documents", "paragraphs", "sections"})
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


def unit_texts(layout: Layout) -> list[str]:
    """The units as the scorer reads them: without "Document [7]" labels, which carry no relevance
    (and without them a passage seen at another position, the next turn or another request, is an
    embedding-cache hit)."""
    units = layout.units()
    return [_DOC_LABEL.sub("", unit, count=1) for unit in units] if layout.kind == "documents" else units


def exact_terms(query: str) -> list[str]:
    """Casefolded identifiers and quoted strings of ``query`` that units should contain verbatim."""
    found = [match.group(1) for match in _QUOTED.finditer(query)]
    for match in _IDENTIFIER.finditer(query):
        word = match.group(0)
        if (any(c.isdigit() for c in word) and any(c.isalpha() for c in word)) or "_" in word:
            found.append(word)
    return list(dict.fromkeys(term.casefold() for term in found))


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
        "backend": (str, DEFAULT_BACKEND),  # embedding runtime: auto (the fastest here) or one named
        # The embedding reads the best windows by BM25 only: this many tokens of them, plus
        # embed_share of the input's tokens (a 20-document RAG prompt is embedded whole).
        "embed_tokens": (int, 3000),
        "embed_share": ((int, float), 0.05),
        "window_chars": (int, 200),  # windows of whole sentences up to this many characters
        # Stop embedding when the call has run this many ms (0: no limit); BM25 ranks the rest.
        "max_ms": ((int, float), 0),
        # Long inputs: the first stage also ranks windows by the model's word-piece vectors, so a
        # sentence sharing no word with the question can still be embedded (half the budget each).
        "word_vectors": (bool, True),
        # The embedding's cosine re-weighed by cheap signals (compressors/windowhead.py, trained on NQ)
        # when the budget is below this share of the input (0: never, 1: always). At 1/16 a
        # 20-document prompt keeps two or three windows, and the head ranks the answer's higher; at
        # 1/8 whole documents still fit and it kept fewer of them whole (bench/RESULTS.md).
        "window_head_below": ((int, float), 0.1),
        # Prose units that do not fit whole may keep their best windows (a document keeps its header).
        "partial": (bool, True),
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
            (opts["embed_tokens"] >= 0, "embed_tokens must be >= 0"),
            (0.0 <= opts["embed_share"] <= 1.0, "embed_share must be in [0, 1]"),
            (opts["window_chars"] >= 40, "window_chars must be >= 40"),
            (opts["max_ms"] >= 0, "max_ms must be >= 0"),
            (0.0 <= opts["window_head_below"] <= 1.0, "window_head_below must be in [0, 1]"),
        )
        for ok, message in checks:
            if not ok:
                raise OptionsError(f"{self.name}: {message}")
        sha = opts["model_sha256"]
        if sha is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
            raise OptionsError(f"{self.name}: model_sha256 must be 64 hex digits")
        self._embedder: Embedder | None = None
        self._head: WindowHead | None = None
        if opts["scorer"] != "bm25" and opts["window_head_below"] > 0:
            self._head = load_once(("window-head", str(WEIGHTS_FILE)), WindowHead.load, pinned=True)
        if opts["scorer"] != "bm25":
            self._embedder = Embedder(
                opts["model"],
                sha256=sha,
                batch_size=opts["batch_size"],
                long_units=opts["long_units"],
                backend=opts["backend"],
            )

    def score(
        self,
        query: str,
        layout: Layout,
        texts: Sequence[str],
        tokens_before: int,
        started: float | None = None,
        budget: int | None = None,
    ) -> Scored:
        """Relevance of each unit (and of its windows) to ``query`` with the configured scorer.

        The embedding reads only the windows a BM25 first stage ranks best
        (:mod:`compressors.rerank`). With ``exact_boost``, units that hold an identifier
        or quoted string of the query verbatim rank above all others; when any do, the
        rest are ranked by BM25 alone: embeddings cannot tell UUIDs apart.
        """
        opts = self.options
        matches = self._exact_matches(query, texts)
        stage = StageOptions(
            scorer=opts["scorer"],
            alpha=float(opts["alpha"]),
            floor_tokens=int(opts["embed_tokens"]),
            share=float(opts["embed_share"]),
            window_chars=int(opts["window_chars"]),
            head_only=opts["long_units"] == "head",
            max_ms=float(opts["max_ms"]),
            word_vectors=bool(opts["word_vectors"]),
            head=self._head if self._head_applies(tokens_before, budget) else None,
            started=time.perf_counter() if started is None else started,
        )
        scored = score_layout(
            query,
            layout,
            texts,
            tokens_before=tokens_before,
            embedder=self._embedder,
            options=stage,
            lexical_only=any(matches),
        )
        if not any(matches):
            return scored
        result = scored.units
        boost = (max(result) - min(result)) + 1.0
        units = [score + boost * hit for score, hit in zip(result, matches, strict=True)]
        windows = aligned(units, scored.windows, scored.window_scores)
        return Scored(units, scored.windows, windows, scored.embedded, scored.note)

    def _head_applies(self, tokens_before: int, budget: int | None) -> bool:
        share = float(self.options["window_head_below"])
        if share >= 1.0:
            return True
        return budget is not None and budget < share * tokens_before

    def _exact_matches(self, query: str, units: Sequence[str]) -> list[bool]:
        wanted = exact_terms(query) if self.options["exact_boost"] else []
        if not wanted:
            return [False] * len(units)
        return [any(term in unit.casefold() for term in wanted) for unit in units]

    def _compress(self, text: str, ask: Ask) -> Compressed:
        started = time.perf_counter()  # max_ms counts the whole call
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
        plan = _Plan.build(
            self, joined, layout, query, forced_ranges, tokenizer, notes, (tokens_before, started, budget)
        )
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
    parts: _Parts | None = None  # pieces of units a tight budget may keep instead of whole units
    items: list[tuple[int, int | None]] = field(default_factory=list)  # (unit, window or None), by score

    def __post_init__(self) -> None:
        # Whole units by rank; a unit's windows by their own scores, after the whole unit had its turn.
        if self.parts is None:
            self.items = [(i, None) for i in self.ranking]
            return
        items: list[tuple[float, int, int, int]] = [(-self.scores[i], 0, i, -1) for i in self.ranking]
        items += [(-score, 1, unit, w) for w, (unit, score) in enumerate(self.parts.windows)]
        items.sort()
        self.items = [(unit, None if window < 0 else window) for _, _, unit, window in items]

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
        size: tuple[int, float, int],  # tokens before, when the call began, the budget
    ) -> _Plan:
        units = layout.units()
        parts: _Parts | None = None
        found = QueryMatch(query) if query else derive_query(text, layout)
        if found is not None and found.start is not None and found.end is not None:
            forced_ranges = [*forced_ranges, (found.start, found.end)]  # the question itself survives
        if found is None or not found.text.strip():
            scores = [float(len(units) - i) for i in range(len(units))]
            notes = [*notes, "no query given or found in the text; kept the first units"]
        else:
            texts = unit_texts(layout)
            scored = compressor.score(found.text, layout, texts, *size)
            scores = scored.units
            notes = [*notes, scored.note] if scored.note else notes
            if compressor.options["partial"] and layout.kind in _PROSE:
                parts = _Parts.build(layout, scored.windows, scored.window_scores, tokenizer)
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
            parts=parts,
        )

    def _greedy(
        self, budget: int, min_units: int, excluded: set[int]
    ) -> tuple[list[int], dict[int, list[int]], bool]:
        """Units to keep by rank while they fit, and pieces of the units that do not fit whole
        (window indexes, when the layout has parts); whether the budget could be respected."""
        kept = [i for i in self.ranking if i in self.forced]
        used = self.fixed_tokens + sum(self.unit_tokens[i] + self.sep_tokens[i] for i in kept)
        fits = used <= budget
        pieces: dict[int, list[int]] = {}
        whole = set(kept)
        for unit, window in self.items:
            if unit in self.forced or unit in excluded or unit in whole:
                continue
            if window is None:
                cost = self.unit_tokens[unit] + self.sep_tokens[unit]
                if unit not in pieces and used + cost <= budget:
                    kept.append(unit)
                    whole.add(unit)
                    used += cost
                continue
            assert self.parts is not None
            if used + self.parts.least(window) > budget:
                continue  # cannot fit whatever it counts: spare the tokenizer
            cost = self.parts.tokens(window)
            if unit not in pieces:
                cost += self.parts.head_tokens(unit) + self.sep_tokens[unit]
            if used + cost <= budget:
                pieces.setdefault(unit, []).append(window)
                used += cost
        if len(kept) + len(pieces) < min_units:
            fits = False
            extra = [i for i in self.ranking if i not in kept and i not in pieces]
            kept += extra[: min_units - len(kept) - len(pieces)]
        return kept, pieces, fits

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
            kept, pieces, fits = self._greedy(budget, min_units, excluded)
            replaced = self.parts.render(pieces) if self.parts is not None else {}
            output = layout.render(self._order([*kept, *pieces]), replaced)
            tokens_after = tokenizer.count(output)
            # Token counts of parts do not add up exactly (merges across joins): refit if over.
            droppable = [i for i in [*kept, *pieces] if i not in self.forced]
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
        kept_set = set(kept) | set(pieces)
        rank_of = {unit: rank for rank, unit in enumerate(self.ranking)}
        decisions = tuple(
            Decision(
                index=i,
                kind=_UNIT_NAMES[layout.kind],
                tokens=self.unit_tokens[i],
                kept=i in kept_set,
                score=round(self.scores[i], 6),
                reason=(
                    "forced"
                    if i in self.forced
                    else f"rank {rank_of[i] + 1}" + (f", {len(pieces[i])} pieces kept" if i in pieces else "")
                ),
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


@dataclass(frozen=True, slots=True)
class _Parts:
    """The windows of prose units as pieces to keep: their units, scores and token costs, and
    each unit's header (a document's ``Document [i](Title: ...)``), kept with any of its pieces."""

    layout: Layout
    spans: list[tuple[int, int]]
    windows: list[tuple[int, float]]  # (unit, score) per window
    heads: dict[int, int]  # unit -> where its header ends
    tokenizer: Tokenizer
    # Counted when first asked: most windows belong to units kept or dropped whole.
    counted: dict[tuple[str, int], int] = field(default_factory=dict)

    @classmethod
    def build(
        cls, layout: Layout, windows: Sequence[Window], scores: Sequence[float], tokenizer: Tokenizer
    ) -> _Parts:
        text = layout.text
        return cls(
            layout=layout,
            spans=[(w.start, w.end) for w in windows],
            windows=[(w.unit, score) for w, score in zip(windows, scores, strict=True)],
            heads={i: header_end(text, s, e) for i, (s, e) in enumerate(layout.spans)},
            tokenizer=tokenizer,
        )

    def least(self, window: int) -> float:
        """A bound below the window's tokens (no token of English prose is 12 characters long)."""
        start, end = self.spans[window]
        return (end - start) / 12

    def tokens(self, window: int) -> int:
        """The window's tokens, with the space that joins it to the one before."""
        key = ("window", window)
        if key not in self.counted:
            start, end = self.spans[window]
            self.counted[key] = self.tokenizer.count(" " + self.layout.text[start:end])
        return self.counted[key]

    def head_tokens(self, unit: int) -> int:
        key = ("head", unit)
        if key not in self.counted:
            start = self.layout.spans[unit][0]
            self.counted[key] = self.tokenizer.count(self.layout.text[start : self.heads[unit]])
        return self.counted[key]

    def render(self, pieces: dict[int, list[int]]) -> dict[int, str]:
        """The text each partly kept unit reads as: its header, then its kept windows in text order."""
        text = self.layout.text
        result: dict[int, str] = {}
        for unit, chosen in pieces.items():
            start = self.layout.spans[unit][0]
            body = " ".join(text[self.spans[w][0] : self.spans[w][1]] for w in sorted(chosen))
            result[unit] = text[start : self.heads[unit]] + body
        return result
