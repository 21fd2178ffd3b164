"""The one interface every tool-output shape implements (pygments' lexers are the model).

A shape says how sure it is that a text is its kind of output (:meth:`Shape.score`, 0.0-1.0) and
compresses it (:meth:`Shape.compress`). Line-oriented shapes only say which lines matter
(:meth:`LineShape.select`); :func:`compressors.tooloutput.lines.fit` does the rest.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

from compressors.tooloutput.lines import Doc, Selection, fit

__all__ = ["Cut", "LineShape", "Shape"]


@dataclass(frozen=True, slots=True)
class Cut:
    """A shape's output: the text, its tokens, whether the budget was met, and why not."""

    text: str
    tokens: int
    met: bool
    note: str = ""


class Shape(abc.ABC):
    name: ClassVar[str]

    @abc.abstractmethod
    def score(self, doc: Doc) -> float:
        """How sure this shape is that ``doc`` is its kind of output (0.0-1.0); cheap on any size.
        Content shapes stay at or under 0.95: numbered file reads (0.97) hold them, not the reverse."""

    @abc.abstractmethod
    def compress(self, doc: Doc, budget: int) -> Cut:
        """``doc`` towards ``budget`` tokens; what the shape must keep wins over the budget."""

    def unpointed_budget(self, doc: Doc, lower: int) -> int | None:
        """The budget when the query points nowhere into ``doc`` (at least ``lower``), or None: it
        does point in, or this shape cannot tell, and the target applies. File reads say it."""
        return None


class LineShape(Shape):
    """A shape that keeps and drops whole lines."""

    @abc.abstractmethod
    def select(self, doc: Doc) -> Selection:
        """Which lines must stay, which may (best first), and how omitted lines are described."""

    def compress(self, doc: Doc, budget: int) -> Cut:
        fitted = fit(doc, self.select(doc), budget)
        return Cut(fitted.text, fitted.tokens, fitted.met, fitted.note)
