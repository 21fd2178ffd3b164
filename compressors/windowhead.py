"""The last step of ``relevance``'s window scoring: the embedding's cosine re-weighed by cheap signals.

At a tight budget (1/16 of a 20-document prompt leaves room for two or three windows) the
window holding the answer must rank first or second among ~70; MiniLM's cosine puts it there
in ~77% of NQ cases. A linear head over a few signals the cosine does not see raises that:
the first stage's BM25 of the window and of its unit, the best cosine in the window's unit
(a window of the best document is worth more), and, crossed with what the question asks
(who / when / where / how many / anything else), whether the window holds a year, a digit, a
month name, and how many of its words are capitalised (a "when" question wants a date).
The weights (``windowhead.npz``, 25 numbers) are trained offline by
``bench/fit_window_head.py`` on NQ-open rows 0-1799 (listwise: the windows that hold an answer
string are the targets); the NQ figures are quoted on rows it never saw as well.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["FEATURE_NAMES", "WEIGHTS_FILE", "WindowHead", "features"]

WEIGHTS_FILE = Path(__file__).with_name("windowhead.npz")

_YEAR = re.compile(r"\b1[0-9]{3}\b|\b20[0-9]{2}\b")
_DIGIT = re.compile(r"\d")
_MONTH = re.compile(
    r"\b(?:January|February|March|April|May|June|July|August|September|October|November|December)\b"
)
_CAPITALISED = re.compile(r"\b[A-Z][a-z]")
_WORD = re.compile(r"\w+")
_ASKS = (
    ("who", re.compile(r"^\s*(?:who|whom|whose)\b", re.IGNORECASE)),
    ("when", re.compile(r"\bwhen\b|\bwhat year\b|\bwhat date\b", re.IGNORECASE)),
    ("where", re.compile(r"\bwhere\b", re.IGNORECASE)),
    ("number", re.compile(r"\bhow (?:many|much|long|old|tall|far|big)\b", re.IGNORECASE)),
)
_CUES = ("year", "digit", "capitalised", "month")
FEATURE_NAMES: tuple[str, ...] = (
    "cosine",
    "first_stage",
    "unit_bm25",
    "unit_best_cosine",
    "cosine_below_unit_best",
    *(f"{ask}*{cue}" for ask in (*(name for name, _ in _ASKS), "other") for cue in _CUES),
)

Matrix = npt.NDArray[np.float64]


def _asks(query: str) -> npt.NDArray[np.float64]:
    found = [bool(pattern.search(query)) for _, pattern in _ASKS]
    return np.array([*found, not any(found)], dtype=np.float64)


def _cues(text: str) -> tuple[float, float, float, float]:
    words = max(1, len(_WORD.findall(text)))
    return (
        float(bool(_YEAR.search(text))),
        float(bool(_DIGIT.search(text))),
        len(_CAPITALISED.findall(text)) / words,
        float(bool(_MONTH.search(text))),
    )


def features(
    query: str,
    texts: Sequence[str],
    cosine: Sequence[float],
    first: Sequence[float],
    unit_first: Sequence[float],
    units: Sequence[int],
) -> Matrix:
    """One row of :data:`FEATURE_NAMES` per window: ``texts`` (without context), their ``cosine``
    to the query, ``first`` (first-stage score), ``unit_first`` (their unit's BM25) and ``units``."""
    cos = np.asarray(cosine, dtype=np.float64)
    best: dict[int, float] = {}
    for unit, value in zip(units, cos, strict=True):
        best[unit] = max(best.get(unit, value), float(value))
    unit_best = np.array([best[unit] for unit in units], dtype=np.float64)
    cues = np.array([_cues(text) for text in texts], dtype=np.float64).reshape(len(texts), len(_CUES))
    crossed = np.einsum("a,wc->wac", _asks(query), cues).reshape(len(texts), -1)
    base = np.column_stack([cos, first, unit_first, unit_best, cos - unit_best])
    return np.column_stack([base, crossed])


class WindowHead:
    """The trained weights, one per feature."""

    def __init__(self, weights: npt.NDArray[np.float64]) -> None:
        if weights.shape != (len(FEATURE_NAMES),):
            raise ValueError(f"window head: expected {len(FEATURE_NAMES)} weights, got {weights.shape}")
        self.weights = weights

    @classmethod
    def load(cls, path: Path = WEIGHTS_FILE) -> WindowHead:
        with np.load(path) as data:
            names = tuple(str(name) for name in data["names"])
            if names != FEATURE_NAMES:
                raise ValueError(f"{path}: trained on features {names}, this code computes {FEATURE_NAMES}")
            return cls(np.asarray(data["weights"], dtype=np.float64))

    def scores(self, rows: Matrix) -> list[float]:
        """A score per window (higher is better; on no fixed scale)."""
        return [float(value) for value in rows @ self.weights]
