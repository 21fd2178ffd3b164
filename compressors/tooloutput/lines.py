"""Line selection shared by the line-oriented shapes: what must stay, what may, and the markers.

A shape says which lines must be kept (failures, errors, summaries), which others it would keep,
best first, and how omitted lines group into markers. :func:`fit` keeps the must-lines, adds ranked
lines while the budget allows, and renders: every kept line byte-identical to the original, every
omitted line inside exactly one marker whose ``lines=`` names it (docs/markers.md).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

from compressors.markers import format_marker, line_ranges
from compressors.tokenizer import Tokenizer
from compressors.tooloutput.query import Query

__all__ = ["Doc", "Fitted", "Group", "Selection", "default_group", "fit"]

_MARKER_COST = 22  # tokens of a typical marker with an example, for the first estimate
_ROUNDS = 4  # render-count-correct rounds at most
_SLACK = 0.05
_POINTED_SHARE = 0.2  # of the budget, for what the query points at, whatever the must-lines take


@dataclass(frozen=True, slots=True)
class Doc:
    """One tool output: its lines (without newlines), the query, the marker ``ref``, token counts."""

    text: str
    lines: list[str]
    query: Query
    ref: str | None
    tokenizer: Tokenizer
    tokens: int

    @classmethod
    def of(cls, text: str, query: Query, ref: str | None, tokenizer: Tokenizer, tokens: int) -> Doc:
        lines = text.split("\n")
        if text.endswith("\n"):
            lines.pop()  # the final newline is kept by render, not a line of its own
        return cls(text, lines, query, ref, tokenizer, tokens)

    @property
    def sample(self) -> list[str]:
        """The first 300 and last 100 lines: what shapes score on (cheap on any size)."""
        if len(self.lines) <= 400:
            return self.lines
        return self.lines[:300] + self.lines[-100:]

    def costs(self) -> list[float]:
        """Estimated tokens of each line with its newline (this document's tokens per character)."""
        ratio = self.tokens / max(1, len(self.text))
        return [len(line) * ratio + 1 for line in self.lines]


@dataclass(frozen=True, slots=True)
class Group:
    """How one marker describes the omitted lines it stands for."""

    count: int
    unit: str
    example: str | None = None
    kinds: str | None = None


def default_group(doc: Doc, members: Sequence[int]) -> Group:
    return Group(len(members), "lines", doc.lines[members[0]])


@dataclass(slots=True)
class Selection:
    """A shape's plan. ``key(line, keep)`` puts omitted lines with one key into one marker, placed where
    the first of them was (None: each run of omitted lines is its own marker)."""

    must: set[int]
    ranked: list[int]
    describe: Callable[[Doc, Sequence[int]], Group] = default_group
    key: Callable[[int, Sequence[bool]], Hashable | None] | None = None
    why: str = "failures, errors and summary lines are never cut"
    notes: list[str] = field(default_factory=list)
    # lines the query points at: kept before ``ranked``, within a share of the budget even when
    # the must-lines alone exceed it (what the next step needs is not crowded out)
    pointed: list[int] = field(default_factory=list)
    # charge each kept line the marker it splits off (an outline: many short lines, a marker between
    # every two); off, the budget is corrected round by round, which suits a few long runs
    charge_markers: bool = False


@dataclass(frozen=True, slots=True)
class Fitted:
    text: str
    tokens: int
    met: bool
    note: str


def render(doc: Doc, keep: list[bool], sel: Selection) -> str:
    """Kept lines as they were; one marker per group of omitted lines, where its first line was."""
    groups: dict[Hashable, list[int]] = {}
    first_of: dict[int, Hashable] = {}
    run_start = -1
    for i, kept in enumerate(keep):
        if kept:
            run_start = -1
            continue
        if run_start < 0:
            run_start = i
        key = sel.key(i, keep) if sel.key is not None else None
        group_key: Hashable = ("run", run_start) if key is None else ("key", key)
        members = groups.get(group_key)
        if members is None:
            groups[group_key] = members = []
            first_of[i] = group_key
        members.append(i)
    out: list[str] = []
    for i, kept in enumerate(keep):
        if kept:
            out.append(doc.lines[i])
        elif i in first_of:
            members = groups[first_of[i]]
            group = sel.describe(doc, members)
            ranges = line_ranges([m + 1 for m in members])
            out.append(
                format_marker(
                    group.count,
                    group.unit,
                    example=group.example,
                    lines=ranges,
                    kinds=group.kinds,
                    ref=doc.ref,
                )
            )
    text = "\n".join(out)
    return text + "\n" if doc.text.endswith("\n") and out else text


def _split_cost(keep: Sequence[bool], i: int, marker: float) -> float:
    """What keeping line ``i`` adds in markers: one when it splits a run of omitted lines in two,
    minus one when it fills the last omitted line between two kept ones (runs only: keyed groups
    share a marker wherever their lines sit)."""
    before = i > 0 and not keep[i - 1]
    after = i + 1 < len(keep) and not keep[i + 1]
    if before and after:
        return marker
    if not before and not after and 0 < i < len(keep) - 1:
        return -marker
    return 0.0


def _choose(
    sel: Selection, costs: Sequence[float], room: float, budget: int, marker: float
) -> tuple[list[bool], float]:
    """Which lines to keep for ``room`` estimated tokens, and the must-lines' estimate. With
    ``marker`` (runs, not keyed groups) each kept line is charged the markers it adds."""
    keep = [False] * len(costs)
    for i in sel.must:
        keep[i] = True
    used = must = sum(costs[i] for i in sel.must)
    allowance = max(room, used + budget * _POINTED_SHARE)
    for i in sel.pointed:
        if not keep[i] and used + costs[i] <= allowance:
            keep[i] = True
            used += costs[i]
    for i in sel.ranked:
        cost = costs[i] + (_split_cost(keep, i, marker) if marker else 0.0)
        if not keep[i] and used + cost <= room:
            keep[i] = True
            used += cost
    return keep, must


def fit(doc: Doc, sel: Selection, budget: int) -> Fitted:
    """Must-lines, then ranked lines while the budget allows; the target missed only for must-lines."""
    costs = doc.costs()
    room = float(budget) - _MARKER_COST * 4
    # Runs of omitted lines each get a marker: charge a kept line the marker it splits off, at this
    # document's own marker cost (its hash= included), so an outline's many gaps are budgeted for.
    charged = sel.charge_markers and sel.key is None
    marker = float(doc.tokenizer.count(_sample_marker(doc))) if charged else 0.0
    best = ("", -1)
    for _ in range(_ROUNDS):
        keep, must = _choose(sel, costs, room, budget, marker)
        text = render(doc, keep, sel)
        tokens = doc.tokenizer.count(text)
        if best[1] < 0 or _better(tokens, best[1], budget):
            best = (text, tokens)
        extra = sum(keep) - len(sel.must)
        if (
            budget * 0.85 <= tokens <= budget * (1 + _SLACK)
            or must > budget
            or (tokens > budget and not extra)
        ):
            break  # filled, or the must-lines (or the markers) alone overshoot: another round cannot help
        room += (budget - tokens) * 0.9  # markers and merges made the estimate drift: correct it
    text, tokens = best
    met = tokens <= budget * (1 + _SLACK)
    note = "" if met else f"kept {tokens} tokens for a {budget}-token budget: {sel.why}"
    if sel.notes:
        note = "; ".join(filter(None, [note, *sel.notes]))
    return Fitted(text, tokens, met, note)


def _sample_marker(doc: Doc) -> str:
    return format_marker(99, "lines", example=None, lines=[(100, 198)], ref=doc.ref)


def _better(tokens: int, than: int, budget: int) -> bool:
    """Fitting beats overshooting; among fits the fuller wins, among overshoots the smaller."""
    limit = budget * (1 + _SLACK)
    if (tokens <= limit) != (than <= limit):
        return tokens <= limit
    return tokens > than if tokens <= limit else tokens < than
