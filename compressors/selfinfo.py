"""The ``selfinfo`` scorer: coarse-to-fine, query-aware self-information, no model.

Coarse: the text is cut into sentences and each is rated against the query
(information-weighted overlap with the query's words, adjacent query word pairs,
and whether it holds a unit of the kind the question asks for). Sentences get a
bonus by rank, so the best one is kept nearly whole, the next ones are pruned
harder and the worst go first. Fine: inside a sentence a unit is worth its
self-information (``-log p(word)`` from ``wordfreq``), more when it is a number
or a name or the kind of unit the question asks for, and more when it sits next
to the query's words, where answers usually are ("X is Y"). Articles, repeats
and parenthetical asides go first. Scores are smoothed so that a function word
between two kept words ("points *or* health points") outranks one among dropped
words, which keeps phrases contiguous.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from compressors.words import Unit, Units, zipf

__all__ = ["SelfInfo", "derive_query"]

_Floats = npt.NDArray[np.float64]
_Ints = npt.NDArray[np.int64]
_Bools = npt.NDArray[np.bool_]
_WORD = re.compile(r"\w+")
# Zipf 8 is about the most frequent English word; 0 means unknown.
_MAX_ZIPF = 8.0
# Query words this common carry no topic ("what", "who", "is").
_QUERY_STOP_ZIPF = 5.6
_RARE_ZIPF = 4.0
_ARTICLES = frozenset({"a", "an", "the"})
# What kind of unit answers a question, from its wording: the classic answer-type cue.
_ANSWER_TYPES: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"\b(how (many|much|long|old|far|big|tall|high|large)|what (percentage|number|age))\b"),
        "number",
    ),
    (re.compile(r"\b(when|what (year|date|time|day|month|century|decade)|which year)\b"), "date"),
    (re.compile(r"\b(who|whom|whose|where|which (country|city|state|team|company))\b"), "name"),
)
_YEAR = re.compile(r"\b1\d{3}\b|\b20\d{2}\b")
_PUNCT_SCORE = {".": 0.3, "?": 0.3, "!": 0.3, ":": 0.25, ";": 0.2}
# A sentence ends after . ! ? (and closing quotes/brackets) before a capital or digit, and at newlines.
_SENTENCE_BREAK = re.compile(r"[.!?][\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\n")
_TRAILING_QUESTION = re.compile(r"(?:^|\n)[ \t]*Question:[ \t]*([^\n]+)\s*\Z")
_LAST_SENTENCE = re.compile(r"([^.!?\n]+\?)\s*\Z")
# Closed-class words: they glue phrases but carry no content of their own.
_FUNCTION_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "for",
        "from",
        "by",
        "with",
        "as",
        "into",
        "onto",
        "upon",
        "about",
        "over",
        "under",
        "between",
        "through",
        "during",
        "before",
        "after",
        "above",
        "below",
        "up",
        "down",
        "out",
        "off",
        "than",
        "then",
        "and",
        "or",
        "but",
        "nor",
        "so",
        "yet",
        "if",
        "because",
        "while",
        "although",
        "though",
        "whereas",
        "since",
        "until",
        "unless",
        "whether",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "has",
        "have",
        "had",
        "having",
        "do",
        "does",
        "did",
        "doing",
        "will",
        "would",
        "shall",
        "should",
        "can",
        "could",
        "may",
        "might",
        "must",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "it",
        "its",
        "it's",
        "he",
        "him",
        "his",
        "she",
        "her",
        "hers",
        "they",
        "them",
        "their",
        "theirs",
        "we",
        "us",
        "our",
        "you",
        "your",
        "i",
        "me",
        "my",
        "which",
        "who",
        "whom",
        "whose",
        "what",
        "when",
        "where",
        "why",
        "how",
        "not",
        "no",
        "also",
        "very",
        "such",
        "each",
        "every",
        "all",
        "any",
        "both",
        "either",
        "neither",
        "some",
        "most",
        "more",
        "many",
        "much",
        "other",
        "another",
        "one",
        "only",
        "just",
        "own",
        "same",
        "too",
    ]
)
_OPEN = frozenset("([")
_CLOSE = frozenset(")]")


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    """A crude English stem, enough to match "released" with "release" and "owner" with "owned"."""
    for suffix in ("ing", "ed", "er", "es", "s"):
        if len(word) >= len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


class _Features(NamedTuple):
    """What the scorer needs from one unit's text alone (cached per distinct string)."""

    info: float  # self-information 0..1; for punctuation its fixed worth
    stems: tuple[str, ...]
    lower: str
    punct: bool
    numeric: bool
    capital: bool
    rare: bool
    article: bool
    content: bool
    dated: bool
    opens: bool  # "(" or "["
    closes: bool


@lru_cache(maxsize=200_000)
def _features(unit: str) -> _Features:
    lower = unit.lower()
    words = _WORD.findall(lower)
    first = unit[0]
    if not words:
        info = _PUNCT_SCORE.get(first, 0.05)
        return _Features(
            info, (), lower, True, False, False, False, False, False, False, first in _OPEN, first in _CLOSE
        )
    zipfs = [zipf(w) for w in words]
    info = sum(_MAX_ZIPF - min(_MAX_ZIPF, z) for z in zipfs) / len(words) / _MAX_ZIPF
    numeric = first.isdigit() or (first in "$€£¥" and len(unit) > 1)
    return _Features(
        info,
        tuple(_stem(w) for w in words),
        lower,
        False,
        numeric,
        first.isupper(),
        zipfs[0] < _RARE_ZIPF,
        lower in _ARTICLES,
        lower not in _FUNCTION_WORDS,
        bool(_YEAR.search(unit)),
        False,
        False,
    )


def derive_query(text: str) -> str | None:
    """The question a text ends with: a trailing ``Question:`` line, else a final ``?`` sentence."""
    tail = text[-2000:]
    match = _TRAILING_QUESTION.search(tail) or _LAST_SENTENCE.search(tail)
    return match.group(1).strip() if match else None


@dataclass(frozen=True, slots=True)
class SelfInfo:
    """Scores units by sentence rank against the query plus in-sentence information."""

    query_boost: float = 1.0
    window: int = 10
    number_boost: float = 0.5
    name_boost: float = 0.25
    answer_boost: float = 0.5
    closeness_weight: float = 0.6
    sentence_weight: float = 0.0
    rank_bonus: float = 0.0
    rank_decay: float = 0.5
    bigram_weight: float = 0.5
    type_weight: float = 0.15
    hit_weight: float = 0.3
    repeat_penalty: float = 0.3
    aside_penalty: float = 0.2
    bridge: float = 0.0
    compound: float = 0.9

    def scores(
        self, text: str, units: Sequence[Unit], query: str | None, *, keep_ratio: float
    ) -> list[float]:
        del keep_ratio  # one pass: the score of a unit does not depend on what else is kept
        if not units:
            return []
        if isinstance(units, Units):
            starts, ends, atomic = units.starts, units.ends, units.atomic
        else:
            starts = np.array([u.start for u in units], np.int64)
            ends = np.array([u.end for u in units], np.int64)
            atomic = np.array([u.kind == "atomic" for u in units], bool)
        features = [
            _features(text[start:end]) for start, end in zip(starts.tolist(), ends.tolist(), strict=False)
        ]
        breaks = np.fromiter((m.end() for m in _SENTENCE_BREAK.finditer(text)), np.int64)
        sentence = np.searchsorted(breaks, starts, side="right")
        if query is None:
            query = derive_query(text)
        wanted = _answer_type(query)
        fine = self._fine(features, sentence, atomic, wanted)
        terms = _query_terms(query)
        if terms and query:
            part, hit_unit = self._query_part(text, starts, features, sentence, terms, query, wanted)
            fine[hit_unit & ~atomic] *= self.hit_weight
            fine += self.query_boost * part
        result: list[float] = fine.tolist()
        return result

    def _fine(
        self,
        features: list[_Features],
        sentence: _Ints,
        atomic: _Bools,
        wanted: str,
    ) -> _Floats:
        """In-sentence worth of each unit: information, numbers, names, minus articles, repeats, asides."""
        n = len(features)
        columns = list(zip(*features, strict=True))
        score = np.array(columns[0], np.float64)
        punct, numeric, capital, rare, article, content, dated, opens, closes = (
            np.array(column, bool) for column in columns[3:]
        )
        opens_sentence = np.empty(n, bool)
        opens_sentence[0] = True
        opens_sentence[1:] = sentence[1:] != sentence[:-1]
        named = ~numeric & ~punct & (atomic | (capital & (~opens_sentence | rare)))
        score += self.number_boost * numeric + self.name_boost * named
        typed = {"number": numeric, "name": named, "date": dated}.get(wanted)
        if typed is not None:
            score += self.answer_boost * typed
        score[article] = 0.0
        first: dict[str, int] = {}
        seen_at = np.array([first.setdefault(lower, i) for i, lower in enumerate(columns[2])], np.int64)
        repeat = seen_at != np.arange(n)
        score[repeat & ~numeric & ~punct] *= self.repeat_penalty
        depth = np.cumsum(opens.astype(np.int64) - closes)
        score -= self.aside_penalty * ((depth > 0) | closes)
        return _compounds(_bridged(score, self.bridge), content, self.compound)

    def _query_part(
        self,
        text: str,
        starts: _Ints,
        features: list[_Features],
        sentence: _Ints,
        terms: dict[str, float],
        query: str,
        wanted: str,
    ) -> tuple[_Floats, npt.NDArray[np.bool_]]:
        """Closeness to the query's words and the rank of the unit's sentence against the query."""
        n = len(features)
        asked_at = text.rfind(query.strip())
        asked_end = asked_at + len(query.strip()) if asked_at >= 0 else -1
        keys = terms.keys()
        hits = [
            (index, stem)
            for index, unit in enumerate(features)
            if not keys.isdisjoint(unit.stems)
            for stem in unit.stems
            if stem in terms and not asked_at <= starts[index] < asked_end
        ]
        total = sum(terms.values())
        sentences = int(sentence[-1]) + 1
        relevance = np.zeros(sentences)
        closeness = np.zeros(n)
        hit_unit = np.zeros(n, bool)
        if hits:
            position = np.arange(n, dtype=np.float64) + sentence * float(self.window * 2)
            by_term: dict[str, list[int]] = {}
            for index, stem in hits:
                by_term.setdefault(stem, []).append(index)
                hit_unit[index] = True
            for stem, indices in by_term.items():
                share = terms[stem] / total
                closeness += share * np.exp(-_distance(position, position[indices]) / self.window)
                relevance[np.unique(sentence[indices])] += share
            relevance += self.bigram_weight * _bigrams(hits, query, terms, sentence, sentences) / total
        relevance += self.type_weight * _typed_sentences(features, sentence, sentences, wanted, hit_unit)
        order = np.argsort(-relevance, kind="stable")
        rank = np.empty(sentences, np.int64)
        rank[order] = np.arange(sentences)
        bonus = self.sentence_weight * relevance + self.rank_bonus * self.rank_decay ** rank.astype(
            np.float64
        )
        bonus[relevance <= 0] = 0.0
        near = self.closeness_weight * closeness
        near[hit_unit] = 0.0
        return bonus[sentence] + near, hit_unit


def _bridged(score: _Floats, bridge: float) -> _Floats:
    """Lift a unit between two better ones towards the weaker of them (keeps phrases whole)."""
    if len(score) < 3 or bridge <= 0:
        return score
    between = np.minimum(score[:-2], score[2:])
    lifted = score.copy()
    lifted[1:-1] = np.maximum(score[1:-1], bridge * between)
    return lifted


def _compounds(score: _Floats, content: npt.NDArray[np.bool_], lift: float) -> _Floats:
    """Lift a content word next to a better content word: "thylakoid *membrane*", "36 *passengers*"."""
    if len(score) < 2 or lift <= 0:
        return score
    pair = content[:-1] & content[1:]
    lifted = score.copy()
    lifted[1:] = np.where(pair, np.maximum(lifted[1:], lift * score[:-1]), lifted[1:])
    lifted[:-1] = np.where(pair, np.maximum(lifted[:-1], lift * score[1:]), lifted[:-1])
    return lifted


def _distance(position: _Floats, hits: _Floats) -> _Floats:
    """Distance from each position to the nearest of ``hits`` (sorted)."""
    at = np.searchsorted(hits, position)
    left = hits[np.clip(at - 1, 0, len(hits) - 1)]
    right = hits[np.clip(at, 0, len(hits) - 1)]
    return np.minimum(np.abs(position - left), np.abs(right - position))


def _bigrams(
    hits: list[tuple[int, str]],
    query: str,
    terms: dict[str, float],
    sentence: npt.NDArray[np.int64],
    sentences: int,
) -> _Floats:
    """Per sentence, the weight of query word pairs that appear next to each other, as in the query."""
    stems = [_stem(w) for w in _WORD.findall(query.lower())]
    pairs = {(a, b) for a, b in itertools.pairwise(stems) if a in terms and b in terms}
    out = np.zeros(sentences)
    if not pairs:
        return out
    for (i, a), (j, b) in itertools.pairwise(hits):
        if j - i <= 2 and (a, b) in pairs and sentence[i] == sentence[j]:
            out[sentence[i]] += terms[a] + terms[b]
    return out


def _typed_sentences(
    features: list[_Features],
    sentence: npt.NDArray[np.int64],
    sentences: int,
    wanted: str,
    hit_unit: npt.NDArray[np.bool_],
) -> _Floats:
    """1 for sentences holding a unit of the wanted answer type (not one of the query's words)."""
    out = np.zeros(sentences)
    if wanted in ("number", "date"):
        typed = np.array([unit.numeric for unit in features], bool)
        out[np.unique(sentence[typed & ~hit_unit])] = 1.0
    return out


def _answer_type(query: str | None) -> str:
    if not query:
        return ""
    lowered = query.lower()
    return next((kind for pattern, kind in _ANSWER_TYPES if pattern.search(lowered)), "")


def _query_terms(query: str | None) -> dict[str, float]:
    """Content-word stems of the query, weighted by their information."""
    if not query:
        return {}
    terms: dict[str, float] = {}
    for word in _WORD.findall(query.lower()):
        z = zipf(word)
        if z < _QUERY_STOP_ZIPF:
            terms[_stem(word)] = max(0.1, (_MAX_ZIPF - z) / _MAX_ZIPF)
    return terms
