"""The ``selfinfo`` scorer: query-aware self-information weighed by a tiny trained network, no LM.

Each unit is described by cheap features: its self-information (``-log p(word)``
from ``wordfreq``), whether it is a number, a name, an article or a function word,
a repeat, inside a parenthetical aside, of the kind the question asks for (who ->
names, when -> dates, how many -> numbers), and where it sits against the query's
words: closeness to them (answers usually follow them: "X is Y"), the rank of its
sentence by query overlap, whether its sentence leads a paragraph. A one-hidden-layer
network (:mod:`compressors.keepnet`) reads the features of each unit and its two
neighbours on either side and gives a keep score; it was trained once on NQ-open
oracle rows (``bench/fit_selfinfo.py``) and ships as a small ``.npz`` of numbers:
numpy at run time, no language model, nothing downloaded. Content
words next to a better content word are then lifted towards it, so compounds stay
whole ("thylakoid *membrane*", "36 *passengers*").

Without a query (given, or the question the text asks: :mod:`compressors.question`), the query features
are zero and numbers count as the facts of the text.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from compressors.keepnet import WEIGHTS_FILE, keep_net
from compressors.question import query_of
from compressors.words import Unit, Units, zipf

__all__ = ["FEATURES", "WEIGHTS", "SelfInfo", "unit_matrix"]

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
    (
        re.compile(
            r"\b(who|whom|whose|where|(which|what) (country|city|state|team|company|county|band|language|"
            r"river|network|channel|station|island|province|party|club|university|school|character|actor))\b"
        ),
        "name",
    ),
)
_YEAR = re.compile(r"\b1\d{3}\b|\b20\d{2}\b")
_PUNCT_INFO = {".": 0.3, "?": 0.3, "!": 0.3, ":": 0.25, ";": 0.2}
# A sentence ends after . ! ? (and closing quotes/brackets) before a capital or digit, and at newlines.
_SENTENCE_BREAK = re.compile(r"[.!?][\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\n")
# Closed-class words: they glue phrases but carry no content of their own.
_FUNCTION_WORDS = frozenset(
    """a an the of in on at to for from by with as into onto upon about over under between through during
    before after above below up down out off than then and or but nor so yet if because while although though
    whereas since until unless whether is are was were be been being am has have had having do does did doing
    will would shall should can could may might must this that these those there here it its it's he him his
    she her hers they them their theirs we us our you your i me my which who whom whose what when where why
    how not no also very such each every all any both either neither some most more many much other another
    one only just own same too""".split()  # noqa: SIM905 (a word list reads better as text)
)
# A short capitalised label opening a line: "Passage: ...", "Context: ...".
_LABEL = re.compile(r"(?m)^[ \t]*[A-Z][\w ]{0,20}:(?=[ \t])")
# Numbers spelled out answer "how many" as often as digits do ("hosted the Games on two occasions").
_NUMBER_WORDS = frozenset(
    """two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen
    seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand
    million billion dozen once twice""".split()  # noqa: SIM905 (a word list reads better as text)
)
_WH_WORDS = ("who", "what", "when", "where", "which", "how", "why")
_OPEN = frozenset("([")
_CLOSE = frozenset(")]")

FEATURES: tuple[str, ...] = (
    "bias",
    "info",  # self-information 0..1 (punctuation: a small fixed worth)
    "punct",
    "numeric",
    "named",  # capitalised mid-sentence, rare when capitalised, or a detected entity/atomic unit
    "typed",  # the kind of unit the question asks for
    "article",
    "function",
    "repeat",  # the same word already occurred
    "hit",  # one of the query's words (the question already says it)
    "close",  # closeness to the query's words, slow decay (window)
    "close_tight",  # closeness, fast decay: right next to a query word is not where answers sit
    "top_sentence",  # in the sentence sharing most query-word information
    "second_sentence",
    "lead",  # in a sentence that opens the text or a line
    "aside",  # inside ( ) or [ ]
    "typed_close",
    "after_hit",  # the unit right after a query word
    "before_hit",  # the unit right before a query word
    "atomic",
    "untyped_named",  # a name, for a question without an answer type
    "typed_sentence",  # its sentence holds a unit of the wanted kind
    "capital",
    "typed_number",  # a number, for a when/how-many question
    "follows_query",  # closeness to query words before it (the answer follows them)
    "unqueried_number",  # a number in a text without a question
    "position",  # where in the text, 0 (first unit) .. 1 (last)
    "length",  # log(1 + characters)
    # The question's wanted answer type and its wh-word, one-hot: the network crosses them with the rest.
    "wants_number",
    "wants_date",
    "wants_name",
    "wants_other",
    *(f"wh_{word}" for word in _WH_WORDS),
)
# The linear model for texts without a query (or with query_boost 0): the keep network only ever saw
# NQ rows, which always have one. Fitted in round 3 by logistic regression on NQ rows 0-599 (label: the
# unit is part of a gold answer); "unqueried_number" is set by hand (numbers are a text's facts: GSM8K).
WEIGHTS: dict[str, float] = {
    "bias": -5.28,
    "info": 2.48,
    "punct": -0.356,
    "numeric": 0.191,
    "named": 0.227,
    "typed": 2.55,
    "article": -3.172,
    "function": -0.794,
    "repeat": 0.674,
    "hit": -0.458,
    "close": 0.285,
    "close_tight": -1.31,
    "top_sentence": 0.513,
    "second_sentence": 0.44,
    "lead": 0.889,
    "aside": -1.314,
    "typed_close": -0.771,
    "after_hit": -0.474,
    "before_hit": 0.463,
    "atomic": 0.498,
    "untyped_named": 1.251,
    "typed_sentence": -0.678,
    "capital": -0.394,
    "typed_number": 0.402,
    "follows_query": 2.681,
    "unqueried_number": 3.0,
} | {name: 0.0 for name in FEATURES[FEATURES.index("position") :]}
_QUERY_FEATURES = frozenset(
    {"hit", "close", "close_tight", "top_sentence", "second_sentence", "typed_close", "after_hit"}
    | {"before_hit", "follows_query"}
    | {name for name in FEATURES if name.startswith(("wants_", "wh_"))}
)


@lru_cache(maxsize=200_000)
def _stem(word: str) -> str:
    """A crude English stem, enough to match "released" with "release" and "owner" with "owned"."""
    for suffix in ("ing", "ed", "er", "es", "s"):
        if len(word) >= len(suffix) + 3 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


class _Features(NamedTuple):
    """What the scorer needs from one unit's text alone (cached per distinct string)."""

    info: float
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
        info = _PUNCT_INFO.get(first, 0.05)
        return _Features(
            info, (), lower, True, False, False, False, False, False, False, first in _OPEN, first in _CLOSE
        )
    zipfs = [zipf(w) for w in words]
    info = sum(_MAX_ZIPF - min(_MAX_ZIPF, z) for z in zipfs) / len(words) / _MAX_ZIPF
    return _Features(
        info,
        tuple(_stem(w) for w in words),
        lower,
        False,
        first.isdigit() or (first in "$€£¥" and len(unit) > 1) or lower in _NUMBER_WORDS,
        first.isupper(),
        zipfs[0] < _RARE_ZIPF,
        lower in _ARTICLES,
        lower not in _FUNCTION_WORDS,
        bool(_YEAR.search(unit)),
        False,
        False,
    )


@dataclass(frozen=True, slots=True)
class SelfInfo:
    """Scores units with the shipped keep network over :data:`FEATURES`.

    ``query_boost`` scales the weights of the query features (0 ignores the
    query); ``window`` is the closeness decay, in units; ``compound`` lifts a content
    word next to a better one; ``bridge`` lifts runs of up to ``gap`` words between two
    better units (tuned on NQ rows 0-599: 0.7 and 2).
    """

    query_boost: float = 1.0
    window: int = 10
    compound: float = 0.9
    bridge: float = 0.7
    gap: int = 2

    def scores(
        self, text: str, units: Sequence[Unit], query: str | None, *, keep_ratio: float
    ) -> list[float]:
        del keep_ratio  # one pass: the score of a unit does not depend on what else is kept
        if not units:
            return []
        matrix, content = unit_matrix(text, units, query, window=self.window)
        boost = np.array([self.query_boost if name in _QUERY_FEATURES else 1.0 for name in FEATURES])
        starts, ends = _bounds(units)
        if self.query_boost > 0 and _query_terms(query if query is not None else query_of(text)):
            net = keep_net()
            if net.features != FEATURES:
                raise ValueError(f"selfinfo: {WEIGHTS_FILE.name} was trained on other features; refit it")
            logits = net.logits(matrix * boost)
        else:
            logits = matrix @ (boost * np.array([WEIGHTS[name] for name in FEATURES]))
        score = 1.0 / (1.0 + np.exp(-logits))
        score = _compounds(score, content, self.compound)
        punct = matrix[:, FEATURES.index("punct")] > 0
        article = matrix[:, FEATURES.index("article")] > 0
        score = _bridges(score, ~punct, self.bridge, self.gap, lifted=~article)
        # A line's "Passage:" / "Context:" label says nothing the reader needs: it goes first.
        # (NQ rows 0-599 at rate 0.5: 0.912 -> 0.915; held-out rows 0.886 -> 0.889.)
        for match in _LABEL.finditer(text):
            score[(starts >= match.start()) & (ends <= match.end())] = 0.0
        result: list[float] = score.tolist()
        return result


def unit_matrix(
    text: str, units: Sequence[Unit], query: str | None, *, window: int = 10
) -> tuple[_Floats, _Bools]:
    """The :data:`FEATURES` of every unit (one row each) and which units are content words."""
    starts, ends = _bounds(units)
    atomic = units.atomic if isinstance(units, Units) else np.array([u.kind == "atomic" for u in units], bool)
    n = len(starts)
    # Work per distinct string (a few thousand in 20k tokens), then spread to units by id.
    ids: dict[str, int] = {}
    uid = np.array(
        [ids.setdefault(text[a:b], len(ids)) for a, b in zip(starts.tolist(), ends.tolist(), strict=True)],
        np.int64,
    )
    features = [_features(unique) for unique in ids]
    columns = list(zip(*features, strict=True))
    punct, numeric, capital, rare, article, content, dated, opens, closes = (
        np.array(column, bool)[uid] for column in columns[3:]
    )
    lowers: dict[str, int] = {}
    lower_id = np.array([lowers.setdefault(lower, len(lowers)) for lower in columns[2]], np.int64)[uid]
    _, first_at = np.unique(lower_id, return_index=True)
    matches = list(_SENTENCE_BREAK.finditer(text))
    sentence = np.searchsorted(np.array([m.end() for m in matches], np.int64), starts, side="right")
    lead = np.array([True] + ["\n" in m.group() for m in matches], bool)
    if query is None:
        query = query_of(text)
    wanted = _answer_type(query)
    opens_sentence = np.ones(n, bool)
    opens_sentence[1:] = sentence[1:] != sentence[:-1]
    named = ~numeric & ~punct & (atomic | (capital & (~opens_sentence | rare)))
    typed = {"number": numeric, "name": named, "date": dated}.get(wanted, np.zeros(n, bool))
    depth = np.cumsum(opens.astype(np.int64) - closes)
    terms = _query_terms(query)
    near = _Nearness(n, int(sentence[-1]) + 1)
    if terms and query:
        near.measure(text, starts, (features, uid), sentence, terms, query, window)
    sentence_typed = np.zeros(near.sentences, bool)
    sentence_typed[np.unique(sentence[typed & ~near.hit])] = True
    columns_out: dict[str, npt.ArrayLike] = {
        "bias": np.ones(n),
        "info": np.array(columns[0], np.float64)[uid],
        "punct": punct,
        "numeric": numeric,
        "named": named,
        "typed": typed,
        "article": article,
        "function": ~content & ~punct,
        "repeat": (first_at[lower_id] != np.arange(n)) & ~numeric & ~punct,
        "hit": near.hit,
        "close": near.close,
        "close_tight": near.close_tight,
        "top_sentence": near.top[sentence],
        "second_sentence": near.second[sentence],
        "lead": lead[sentence],
        "aside": (depth > 0) | closes,
        "typed_close": typed * near.close,
        "after_hit": np.concatenate(([False], near.hit[:-1])),
        "before_hit": np.concatenate((near.hit[1:], [False])),
        "atomic": atomic,
        "untyped_named": named & (wanted == ""),
        "typed_sentence": sentence_typed[sentence],
        "capital": capital,
        "typed_number": numeric & (wanted in ("number", "date")),
        "follows_query": near.follows,
        "unqueried_number": numeric & (not terms),
        "position": np.arange(n) / max(1, n - 1),
        "length": np.log1p(ends - starts),
    }
    asked = bool(query and query.strip())
    for kind in ("number", "date", "name"):
        columns_out[f"wants_{kind}"] = np.full(n, asked and wanted == kind)
    columns_out["wants_other"] = np.full(n, asked and wanted == "")
    wh = _wh_word(query)
    for word in _WH_WORDS:
        columns_out[f"wh_{word}"] = np.full(n, word == wh)
    matrix = np.column_stack([np.asarray(columns_out[name], np.float64) for name in FEATURES])
    return matrix, content & ~punct


def _bounds(units: Sequence[Unit]) -> tuple[_Ints, _Ints]:
    if isinstance(units, Units):
        return units.starts, units.ends
    return np.array([u.start for u in units], np.int64), np.array([u.end for u in units], np.int64)


class _Nearness:
    """Where units sit against the query's words (all zeros when there are none)."""

    def __init__(self, n: int, sentences: int) -> None:
        self.sentences = sentences
        self.hit = np.zeros(n, bool)
        self.close = np.zeros(n)
        self.close_tight = np.zeros(n)
        self.follows = np.zeros(n)
        self.top = np.zeros(sentences, bool)
        self.second = np.zeros(sentences, bool)

    def measure(
        self,
        text: str,
        starts: _Ints,
        distinct: tuple[list[_Features], _Ints],
        sentence: _Ints,
        terms: dict[str, float],
        query: str,
        window: int,
    ) -> None:
        asked = query.strip()
        asked_at = text.rfind(asked)
        asked_end = asked_at + len(asked) if asked_at >= 0 else -1
        features, uid = distinct
        keys = terms.keys()
        matched = {
            i: [s for s in f.stems if s in terms]
            for i, f in enumerate(features)
            if not keys.isdisjoint(f.stems)
        }
        if not matched:
            return
        candidates = np.flatnonzero(np.isin(uid, list(matched)))
        # The query's own line (a "Question: ..." inside the text) says nothing about where the answer is.
        hits = [
            (index, stem)
            for index, at in zip(candidates.tolist(), starts[candidates].tolist(), strict=True)
            if not asked_at <= at < asked_end
            for stem in matched[int(uid[index])]
        ]
        if not hits:
            return
        total = sum(terms.values())
        position = np.arange(len(uid), dtype=np.float64) + sentence * float(2 * window)
        relevance = np.zeros(self.sentences)
        by_term: dict[str, list[int]] = {}
        for index, stem in hits:
            by_term.setdefault(stem, []).append(index)
            self.hit[index] = True
        for stem, indices in by_term.items():
            share = terms[stem] / total
            at = position[indices]
            distance = _distance(position, at)
            self.close += share * np.exp(-distance / window)
            self.close_tight += share * np.exp(-distance / 3.0)
            before = np.searchsorted(at, position) - 1  # the nearest hit at or before each unit
            behind = np.where(before >= 0, position - at[np.clip(before, 0, None)], math.inf)
            self.follows += share * np.exp(-behind / 5.0)
            relevance[np.unique(sentence[indices])] += share
        relevance += 0.5 * _bigrams(hits, query, terms, sentence, self.sentences) / total
        order = np.argsort(-relevance, kind="stable")
        self.top[order[0]] = relevance[order[0]] > 0
        if len(order) > 1:
            self.second[order[1]] = relevance[order[1]] > 0


def _compounds(score: _Floats, content: _Bools, lift: float) -> _Floats:
    """Lift a content word next to a better content word: "thylakoid *membrane*", "36 *passengers*"."""
    if len(score) < 2 or lift <= 0:
        return score
    pair = content[:-1] & content[1:]
    lifted = score.copy()
    lifted[1:] = np.where(pair, np.maximum(lifted[1:], lift * score[:-1]), lifted[1:])
    lifted[:-1] = np.where(pair, np.maximum(lifted[:-1], lift * score[1:]), lifted[:-1])
    return lifted


def _bridges(score: _Floats, words: _Bools, lift: float, gap: int, *, lifted: _Bools) -> _Floats:
    """Lift a short run of words between two better words, so phrases stay contiguous:
    "Speaker *of* House", "Return *of* the Jedi" (a phrase missing its inner word is a different one).
    Only ``lifted`` units rise: an article inside the run may go (NQ rows 0-599: 0.915 -> 0.917)."""
    n = len(score)
    if n < 3 or lift <= 0:
        return score
    out = score.copy()
    for width in range(1, gap + 1):
        if n < width + 2:
            break
        left = score[: n - width - 1]
        right = score[width + 1 :]
        run = np.ones(n - width - 1, bool)
        for k in range(1, width + 1):
            run &= words[k : n - width - 1 + k]
        bridged = lift * np.minimum(left, right)
        for k in range(1, width + 1):
            view = out[k : n - width - 1 + k]
            lift_here = run & lifted[k : n - width - 1 + k]
            np.maximum(view, np.where(lift_here, bridged, view), out=view)
    return out


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
    sentence: _Ints,
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


def _answer_type(query: str | None) -> str:
    if not query:
        return ""
    lowered = query.lower()
    # The earliest cue wins: "who is the singer of just when i needed you most" asks for a name.
    found = [(match.start(), kind) for pattern, kind in _ANSWER_TYPES if (match := pattern.search(lowered))]
    return min(found)[1] if found else ""


def _wh_word(query: str | None) -> str:
    """The question's first wh-word ("" if none)."""
    words: list[str] = _WORD.findall((query or "").lower())
    return next((word for word in words if word in _WH_WORDS), "")


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
