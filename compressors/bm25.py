"""Okapi BM25 over a small corpus (the units of one prompt, or a bench's passages).

Terms are lowercase word tokens minus a short stopword list. Identifiers such
as UUIDs split into their alphanumeric pieces, which are rare, so exact ids
score high. Deterministic: pure arithmetic over counts, no randomness.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

__all__ = ["STOPWORDS", "Bm25Index", "bm25_scores", "terms"]

_WORD = re.compile(r"[^\W_]+", re.UNICODE)

_STOPWORD_TEXT = """a about above after again against all am an and any are as at be because been before being below
    between both but by can could did do does doing down during each few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most my
    myself no nor not now of off on once only or other our ours ourselves out over own same she should so
    some such than that the their theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why will with would you your
    yours yourself yourselves"""
STOPWORDS: frozenset[str] = frozenset(_STOPWORD_TEXT.split())


def terms(text: str) -> list[str]:
    """Lowercase word tokens of ``text`` without stopwords."""
    return [word for word in _WORD.findall(text.lower()) if word not in STOPWORDS]


class Bm25Index:
    """An inverted index over ``docs`` (each a list of terms) that scores queries with BM25."""

    __slots__ = ("_avg_len", "_b", "_k1", "_lengths", "_postings")

    def __init__(self, docs: Sequence[Sequence[str]], *, k1: float = 1.2, b: float = 0.75) -> None:
        self._k1 = k1
        self._b = b
        self._lengths = [len(doc) for doc in docs]
        self._avg_len = (sum(self._lengths) / len(docs)) if docs else 0.0
        self._postings: dict[str, list[tuple[int, int]]] = {}
        for index, doc in enumerate(docs):
            for term, count in Counter(doc).items():
                self._postings.setdefault(term, []).append((index, count))

    def __len__(self) -> int:
        return len(self._lengths)

    def scores(self, query: Sequence[str]) -> list[float]:
        """BM25 score of every document for ``query`` terms (repeats count once)."""
        return _score(query, self._postings, self._lengths, self._avg_len, self._k1, self._b)


def _score(
    query: Sequence[str],
    postings: dict[str, list[tuple[int, int]]],
    lengths: list[int],
    avg_len: float,
    k1: float,
    b: float,
) -> list[float]:
    result = [0.0] * len(lengths)
    if not avg_len:
        return result
    total = len(lengths)
    for term in dict.fromkeys(query):
        posts = postings.get(term)
        if not posts:
            continue
        # The "plus one" idf (Lucene's) stays positive for terms in most documents.
        idf = math.log(1.0 + (total - len(posts) + 0.5) / (len(posts) + 0.5))
        for index, count in posts:
            norm = k1 * (1.0 - b + b * lengths[index] / avg_len)
            result[index] += idf * count * (k1 + 1.0) / (count + norm)
    return result


def bm25_scores(query: str, docs: Sequence[str], *, k1: float = 1.2, b: float = 0.75) -> list[float]:
    """BM25 scores of ``docs`` (texts) for ``query`` (text), with ``docs`` as the corpus.

    One-shot scoring only needs counts of the query's terms, so no full index is built.
    """
    wanted = terms(query)
    wanted_set = set(wanted)
    lengths: list[int] = []
    postings: dict[str, list[tuple[int, int]]] = {}
    for index, doc in enumerate(docs):
        doc_terms = terms(doc)
        lengths.append(len(doc_terms))
        for term, count in Counter(t for t in doc_terms if t in wanted_set).items():
            postings.setdefault(term, []).append((index, count))
    avg_len = sum(lengths) / len(lengths) if lengths else 0.0
    return _score(wanted, postings, lengths, avg_len, k1, b)
