"""The ``selfinfo`` scorer: word self-information from a frequency table, made query-aware.

No model: -log p(word) comes from ``wordfreq`` (unknown words carry the most
information). Around the query, answers usually sit next to the question's
words and in the sentence that shares most of them, so units there are
boosted; numbers and names are boosted as the facts a reader needs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from compressors.words import Unit, zipf

__all__ = ["SelfInfo"]

_WORD = re.compile(r"\w+")
# Zipf 8 is about the most frequent English word; 0 means unknown.
_MAX_ZIPF = 8.0
# Query words this common carry no topic ("what", "who", "is").
_QUERY_STOP_ZIPF = 5.6
_SENTENCE_END = frozenset(".!?")
_RARE_ZIPF = 4.0
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
_PUNCT_SCORE = {".": 1.5, "?": 1.5, "!": 1.5, ":": 1.2, ";": 1.0}


@lru_cache(maxsize=200_000)
def _info(word: str) -> float:
    """Self-information of one lowercase word, in log10 units (0..8)."""
    return _MAX_ZIPF - min(_MAX_ZIPF, zipf(word))


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    """A crude English stem, enough to match "released" with "release"."""
    for suffix in ("ing", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


@dataclass(frozen=True, slots=True)
class SelfInfo:
    """Scores units by self-information plus query, number and name boosts."""

    query_boost: float = 3.0
    window: int = 8
    number_boost: float = 4.0
    name_boost: float = 2.0
    answer_boost: float = 3.0
    # Query words are already in the question: their own boost is smaller than their neighbours'.
    hit_weight: float = -0.5
    sentence_weight: float = 1.0
    sentence_gap: float = 6.0

    def scores(
        self, text: str, units: Sequence[Unit], query: str | None, *, keep_ratio: float
    ) -> list[float]:
        del keep_ratio  # one pass: the score of a unit does not depend on what else is kept
        words = [_WORD.findall(text[u.start : u.end]) for u in units]
        wanted = _answer_type(query)
        scores = [
            self._base(text, unit, unit_words, wanted) for unit, unit_words in zip(units, words, strict=True)
        ]
        terms = _query_terms(query)
        if terms:
            self._add_query_boost(text, units, words, terms, scores, query)
        return scores

    def _base(self, text: str, unit: Unit, words: list[str], wanted: str) -> float:
        if unit.kind == "punct":
            return _PUNCT_SCORE.get(text[unit.start], 0.5)
        if not words:
            return 1.0
        info = sum(_info(w.lower()) for w in words) / len(words)
        numeric = any(w[0].isdigit() for w in words)
        # A capital marks a name mid-sentence, or anywhere when the word is rare in lowercase.
        named = unit.kind == "atomic" or (
            words[0][0].isupper() and (_mid_sentence(text, unit.start) or zipf(words[0].lower()) < _RARE_ZIPF)
        )
        if numeric:
            info += self.number_boost
        if named and not numeric:
            info += self.name_boost
        # The unit looks like what the question asks for.
        if (
            (wanted == "number" and numeric)
            or (wanted == "date" and _YEAR.search(text, unit.start, unit.end))
            or (wanted == "name" and named and not numeric)
        ):
            info += self.answer_boost
        return info

    def _add_query_boost(
        self,
        text: str,
        units: Sequence[Unit],
        words: list[list[str]],
        terms: dict[str, float],
        scores: list[float],
        query: str | None,
    ) -> None:
        """Add closeness to the query's words, each weighted by its information.

        A unit near several distinct query words is where an answer usually sits;
        a query word itself counts only the *other* words near it (the question
        already says it). Distances grow across sentence ends.
        """
        total = sum(terms.values())
        # The query's own words (a "Question: ..." line inside the text) say nothing about where the answer is.
        asked_at = text.rfind(query.strip()) if query and query.strip() else -1
        asked = range(asked_at, asked_at + len(query.strip())) if query and asked_at >= 0 else range(0)
        position: list[float] = []
        sentence_of: list[int] = []
        matched: list[frozenset[str]] = []
        sentence = 0
        for index in range(len(units)):
            position.append(index + sentence * self.sentence_gap)
            sentence_of.append(sentence)
            found = frozenset(s for w in words[index] if (s := _stem(w.lower())) in terms)
            matched.append(frozenset() if units[index].start in asked else found)
            if _ends_sentence(text, units, index):
                sentence += 1
        closeness = [0.0] * len(units)
        for term, weight in terms.items():
            near = _nearest(position, [term in m for m in matched])
            share = weight / total
            for index, distance in enumerate(near):
                if term not in matched[index]:
                    closeness[index] += share * math.exp(-distance / self.window)
        sentence_hits: dict[int, set[str]] = {}
        for index, found in enumerate(matched):
            sentence_hits.setdefault(sentence_of[index], set()).update(found)
        relevance = {s: sum(terms[t] for t in found) / total for s, found in sentence_hits.items()}
        for index in range(len(units)):
            penalty = self.hit_weight if matched[index] else 0.0
            boost = closeness[index] + self.sentence_weight * relevance[sentence_of[index]] + penalty
            scores[index] += self.query_boost * boost


def _nearest(position: Sequence[float], is_hit: Sequence[bool]) -> list[float]:
    """Distance from each unit to the nearest hit (infinity when there is none)."""
    inf = math.inf
    out = [inf] * len(position)
    last = -inf
    for i, hit in enumerate(is_hit):
        if hit:
            last = position[i]
        out[i] = position[i] - last
    last = inf
    for i in range(len(position) - 1, -1, -1):
        if is_hit[i]:
            last = position[i]
        out[i] = min(out[i], last - position[i])
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
        if zipf(word) < _QUERY_STOP_ZIPF:
            terms[_stem(word)] = max(0.5, _info(word))
    return terms


def _mid_sentence(text: str, start: int) -> bool:
    """True when the word at ``start`` does not open a sentence (so its capital marks a name)."""
    before = text[max(0, start - 3) : start].rstrip()
    return bool(before) and before[-1] not in _SENTENCE_END and before[-1] != ":"


def _ends_sentence(text: str, units: Sequence[Unit], index: int) -> bool:
    unit = units[index]
    if unit.kind == "punct" and text[unit.end - 1] in _SENTENCE_END:
        return True
    following = units[index + 1].start if index + 1 < len(units) else len(text)
    return "\n" in text[unit.end : following]
