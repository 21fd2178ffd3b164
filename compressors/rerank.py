"""Two-stage relevance: BM25 over short windows first, the embedding for the best of them only.

:mod:`compressors.windows` cuts units into windows and ranks them cheaply; the best ones,
up to a token budget that grows slowly with the input, are embedded and scored by cosine
to the query. A unit scores as its best window. Windows (and units) the embedding did not
read rank below every embedded one, in first-stage order: the first stage put them there.
With ``max_ms``, embedding stops before it would run past that many milliseconds and says
so in the note (the rest keeps its first-stage rank): a deadline the policy can set.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from compressors.embedding import Embedder
from compressors.units import Layout
from compressors.windowhead import WindowHead, features
from compressors.windows import CHARS_PER_TOKEN, Window, embed_budget, first_stage, split_windows

__all__ = ["Scored", "StageOptions", "aligned", "score_layout"]

_CHUNK = 64  # windows per encode call when a time budget is watched
_FIRST_CHUNK = 16


@dataclass(frozen=True, slots=True)
class StageOptions:
    """How :func:`score_layout` scores: the scorer, the hybrid mix, the embedding's budget."""

    scorer: str  # bm25, embedding or hybrid
    alpha: float = 0.8  # hybrid: weight of the embedding
    floor_tokens: int = 3000  # tokens of windows always embedded (a 20-document RAG prompt, whole)
    share: float = 0.05  # and this share of the input's tokens on top
    window_chars: int = 200
    head_only: bool = False  # only each unit's first window (long_units: head)
    max_ms: float = 0.0  # 0: no time budget
    word_vectors: bool = True  # the first stage also ranks by word-piece vectors (long inputs)
    head: WindowHead | None = None  # re-weighs the embedded windows' cosines (compressors/windowhead.py)
    started: float = 0.0  # time.perf_counter() when the compression began (max_ms counts from it)


@dataclass(frozen=True, slots=True)
class Scored:
    """Scores of units and of their windows (higher is better), and what the scorer wants said."""

    units: list[float]
    windows: list[Window]
    window_scores: list[float]
    embedded: int = 0
    note: str = ""


def score_layout(
    query: str,
    layout: Layout,
    texts: Sequence[str],
    *,
    tokens_before: int,
    embedder: Embedder | None,
    options: StageOptions,
    lexical_only: bool = False,
) -> Scored:
    """Scores of ``layout``'s units (``texts``: the units as the scorer should read them)."""
    windows = split_windows(layout, max_chars=options.window_chars)
    first, unit_first = first_stage(query, layout.text, windows, texts)
    if lexical_only or options.scorer == "bm25" or embedder is None:
        # A window's own BM25 only orders it among its unit's windows (scales differ between units).
        return Scored(list(unit_first), windows, aligned(unit_first, windows, [v / 1000 for v in first]))
    static, skipped = _word_similarities(embedder, query, layout.text, windows, tokens_before, options)
    chosen = _candidates(windows, first, tokens_before, options, static)
    embedded_texts = [w.context + layout.text[w.start : w.end] for w in (windows[i] for i in chosen)]
    sims, note = _similarities(embedder, query, embedded_texts, options)
    note = "; ".join(part for part in (skipped, note) if part)
    chosen = chosen[: len(sims)]
    if options.head is not None and sims:
        bodies = [layout.text[windows[i].start : windows[i].end] for i in chosen]
        units_of = [windows[i].unit for i in chosen]
        rows = features(
            query, bodies, sims, [first[i] for i in chosen], [unit_first[u] for u in units_of], units_of
        )
        sims = options.head.scores(rows)
    low = min(sims, default=0.0)
    # Not embedded: below every embedded window, in first-stage order (first is at most 1.5).
    window_scores = [low - 2.0 + value / 1.5 for value in first]
    for index, sim in zip(chosen, sims, strict=True):
        window_scores[index] = sim
    units = [low - 2.0 + value for value in unit_first]
    reached = [False] * len(units)
    for window, score in zip(windows, window_scores, strict=True):
        if not reached[window.unit] or score > units[window.unit]:
            units[window.unit] = score
            reached[window.unit] = True
    if options.scorer == "hybrid":
        units = _hybrid(units, unit_first, {windows[i].unit for i in chosen}, options.alpha)
        window_scores = aligned(units, windows, window_scores)
    return Scored(units, windows, window_scores, len(chosen), note)


def aligned(units: Sequence[float], windows: Sequence[Window], raw: Sequence[float]) -> list[float]:
    """Window scores on their units' scale: a unit's best window scores as the unit, the others
    lower by how much less they scored."""
    best: dict[int, float] = {}
    for window, value in zip(windows, raw, strict=True):
        best[window.unit] = max(best.get(window.unit, value), value)
    return [units[w.unit] - (best[w.unit] - value) for w, value in zip(windows, raw, strict=True)]


def _candidates(
    windows: Sequence[Window],
    first: Sequence[float],
    tokens: int,
    options: StageOptions,
    static: Sequence[float] | None = None,
) -> list[int]:
    """Windows to embed while their characters fit the budget: the best by the first stage, or,
    with word-vector similarities (``static``), the best of each ranking in turn."""
    limit = embed_budget(tokens, floor=options.floor_tokens, share=options.share) * CHARS_PER_TOKEN
    firsts = {w.unit: i for i, w in reversed(list(enumerate(windows)))}
    allowed = set(firsts.values()) if options.head_only else None
    orders = [sorted(range(len(windows)), key=lambda i: (-first[i], i))]
    if static is not None:
        orders.append(sorted(range(len(windows)), key=lambda i: (-static[i], i)))
    chosen: list[int] = []
    seen: set[int] = set()
    used = 0
    for index in _alternate(orders):
        if index in seen or (allowed is not None and index not in allowed):
            continue
        window = windows[index]
        size = len(window.context) + window.end - window.start
        if chosen and used + size > limit:
            break
        chosen.append(index)
        seen.add(index)
        used += size
    return chosen


def _alternate(orders: Sequence[Sequence[int]]) -> Iterator[int]:
    """The first of each order, then the second of each, and so on (repeats left to the caller)."""
    for items in zip(*orders, strict=True):
        yield from items


def _word_similarities(
    embedder: Embedder | None,
    query: str,
    text: str,
    windows: Sequence[Window],
    tokens: int,
    options: StageOptions,
) -> tuple[list[float] | None, str]:
    """Word-vector similarity of each window to the query (:mod:`compressors.wordvectors`), when the
    embedding cannot read every window and the model has word vectors (else None), and a note
    when ``max_ms`` left no time for them."""
    if embedder is None or not options.word_vectors or options.head_only:
        return None, ""
    limit = embed_budget(tokens, floor=options.floor_tokens, share=options.share) * CHARS_PER_TOKEN
    if sum(len(w.context) + w.end - w.start for w in windows) <= limit:
        return None, ""  # everything is embedded: no first stage to help
    if options.max_ms and (time.perf_counter() - options.started) * 1000 > options.max_ms / 2:
        # A huge input on a busy machine: the time left goes to the embedding.
        return None, f"word vectors skipped: half of max_ms {options.max_ms:g} gone before them"
    vectors = embedder.word_vectors()
    if vectors is None:
        return None, ""
    return [float(v) for v in vectors.similarities(query, [text[w.start : w.end] for w in windows])], ""


def _similarities(
    embedder: Embedder, query: str, texts: list[str], options: StageOptions
) -> tuple[list[float], str]:
    """Cosine of ``query`` to each of ``texts``, in order; fewer when ``max_ms`` (counted from
    ``options.started``, the start of the compression) runs out, noted."""
    if not texts:
        return [], ""
    if not options.max_ms:
        vectors = embedder.encode([query, *texts])
        return [float(v) for v in vectors[1:] @ vectors[0]], ""
    deadline = options.started + options.max_ms / 1000
    asked = embedder.encode([query])[0]
    began = time.perf_counter()
    sims: list[float] = []
    while len(sims) < len(texts):
        # A small first chunk measures this machine's speed now; later ones are sized by it.
        size = _FIRST_CHUNK if not sims else _CHUNK
        now = time.perf_counter()
        if sims:
            size = min(size, int((deadline - now) / ((now - began) / len(sims))))
        elif now >= deadline:
            size = 0
        if size <= 0:
            return sims, (
                f"embedded {len(sims)} of {len(texts)} windows within max_ms {options.max_ms:g};"
                " the rest ranked by BM25"
            )
        chunk = texts[len(sims) : len(sims) + size]
        sims.extend(float(v) for v in np.asarray(embedder.encode(chunk)) @ asked)
    return sims, ""


def _hybrid(units: list[float], lexical: list[float], embedded: set[int], alpha: float) -> list[float]:
    """``alpha`` x embedding + (1 - alpha) x BM25, both scaled over the embedded units; the rest below."""
    if not embedded:
        return units
    values = [units[i] for i in embedded]
    low, high = min(values), max(values)
    span = high - low if high - low > 1e-12 else 1.0
    return [
        alpha * (units[i] - low) / span + (1.0 - alpha) * lexical[i] if i in embedded else lexical[i] - 2.0
        for i in range(len(units))
    ]
