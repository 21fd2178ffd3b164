"""The question a prompt asks: one finder for query planning and the question-aware compressors.

A question is, in this order:

1. the text's last ``Question:`` / ``Query:`` / ``Key:`` line, when at most a few short
   lines follow it (``Answer:``, ``Corresponding value:``);
2. else its last sentence ending in ``?``, on the same condition;
3. else an opening question: a first paragraph of one line that is such a label line, else
   the first sentence in it ending in ``?`` (``Why does this fail?`` above a pasted log).

:func:`find_question` with ``anywhere`` then takes the last such line or sentence wherever
it sits. It is bounded: a candidate longer than :data:`MAX_QUESTION_TOKENS`, or one that is all
there is (nothing before it, only its short trailer after it), is not a question. A long
one-line message starting with ``Question:`` is material to compress, not a question to
keep verbatim.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from compressors.tokenizer import tokenizer_for

__all__ = ["MAX_QUESTION_TOKENS", "Question", "find_question", "is_short_trailer", "query_of"]

MAX_QUESTION_TOKENS = 300
# A question is "final" when at most this much follows it.
TRAILING_LINES = 4
MAX_TRAILING_CHARS = 600
_MAX_QUESTION_CHARS = MAX_QUESTION_TOKENS * 8  # longer is too long whatever the tokens
_LABEL_LINE = re.compile(r"^[ \t]*(?:question|query|key)[ \t]*:[ \t]*(\S.*)$", re.IGNORECASE | re.MULTILINE)
_LABEL = re.compile(r"^[ \t]*(?:question|query|key)[ \t]*:[ \t]*", re.IGNORECASE)
_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_BLANK_LINES = re.compile(r"(?:[ \t]*\n)*")
_SPACES = re.compile(r"[ \t]*")
_NON_SPACE = re.compile(r"\S")
_SENTENCE_BREAKS = "\n.!?"
_MAX_MARKS = 64  # question marks tried from the end when looking anywhere


@dataclass(frozen=True, slots=True)
class Question:
    """The question (its label stripped) and its span: its line, or its sentence, in the text."""

    text: str
    start: int
    end: int
    final: bool  # only a short trailer follows it (else it opens the text)

    def line_end(self, text: str) -> int:
        """Where the question's line ends in ``text``."""
        end = text.find("\n", self.end)
        return len(text) if end < 0 else end


def is_short_trailer(text: str, start: int, end: int | None = None) -> bool:
    """Whether ``text[start:end]`` is at most a short trailer (a few short lines, ``Answer:``)."""
    rest = text[start:end].strip()
    return rest.count("\n") < TRAILING_LINES and len(rest) <= MAX_TRAILING_CHARS


def _bounded(question: str) -> bool:
    if not question.strip() or len(question) > _MAX_QUESTION_CHARS:
        return False
    return len(question) <= MAX_QUESTION_TOKENS or tokenizer_for(None).count(question) <= MAX_QUESTION_TOKENS


def _last_label_line(text: str, start: int, end: int) -> re.Match[str] | None:
    # A final line starts within the last stretch of the text: search only there.
    lo = max(start, end - MAX_TRAILING_CHARS - _MAX_QUESTION_CHARS - 2)
    lo = max(start, text.rfind("\n", start, lo) + 1) if lo > start else start
    last = None
    for last in _LABEL_LINE.finditer(text, lo, end):  # noqa: B007 - the last one is wanted
        pass
    return last


def _question_sentence(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The span of the last sentence ending in ``?`` within ``text[start:end]`` (stripped), if bounded.

    The mark must end its sentence: a line break, the end, or a new sentence follows it (a
    ``?`` before a quote or a comma sits inside a title or a quotation).
    """
    mark = text.rfind("?", start, end)
    if mark < 0 or not _ends_sentence(text, mark + 1, end):
        return None
    while mark > start and text[mark - 1] == "?":
        mark -= 1  # "why??": the sentence ends at its first mark
    lo = max(start, mark - _MAX_QUESTION_CHARS - 1)
    begin = max(text.rfind(c, lo, mark) for c in _SENTENCE_BREAKS) + 1
    if begin == 0:
        if lo > start:
            return None  # no sentence start within reach: far too long to be a question
        begin = start
    while begin < mark and text[begin].isspace():
        begin += 1
    return (begin, mark + 1) if begin < mark else None


def _ends_sentence(text: str, at: int, end: int) -> bool:
    if at >= end or text[at] == "\n":
        return True
    if not text[at].isspace():
        return False
    at = _SPACES.match(text, at, end).end()  # type: ignore[union-attr]  # always matches
    return at >= end or text[at] == "\n" or text[at].isupper() or text[at].isdigit()


def _final(text: str, start: int, end: int) -> Question | None:
    label = _last_label_line(text, start, end)
    if label is not None and is_short_trailer(text, label.end(), end):
        found = Question(label.group(1).rstrip(), label.start(), label.end(), final=True)
        if _admissible(text, found):
            return found
    span = _question_sentence(text, start, end)
    if span is None or not is_short_trailer(text, span[1], end):
        return None
    found = _sentence(text, span, final=True)
    return found if _admissible(text, found) else None


def _sentence(text: str, span: tuple[int, int], *, final: bool) -> Question:
    """A ``?`` sentence as a question, without the label it may open with."""
    asked = text[span[0] : span[1]]
    if span[0] == 0 or text[span[0] - 1] == "\n":
        asked = _LABEL.sub("", asked, count=1)
    return Question(asked, span[0], span[1], final=final)


def _opening(text: str, start: int, end: int) -> Question | None:
    """A first paragraph of one line that is a label line, else the first ``?`` sentence in it."""
    line = _BLANK_LINES.match(text, start, end).end()  # type: ignore[union-attr]  # always matches
    gap = _BLANK_LINE.search(text, line, end)
    stop = gap.start() if gap else end
    if "\n" in text[line:stop].rstrip():
        return None  # an opening question is a paragraph of its own
    stop = line + len(text[line:stop].rstrip())
    label = _LABEL_LINE.match(text, line, stop)
    if label is not None:
        found = Question(label.group(1).rstrip(), label.start(), label.end(), final=False)
        if _admissible(text, found):
            return found
    # Too long to be a question ("Question: who ...? Answer from these documents. Document [1] ..."):
    # its first sentence ending in "?".
    mark = text.find("?", line, min(stop, line + _MAX_QUESTION_CHARS))
    while mark >= 0 and not _ends_sentence(text, mark + 1, stop):
        mark = text.find("?", mark + 1, min(stop, line + _MAX_QUESTION_CHARS))
    span = _question_sentence(text, line, mark + 1) if mark >= 0 else None
    if span is None:
        return None
    found = _sentence(text, span, final=False)
    return found if _admissible(text, found) else None


def _admissible(text: str, question: Question) -> bool:
    """Bounded, and not all there is: something to compress must lie before or after it."""
    alone = _NON_SPACE.search(text, 0, question.start) is None and is_short_trailer(text, question.end)
    return not alone and _bounded(question.text)


def _anywhere(text: str, start: int, end: int) -> Question | None:
    """The last label line, else the last ``?`` sentence, wherever it sits."""
    label = None
    for label in _LABEL_LINE.finditer(text, start, end):  # noqa: B007 - the last one is wanted
        pass
    if label is not None:
        found = Question(label.group(1).rstrip(), label.start(), label.end(), final=False)
        if _admissible(text, found):
            return found
    stop = end
    for _ in range(_MAX_MARKS):
        mark = text.rfind("?", start, stop)
        if mark < 0:
            return None
        span = _question_sentence(text, start, mark + 1) if _ends_sentence(text, mark + 1, end) else None
        if span is not None:
            found = _sentence(text, span, final=False)
            if _admissible(text, found):
                return found
        stop = mark
    return None


def find_question(
    text: str, start: int = 0, end: int | None = None, *, anywhere: bool = False
) -> Question | None:
    """The question ``text[start:end]`` asks (offsets in ``text``), or None; see the module docstring.

    ``anywhere``: else the last label line or ``?`` sentence wherever it sits (a selector that
    keeps or drops whole units keeps the question's unit; a few-shot prompt's last example
    question is then taken for the question, which is why this is not the default).
    """
    end = len(text) if end is None else end
    found = _final(text, start, end) or _opening(text, start, end)
    return found if found is not None or not anywhere else _anywhere(text, start, end)


def query_of(text: str) -> str | None:
    """The text of the question ``text`` asks, or None."""
    found = find_question(text)
    return found.text if found else None
