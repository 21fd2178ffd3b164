"""Where question-aware compressors get their query, and what around it is kept.

``query: last_user`` (the default) uses the last user message. When the part
being compressed is that message itself, the query is its question
(:mod:`compressors.question`: a final ``Question: ...`` / ``Key: ...`` line, else a
final sentence ending in ``?``, else an opening one; never one of more than a few
hundred tokens or one that is the whole message), and that question, what follows
it, and a short leading instruction paragraph are kept verbatim: only the text
between them is compressed. ``query: {pattern: ...}`` takes the regex's group from
the newest part it matches, with the same keep rule when the match sits in the
compressed part.

A tool output (a chat ``tool`` message, a Responses ``function_call_output``, an Anthropic
``tool_result``), and a user message that a rule reads by shape (an observation of an agent
without tool calling), gets the query of what the agent is after (:func:`tool_query`): the task,
the assistant's words before the call, the call's name and arguments, and the lines of the last
few outputs that pointed somewhere (failures, errors, ``file:line``). It is built from the parts
*before* the output only, so it is the same on every turn that re-sends that output: the memo keys
the form by the turn it was first sent in, and a replica with a cold memo remakes the same form.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from compressors.base import Target
from compressors.question import find_question, is_short_trailer
from compressors.tokenizer import tokenizer_for
from proxy.apis import Part
from proxy.policy.model import QuerySpec

__all__ = [
    "POINTER_SCAN_CHARS",
    "SHAPED",
    "TOOL_ROLES",
    "Fit",
    "Pointers",
    "QueryPlan",
    "Run",
    "compress_around",
    "final_question",
    "plan_query",
    "pointers_of",
    "tool_query",
    "whole",
]

_MAX_QUERY_CHARS = 4000  # a whole message as the query: its end, where the question usually is
_MAX_INSTRUCTION_CHARS = 1200
TOOL_ROLES = frozenset({"tool", "function"})
SHAPED = frozenset({"tooloutput"})  # compressors that read a part as a tool output by its shape
# The tool query's pieces, each bounded, so a long task or a huge earlier output never makes the
# query (which the shapes match every line against) big: about 3,000 characters at most.
_TASK_HEAD, _TASK_TAIL = 500, 300  # an issue statement's title and first lines, and its end
_WORDS_CHARS = 600  # the assistant's words just before the call
_CALL_CHARS = 500
_RECENT_OUTPUTS = 6
_POINTERS_PER_OUTPUT = 8
_POINTER_CHARS = 200
_POINTER_TOTAL = 1500
# Lines of an earlier output that point somewhere, surest first: a test runner's failures, then
# error messages (``AssertionError: ...``, ``error: ...``, ``panic: ...``), then locations
# (``src/a.py:12``, ``File "x.py", line 9``; an address like ``127.0.0.1:8000`` is none). Words
# like Error inside source lines (``class RangeError(Exception):``) are not pointers.
_POINTER = re.compile(
    r"(?P<t0>\b(?:FAILED|FAIL|ERROR)\b)"
    r"|(?P<t1>(?:Error|Exception|Failure): \S|\berror(?:\[[\w-]+\])?: |\bpanic: )"
    r"|(?P<t2>\w\.[A-Za-z]\w{0,4}:\d+|File \"[^\"\n]+\", line \d+)"
)
_TIERS = ("t0", "t1", "t2")
Pointers = Callable[[str], Sequence[str]]
POINTER_SCAN_CHARS = 200_000  # what is read of an earlier output (its end), on the event loop


@dataclass(frozen=True, slots=True)
class QueryPlan:
    """The query for one part, and the spans of that part kept verbatim (sorted offsets)."""

    query: str | None
    keep: tuple[tuple[int, int], ...] = ()

    def shifted(self, offset: int) -> QueryPlan:
        """A plan made from a text's tail, in the whole text's offsets. A span at the tail's start
        (the guess of a leading instruction) is dropped: the tail's start is not the text's."""
        if offset == 0:
            return self
        return QueryPlan(self.query, tuple((s + offset, e + offset) for s, e in self.keep if s > 0))


def final_question(text: str) -> tuple[str, int, int] | None:
    """The question of ``text`` (:func:`compressors.question.find_question`) and the span kept
    with it: to the end of the text when it is final (only a few short lines follow it, such
    as ``Answer:``), else to the end of its line when the rest of that line is short."""
    found = find_question(text)
    if found is None:
        return None
    if found.final:
        return found.text, found.start, len(text)
    line_end = found.line_end(text)
    return found.text, found.start, line_end if is_short_trailer(text, found.end, line_end) else found.end


def _with_instruction(text: str, start: int, end: int) -> tuple[tuple[int, int], ...]:
    """The kept question span, plus a short leading instruction paragraph before it."""
    cut = text.find("\n\n")
    if cut <= 0 or cut >= start or cut > _MAX_INSTRUCTION_CHARS or cut * 4 > start:
        return ((start, end),)
    return ((0, cut + 2), (start, end))


def _joined(parts: Sequence[Part]) -> str:
    return "\n".join(p.text for p in parts)


def _pattern_plan(spec: QuerySpec, parts: Sequence[Part], part: Part) -> QueryPlan:
    assert spec.pattern is not None
    inside = None
    for match in spec.pattern.finditer(part.text):
        inside = match
    if inside is not None:
        start = part.text.rfind("\n", 0, inside.start()) + 1
        line_end = part.text.find("\n", inside.end())
        end = len(part.text) if line_end < 0 or is_short_trailer(part.text, inside.end()) else line_end
        return QueryPlan(inside.group(1), _with_instruction(part.text, start, end))
    for other in reversed(parts):
        last = None
        for last in spec.pattern.finditer(other.text):  # noqa: B007 - the last one is wanted
            pass
        if last is not None:
            return QueryPlan(last.group(1))
    return QueryPlan(None)


def _clip(text: str, head: int, tail: int = 0) -> str:
    text = text.strip()
    if len(text) <= head + tail:
        return text
    return text[:head] + (" ... " + text[-tail:] if tail else "")


def pointers_of(text: str) -> tuple[str, ...]:
    """The lines of one output that point somewhere (``_POINTER``), surest first, each once: one
    regex pass over the text (a line is ranked by its first match)."""
    text = text[-POINTER_SCAN_CHARS:]
    tiers: dict[str, dict[str, None]] = {tier: {} for tier in _TIERS}
    done = -1  # the end of the last line taken: one match per line
    for match in _POINTER.finditer(text):
        if match.start() < done:
            continue
        start = text.rfind("\n", 0, match.start()) + 1
        end = text.find("\n", match.end())
        done = end = len(text) if end < 0 else end
        tier = tiers[str(match.lastgroup)]
        if len(tier) < _POINTERS_PER_OUTPUT:
            tier.setdefault(text[start:end].strip()[:_POINTER_CHARS])
        elif all(len(t) >= _POINTERS_PER_OUTPUT for t in tiers.values()):
            break
    found = [line for tier in tiers.values() for line in tier if line]
    return tuple(dict.fromkeys(found))[:_POINTERS_PER_OUTPUT]


def tool_query(parts: Sequence[Part], part: Part, pointers: Pointers = pointers_of) -> str | None:
    """What the agent is after when it reads ``part`` (a tool output or an observation): built
    from ``part``'s call and the parts before it, never from ``part`` itself or what follows.
    ``pointers`` is :func:`pointers_of`, or a cached twin (the engine scans an output once)."""
    at = next((k for k, p in enumerate(parts) if p.path == part.path), len(parts))
    before = parts[:at]
    observation = part.role not in TOOL_ROLES
    # Text blocks beside tool_results (an agent's reminders) are not the task.
    hosts = {p.message for p in before if p.role in TOOL_ROLES}
    users = [p for p in before if p.role == "user" and p.message not in hosts and p.text.strip()]
    # An agent without tool calling sends observations as user messages: its task is the first.
    task = users[0] if observation and users else (users[-1] if users else None)
    pieces: list[str] = []
    if task is not None:
        pieces.append("Task: " + _clip(task.text, _TASK_HEAD, _TASK_TAIL))
    words = next((p for p in reversed(before) if p.role == "assistant" and p.text.strip()), None)
    if words is not None and words.turn == part.turn:  # the reply that made the call
        pieces.append("Assistant: " + words.text.strip()[-_WORDS_CHARS:])
    if part.tool_name or part.tool_arguments:
        pieces.append("Call: " + _clip(f"{part.tool_name or ''} {part.tool_arguments or ''}", _CALL_CHARS))
    outputs = [
        p for p in before if p.role in TOOL_ROLES or (observation and p.role == "user" and p is not task)
    ]
    pointed: dict[str, None] = {}
    for output in reversed(outputs[-_RECENT_OUTPUTS:]):  # the newest output first
        pointed.update(dict.fromkeys(pointers(output.text)))
    recent = "\n".join(pointed)[:_POINTER_TOTAL]
    if recent:
        pieces.append("Recent:\n" + recent)
    return "\n".join(pieces) or None


def plan_query(
    spec: QuerySpec,
    parts: Sequence[Part],
    part: Part,
    *,
    shaped: bool = False,
    pointers: Pointers = pointers_of,
) -> QueryPlan:
    """The query to compress ``part`` with, given every part of the request. ``shaped``: the
    part's rule reads tool outputs by shape, so a user message it matches is an observation."""
    if spec.kind == "pattern":
        return _pattern_plan(spec, parts, part)
    if part.role in TOOL_ROLES or (shaped and part.role == "user"):
        return QueryPlan(tool_query(parts, part, pointers))
    user = [p for p in parts if p.last_user]
    if not user:
        return QueryPlan(None)
    if part.last_user:
        found = final_question(part.text)
        if found is None:
            return QueryPlan(None)
        question, start, end = found
        return QueryPlan(question, _with_instruction(part.text, start, end))
    text = _joined(user)
    return QueryPlan(text[-_MAX_QUERY_CHARS:] if text.strip() else None)


# Runs a rule's compressors on one stretch of a part; the Fit scales a step's target to the stretch.
Fit = Callable[[Target], Target]
Run = Callable[[str, Fit], str]


def whole(target: Target) -> Target:
    """The Fit of a part compressed whole: the step's own target."""
    return target


def _share(target: Target, *, kept: int, size: int, total: int, pieces: int) -> Target:
    """A stretch's share of a ``max_tokens`` target (after the kept spans), in proportion to its
    size; a rate stays as it is."""
    if target.max_tokens is None:
        return target
    room = max(pieces, target.max_tokens - kept)
    return Target(rate=target.rate, max_tokens=max(1, room * size // total))


def compress_around(run: Run, text: str, *, plan: QueryPlan, model: str | None) -> tuple[str, int, str]:
    """Compress ``text`` with ``run`` except the plan's kept spans (and the whitespace at the
    edges of each compressed stretch, so paragraphs stay apart). Returns the new text, the
    tokens of the kept spans, and a note when nothing was left to compress."""
    if not plan.keep:
        return run(text, whole), 0, ""
    stretches: list[tuple[int, int, bool]] = []  # (start, end, compress?)
    pos = 0
    for start, end in plan.keep:
        if start > pos:
            stretches.append((pos, start, True))
        stretches.append((max(start, pos), end, False))
        pos = max(pos, end)
    if pos < len(text):
        stretches.append((pos, len(text), True))
    cores = [text[s:e].strip() for s, e, c in stretches if c and text[s:e].strip()]
    if not cores:
        return text, 0, "nothing to compress: the question and its instruction are kept verbatim"
    tokenizer = tokenizer_for(model)
    kept = sum(tokenizer.count(text[s:e]) for s, e, c in stretches if not c)
    sizes = [max(1, tokenizer.count(core)) for core in cores]
    size_of = iter(sizes)
    out: list[str] = []
    for start, end, compress in stretches:
        piece = text[start:end]
        core = piece.strip()
        if not compress or not core:
            out.append(piece)
            continue
        lead = piece[: len(piece) - len(piece.lstrip())]
        trail = piece[len(piece.rstrip()) :]
        fit = functools.partial(_share, kept=kept, size=next(size_of), total=sum(sizes), pieces=len(cores))
        out.append(lead + run(core, fit) + trail)
    return "".join(out), kept, ""
