"""Query planning as a request runs it (:mod:`proxy.policy.query` plans one part).

Planning runs on the event loop, so a part above ``max_part_chars`` is planned from its tail only
(a question sits at the end; a tool output's failures may sit mid-way, and scanning for them is
cheap, so more of one is read). The lines each earlier tool output points at are scanned once per
text and kept in a bounded LRU: every later turn re-sends those outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from proxy.apis import Part
from proxy.policy.forms import text_digest
from proxy.policy.model import Policy, Rule
from proxy.policy.query import POINTER_SCAN_CHARS, SHAPED, TOOL_ROLES, QueryPlan, plan_query, pointers_of
from proxy.store.lru import BytesLRU

__all__ = ["QueryPlanner"]

_POINTERS_BYTES = 4 * 1024 * 1024
_QUERY_TAIL_CHARS = 8000  # what query planning reads of a part too large to compress


class QueryPlanner:
    """Plans parts of up to ``max_part_chars`` whole, larger ones from their tail."""

    def __init__(self, max_part_chars: int) -> None:
        self.max_part_chars = max_part_chars
        # The lines each earlier tool output points at (tool queries), scanned once per text.
        self._pointers: BytesLRU[tuple[str, ...]] = BytesLRU(max_bytes=_POINTERS_BYTES, entry_overhead=200)

    def planning(self, parts: Sequence[Part]) -> list[Part]:
        """What query planning reads: only the tail of a part above ``max_part_chars`` (its
        question is there), since planning runs on the event loop."""
        return [p if len(p.text) <= self.max_part_chars else _tail(p, _scan_chars(p)) for p in parts]

    def plan(self, policy: Policy, planning: Sequence[Part], part: Part, rule: Rule) -> QueryPlan:
        """The query plan of ``part``, its kept spans in the offsets of its whole text."""
        clipped = len(part.text) > self.max_part_chars
        shaped = any(step.compressor_name in SHAPED for step in rule.steps)
        plan = plan_query(
            policy.query,
            planning,
            _tail(part) if clipped else part,
            shaped=shaped,
            pointers=self._pointers_of,
        )
        return plan.shifted(max(0, len(part.text) - _QUERY_TAIL_CHARS) if clipped else 0)

    def _pointers_of(self, text: str) -> tuple[str, ...]:
        key = text_digest(text)
        found = self._pointers.get(key)
        if found is None:
            found = pointers_of(text)
            found = self._pointers.setdefault(key, found, size=200 + sum(len(line) for line in found))
        return found


def _tail(part: Part, chars: int = _QUERY_TAIL_CHARS) -> Part:
    return dataclasses.replace(part, text=part.text[-chars:])


def _scan_chars(part: Part) -> int:
    """What planning reads of a big part: a tool output's failures may sit mid-way (``pytest -v``
    without a summary), and scanning its lines for them is cheap; a question is at the end."""
    return POINTER_SCAN_CHARS if part.role in TOOL_ROLES else _QUERY_TAIL_CHARS
