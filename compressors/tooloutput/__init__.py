"""``tooloutput``: coding-agent tool outputs compressed by their shape, facts never cut.

Each shape (one module each: test runs, logs, JSON, file reads, search results, diagnostics, git)
scores how sure it is that a text is its kind; the surest above a threshold compresses it, else the
fallback (collapse repeats, cut keeping error-like lines). Kept lines are byte-identical to the
original (JSON, whose layout whitespace goes, is the one exception); every omission is a marker
(docs/markers.md). Outputs under ``min_tokens`` are returned unchanged. See docs/tooloutput.md.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from compressors.base import Ask, Compressed, Compressor, Decision, OptionsError
from compressors.tokenizer import Tokenizer
from compressors.tooloutput.diagnostics import Diagnostics
from compressors.tooloutput.fallback import Fallback
from compressors.tooloutput.fileread import FileRead
from compressors.tooloutput.git import Git
from compressors.tooloutput.jsondoc import JsonDoc
from compressors.tooloutput.lines import Doc
from compressors.tooloutput.logs import Logs
from compressors.tooloutput.query import Query
from compressors.tooloutput.search import Search
from compressors.tooloutput.shape import Shape
from compressors.tooloutput.tests import Tests

__all__ = ["SHAPES", "ToolOutput", "choose"]

# In the order ties are broken: the more specific shape first.
SHAPES: tuple[Shape, ...] = (JsonDoc(), Tests(), Diagnostics(), Git(), FileRead(), Search(), Logs())
FALLBACK: Shape = Fallback()
_PIECE_END = re.compile(r"\n(?=[A-Za-z0-9])")


def choose(doc: Doc, threshold: float, only: frozenset[str] | None = None) -> tuple[Shape, float]:
    """The surest shape above ``threshold`` (the fallback otherwise), and its score."""
    best, best_score = FALLBACK, threshold
    for shape in SHAPES:
        if only is not None and shape.name not in only:
            continue
        score = shape.score(doc)
        if score > best_score:
            best, best_score = shape, score
    return best, best_score


_CHUNK = 1 << 18  # inputs above this are counted in pieces, on tiktoken's threads


def _count(tokenizer: Tokenizer, text: str) -> int:
    """The exact token count; a big text is cut where a line starts with a letter or digit, which
    is a pre-token boundary in every tiktoken encoding, and counted in pieces across threads."""
    if len(text) <= 2 * _CHUNK:
        return tokenizer.count(text)
    pieces: list[str] = []
    start = 0
    while start < len(text):
        at = start + _CHUNK
        match = _PIECE_END.search(text, at) if at < len(text) else None
        end = match.start() + 1 if match else len(text)
        pieces.append(text[start:end])
        start = end
    return sum(tokenizer.count_many(pieces))


class ToolOutput(Compressor):
    """See the module docstring. Options: ``min_tokens`` (below it: unchanged), ``threshold`` (the score
    a shape needs), ``shapes`` (the shape names allowed; all by default), ``fallback`` (false: a text
    no shape recognises goes unchanged, e.g. a task typed as a user message beside observations),
    ``unpointed_max_tokens`` (a file read the query points nowhere into is cut to this when its
    omissions are retrievable; None: the target alone)."""

    name = "tooloutput"
    cost = "linear"  # line scans and one token count: runs on parts of any size (see base.Cost)
    option_types: ClassVar[dict[str, tuple[type | tuple[type, ...], Any]]] = {
        "min_tokens": (int, 200),
        "threshold": ((int, float), 0.5),
        "shapes": ((list, tuple), None),
        "fallback": (bool, True),
        "unpointed_max_tokens": (int, None),
    }

    def _validate(self) -> None:
        if self.options["min_tokens"] < 0:
            raise OptionsError("tooloutput: min_tokens must be >= 0")
        unpointed = self.options["unpointed_max_tokens"]
        if unpointed is not None and unpointed < 1:
            raise OptionsError("tooloutput: unpointed_max_tokens must be >= 1")
        if not 0 <= self.options["threshold"] <= 1:
            raise OptionsError("tooloutput: threshold must be in [0, 1]")
        known = {shape.name for shape in SHAPES}
        given = self.options["shapes"]
        if given is not None and not set(given) <= known:
            raise OptionsError(
                f"tooloutput: unknown shape(s) {sorted(set(given) - known)} (known: {sorted(known)})"
            )
        self._only = frozenset(given) if given is not None else None

    def _budget(self, tokens: int, ask: Ask) -> tuple[int, int | None]:
        """The target's budget, and the lower one for a read the query points nowhere into: only
        when its omissions are retrievable (``ref`` set), so the agent can still get every line."""
        budget = ask.target.budget(tokens)
        unpointed = self.options["unpointed_max_tokens"]
        lower = min(budget, unpointed) if unpointed is not None and ask.ref is not None else None
        return budget, lower

    def _compress(self, text: str, ask: Ask) -> Compressed:
        tokens = _count(ask.tokenizer, text)
        budget, lower = self._budget(tokens, ask)
        if tokens < self.options["min_tokens"] or tokens <= (budget if lower is None else lower):
            return Compressed(text, tokens, tokens, self.name, budget)
        doc = Doc.of(text, Query.parse(ask.query, text), ask.ref, ask.tokenizer, tokens)
        shape, score = choose(doc, float(self.options["threshold"]), self._only)
        cold = shape.unpointed_budget(doc, lower) if lower is not None and lower < budget else None
        if cold is not None and cold < min(budget, tokens):
            budget = cold  # first appearance, the cheapest moment to cut: nothing cached to lose
        elif tokens <= budget:
            return Compressed(text, tokens, tokens, self.name, budget)
        if shape is FALLBACK and not self.options["fallback"]:
            return Compressed(text, tokens, tokens, self.name, budget, False, "no shape recognised")
        cut = shape.compress(doc, budget)
        if cut.tokens >= tokens:  # nothing gained: the original, unchanged
            return Compressed(text, tokens, tokens, self.name, budget, tokens <= budget * 1.05, cut.note)
        decision = Decision(
            0, f"shape:{shape.name}", tokens, True, round(score, 3), reason=f"shape {shape.name}"
        )
        return Compressed(cut.text, tokens, cut.tokens, self.name, budget, cut.met, cut.note, (decision,))
